//! The real `scripting-worker` binary as a process (it needs root and the runsc package, as
//! in production), on free loopback ports, with its state directory and its cgroup parent of
//! the test's own — a parent with memory and pids limits of its own, so a sandbox limit that
//! failed to apply still cannot take the machine down. [`Leftovers`] lists everything a run
//! could leave behind, to compare before and after.

use std::path::{Path, PathBuf};

use crate::process::Process;
use crate::tls::TestPki;
use crate::{binary, free_port};

/// The identity the worker admits in these tests (the gateway's, in Istio's form).
pub const GATEWAY_ID: &str = "spiffe://cluster.local/ns/qiria/sa/worker-gateway";
/// An identity from the same CA that the worker must refuse.
pub const OTHER_ID: &str = "spiffe://cluster.local/ns/qiria/sa/reporting-worker";

/// The environment variable planted in the worker's environment: no script may find it.
pub const CANARY_ENV: &str = "QIRIA_TEST_SANDBOX_CANARY";

/// The cgroup v1 controllers the outer cgroup is made in (the worker uses the same four).
const CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "cpuacct"];

/// An outer cgroup in each controller, removed on drop (after whatever is in it is killed).
pub struct OuterCgroup {
    /// Its path under each hierarchy, e.g. `/qiria-test-…`.
    pub path: String,
}

impl OuterCgroup {
    /// Makes it, with `memory_bytes` and `pids` as its limits.
    pub fn new(memory_bytes: u64, pids: u32) -> Self {
        let path = format!("/qiria-test-{}-{}", std::process::id(), rand::random::<u32>());
        for controller in CONTROLLERS {
            std::fs::create_dir_all(format!("/sys/fs/cgroup/{controller}{path}"))
                .expect("make the outer cgroup (root?)");
        }
        std::fs::write(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"), memory_bytes.to_string())
            .expect("outer memory limit");
        std::fs::write(format!("/sys/fs/cgroup/pids{path}/pids.max"), pids.to_string()).expect("outer pids limit");
        Self { path }
    }

    /// The run cgroups under it now, in every controller.
    pub fn children(&self) -> Vec<PathBuf> {
        CONTROLLERS
            .iter()
            .flat_map(|c| std::fs::read_dir(format!("/sys/fs/cgroup/{c}{}", self.path)).into_iter().flatten())
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    }
}

impl Drop for OuterCgroup {
    fn drop(&mut self) {
        for child in self.children() {
            let _ = std::fs::remove_dir(child);
        }
        for controller in CONTROLLERS {
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{controller}{}", self.path));
        }
    }
}

/// Everything of the worker's that outlives a run if cleanup failed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Processes whose command line names the worker's state directory (runsc, its gofer and
    /// sandbox), as `pid cmdline`.
    pub processes: Vec<String>,
    /// Run cgroups under the outer cgroup.
    pub cgroups: Vec<PathBuf>,
    /// Entries in runsc's state directory (containers, lock files).
    pub runsc_state: Vec<String>,
    /// Bundle directories.
    pub bundles: Vec<String>,
    /// Mounts under the state directory.
    pub mounts: Vec<String>,
}

impl Leftovers {
    /// What there is now for a worker with `state_dir` under `outer`.
    pub fn of(state_dir: &Path, outer: &OuterCgroup) -> Self {
        let state = state_dir.display().to_string();
        let mut processes = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&state) && !cmdline.contains("scripting-worker serve") {
                processes.push(format!("{} {cmdline}", entry.file_name().to_string_lossy()));
            }
        }
        let names = |dir: PathBuf| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&state))
            .map(str::to_string)
            .collect();
        Self {
            processes,
            cgroups: outer.children(),
            runsc_state: names(state_dir.join("runsc")),
            bundles: names(state_dir.join("runs")),
            mounts,
        }
    }

    /// Nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A running worker.
pub struct ScriptingWorker {
    /// The sandbox API (gRPC over mutual TLS).
    pub grpc_port: u16,
    /// `/metrics`, `/health`.
    pub admin_port: u16,
    /// Its state directory (root filesystem, bundles, runsc state).
    pub state_dir: PathBuf,
    /// The value of [`CANARY_ENV`] it was started with.
    pub canary: String,
    process: Process,
    config: PathBuf,
    log: PathBuf,
}

impl ScriptingWorker {
    /// Starts `scripting-worker serve` with its TLS files from `pki` (clients must chain to
    /// its CA; only [`GATEWAY_ID`] is admitted), its runs under `outer`, its state in
    /// `state_dir` (kept across tests: the root filesystem is built once), and `extra_toml`
    /// (e.g. `[limits]`); waits until `/health` says it serves.
    pub async fn start(dir: &Path, state_dir: &Path, pki: &TestPki, outer: &OuterCgroup, extra_toml: &str) -> Self {
        Self::start_with_backend(dir, state_dir, pki, outer, "runsc", extra_toml).await
    }

