//! The worker-gateway's cost through the real Envoy: `TriggerFlow` (g1) and `GetJob` (g2) through
//! Envoy (the project's `envoy/envoy.template.yaml`), ext_authz to authz and the job API's route,
//! answered once by the real worker-gateway (its `[kestra]` section at the Kestra contract
//! double, its job store in SQLite) and once by a do-nothing `JobService` (`noop-jobs`) behind
//! the same route. Same load, same run; the ratios gateway / do-nothing are the gateway's own
//! cost. After the run every `TriggerFlow` answered ok must have become exactly one execution
//! in the double.
//!
//! Placement (with `taskset`, when there is one and two cores): Envoy, authz and the double on
//! core 0 — the mesh and Kestra, the same for both backends; the backend under test and the
//! load generator on core 1, as `envoy-bench` places its backend. CPU per call is read from
//! `/proc/<pid>/stat` of each process, so it does not depend on the placement; throughput does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use qiria_test_support::authz::Authz;
use qiria_test_support::envoy::Envoy;
use qiria_test_support::kestra::{mtls_client_builder, KestraOptions, Setup};
use qiria_test_support::process::Process;
use qiria_test_support::tokens::{claims_living, SigningKey, AUDIENCE, ISSUER};
use qiria_test_support::{free_port, workspace_root};
use serde_json::Value;

use crate::proc_stats::cpu_seconds;

/// The heading of this benchmark's section in `RESULTS.md`.
pub const HEADING: &str = "## worker-gateway";

/// `[users]` bounds no benchmark run reaches (calls per minute, unfinished jobs per user).
const UNLIMITED: u32 = 100_000_000;

/// Envoy, authz and the double.
const MESH_CPUS: &str = "0";
/// The backend under test and the load generator.
const BACKEND_CPUS: &str = "1";

/// How long and how hard to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Seconds of maximum load per configuration.
    pub seconds: f64,
    /// Seconds at the fixed rate per configuration.
    pub rate_seconds: f64,
    /// Seconds of load before each configuration's first measurement (connections, caches).
    pub warmup_seconds: f64,
    /// h2 connections of the load generator.
    pub connections: usize,
    /// Concurrent streams per connection at maximum load.
    pub streams: usize,
    /// Also run TriggerFlow against a gateway whose store is on tmpfs: how much of its cost is
    /// the disk (SQLite's fsyncs) rather than the gateway.
    pub tmpfs_row: bool,
    /// How long the driver may take to end every job after a TriggerFlow run.
    pub drain_timeout: Duration,
    /// A short run that only shows everything works.
    pub smoke: bool,
}

impl Plan {
    /// The full run: 10 s per configuration.
    pub fn full() -> Self {
        Self {
            seconds: 10.0,
            rate_seconds: 10.0,
            warmup_seconds: 1.0,
            connections: 4,
            streams: 16,
            tmpfs_row: true,
            drain_timeout: Duration::from_secs(600),
            smoke: false,
        }
    }

    /// A few hundred calls per configuration, a second each.
    pub fn smoke() -> Self {
        Self {
            seconds: 1.0,
            rate_seconds: 1.0,
            warmup_seconds: 0.3,
            connections: 2,
            streams: 4,
            tmpfs_row: false,
            drain_timeout: Duration::from_secs(30),
            smoke: true,
        }
    }
}

/// Where the binaries are: beside the running `gateway-bench`, of the same profile.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// authz.
    pub authz: PathBuf,
    /// The worker-gateway.
    pub gateway: PathBuf,
    /// The Kestra contract double.
    pub double: PathBuf,
    /// The do-nothing JobService.
    pub noop: PathBuf,
    /// The load generator.
    pub loadgen: PathBuf,
}

impl Binaries {
    /// The binaries in `dir`; an error names the missing one and how to build it.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let bin = |name: &str| {
            let path = dir.join(name);
            anyhow::ensure!(
                path.is_file(),
                "no {} (build it with the same profile: cargo build [--release] -p qiria-benches -p qiria-authz \
                 -p qiria-worker-gateway -p qiria-test-support --bins)",
                path.display()
            );
            Ok(path)
        };
        Ok(Self {
            authz: bin("authz")?,
            gateway: bin("worker-gateway")?,
            double: bin("kestra-double")?,
            noop: bin("noop-jobs")?,
            loadgen: bin("jobs-loadgen")?,
        })
    }
}

/// Which call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// (g1) `TriggerFlow`, a new job each.
    Trigger,
    /// (g2) `GetJob` of an existing job.
    Get,
}

impl Call {
    fn arg(self) -> &'static str {
        match self {
            Self::Trigger => "trigger",
            Self::Get => "get",
        }
    }

    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Trigger => "(g1) TriggerFlow",
            Self::Get => "(g2) GetJob",
        }
    }
}

/// What answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `noop-jobs`.
    Noop,
    /// The worker-gateway, its store on disk (the temporary directory's file system).
    Gateway,
    /// The worker-gateway, its store on tmpfs (`/dev/shm`).
    GatewayTmpfs,
}

