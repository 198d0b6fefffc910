//! The load benchmark through the real Envoy: the same listener and route, the same load,
//! in one run, for Envoy alone, Envoy's native `jwt_authn` + `rbac`, Envoy + a do-nothing
//! ext_authz server (the floor), and Envoy + authz (one token, thousands of rotating tokens,
//! a denied token, the decision log as shipped and on every decision, and where no cache can
//! have seen the request before: a distinct path per request, a never-seen token per request). Envoy is pinned to core 0, the backend and the load generator share
//! core 1 (`taskset`), as in the anchors' measurements.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use qiria_test_support::process::Process;
use qiria_test_support::tokens::{claims_living, SigningKey, AUDIENCE, ISSUER};
use qiria_test_support::{free_port, workspace_root};
use rsa::traits::PublicKeyParts;

use crate::proc_stats::{cpu_seconds, peak_rss_mib};

/// How long and how hard to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Seconds of maximum-throughput load per configuration.
    pub seconds: u64,
    /// Seconds of fixed-rate load per configuration.
    pub rate_seconds: u64,
    /// Sequential requests for the unloaded latency.
    pub unloaded_requests: u32,
    /// Token counts for the rotation runs.
    pub rotations: Vec<usize>,
    /// Distinct paths `/v1/jobs/1…n` of the distinct-path run (g).
    pub distinct_paths: usize,
    /// Fresh tokens of the never-seen run (f), each sent once: the run ends when they are used
    /// up, so no token is seen twice.
    pub never_seen: usize,
    /// h2load connections and streams per connection.
    pub connections: u32,
    /// Streams per connection.
    pub streams: u32,
    /// After the largest rotation, keep its load this long, sampling authz's RSS (0: no soak).
    pub soak_seconds: u64,
    /// Run only the configurations whose name contains this (all when `None`).
    pub only: Option<String>,
    /// Alternating maximum-load runs of the floor (e) and authz (c) after the table, for the
    /// throughput ratio: on a shared machine one pair minutes apart is one noisy sample.
    pub pairs: usize,
}

impl Plan {
    /// The full run (a few minutes).
    pub fn full() -> Self {
        Self {
            seconds: 10,
            rate_seconds: 5,
            unloaded_requests: 3000,
            rotations: vec![2_000, 100_000],
            distinct_paths: 30_000,
            never_seen: 60_000,
            connections: 4,
            streams: 16,
            soak_seconds: 0,
            only: None,
            pairs: 5,
        }
    }

    /// A run that only shows everything works (CI).
    pub fn smoke() -> Self {
        Self {
            seconds: 1,
            rate_seconds: 1,
            unloaded_requests: 100,
            rotations: vec![200],
            distinct_paths: 1_000,
            never_seen: 500,
            connections: 2,
            streams: 4,
            soak_seconds: 0,
            only: None,
            pairs: 1,
        }
    }
}

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// Envoy.
    pub envoy: PathBuf,
    /// Our authz.
    pub authz: PathBuf,
    /// The do-nothing ext_authz server.
    pub noop: PathBuf,
    /// The rotating-token load generator.
    pub loadgen: PathBuf,
}

/// One configuration's figures.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Configuration name.
    pub name: String,
    /// Requests per second at maximum load.
    pub rps: f64,
    /// Requests answered 2xx / denied (401, 403) / other, at maximum load.
    pub statuses: (u64, u64, u64),
    /// Envoy CPU µs per request.
    pub envoy_cpu_us: f64,
    /// Backend (authz or the floor) CPU µs per request.
    pub backend_cpu_us: Option<f64>,
    /// p50 / p99 latency in ms at the fixed rate.
    pub fixed_rate_ms: Option<(f64, f64)>,
    /// p50 latency in ms with one request at a time.
    pub unloaded_p50_ms: Option<f64>,
    /// Backend peak RSS in MiB.
    pub backend_rss_mib: Option<f64>,
    /// Backend RSS (seconds into the soak, MiB) while the load kept running.
    pub soak_rss: Vec<(u64, f64)>,
}

enum Filters {
    None,
    JwtRbac { cache: bool },
    ExtAuthz,
}

