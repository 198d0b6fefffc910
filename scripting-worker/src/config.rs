//! The worker's settings: embedded defaults, then a TOML file, then `QIRIA_WORKER_*`
//! environment variables, then flags (unknown keys are an error). Every limit has a safe
//! default, so a worker started with no file runs scripts bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use qiria_runtime::config::{ConfigError, LogConfig};
use serde::{Deserialize, Serialize};

pub use crate::sandbox::kubernetes::KubernetesConfig;

/// Everything `scripting-worker serve` needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listening sockets.
    pub server: ServerConfig,
    /// The mutual TLS the gateway is checked by.
    pub tls: TlsConfig,
    /// How many scripts run and wait at once.
    pub pool: PoolConfig,
    /// Where and how sandboxes are made.
    pub sandbox: SandboxConfig,
    /// What one run may use.
    pub limits: RunLimits,
    /// Where sandboxes may connect (nowhere by default).
    pub egress: crate::egress::EgressConfig,
    /// The Kubernetes backend's settings (for `sandbox.backend = "kubernetes"` and
    /// `scripting-worker manifests`).
    pub kubernetes: KubernetesConfig,
    /// Log format and level.
    pub log: LogConfig,
}

/// Listening sockets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The sandbox API (gRPC over mutual TLS).
    pub grpc_addr: SocketAddr,
    /// `/metrics` and `/health` (plain HTTP, no secrets).
    pub admin_addr: SocketAddr,
    /// Connections held open at once on `grpc_addr` (before their TLS handshake too); one
    /// more is closed at accept. Its callers are the gateway's replicas.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: ([127, 0, 0, 1], 9198).into(),
            admin_addr: ([127, 0, 0, 1], 9199).into(),
            max_connections: 64,
        }
    }
}

/// The worker's certificate and who may call it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `ca.crt` (the CA client certificates must chain to), `tls.crt`, `tls.key`: a
    /// `kubernetes.io/tls` secret's names.
    pub dir: PathBuf,
    /// Identities allowed to run scripts: a client certificate's URI SAN (a SPIFFE id) or DNS
    /// SAN must be one of them. Empty refuses everyone.
    pub allowed_clients: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/etc/qiria/scripting-worker/tls"),
            allowed_clients: vec!["spiffe://cluster.local/ns/qiria/sa/worker-gateway".into()],
        }
    }
}

/// The bounded pool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Sandboxes running at once.
    pub sandboxes: usize,
    /// Runs waiting for a sandbox; beyond, `RESOURCE_EXHAUSTED`.
    pub queue: usize,
    /// How long a run may wait in the queue before it is refused (milliseconds).
    pub queue_wait_ms: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self { sandboxes: 2, queue: 8, queue_wait_ms: 30_000 }
    }
}

/// Which backend, and its files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// `runsc` (gVisor, the default) or `bubblewrap` (namespaces and a seccomp filter on the
    /// host's own kernel: weaker, for hosts without gVisor) — both need root for their cgroup
    /// limits and the `/out` mount — or `kubernetes` (a gVisor Job per run, `[kubernetes]`;
    /// the worker needs no privilege, only its Role in the sandbox namespace).
    pub backend: String,
    /// The runsc binary.
    pub runsc: PathBuf,
    /// The bubblewrap binary.
    pub bwrap: PathBuf,
    /// The worker's own directory: the root filesystem it builds, one bundle per live run,
    /// runsc's state. Everything under it but `rootfs/` is removed at start-up.
    pub state_dir: PathBuf,
    /// The host's Python the root filesystem is made from (its stdlib and shared libraries
    /// come with it).
    pub python: PathBuf,
    /// Pure-Python packages scripts may import: host directories (a package or a single
    /// module file), copied into the root filesystem. One with compiled code is refused.
    pub packages: Vec<PathBuf>,
    /// The cgroup (v1) every run's own cgroup is made under, in each of the memory, pids, cpu
    /// and cpuacct hierarchies.
    pub cgroup_parent: String,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            backend: "runsc".into(),
            runsc: PathBuf::from("/usr/bin/runsc"),
            bwrap: PathBuf::from("/usr/bin/bwrap"),
            state_dir: PathBuf::from("/var/lib/qiria-scripting-worker"),
            python: PathBuf::from("/usr/bin/python3"),
            packages: Vec::new(),
            cgroup_parent: "/qiria-scripting-worker".into(),
        }
    }
}