impl Backend {
    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Noop => "do-nothing JobService",
            Self::Gateway => "worker-gateway",
            Self::GatewayTmpfs => "worker-gateway, store on tmpfs",
        }
    }
}

/// One load run's figures.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Calls answered ok / failed (any gRPC status but OK, transport errors included).
    pub ok: u64,
    /// Failed calls.
    pub failed: u64,
    /// Failed calls by gRPC code.
    pub codes: BTreeMap<String, u64>,
    /// Ok calls per second.
    pub ok_per_s: f64,
    /// How long the load ran.
    pub seconds: f64,
    /// p50 / p99 latency of the ok calls, ms.
    pub p50_ms: Option<f64>,
    /// p99.
    pub p99_ms: Option<f64>,
    /// CPU µs per ok call of the backend, Envoy, authz, the double, during the run.
    pub backend_cpu_us: Option<f64>,
    /// Envoy's.
    pub envoy_cpu_us: Option<f64>,
    /// authz's.
    pub authz_cpu_us: Option<f64>,
    /// The double's.
    pub double_cpu_us: Option<f64>,
}

/// What the driver did after a TriggerFlow run on the gateway, until every job had ended.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    /// Seconds from the end of the load until no job was live.
    pub seconds: f64,
    /// Jobs in the store (all of the one user) before the run and after the drain: the
    /// per-submit live-job count reads the user's jobs, so the cost depends on how many.
    pub stored: (i64, i64),
    /// Gateway CPU µs per job from the start of the load to the end of the drain.
    pub gateway_cpu_us: Option<f64>,
    /// The double's, over the same span.
    pub double_cpu_us: Option<f64>,
}

/// One row: a call on a backend, at maximum load and at the fixed rate.
#[derive(Debug, Clone)]
pub struct Row {
    /// g1 or g2.
    pub call: Call,
    /// Who answered.
    pub backend: Backend,
    /// At maximum load.
    pub max: Run,
    /// The driver's work after the maximum-load run (TriggerFlow on the gateway).
    pub max_drain: Option<Drain>,
    /// The fixed rate (calls/s) and the run at it.
    pub fixed: Option<(f64, Run)>,
}

impl Row {
    /// Calls per second the backend keeps up with: the maximum, or for a TriggerFlow on the
    /// gateway, its jobs over the load and the drain that ended them.
    pub fn sustained_per_s(&self) -> f64 {
        match &self.max_drain {
            Some(drain) if self.max.seconds + drain.seconds > 0.0 => {
                self.max.ok as f64 / (self.max.seconds + drain.seconds)
            }
            _ => self.max.ok_per_s,
        }
    }
}

/// Every job and execution, counted after the run.
#[derive(Debug, Clone, Default)]
pub struct Sanity {
    /// TriggerFlow calls the gateways answered ok (warm-ups included).
    pub triggered: usize,
    /// Distinct job ids among them.
    pub distinct_jobs: usize,
    /// Jobs in the gateways' stores, by state.
    pub stored: BTreeMap<String, i64>,
    /// Executions in the double.
    pub executions: usize,
    /// Jobs with exactly one execution.
    pub exactly_one: usize,
    /// Jobs with none.
    pub none: usize,
    /// Jobs with more than one.
    pub more: usize,
    /// Executions not labelled with any job the gateways answered.
    pub strangers: usize,
}

impl Sanity {
    /// Every ok TriggerFlow became exactly one execution, and nothing else did.
    pub fn holds(&self) -> bool {
        let succeeded = self.stored.get("SUCCESS").copied().unwrap_or(0);
        let stored: i64 = self.stored.values().sum();
        self.triggered > 0
            && self.distinct_jobs == self.triggered
            && self.exactly_one == self.triggered
            && self.none == 0
            && self.more == 0
            && self.strangers == 0
            && self.executions == self.triggered
            && usize::try_from(stored).is_ok_and(|s| s == self.triggered)
            && usize::try_from(succeeded).is_ok_and(|s| s == self.triggered)
    }
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Results {
    /// The rows, in table order.
    pub rows: Vec<Row>,
    /// The exactly-once count.
    pub sanity: Sanity,
    /// Whether processes were pinned.
    pub pinned: bool,
}

impl Results {
    /// Why these results must not be taken (a failed call, a missing figure, a broken count).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for row in &self.rows {
            let name = format!("{} on {}", row.call.label(), row.backend.label());
            let mut check = |what: &str, run: &Run| {
                if run.failed > 0 {
                    problems.push(format!("{name}, {what}: {} calls failed {:?}", run.failed, run.codes));
                }
                if run.ok == 0 || run.ok_per_s <= 0.0 {
                    problems.push(format!("{name}, {what}: no call answered ok"));
                }
                let figures = [run.p50_ms, run.p99_ms, run.backend_cpu_us, run.envoy_cpu_us, run.authz_cpu_us];
                if figures.iter().any(|f| !f.is_some_and(f64::is_finite)) {
                    problems.push(format!("{name}, {what}: a figure is missing {run:?}"));
                }
            };
            check("maximum load", &row.max);
            match &row.fixed {
                Some((_, run)) => check("fixed rate", run),
                None => problems.push(format!("{name}: no fixed-rate run")),
            }
        }
        if !self.sanity.holds() {
            problems
                .push(format!("TriggerFlow answers and Kestra executions do not match one to one: {:?}", self.sanity));
        }
        problems
    }
}