enum Backend {
    None,
    /// The floor; `answer` is noop-authz's `--answer-like-authz` flag, if any.
    Noop {
        answer: Option<&'static str>,
    },
    Authz {
        log: DecisionLogging,
        policy: BenchPolicy,
    },
}

/// The bundle authz decides with.
#[derive(Clone, Copy, PartialEq)]
enum BenchPolicy {
    /// The shipped RBAC (`policies/rego`), the token verified in Rust.
    Shipped,
    /// OPA-Envoy's tutorial policy, unchanged (`authz/tests/fixtures/opa-envoy-primer`): an
    /// HS256 token verified in Rego (`io.jwt.decode_verify`), `glob.match`, `time.now_ns`.
    Primer,
}

/// authz's decision log in a run.
#[derive(Clone, Copy)]
enum DecisionLogging {
    /// Off: the decision alone.
    Off,
    /// As shipped: every denial and a sample of allows.
    Default,
    /// Every decision.
    Every,
}

const AUTHZ: Backend = Backend::Authz { log: DecisionLogging::Off, policy: BenchPolicy::Shipped };

enum Load {
    /// h2load with one token on `path`.
    H2load { path: &'static str },
    /// loadgen rotating through `count` tokens.
    Rotating { count: usize },
    /// h2load over the paths `/v1/jobs/1…count` in turn, one token.
    Paths { count: usize },
    /// loadgen sending each of `count` fresh tokens once.
    NeverSeen { count: usize },
}

struct Setup {
    name: String,
    filters: Filters,
    backend: Backend,
    load: Load,
}

/// What one run of the load benchmark measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResults {
    /// One row per configuration, in order.
    pub rows: Vec<Row>,
    /// Maximum req/s of the floor (e) and of authz (c), measured back to back, pair by pair.
    pub pairs: Vec<(f64, f64)>,
}

