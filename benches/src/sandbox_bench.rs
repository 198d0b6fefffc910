//! The scripting worker's cost: the cold start of one sandbox run (median, p95) against
//! `python3 -I -c pass` on the host in the same run, where that time goes, and runs per second
//! with the pool full. The worker is the real binary with the real runsc (as root), its runs
//! under an outer cgroup; calls come over mutual TLS as the gateway's would.
//!
//! Where the time goes, per run: `setup` (bundle, `/out` mount, cgroup: the worker's figure),
//! then inside `run` (from `runsc run` to its exit): gVisor's boot up to the interpreter's exec,
//! and Python's start up to the first line of the script, both read inside the sandbox from its
//! own `/proc` (sandbox uptime and the process's start time, in clock ticks); the rest of `run`
//! is runsc on the host (gofer, sentry start, teardown).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use qiria_test_support::tls::pki;
use qiria_test_support::worker::{OuterCgroup, ScriptingWorker, GATEWAY_ID};
use scripting_worker::pb::script_runner_client::ScriptRunnerClient;
use scripting_worker::pb::{RunRequest, RunResult};
use tonic::transport::Channel;

/// The heading of this benchmark's section in `RESULTS.md`.
pub const HEADING: &str = "## scripting worker";

/// Printed by the measured script: the sandbox's uptime now and the process's start, in
/// seconds since the sandbox booted.
const PROBE: &str = "import os\nticks = os.sysconf('SC_CLK_TCK')\n\
    start = int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[19]) / ticks\n\
    uptime = float(open('/proc/uptime').read().split()[0])\nprint(start, uptime)\n";

/// How much to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Sequential runs for the cold start.
    pub runs: usize,
    /// Seconds of runs with the pool full.
    pub throughput_seconds: f64,
    /// Sandboxes in the pool.
    pub sandboxes: usize,
    /// A short run that only shows everything works.
    pub smoke: bool,
}

impl Plan {
    /// 30 cold starts, 20 s with the pool full.
    pub fn full() -> Self {
        Self { runs: 30, throughput_seconds: 20.0, sandboxes: 2, smoke: false }
    }

    /// 3 cold starts, 3 s with the pool full.
    pub fn smoke() -> Self {
        Self { runs: 3, throughput_seconds: 3.0, sandboxes: 2, smoke: true }
    }
}

/// Reads one part of a [`Split`].
type Part = fn(&Split) -> f64;