/// The processes all configurations share: keys, a token, authz, the Kestra double.
struct Shared {
    work: PathBuf,
    keys_dir: PathBuf,
    policy_dir: PathBuf,
    token_file: PathBuf,
    loadgen: PathBuf,
    authz: Authz,
    double: Double,
    pinned: bool,
}

/// A configuration: Envoy in front of one backend.
struct Target {
    backend: Backend,
    envoy: Envoy,
    process: Process,
    /// The gateway's store (`sqlite://…`), for the drain and the count.
    database_url: Option<String>,
    /// Where the ids of its TriggerFlow jobs go.
    ids_file: PathBuf,
}

/// Runs every configuration and the exactly-once count.
pub async fn run(plan: &Plan, bins: &Binaries, work: &Path) -> anyhow::Result<Results> {
    let shared = Shared::start(bins, work).await?;
    // The gateway first: GetJob needs a job it made (the do-nothing service ignores the id, and
    // is given the same one).
    let mut targets = vec![Target::gateway(&shared, bins, Backend::Gateway).await?, Target::noop(&shared, bins).await?];
    if plan.tmpfs_row {
        targets.push(Target::gateway(&shared, bins, Backend::GatewayTmpfs).await?);
    }

    // Maximum load first, for every configuration: the fixed rate is derived from it.
    let mut rows = Vec::new();
    let mut get_target_id = String::new();
    for target in &targets {
        let calls: &[Call] = match target.backend {
            // GetJob reads by primary key: where the store lives does not matter to it.
            Backend::GatewayTmpfs => &[Call::Trigger],
            _ => &[Call::Trigger, Call::Get],
        };
        for &call in calls {
            // Warm-up: connections, token caches, the policy engine, the store's first pages.
            shared.load(target, call, None, plan.warmup_seconds, plan, &get_target_id).await?;
            if call == Call::Trigger && target.database_url.is_some() {
                target.drain(&shared, plan).await?;
                if get_target_id.is_empty() {
                    // GetJob reads a job that exists: the first one this gateway made (ended).
                    get_target_id = first_line(&target.ids_file)?;
                }
            }
            let stored_before = target.stored().await?;
            let before = shared.cpu(target);
            let max = shared.load(target, call, None, plan.seconds, plan, &get_target_id).await?;
            let max_drain = match (call, &target.database_url) {
                (Call::Trigger, Some(_)) => {
                    let ended = Instant::now();
                    target.drain(&shared, plan).await?;
                    let after = shared.cpu(target);
                    Some(Drain {
                        seconds: ended.elapsed().as_secs_f64(),
                        stored: (stored_before, target.stored().await?),
                        gateway_cpu_us: per_call(before.backend, after.backend, max.ok),
                        double_cpu_us: per_call(before.double, after.double, max.ok),
                    })
                }
                _ => None,
            };
            eprintln!(
                "  {} on {}: {:.0} calls/s, {} failed",
                call.label(),
                target.backend.label(),
                max.ok_per_s,
                max.failed
            );
            rows.push(Row { call, backend: target.backend, max, max_drain, fixed: None });
        }
    }

    // The fixed rate: half the lowest sustained rate of the backends, the same for each, so that
    // none is saturated and latencies compare. For TriggerFlow on the gateway the sustained rate
    // counts the driver's drain (jobs / (load + drain)): its maximum is a burst the store takes
    // while the driver falls behind, and at half of that the backlog would grow all along.
    for call in [Call::Trigger, Call::Get] {
        let lowest = rows.iter().filter(|r| r.call == call).map(Row::sustained_per_s).fold(f64::INFINITY, f64::min);
        let rate = (lowest / 2.0).floor().max(1.0);
        for target in &targets {
            let Some(index) = rows.iter().position(|r| r.call == call && r.backend == target.backend) else {
                continue;
            };
            let run = shared.load(target, call, Some(rate), plan.rate_seconds, plan, &get_target_id).await?;
            if call == Call::Trigger && target.database_url.is_some() {
                target.drain(&shared, plan).await?;
            }
            eprintln!(
                "  {} on {} at {rate:.0}/s: p50 {:?} ms, p99 {:?} ms",
                call.label(),
                target.backend.label(),
                run.p50_ms,
                run.p99_ms
            );
            rows[index].fixed = Some((rate, run));
        }
    }

    rows.sort_by_key(|r| (r.call as u8, r.backend as u8));
    let sanity = shared.count(&targets, plan).await?;
    Ok(Results { rows, sanity, pinned: shared.pinned })
}