/// Runs every configuration, then the alternating (e)/(c) pairs (not in partial runs).
pub fn run(plan: &Plan, bins: &Binaries, work: &Path) -> anyhow::Result<LoadResults> {
    let key = SigningKey::rsa("bench-rs256");
    let keys_dir = work.join("keys");
    std::fs::create_dir_all(&keys_dir)?;
    key.write_public(&keys_dir);
    let ec = SigningKey::ec("bench-es256");
    ec.write_public(&keys_dir);
    let long = claims_living("alice", &["User"], 3600);
    let token = key.sign(&long);

    let setup = |name: &str, filters, backend, load| Setup { name: name.into(), filters, backend, load };
    const JOB: Load = Load::H2load { path: "/v1/jobs/42" };
    let mut setups = vec![
        setup("(a) Envoy alone (direct_response)", Filters::None, Backend::None, JOB),
        setup("(b) Envoy jwt_authn + rbac", Filters::JwtRbac { cache: false }, Backend::None, JOB),
        setup("(b') same, jwt_authn token cache on", Filters::JwtRbac { cache: true }, Backend::None, JOB),
        setup("(e) ext_authz → do-nothing tonic server", Filters::ExtAuthz, Backend::Noop { answer: None }, JOB),
        setup(
            "(e') same, answering with authz's own allow (headers and metadata)",
            Filters::ExtAuthz,
            Backend::Noop { answer: Some("--answer-like-authz") },
            JOB,
        ),
        setup(
            "(e'h) same, answering with authz's headers only",
            Filters::ExtAuthz,
            Backend::Noop { answer: Some("--answer-like-authz=headers") },
            JOB,
        ),
        setup(
            "(e'm) same, answering with authz's metadata only",
            Filters::ExtAuthz,
            Backend::Noop { answer: Some("--answer-like-authz=metadata") },
            JOB,
        ),
        setup("(c) ext_authz → authz, RS256 + RBAC", Filters::ExtAuthz, AUTHZ, JOB),
        setup("(d) authz, denied (403)", Filters::ExtAuthz, AUTHZ, Load::H2load { path: "/v1/admin/jobs" }),
        setup("(c) authz, 1 token via loadgen", Filters::ExtAuthz, AUTHZ, Load::Rotating { count: 1 }),
        setup(
            "(c'd) authz, decision log as shipped (every denial, 1 % of allows)",
            Filters::ExtAuthz,
            Backend::Authz { log: DecisionLogging::Default, policy: BenchPolicy::Shipped },
            JOB,
        ),
        setup(
            "(c'a) authz, every decision logged",
            Filters::ExtAuthz,
            Backend::Authz { log: DecisionLogging::Every, policy: BenchPolicy::Shipped },
            JOB,
        ),
        setup(
            "(p) authz, OPA-Envoy's primer policy (HS256 verified in Rego, glob.match)",
            Filters::ExtAuthz,
            Backend::Authz { log: DecisionLogging::Off, policy: BenchPolicy::Primer },
            Load::H2load { path: "/people/ada" },
        ),
        setup(
            &format!("(g) authz, a distinct path per request (/v1/jobs/1…{})", plan.distinct_paths),
            Filters::ExtAuthz,
            AUTHZ,
            Load::Paths { count: plan.distinct_paths },
        ),
        setup(
            &format!("(f) authz, a never-seen token per request ({} RS256 tokens, each sent once)", plan.never_seen),
            Filters::ExtAuthz,
            AUTHZ,
            Load::NeverSeen { count: plan.never_seen },
        ),
    ];
    for count in &plan.rotations {
        let name = format!("(d) authz, {count} rotating tokens");
        setups.push(setup(&name, Filters::ExtAuthz, AUTHZ, Load::Rotating { count: *count }));
    }

    if let Some(only) = &plan.only {
        setups.retain(|s| s.name.contains(only.as_str()));
        anyhow::ensure!(!setups.is_empty(), "no configuration's name contains {only:?}");
    }

    let jwks = jwks(&key);
    let run = |setup: &Setup, measure, fixed_rate: &mut Option<f64>| {
        run_one(setup, measure, plan, bins, work, &keys_dir, &token, &key, &ec, &jwks, fixed_rate)
    };
    let mut results = LoadResults::default();
    let mut fixed_rate = None;
    for setup in &setups {
        let row = run(setup, Measure::Everything, &mut fixed_rate)?;
        eprintln!("  {}: {:.0} req/s", row.name, row.rps);
        results.rows.push(row);
    }
    if plan.only.is_none() {
        let floor = setup("(e)", Filters::ExtAuthz, Backend::Noop { answer: None }, JOB);
        let ours = setup("(c)", Filters::ExtAuthz, AUTHZ, JOB);
        for _ in 0..plan.pairs {
            let e = run(&floor, Measure::MaxOnly, &mut fixed_rate)?.rps;
            let c = run(&ours, Measure::MaxOnly, &mut fixed_rate)?.rps;
            eprintln!("  pair: (e) {e:.0}, (c) {c:.0} req/s, ratio {:.3}", c / e);
            results.pairs.push((e, c));
        }
    }
    Ok(results)
}

/// How much of a configuration to measure.
#[derive(Clone, Copy, PartialEq)]
enum Measure {
    /// Maximum load, fixed rate and unloaded latency.
    Everything,
    /// Maximum load only.
    MaxOnly,
}