/// What one run may use. The host enforces and reports wall clock, CPU time, memory,
/// processes, output and artifacts; the sandbox's kernel enforces open files, file size and
/// `/tmp` (the script sees the error).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunLimits {
    /// Wall clock, from the sandbox's start (milliseconds).
    pub wall_ms: u64,
    /// CPU time of the whole sandbox (milliseconds).
    pub cpu_ms: u64,
    /// CPU share: hundredths of a core the sandbox may use at once.
    pub cpu_percent: u32,
    /// Memory of the whole sandbox, gVisor's kernel included (bytes).
    pub memory_bytes: u64,
    /// Host threads and processes of the whole sandbox; gVisor's own threads count (below 64
    /// trivial runs crash).
    pub pids: u32,
    /// Open files inside (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Largest file the script may write (`RLIMIT_FSIZE`, bytes).
    pub file_size_bytes: u64,
    /// Size of the writable `/tmp` (bytes).
    pub tmp_bytes: u64,
    /// Size of the writable `/out`, and so the most artifacts a run may leave (bytes).
    pub artifact_bytes: u64,
    /// Most files collected from `/out`.
    pub artifact_files: usize,
    /// Standard output and error kept, each (bytes); beyond, the run is stopped and
    /// `output_truncated` reported.
    pub output_bytes: usize,
    /// Largest script accepted (bytes).
    pub script_bytes: usize,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            wall_ms: 30_000,
            cpu_ms: 10_000,
            cpu_percent: 100,
            memory_bytes: 256 << 20,
            pids: 128,
            open_files: 64,
            file_size_bytes: 16 << 20,
            tmp_bytes: 16 << 20,
            artifact_bytes: 8 << 20,
            artifact_files: 64,
            output_bytes: 1 << 20,
            script_bytes: 64 << 10,
        }
    }
}

impl Config {
    /// Loads defaults < `file` < `QIRIA_WORKER_*` < `overrides`, then checks the values.
    pub fn load(file: Option<&Path>, overrides: Figment) -> Result<Self, ConfigError> {
        let config: Self = qiria_runtime::config::load(file, "QIRIA_WORKER_", overrides)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if !matches!(self.sandbox.backend.as_str(), "runsc" | "bubblewrap" | "kubernetes") {
            return Err(ConfigError::invalid("sandbox.backend", "must be \"runsc\", \"bubblewrap\" or \"kubernetes\""));
        }
        if self.sandbox.backend == "kubernetes" {
            self.kubernetes.validate()?;
            // Sandbox pods have no egress at all (the namespace's NetworkPolicy denies it).
            if !self.egress.allowed_hosts.is_empty() {
                return Err(ConfigError::invalid(
                    "egress.allowed_hosts",
                    "the kubernetes backend has no egress proxy: leave it empty",
                ));
            }
        }
        if self.server.max_connections == 0 {
            return Err(ConfigError::invalid("server.max_connections", "must be at least 1"));
        }
        if self.pool.sandboxes == 0 || self.pool.sandboxes > 64 {
            return Err(ConfigError::invalid("pool.sandboxes", "must be 1..=64"));
        }
        if self.pool.queue > 10_000 {
            return Err(ConfigError::invalid("pool.queue", "must be at most 10000"));
        }
        crate::egress::EgressPolicy::from_config(&self.egress)
            .map_err(|e| ConfigError::invalid("egress.allowed_hosts", e))?;
        // The proxy's socket is `state_dir/runs/run-<32 hex>/egress/proxy.sock`, and a Unix
        // socket's path has at most 107 bytes.
        let socket_path = self.sandbox.state_dir.as_os_str().len() + "/runs/run-/egress/proxy.sock".len() + 32;
        if !self.egress.allowed_hosts.is_empty() && socket_path > 107 {
            return Err(ConfigError::invalid(
                "sandbox.state_dir",
                "is too long for the egress proxy's socket path (107 bytes)",
            ));
        }
        if !(1..=1024).contains(&self.egress.max_connections) {
            return Err(ConfigError::invalid("egress.max_connections", "must be between 1 and 1024"));
        }
        if self.tls.allowed_clients.is_empty() {
            return Err(ConfigError::invalid("tls.allowed_clients", "is empty: no caller could run a script"));
        }
        if !self.sandbox.cgroup_parent.starts_with('/') || self.sandbox.cgroup_parent.contains("..") {
            return Err(ConfigError::invalid("sandbox.cgroup_parent", "must be an absolute cgroup path"));
        }
        // Each limit's range: below the minimum gVisor or Python does not start (64 MiB, 64
        // threads, 16 files), above the maximum it is no longer a limit.
        let checks: [(&'static str, u64, u64, u64); 12] = [
            ("limits.wall_ms", l.wall_ms, 100, 3_600_000),
            ("limits.cpu_ms", l.cpu_ms, 10, 3_600_000),
            ("limits.cpu_percent", u64::from(l.cpu_percent), 1, 6_400),
            ("limits.memory_bytes", l.memory_bytes, 64 << 20, 64 << 30),
            ("limits.pids", u64::from(l.pids), 64, 4_096),
            ("limits.open_files", l.open_files, 16, 65_536),
            ("limits.file_size_bytes", l.file_size_bytes, 1, 16 << 30),
            ("limits.tmp_bytes", l.tmp_bytes, 4_096, 16 << 30),
            ("limits.artifact_bytes", l.artifact_bytes, 4_096, 1 << 30),
            ("limits.artifact_files", l.artifact_files as u64, 1, 10_000),
            ("limits.output_bytes", l.output_bytes as u64, 1_024, 64 << 20),
            ("limits.script_bytes", l.script_bytes as u64, 1, 1 << 20),
        ];
        for (field, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::invalid(field, format!("must be between {min} and {max}")));
            }
        }
        Ok(())
    }
}