impl Shared {
    async fn start(bins: &Binaries, work: &Path) -> anyhow::Result<Self> {
        let pinned = pinning();
        let keys_dir = work.join("keys");
        std::fs::create_dir_all(&keys_dir)?;
        let key = SigningKey::rsa("bench-rs256");
        key.write_public(&keys_dir);
        // One token for the whole run (both services cache its verification, as they would a
        // client's), valid for the longest lifetime the verifiers accept.
        let long = claims_living("alice", &["User"], 3600);
        let token_file = work.join("token");
        std::fs::write(&token_file, key.sign(&long))?;
        let policy_dir = workspace_root().join("policies/rego");
        // No decision log line per request, as in envoy-bench: the same for both backends, and
        // it is Envoy's and authz's cost, not the gateway's.
        std::env::set_var("QIRIA_AUTHZ_LOG__DECISIONS", "false");
        let authz = Authz::start(&bins.authz, &policy_dir, &keys_dir, work, &["--log-level", "warn"]).await;
        if pinned {
            pin(authz.pid(), MESH_CPUS)?;
        }
        let double = Double::start(&bins.double, &work.join("kestra"), pinned).await?;
        let loadgen = bins.loadgen.clone();
        Ok(Self { work: work.to_path_buf(), keys_dir, policy_dir, token_file, loadgen, authz, double, pinned })
    }

    fn cpu(&self, target: &Target) -> Cpu {
        let of = |pid: Option<u32>| pid.and_then(cpu_seconds);
        Cpu {
            backend: of(target.process.pid()),
            envoy: of(target.envoy.pid()),
            authz: of(self.authz.pid()),
            double: of(self.double.process.pid()),
        }
    }

    /// One load run through `target`'s Envoy, at maximum load or at `rate` calls/s.
    async fn load(
        &self,
        target: &Target,
        call: Call,
        rate: Option<f64>,
        seconds: f64,
        plan: &Plan,
        job_id: &str,
    ) -> anyhow::Result<Run> {
        let mut command = pinned_command(&self.loadgen, BACKEND_CPUS, self.pinned);
        command
            .arg(target.envoy.url(""))
            .arg("--token-file")
            .arg(&self.token_file)
            .args(["--call", call.arg(), "--connections", &plan.connections.to_string()])
            .args(["--streams", &plan.streams.to_string(), "--seconds", &seconds.to_string()]);
        if let Some(rate) = rate {
            command.args(["--rate", &rate.to_string()]);
        }
        if call == Call::Get {
            anyhow::ensure!(!job_id.is_empty(), "GetJob needs a job: no TriggerFlow answered ok before");
            command.args(["--job-id", job_id]);
        }
        if call == Call::Trigger && target.database_url.is_some() {
            command.arg("--ids-out").arg(&target.ids_file);
        }
        let before = self.cpu(target);
        let output = command.output().await?;
        let after = self.cpu(target);
        anyhow::ensure!(
            output.status.success(),
            "jobs-loadgen failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let v: Value = serde_json::from_slice(&output.stdout).context("jobs-loadgen's answer")?;
        let ok = v["ok"].as_u64().unwrap_or(0);
        let ms = |key: &str| v[key].as_f64().map(|us| us / 1000.0);
        Ok(Run {
            ok,
            failed: v["failed"].as_u64().unwrap_or(0),
            codes: serde_json::from_value(v["codes"].clone()).unwrap_or_default(),
            ok_per_s: v["ok_per_s"].as_f64().unwrap_or(0.0),
            seconds: v["seconds"].as_f64().unwrap_or(0.0),
            p50_ms: ms("p50_us"),
            p99_ms: ms("p99_us"),
            backend_cpu_us: per_call(before.backend, after.backend, ok),
            envoy_cpu_us: per_call(before.envoy, after.envoy, ok),
            authz_cpu_us: per_call(before.authz, after.authz, ok),
            double_cpu_us: per_call(before.double, after.double, ok),
        })
    }

    /// After the last run: every ok TriggerFlow's job against the double's executions.
    async fn count(&self, targets: &[Target], plan: &Plan) -> anyhow::Result<Sanity> {
        let mut sanity = Sanity::default();
        let mut ids = Vec::new();
        for target in targets.iter().filter(|t| t.database_url.is_some()) {
            let text = std::fs::read_to_string(&target.ids_file).unwrap_or_default();
            ids.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
            for (state, n) in target.states().await? {
                *sanity.stored.entry(state).or_default() += n;
            }
        }
        sanity.triggered = ids.len();
        let ids: HashSet<String> = ids.into_iter().collect();
        sanity.distinct_jobs = ids.len();
        // Every job has ended (the drains waited for that), so each has its execution by now;
        // the wait is only for the double's own bookkeeping, and bounded.
        let deadline = Instant::now() + plan.drain_timeout;
        let executions = loop {
            let executions = self.double.executions().await?;
            if executions.len() >= sanity.distinct_jobs || Instant::now() > deadline {
                break executions;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        sanity.executions = executions.len();
        let mut per_job: HashMap<String, usize> = HashMap::new();
        for execution in &executions {
            let job = execution["labels"]
                .as_array()
                .and_then(|labels| labels.iter().find(|l| l["key"] == "qiria-job"))
                .and_then(|l| l["value"].as_str());
            match job {
                Some(job) if ids.contains(job) => *per_job.entry(job.to_string()).or_default() += 1,
                _ => sanity.strangers += 1,
            }
        }
        for id in &ids {
            match per_job.get(id).copied().unwrap_or(0) {
                0 => sanity.none += 1,
                1 => sanity.exactly_one += 1,
                _ => sanity.more += 1,
            }
        }
        Ok(sanity)
    }
}

struct Cpu {
    backend: Option<f64>,
    envoy: Option<f64>,
    authz: Option<f64>,
    double: Option<f64>,
}

fn per_call(before: Option<f64>, after: Option<f64>, calls: u64) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if calls > 0 => Some((a - b) * 1e6 / calls as f64),
        _ => None,
    }
}

impl Target {
    async fn noop(shared: &Shared, bins: &Binaries) -> anyhow::Result<Self> {
        let port = free_port();
        let log = shared.work.join("noop-jobs.log");
        let process = spawn("noop-jobs", &bins.noop, BACKEND_CPUS, shared.pinned, &[port.to_string()], &log)?;
        wait_listening(port, &process).await?;
        let envoy = envoy_to(shared, port).await;
        if shared.pinned {
            pin(envoy.pid(), MESH_CPUS)?;
        }
        let ids_file = shared.work.join("ids-noop.txt");
        Ok(Self { backend: Backend::Noop, envoy, process, database_url: None, ids_file })
    }