/// One cold start, split.
#[derive(Debug, Clone, Copy, Default)]
struct Split {
    total_ms: f64,
    setup_ms: f64,
    run_ms: f64,
    cleanup_ms: f64,
    boot_ms: f64,
    python_ms: f64,
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Results {
    python_ms: Vec<f64>,
    sandbox: Vec<Split>,
    pool_runs: usize,
    pool_failed: usize,
    pool_seconds: f64,
    problems: Vec<String>,
}

impl Results {
    /// What went wrong (a run that failed, a figure missing).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

/// Measures `plan` with a worker whose state lives under `work`.
pub async fn run(plan: &Plan, work: &Path) -> anyhow::Result<Results> {
    let outer = OuterCgroup::new(4 << 30, 4096);
    let pki = pki(GATEWAY_ID);
    let pool = format!("[pool]\nsandboxes = {}\nqueue = 64\nqueue_wait_ms = 120000\n", plan.sandboxes);
    let worker = ScriptingWorker::start(work, &work.join("state"), &pki, &outer, &pool).await;
    let channel = worker.channel(&pki, &pki.client_cert_pem, &pki.client_key_pem).await;
    let client = ScriptRunnerClient::new(channel);
    let mut results = Results::default();

    // Warm: the root filesystem in the page cache, the TLS connection up.
    call(&client, PROBE).await?;
    for _ in 0..plan.runs {
        let started = Instant::now();
        // The interpreter the sandbox's root is built from (not a PATH shim, which adds its own start).
        let status = std::process::Command::new("/usr/bin/python3").args(["-I", "-c", "pass"]).status()?;
        results.python_ms.push(ms(started.elapsed()));
        if !status.success() {
            results.problems.push("python3 -I -c pass failed".into());
        }
        let started = Instant::now();
        let result = call(&client, PROBE).await?;
        let total_ms = ms(started.elapsed());
        match split(&result, total_ms) {
            Some(split) => results.sandbox.push(split),
            None => results.problems.push(format!("a cold-start run gave no probe: {result:?}")),
        }
    }

    let deadline = Instant::now() + Duration::from_secs_f64(plan.throughput_seconds);
    let started = Instant::now();
    let clients = plan.sandboxes * 2;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0usize, 0usize);
                while Instant::now() < deadline {
                    match call(&client, "pass").await {
                        Ok(r) if r.exit_code == 0 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for task in tasks {
        let (ok, failed) = task.await?;
        results.pool_runs += ok;
        results.pool_failed += failed;
    }
    results.pool_seconds = started.elapsed().as_secs_f64();
    if results.pool_failed > 0 {
        results.problems.push(format!("{} runs failed with the pool full", results.pool_failed));
    }
    if results.pool_runs == 0 || results.sandbox.is_empty() {
        results.problems.push("no figure was measured".into());
    }
    drop(worker);
    Ok(results)
}

async fn call(client: &ScriptRunnerClient<Channel>, body: &str) -> anyhow::Result<RunResult> {
    let request = RunRequest { job_id: "bench".into(), language: "python".into(), body: body.into() };
    Ok(client.clone().run(request).await?.into_inner())
}

fn split(result: &RunResult, total_ms: f64) -> Option<Split> {
    let mut numbers = result.stdout.split_whitespace().map(|n| n.parse::<f64>().ok());
    let (start, uptime) = (numbers.next()??, numbers.next()??);
    let d = result.durations.as_ref()?;
    Some(Split {
        total_ms,
        setup_ms: d.setup_ms as f64,
        run_ms: d.run_ms as f64,
        cleanup_ms: d.cleanup_ms as f64,
        boot_ms: start * 1000.0,
        python_ms: (uptime - start) * 1000.0,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The `## scripting worker` section.
pub fn render(results: &Results, plan: &Plan, profile: &str) -> String {
    let mut out = String::new();
    let date = crate::report::today();
    let _ = writeln!(out, "{HEADING}\n");
    let _ = writeln!(
        out,
        "- date: {date}; {profile} build; `scripting-worker` with the real runsc (Debian 20221219, default platform, \
         `--network=none`), as root, its runs under an outer cgroup; calls over mutual TLS from one client"
    );
    let _ = writeln!(
        out,
        "- cold start: {} sequential runs of a script that reads its own start from `/proc` (the pool idle), \
         each against `/usr/bin/python3 -I -c pass` on the host right before it; pool: {} sandboxes, {} clients calling \
         `pass` for {:.0} s{}\n",
        plan.runs,
        plan.sandboxes,
        plan.sandboxes * 2,
        plan.throughput_seconds,
        if plan.smoke { " (smoke run: figures not to be quoted)" } else { "" }
    );
    let column = |f: fn(&Split) -> f64| results.sandbox.iter().map(f).collect::<Vec<_>>();
    let total = column(|s| s.total_ms);
    let median_total = quantile(&total, 0.5);
    let median_python = quantile(&results.python_ms, 0.5);
    let _ = writeln!(out, "| what | median ms | p95 ms |\n|---|---|---|");
    let _ = writeln!(
        out,
        "| `/usr/bin/python3 -I -c pass` on the host (the floor) | {:.1} | {:.1} |",
        median_python,
        quantile(&results.python_ms, 0.95)
    );
    let _ = writeln!(
        out,
        "| one sandbox run, as the gateway sees it | {:.1} | {:.1} |",
        median_total,
        quantile(&total, 0.95)
    );
    let rows: [(&str, Part); 5] = [
        ("… setup: bundle, `/out` mount, cgroup", |s| s.setup_ms),
        ("… gVisor's boot up to the interpreter's exec", |s| s.boot_ms),
        ("… Python's start up to the script's first line", |s| s.python_ms),
        ("… the rest of `runsc run` (host side: gofer, sentry start, teardown)", |s| {
            s.run_ms - s.boot_ms - s.python_ms
        }),
        ("… cleanup: kill, runsc state, cgroup, mount, bundle", |s| s.cleanup_ms),
    ];
    for (name, f) in rows {
        let values = column(f);
        let _ = writeln!(out, "| {name} | {:.1} | {:.1} |", quantile(&values, 0.5), quantile(&values, 0.95));
    }
    let _ = writeln!(
        out,
        "\nCold start: **{:.1}× the floor** (median over median, same run). With the pool full: **{:.1} runs/s** \
         ({} runs in {:.1} s, {} failed).",
        median_total / median_python,
        results.pool_runs as f64 / results.pool_seconds.max(f64::EPSILON),
        results.pool_runs,
        results.pool_seconds,
        results.pool_failed
    );
    let _ = writeln!(
        out,
        "Most of a cold start is runsc's own work on the host around the sandbox (starting the gofer and the \
         sentry, then tearing them down), not the worker's (setup and cleanup) nor gVisor's boot; Python's own \
         start inside gVisor is several times its start on the host (its imports go through the gofer). The pool's \
         runs/s is bounded by the same runsc work on two cores."
    );
    out
}