#[allow(clippy::too_many_arguments, reason = "one measured run's settings, passed as they are read")]
fn run_one(
    setup: &Setup,
    measure: Measure,
    plan: &Plan,
    bins: &Binaries,
    work: &Path,
    keys_dir: &Path,
    token: &str,
    key: &SigningKey,
    ec: &SigningKey,
    jwks: &str,
    fixed_rate: &mut Option<f64>,
) -> anyhow::Result<Row> {
    let (port, admin_port, backend_port) = (free_port(), free_port(), free_port());
    let backend = match setup.backend {
        Backend::None => None,
        Backend::Noop { answer } => {
            let mut args = vec![backend_port.to_string()];
            args.extend(answer.map(str::to_string));
            Some(pinned(&bins.noop, "1", &args, &work.join("noop.log"))?)
        }
        Backend::Authz { log, policy } => {
            let (policy_dir, rule) = match policy {
                BenchPolicy::Shipped => (workspace_root().join("policies/rego"), "data.qiria.authz.allow"),
                BenchPolicy::Primer => {
                    (workspace_root().join("authz/tests/fixtures/opa-envoy-primer"), "data.envoy.authz.allow")
                }
            };
            let args: Vec<String> = [
                "serve",
                "--grpc-addr",
                &format!("127.0.0.1:{backend_port}"),
                "--admin-addr",
                &format!("127.0.0.1:{}", free_port()),
                "--policy-dir",
                &policy_dir.display().to_string(),
                "--decision-rule",
                rule,
                "--keys-dir",
                &keys_dir.display().to_string(),
                "--issuer",
                ISSUER,
                "--audience",
                AUDIENCE,
                "--log-level",
                "warn",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let env: &[(&str, &str)] = match log {
                DecisionLogging::Off => &[("QIRIA_AUTHZ_LOG__DECISIONS", "false")],
                DecisionLogging::Default => &[],
                DecisionLogging::Every => &[("QIRIA_AUTHZ_DECISION_LOG__ALLOW_SAMPLE", "1.0")],
            };
            Some(pinned_with_env(&bins.authz, "1", &args, &work.join("authz.log"), env)?)
        }
    };
    let filters = match setup.filters {
        Filters::None => String::new(),
        Filters::ExtAuthz => read_bench_file("ext_authz.filters.yaml")?,
        Filters::JwtRbac { cache } => read_bench_file("jwt_rbac.filters.yaml")?
            .replace("{{ISSUER}}", ISSUER)
            .replace("{{AUDIENCE}}", AUDIENCE)
            .replace("{{JWKS}}", jwks)
            .replace(
                "{{JWT_CACHE}}",
                if cache { "                  jwt_cache_config: { jwt_cache_size: 1000 }" } else { "" },
            ),
    };
    let config = read_bench_file("bench.template.yaml")?
        .replace("{{HTTP_FILTERS}}", filters.trim_end())
        .replace("{{LISTEN_PORT}}", &port.to_string())
        .replace("{{ADMIN_PORT}}", &admin_port.to_string())
        .replace("{{AUTHZ_PORT}}", &backend_port.to_string());
    let config_path = work.join("envoy.yaml");
    std::fs::write(&config_path, config)?;
    let envoy_args = qiria_test_support::envoy::command_line(&config_path, "error");
    let envoy = pinned(&bins.envoy, "0", &envoy_args, &work.join("envoy.log"))?;
    wait_ready(&format!("http://127.0.0.1:{admin_port}/ready"), &envoy).map_err(|e| {
        anyhow::anyhow!(
            "{e}\nconfig {}:\n{}",
            config_path.display(),
            std::fs::read_to_string(&config_path).unwrap_or_default()
        )
    })?;
    if let Some(backend) = &backend {
        std::thread::sleep(Duration::from_millis(300));
        anyhow::ensure!(backend.pid().is_some(), "backend did not start");
    }

    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let primer;
    let token = match setup.backend {
        Backend::Authz { policy: BenchPolicy::Primer, .. } => {
            primer = qiria_test_support::tokens::primer_token("guest", "alice", "secret", 3600);
            primer.as_str()
        }
        _ => token,
    };
    let mut row = Row { name: setup.name.clone(), ..Row::default() };
    match &setup.load {
        Load::H2load { path } => {
            // Warm-up: connections, caches, the policy engine on every thread.
            h2load(&url(path), token, &["-c", "2", "-m", "4", "-n", "2000"], None)?;
            let before = snapshot(&envoy, backend.as_ref());
            let (c, m, d) = (plan.connections.to_string(), plan.streams.to_string(), format!("{}s", plan.seconds));
            let max = h2load(&url(path), token, &["-c", &c, "-m", &m, "-D", &d], None)?;
            let after = snapshot(&envoy, backend.as_ref());
            row.rps = max.rps;
            row.statuses = max.statuses;
            (row.envoy_cpu_us, row.backend_cpu_us) = per_request(before, after, max.done);
            if measure == Measure::MaxOnly {
                return Ok(row);
            }
            // Latency at a fixed rate: half of what Envoy alone sustains.
            let rate = *fixed_rate.get_or_insert(max.rps / 2.0);
            let per_client = ((rate / plan.connections as f64).floor() as u64).max(1).to_string();
            let log = tempfile::NamedTempFile::new()?;
            let rd = format!("{}s", plan.rate_seconds);
            h2load(&url(path), token, &["-c", &c, "-m", "1", "--rps", &per_client, "-D", &rd], Some(log.path()))?;
            row.fixed_rate_ms = percentiles(log.path())?;
            let log = tempfile::NamedTempFile::new()?;
            let n = plan.unloaded_requests.to_string();
            h2load(&url(path), token, &["-c", "1", "-m", "1", "-n", &n], Some(log.path()))?;
            row.unloaded_p50_ms = percentiles(log.path())?.map(|(p50, _)| p50);
        }
        Load::Paths { count } => {
            // h2load takes the scheme, host and port of the first URI only.
            let uris = work.join(format!("paths-{count}.txt"));
            let text: String = (1..=*count).map(|i| format!("{}\n", url(&format!("/v1/jobs/{i}")))).collect();
            std::fs::write(&uris, text)?;
            let file = uris.display().to_string();
            h2load(&url("/v1/jobs/0"), token, &["-c", "2", "-m", "4", "-n", "2000"], None)?;
            let before = snapshot(&envoy, backend.as_ref());
            let (c, m, d) = (plan.connections.to_string(), plan.streams.to_string(), format!("{}s", plan.seconds));
            let max = h2load(&url("/v1/jobs/1"), token, &["-c", &c, "-m", &m, "-D", &d, "-i", &file], None)?;
            let after = snapshot(&envoy, backend.as_ref());
            row.rps = max.rps;
            row.statuses = max.statuses;
            (row.envoy_cpu_us, row.backend_cpu_us) = per_request(before, after, max.done);
        }
        Load::NeverSeen { count } => {
            // Warm-up on tokens of their own (connections, engines), then every measured
            // request carries a token authz has not seen.
            let warm_file = work.join("tokens-warm.txt");
            write_tokens(&warm_file, 200, key, ec)?;
            let fresh = work.join(format!("fresh-{count}.txt"));
            write_fresh_tokens(&fresh, *count, key)?;
            let (c, m) = (plan.connections.to_string(), plan.streams.to_string());
            loadgen(&bins.loadgen, &url("/v1/jobs/42"), &warm_file, &c, &m, "1", false)?;
            let before = snapshot(&envoy, backend.as_ref());
            let result = loadgen(&bins.loadgen, &url("/v1/jobs/42"), &fresh, &c, &m, "120", true)?;
            let after = snapshot(&envoy, backend.as_ref());
            row_from_loadgen(&mut row, &result, before, after);
        }
        Load::Rotating { count } => {
            let tokens_file = work.join(format!("tokens-{count}.txt"));
            write_tokens(&tokens_file, *count, key, ec)?;
            let (c, m) = (plan.connections.to_string(), plan.streams.to_string());
            // Warm-up fills the caches with every token once (bounded by the token count).
            let warm = (*count as f64 / 2_000.0).clamp(1.0, 60.0).to_string();
            loadgen(&bins.loadgen, &url("/v1/jobs/42"), &tokens_file, &c, &m, &warm, false)?;
            let before = snapshot(&envoy, backend.as_ref());
            let seconds = plan.seconds.to_string();
            let result = loadgen(&bins.loadgen, &url("/v1/jobs/42"), &tokens_file, &c, &m, &seconds, false)?;
            let after = snapshot(&envoy, backend.as_ref());
            row_from_loadgen(&mut row, &result, before, after);
            let largest = plan.rotations.iter().max() == Some(count);
            if let (true, Some(pid)) = (largest && plan.soak_seconds > 0, backend.as_ref().and_then(|b| b.pid())) {
                row.soak_rss = soak(&bins.loadgen, &url("/v1/jobs/42"), &tokens_file, &c, &m, plan.soak_seconds, pid)?;
            }
        }
    }
    row.backend_rss_mib = backend.as_ref().and_then(|b| b.pid()).and_then(peak_rss_mib);
    Ok(row)
}

/// Runs the rotating load for `seconds` more, sampling the backend's RSS every 15 s.
fn soak(
    bin: &Path,
    url: &str,
    tokens: &Path,
    c: &str,
    m: &str,
    seconds: u64,
    pid: u32,
) -> anyhow::Result<Vec<(u64, f64)>> {
    let mut load = Command::new("taskset")
        .args(["-c", "1"])
        .arg(bin)
        .args([
            url,
            &tokens.display().to_string(),
            "--connections",
            c,
            "--streams",
            m,
            "--seconds",
            &seconds.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let started = std::time::Instant::now();
    let mut samples = Vec::new();
    while load.try_wait()?.is_none() {
        if let Some(rss) = crate::proc_stats::rss_mib(pid) {
            samples.push((started.elapsed().as_secs(), rss));
        }
        std::thread::sleep(Duration::from_secs(15));
    }
    Ok(samples)
}

fn read_bench_file(name: &str) -> anyhow::Result<String> {
    let path = workspace_root().join("benches/envoy").join(name);
    std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Starts `program` pinned to `cpus` with `taskset`.
fn pinned(program: &Path, cpus: &str, args: &[String], log: &Path) -> anyhow::Result<Process> {
    pinned_with_env(program, cpus, args, log, &[])
}

fn pinned_with_env(
    program: &Path,
    cpus: &str,
    args: &[String],
    log: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<Process> {
    let mut all = vec!["-c".to_string(), cpus.to_string(), program.display().to_string()];
    all.extend(args.iter().cloned());
    Ok(Process::spawn_with_env(&program.display().to_string(), Path::new("taskset"), &all, log, env)?)
}

fn wait_ready(url: &str, envoy: &Process) -> anyhow::Result<()> {
    for _ in 0..300 {
        if Command::new("curl").args(["-fs", "-o", "/dev/null", url]).status().is_ok_and(|s| s.success()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("Envoy never became ready:\n{}", envoy.output().lines().take(3).collect::<Vec<_>>().join("\n"))
}

type Snapshot = (Option<f64>, Option<f64>);

fn snapshot(envoy: &Process, backend: Option<&Process>) -> Snapshot {
    (envoy.pid().and_then(cpu_seconds), backend.and_then(|b| b.pid()).and_then(cpu_seconds))
}

fn per_request(before: Snapshot, after: Snapshot, requests: u64) -> (f64, Option<f64>) {
    let per = |b: Option<f64>, a: Option<f64>| match (b, a) {
        (Some(b), Some(a)) if requests > 0 => Some((a - b) * 1e6 / requests as f64),
        _ => None,
    };
    (per(before.0, after.0).unwrap_or(f64::NAN), per(before.1, after.1))
}

struct H2loadResult {
    rps: f64,
    done: u64,
    statuses: (u64, u64, u64),
}

/// Runs h2load (h2c) on core 1 and reads its summary.
fn h2load(url: &str, token: &str, args: &[&str], log: Option<&Path>) -> anyhow::Result<H2loadResult> {
    let mut command = Command::new("taskset");
    command.args(["-c", "1", "h2load", "-H", &format!("authorization: Bearer {token}")]).args(args).arg(url);
    if let Some(log) = log {
        command.arg("--log-file").arg(log);
    }
    let output = command.output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "h2load failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    let number_after = |prefix: &str, index: usize| -> f64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(index))
            .and_then(|v| v.trim_end_matches(',').parse().ok())
            .unwrap_or(0.0)
    };
    // "finished in 1.00s, 12345.67 req/s, 1.23MB/s"
    let rps = number_after("finished in", 3);
    // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout"
    let done = number_after("requests:", 5) as u64;
    // "status codes: 100 2xx, 0 3xx, 0 4xx, 0 5xx"
    let s2 = number_after("status codes:", 2) as u64;
    let s4 = number_after("status codes:", 6) as u64;
    let s5 = number_after("status codes:", 8) as u64;
    Ok(H2loadResult { rps, done, statuses: (s2, s4, s5) })
}

/// p50 and p99 (ms) of an h2load `--log-file` (third column: µs).
fn percentiles(log: &Path) -> anyhow::Result<Option<(f64, f64)>> {
    let mut durations: Vec<u64> = std::fs::read_to_string(log)?
        .lines()
        .filter_map(|l| l.split('\t').nth(2).and_then(|d| d.trim().parse().ok()))
        .collect();
    if durations.is_empty() {
        return Ok(None);
    }
    durations.sort_unstable();
    let at = |q: f64| durations[((durations.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Ok(Some((at(0.5), at(0.99))))
}

/// A row's load figures from one loadgen run and the CPU snapshots around it.
fn row_from_loadgen(row: &mut Row, result: &serde_json::Value, before: Snapshot, after: Snapshot) {
    let count = |field: &str| result[field].as_u64().unwrap_or(0);
    row.rps = result["rps"].as_f64().unwrap_or(0.0);
    row.statuses = (count("ok"), count("denied"), count("other") + count("errors"));
    (row.envoy_cpu_us, row.backend_cpu_us) = per_request(before, after, count("requests"));
}

fn loadgen(
    bin: &Path,
    url: &str,
    tokens: &Path,
    c: &str,
    m: &str,
    seconds: &str,
    once: bool,
) -> anyhow::Result<serde_json::Value> {
    let output = Command::new("taskset")
        .args(["-c", "1"])
        .arg(bin)
        .args([url, &tokens.display().to_string(), "--connections", c, "--streams", m, "--seconds", seconds])
        .args(once.then_some("--once"))
        .output()?;
    anyhow::ensure!(output.status.success(), "loadgen failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// `count` distinct valid tokens: RS256 up to 10,000 (RSA signing is slow), ES256 beyond.
fn write_tokens(path: &Path, count: usize, rsa: &SigningKey, ec: &SigningKey) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    write_signed(path, if count <= 10_000 { rsa } else { ec }, "user", count)
}

/// `count` distinct RS256 tokens (the algorithm of the verification the issue prices), minted
/// for this run: none of them has been sent before.
fn write_fresh_tokens(path: &Path, count: usize, rsa: &SigningKey) -> anyhow::Result<()> {
    write_signed(path, rsa, "fresh", count)
}

/// `count` tokens of subjects `{prefix}-0…`, one per line, an hour to live.
fn write_signed(path: &Path, signer: &SigningKey, prefix: &str, count: usize) -> anyhow::Result<()> {
    let all: Vec<serde_json::Value> =
        (0..count).map(|i| claims_living(&format!("{prefix}-{i}"), &["User"], 3600)).collect();
    let mut text = String::with_capacity(count * 700);
    for token in signer.sign_all(&all) {
        writeln!(text, "{token}")?;
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// The JWKS of an RSA signing key, for jwt_authn's `local_jwks`.
fn jwks(key: &SigningKey) -> String {
    use rsa::pkcs8::DecodePublicKey;
    let public = rsa::RsaPublicKey::from_public_key_pem(&key.public_pem).expect("public key");
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    serde_json::json!({"keys": [{
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": key.kid,
        "n": b64(public.n().to_bytes_be()), "e": b64(public.e().to_bytes_be()),
    }]})
    .to_string()
}

/// Instructions per decision: callgrind counts only inside `decide`'s decision loop; `mode` is
/// `decide`'s flag (none: one token, one path, a decision cache hit).
pub fn instructions_per_decision(decide: &Path, mode: Option<&str>, n: u64) -> anyhow::Result<f64> {
    let run = |n: u64| -> anyhow::Result<f64> {
        let out = tempfile::NamedTempFile::new()?;
        let mut command = Command::new("valgrind");
        command
            .arg("--tool=callgrind")
            .arg("--toggle-collect=qiria_decisions")
            .arg(format!("--callgrind-out-file={}", out.path().display()))
            .arg(decide)
            .arg(n.to_string());
        command.args(mode);
        let output = command.output()?;
        anyhow::ensure!(output.status.success(), "callgrind failed: {}", String::from_utf8_lossy(&output.stderr));
        let profile = std::fs::read_to_string(out.path())?;
        profile
            .lines()
            .find_map(|l| l.strip_prefix("summary: ").or_else(|| l.strip_prefix("totals: ")))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no instruction total in the callgrind profile"))
    };
    Ok(run(n)? / n as f64)
}