    /// The worker-gateway as `qiria_test_support::gateway::Gateway::start` configures it
    /// (that helper finds binaries in the parent of a test's `deps/` directory, not beside a
    /// benchmark binary, and cannot pin), with its `[kestra]` section at the double and the
    /// driver's production defaults. The per-user bounds are lifted (as the issuer's are in
    /// tests): one user drives the whole load here, and a refusal is not the cost being
    /// measured; the limiter and the live-job count still run on every call.
    async fn gateway(shared: &Shared, bins: &Binaries, backend: Backend) -> anyhow::Result<Self> {
        let dir = match backend {
            Backend::GatewayTmpfs => {
                let dir = PathBuf::from("/dev/shm").join(format!("qiria-gateway-bench-{}", std::process::id()));
                std::fs::create_dir_all(&dir)?;
                dir
            }
            _ => shared.work.join("gateway"),
        };
        std::fs::create_dir_all(&dir)?;
        let (grpc_port, admin_port) = (free_port(), free_port());
        let database_url = format!("sqlite://{}", dir.join("jobs.db").display());
        let toml = format!(
            "[server]\ngrpc_addr = \"127.0.0.1:{grpc_port}\"\nadmin_addr = \"127.0.0.1:{admin_port}\"\n\
             [jwt]\nkeys_dir = \"{}\"\nissuers = [\"{ISSUER}\"]\naudiences = [\"{AUDIENCE}\"]\n\
             [policy]\ndir = \"{}\"\n[store]\ndatabase_url = \"{database_url}\"\n\
             [users]\nrequests_per_minute = {UNLIMITED}\nlive_jobs = {UNLIMITED}\n\
             [kestra]\nurl = \"{}\"\ntls_dir = \"{}\"\ncredential_dir = \"{}\"\n",
            shared.keys_dir.display(),
            shared.policy_dir.display(),
            shared.double.url,
            shared.double.tls_dir.display(),
            shared.double.credential_dir.display(),
        );
        let config = dir.join("gateway.toml");
        std::fs::write(&config, toml)?;
        let name = if backend == Backend::GatewayTmpfs { "gateway-tmpfs" } else { "gateway" };
        let log = shared.work.join(format!("{name}.log"));
        let args = ["serve".to_string(), "--config".to_string(), config.display().to_string()];
        let process = spawn("worker-gateway", &bins.gateway, BACKEND_CPUS, shared.pinned, &args, &log)?;
        qiria_test_support::wait_healthy(&process, admin_port).await;
        let envoy = envoy_to(shared, grpc_port).await;
        if shared.pinned {
            pin(envoy.pid(), MESH_CPUS)?;
        }
        let ids_file = shared.work.join(format!("ids-{name}.txt"));
        Ok(Self { backend, envoy, process, database_url: Some(database_url), ids_file })
    }