    /// [`ScriptingWorker::start`] with `backend` (`runsc` or `bubblewrap`).
    pub async fn start_with_backend(
        dir: &Path,
        state_dir: &Path,
        pki: &TestPki,
        outer: &OuterCgroup,
        backend: &str,
        extra_toml: &str,
    ) -> Self {
        // The bubblewrap backend runs as uid 65534: the test's directories must be traversable.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod test dir");
        let tls = dir.join("worker-tls");
        std::fs::create_dir_all(&tls).expect("tls dir");
        std::fs::write(tls.join("ca.crt"), &pki.ca_pem).expect("ca");
        std::fs::write(tls.join("tls.crt"), &pki.server_cert_pem).expect("cert");
        std::fs::write(tls.join("tls.key"), &pki.server_key_pem).expect("key");
        let (grpc_port, admin_port) = (free_port(), free_port());
        let config = dir.join("worker.toml");
        let toml = format!(
            "[server]\ngrpc_addr = \"127.0.0.1:{grpc_port}\"\nadmin_addr = \"127.0.0.1:{admin_port}\"\n\
             [tls]\ndir = \"{}\"\nallowed_clients = [\"{GATEWAY_ID}\"]\n\
             [sandbox]\nbackend = \"{backend}\"\nstate_dir = \"{}\"\ncgroup_parent = \"{}\"\n{extra_toml}\n",
            tls.display(),
            state_dir.display(),
            outer.path,
        );
        std::fs::write(&config, toml).expect("write worker config");
        let log = dir.join("worker.log");
        let canary = format!("canary-{}", rand::random::<u64>());
        let process = Self::spawn(&config, &log, &canary);
        let worker = Self { grpc_port, admin_port, state_dir: state_dir.to_path_buf(), canary, process, config, log };
        // The first start builds the root filesystem (a copy of the stdlib): allow for it.
        crate::wait_healthy(&worker.process, admin_port).await;
        worker
    }

    fn spawn(config: &Path, log: &Path, canary: &str) -> Process {
        let args = ["serve".to_string(), "--config".to_string(), config.display().to_string()];
        Process::spawn_with_env("scripting-worker", &binary("scripting-worker"), &args, log, &[(CANARY_ENV, canary)])
            .expect("start scripting-worker")
    }

    /// Kills it with SIGKILL, mid-run or not, as a node failure would.
    pub fn kill(&mut self) {
        self.process.stop();
    }

    /// Starts it again with the same config and state; waits until it serves.
    pub async fn restart(&mut self) {
        self.process.stop();
        self.process = Self::spawn(&self.config, &self.log, &self.canary);
        crate::wait_healthy(&self.process, self.admin_port).await;
    }

    /// `https://localhost:<port>` (the server certificate's name).
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.grpc_port)
    }

    /// A mutual-TLS channel to it, as the client whose certificate and key are given.
    pub async fn channel(&self, pki: &TestPki, cert_pem: &str, key_pem: &str) -> tonic::transport::Channel {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca_pem))
            .identity(Identity::from_pem(cert_pem, key_pem))
            .domain_name("localhost");
        Endpoint::from_shared(self.url()).expect("endpoint").tls_config(tls).expect("tls").connect_lazy()
    }

    /// A gateway's `[scripts]` section calling this worker with the client certificate of
    /// `pki` (written under `dir`), polling fast as tests want.
    pub fn gateway_toml(&self, pki: &TestPki, dir: &Path) -> String {
        format!(
            "[scripts]\nurl = \"{}\"\ntls_dir = \"{}\"\npoll_interval_ms = 100\nrun_timeout_ms = 30000\n",
            self.url(),
            gateway_tls(pki, dir).display()
        )
    }

    /// Its log so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/health`.
    pub async fn health(&self) -> serde_json::Value {
        crate::health(self.admin_port).await
    }
}

/// The gateway's client certificate for the worker (from `pki`), where its `[scripts]`
/// section reads it: `dir/gateway-worker-tls`.
fn gateway_tls(pki: &TestPki, dir: &Path) -> PathBuf {
    let tls = dir.join("gateway-worker-tls");
    std::fs::create_dir_all(&tls).expect("tls dir");
    std::fs::write(tls.join("ca.crt"), &pki.ca_pem).expect("ca");
    std::fs::write(tls.join("tls.crt"), &pki.client_cert_pem).expect("cert");
    std::fs::write(tls.join("tls.key"), &pki.client_key_pem).expect("key");
    tls
}