    /// Waits until the driver has ended every job (none QUEUED or RUNNING in the store).
    async fn drain(&self, shared: &Shared, plan: &Plan) -> anyhow::Result<()> {
        let deadline = Instant::now() + plan.drain_timeout;
        loop {
            let states = self.states().await?;
            let live: i64 = ["QUEUED", "RUNNING"].iter().filter_map(|s| states.get(*s)).sum();
            if live == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} jobs still live {:?} after {:?}; double:\n{}",
                live,
                states,
                plan.drain_timeout,
                tail(&shared.double.process.output(), 10)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Jobs in the gateway's store (0 for the do-nothing service).
    async fn stored(&self) -> anyhow::Result<i64> {
        Ok(self.states().await?.values().sum())
    }

    /// Jobs in the gateway's store by state, read straight from its SQLite file (read-only:
    /// the job API has no count, and paging through every job would load the gateway).
    async fn states(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        use sqlx::Connection as _;
        let Some(url) = &self.database_url else { return Ok(BTreeMap::new()) };
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?.read_only(true);
        let mut connection = sqlx::sqlite::SqliteConnection::connect_with(&options).await?;
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetch_all(&mut connection).await?;
        connection.close().await?;
        Ok(rows.into_iter().collect())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.backend == Backend::GatewayTmpfs {
            self.process.stop();
            if let Some(dir) = self.database_url.as_deref().and_then(|u| u.strip_prefix("sqlite://")) {
                if let Some(dir) = Path::new(dir).parent() {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
    }
}

/// Envoy with the project's template, its job API route to `backend_port`.
async fn envoy_to(shared: &Shared, backend_port: u16) -> Envoy {
    // The template's catch-all route needs an upstream; nothing here calls it.
    Envoy::start_with_gateway(shared.authz.grpc_port, free_port(), None, Some(backend_port)).await
}

/// The Kestra contract double, started as `KestraDouble::start` does (PKI and config by
/// `Setup::write`, the gateway's secrets by `write_client`), but from beside this binary and
/// pinned: `KestraDouble::start` looks for it where tests' binaries are.
struct Double {
    process: Process,
    url: String,
    authorization: String,
    client: reqwest::Client,
    tls_dir: PathBuf,
    credential_dir: PathBuf,
}

impl Double {
    async fn start(bin: &Path, dir: &Path, pinned: bool) -> anyhow::Result<Self> {
        let port = free_port();
        // Every execution kept (the default drops the oldest beyond 10,000): the count after
        // the run must see them all.
        let options = KestraOptions { max_executions: 10_000_000, ..KestraOptions::default() };
        let setup = Setup::write(dir, &format!("127.0.0.1:{port}"), options);
        let (tls_dir, credential_dir) = (dir.join("gateway-tls"), dir.join("gateway-credential"));
        setup.write_client(&tls_dir, &credential_dir)?;
        let args = ["--config".to_string(), setup.config.display().to_string()];
        let process = spawn("kestra-double", bin, MESH_CPUS, pinned, &args, &dir.join("kestra-double.log"))?;
        let client = mtls_client_builder(&setup.ca_pem, Some((&setup.client_cert_pem, &setup.client_key_pem)))
            .timeout(Duration::from_secs(120))
            .build()?;
        let double = Self {
            process,
            url: format!("https://127.0.0.1:{port}"),
            authorization: setup.credential.authorization(),
            client,
            tls_dir,
            credential_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pong = double.client.get(format!("{}/ping", double.url)).send().await;
            if let Ok(response) = pong {
                if response.status().is_success() && response.text().await.is_ok_and(|t| t == "pong") {
                    return Ok(double);
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "kestra-double did not answer /ping:\n{}",
                double.process.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every execution the double holds, search index or not (as `KestraDouble::executions`).
    async fn executions(&self) -> anyhow::Result<Vec<Value>> {
        let response = self
            .client
            .get(format!("{}/__double/executions", self.url))
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .send()
            .await?;
        anyhow::ensure!(response.status().is_success(), "/__double/executions: {}", response.status());
        Ok(response.json().await?)
    }
}

/// Whether to pin: `taskset` runs and this machine has at least two cores.
fn pinning() -> bool {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let taskset = std::process::Command::new("taskset")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !taskset || cores < 2 {
        eprintln!("  not pinning processes ({cores} cores, taskset {})", if taskset { "found" } else { "missing" });
    }
    taskset && cores >= 2
}

/// Moves every thread of a running process to `cpus` (threads it starts later inherit it).
fn pin(pid: Option<u32>, cpus: &str) -> anyhow::Result<()> {
    let pid = pid.context("no process to pin")?;
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "taskset could not pin {pid} to {cpus}");
    Ok(())
}

/// Starts `program args…`, on `cpus` when pinning.
fn spawn(name: &str, program: &Path, cpus: &str, pinned: bool, args: &[String], log: &Path) -> anyhow::Result<Process> {
    if !pinned {
        return Ok(Process::spawn(name, program, args, log)?);
    }
    let mut all = vec!["-c".to_string(), cpus.to_string(), program.display().to_string()];
    all.extend(args.iter().cloned());
    // taskset execs the program: the process id is the program's.
    Ok(Process::spawn(name, Path::new("taskset"), &all, log)?)
}

fn pinned_command(program: &Path, cpus: &str, pinned: bool) -> tokio::process::Command {
    if pinned {
        let mut command = tokio::process::Command::new("taskset");
        command.args(["-c", cpus]).arg(program);
        command
    } else {
        tokio::process::Command::new(program)
    }
}

async fn wait_listening(port: u16, process: &Process) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nothing listens on {port}:\n{}", process.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn first_line(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    text.lines().next().map(str::to_string).context("no TriggerFlow answered ok in the warm-up")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|v| v.is_finite()).map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "–".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).map(|(a, b)| a / b).filter(|r| r.is_finite())
}

/// The `## worker-gateway` section of `RESULTS.md`.
pub fn render(results: &Results, plan: &Plan, profile: &str) -> String {
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let smoke = if plan.smoke { " (smoke run: too short to quote)" } else { "" };
    let _ = writeln!(out, "{HEADING}{smoke}\n");
    let _ = writeln!(
        out,
        "- date: {}; CPU: {} × {cores} cores; {profile} build",
        crate::report::today(),
        crate::report::cpu_model()
    );
    let _ = writeln!(
        out,
        "- path: `jobs-loadgen` (tonic, h2c) → Envoy 1.40 (`envoy/envoy.template.yaml`: ext_authz to authz, route \
         `/qiria.jobs.v1.JobService/`) → the backend: the worker-gateway (`[kestra]` at the Kestra contract double, \
         driver defaults: poll 1 s, 16 calls in flight; SQLite store, sqlx defaults: rollback journal, \
         `synchronous=FULL`; `[users]` bounds lifted, as one user drives the load, the limiter and the live-job count \
         still run; default JSON info log, audit events included) or `noop-jobs`, a do-nothing JobService \
         answering one fixed job"
    );
    let _ = writeln!(
        out,
        "- calls: (g1) `TriggerFlow` `qiria.demo/hello`, input `name`, no idempotency key (a new job each); (g2) \
         `GetJob` of one existing (ended) job; one `User` token"
    );
    let placement = if results.pinned {
        "Envoy, authz and the double pinned to core 0, the backend and the load generator to core 1 (`taskset`)"
    } else {
        "processes not pinned"
    };
    let _ = writeln!(
        out,
        "- load: {} connections × {} streams for {} s at maximum load; {} connections × 1 stream for {} s at the \
         fixed rate, which is the same for every backend: half the lowest sustained rate for that call (for TriggerFlow \
         on the gateway, jobs / (load + the driver's drain), below); {placement}",
        plan.connections, plan.streams, plan.seconds, plan.connections, plan.rate_seconds
    );
    let _ = writeln!(
        out,
        "- CPU per call: utime+stime from `/proc/<pid>/stat` before and after the maximum-load run, divided by the \
         calls answered ok; a call is ok only with gRPC status 0 (from the trailers)\n"
    );
    let _ = writeln!(
        out,
        "| call | backend | calls/s (max) | ok / failed | backend CPU µs/call | Envoy CPU µs/call | authz CPU µs/call | \
         fixed rate calls/s (achieved) | p50 / p99 ms at fixed rate |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for row in &results.rows {
        let (rate, latency) = match &row.fixed {
            Some((rate, run)) => {
                (format!("{rate:.0} ({:.0})", run.ok_per_s), format!("{} / {}", opt(run.p50_ms, 2), opt(run.p99_ms, 2)))
            }
            None => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} / {} | {} | {} | {} | {rate} | {latency} |",
            row.call.label(),
            row.backend.label(),
            row.max.ok_per_s,
            row.max.ok,
            row.max.failed,
            opt(row.max.backend_cpu_us, 1),
            opt(row.max.envoy_cpu_us, 1),
            opt(row.max.authz_cpu_us, 1),
        );
    }
    let find = |call, backend| results.rows.iter().find(|r| r.call == call && r.backend == backend);
    let _ = writeln!(out, "\n### The gateway's own cost (worker-gateway / do-nothing, same run)\n");
    let _ = writeln!(
        out,
        "| call | backend | calls/s (max) | backend CPU µs/call | p50 at fixed rate | p99 at fixed rate |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for call in [Call::Trigger, Call::Get] {
        let Some(floor) = find(call, Backend::Noop) else { continue };
        for backend in [Backend::Gateway, Backend::GatewayTmpfs] {
            let Some(ours) = find(call, backend) else { continue };
            let fixed =
                |r: &Row, p99: bool| r.fixed.as_ref().and_then(|(_, run)| if p99 { run.p99_ms } else { run.p50_ms });
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                call.label(),
                backend.label(),
                opt(ratio(Some(ours.max.ok_per_s), Some(floor.max.ok_per_s)), 3),
                opt(ratio(ours.max.backend_cpu_us, floor.max.backend_cpu_us), 1),
                opt(ratio(fixed(ours, false), fixed(floor, false)), 2),
                opt(ratio(fixed(ours, true), fixed(floor, true)), 2),
            );
        }
    }
    let drains: Vec<&Row> = results.rows.iter().filter(|r| r.max_drain.is_some()).collect();
    if !drains.is_empty() {
        let _ = writeln!(
            out,
            "\n### What a TriggerFlow costs afterwards (the driver takes each job to Kestra and follows it to its \
             end)\n"
        );
        let _ = writeln!(
            out,
            "| backend | jobs in the max-load run | jobs in the store, before → after | drain after the run, s | \
             sustained jobs/s, load + drain | gateway CPU µs/job, load + drain | gateway CPU µs/job, load only | \
             double CPU µs/job, load + drain |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        for row in drains {
            if let Some(drain) = &row.max_drain {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} → {} | {:.1} | {:.0} | {} | {} | {} |",
                    row.backend.label(),
                    row.max.ok,
                    drain.stored.0,
                    drain.stored.1,
                    drain.seconds,
                    row.sustained_per_s(),
                    opt(drain.gateway_cpu_us, 1),
                    opt(row.max.backend_cpu_us, 1),
                    opt(drain.double_cpu_us, 1),
                );
            }
        }
    }
    let s = &results.sanity;
    let stored: Vec<String> = s.stored.iter().map(|(state, n)| format!("{n} {state}")).collect();
    let _ = writeln!(
        out,
        "\nExactly once, counted after the run: {} TriggerFlow calls answered ok (warm-ups included, {} distinct \
         jobs); the stores hold {}; the double holds {} executions: {} jobs with exactly one, {} with none, {} with \
         more, {} executions of no such job → **{}**",
        s.triggered,
        s.distinct_jobs,
        if stored.is_empty() { "no jobs".to_string() } else { stored.join(", ") },
        s.executions,
        s.exactly_one,
        s.none,
        s.more,
        s.strangers,
        if s.holds() { "one execution per job" } else { "MISMATCH" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete() -> Run {
        Run {
            ok: 100,
            ok_per_s: 100.0,
            seconds: 1.0,
            p50_ms: Some(1.0),
            p99_ms: Some(2.0),
            backend_cpu_us: Some(10.0),
            envoy_cpu_us: Some(10.0),
            authz_cpu_us: Some(10.0),
            ..Run::default()
        }
    }

    fn results(max: Run, fixed: Option<Run>, sanity: Sanity) -> Results {
        let row = Row {
            call: Call::Trigger,
            backend: Backend::Gateway,
            max,
            max_drain: None,
            fixed: fixed.map(|run| (50.0, run)),
        };
        Results { rows: vec![row], sanity, pinned: true }
    }

    fn one_to_one(n: usize) -> Sanity {
        Sanity {
            triggered: n,
            distinct_jobs: n,
            stored: [("SUCCESS".to_string(), n as i64)].into(),
            executions: n,
            exactly_one: n,
            ..Sanity::default()
        }
    }

    #[test]
    fn a_failed_call_a_missing_figure_or_a_broken_count_is_a_problem() {
        assert!(results(complete(), Some(complete()), one_to_one(100)).problems().is_empty());
        let failed = Run { failed: 1, codes: [("ResourceExhausted".to_string(), 1)].into(), ..complete() };
        assert_eq!(results(failed, Some(complete()), one_to_one(100)).problems().len(), 1);
        let no_latency = Run { p99_ms: None, ..complete() };
        assert_eq!(results(complete(), Some(no_latency), one_to_one(100)).problems().len(), 1);
        assert_eq!(results(complete(), None, one_to_one(100)).problems().len(), 1);
        let nothing = Run { ok: 0, ok_per_s: 0.0, p50_ms: None, p99_ms: None, ..complete() };
        assert!(!results(nothing, Some(complete()), one_to_one(100)).problems().is_empty());
        // A second execution of one job, a job without one, or no job at all.
        let twice = Sanity { executions: 101, exactly_one: 99, more: 1, ..one_to_one(100) };
        assert_eq!(results(complete(), Some(complete()), twice).problems().len(), 1);
        let lost = Sanity { executions: 99, exactly_one: 99, none: 1, ..one_to_one(100) };
        assert_eq!(results(complete(), Some(complete()), lost).problems().len(), 1);
        assert_eq!(results(complete(), Some(complete()), Sanity::default()).problems().len(), 1);
        let failed_job =
            Sanity { stored: [("SUCCESS".to_string(), 99), ("FAILED".to_string(), 1)].into(), ..one_to_one(100) };
        assert_eq!(results(complete(), Some(complete()), failed_job).problems().len(), 1);
    }

    #[test]
    fn the_sustained_rate_of_a_trigger_counts_its_drain() {
        let mut row =
            Row { call: Call::Trigger, backend: Backend::Gateway, max: complete(), max_drain: None, fixed: None };
        assert_eq!(row.sustained_per_s(), 100.0);
        row.max_drain = Some(Drain { seconds: 3.0, ..Drain::default() });
        assert_eq!(row.sustained_per_s(), 25.0);
    }
}
