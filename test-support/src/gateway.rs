//! The real `worker-gateway` binary as a process, on free loopback ports, its job store in a
//! directory of the test's, its settings in a TOML file there (tests add sections, e.g. a
//! `[kestra]` pointing at the Kestra double). It can be killed and started again on the same
//! ports and store, as a crashed pod is.

use std::path::{Path, PathBuf};

use crate::process::Process;
use crate::tokens::{AUDIENCE, ISSUER};
use crate::{binary, free_port};

/// A running gateway.
pub struct Gateway {
    /// The job API (gRPC).
    pub grpc_port: u16,
    /// `/metrics`, `/health`.
    pub admin_port: u16,
    process: Process,
    config: PathBuf,
    log: PathBuf,
}

impl Gateway {
    /// Starts `worker-gateway serve` verifying tokens against `keys_dir`, deciding with the
    /// policy in `policy_dir`, its SQLite store in `dir` unless `extra_toml` says otherwise,
    /// and waits until `/health` says it serves.
    pub async fn start(dir: &Path, keys_dir: &Path, policy_dir: &Path, extra_toml: &str) -> Self {
        let (grpc_port, admin_port) = (free_port(), free_port());
        let config = dir.join("gateway.toml");
        let has_store = extra_toml.lines().any(|l| l.trim() == "[store]");
        let store = if has_store {
            String::new()
        } else {
            format!("[store]\ndatabase_url = \"sqlite://{}\"\n", dir.join("jobs.db").display())
        };
        let toml = format!(
            "[server]\ngrpc_addr = \"127.0.0.1:{grpc_port}\"\nadmin_addr = \"127.0.0.1:{admin_port}\"\n\
             [jwt]\nkeys_dir = \"{}\"\nissuers = [\"{ISSUER}\"]\naudiences = [\"{AUDIENCE}\"]\n\
             [policy]\ndir = \"{}\"\n{store}{extra_toml}\n",
            keys_dir.display(),
            policy_dir.display(),
        );
        std::fs::write(&config, toml).expect("write gateway config");
        let log = dir.join("gateway.log");
        let process = Self::spawn(&config, &log);
        let gateway = Self { grpc_port, admin_port, process, config, log };
        crate::wait_healthy(&gateway.process, admin_port).await;
        gateway
    }

    fn spawn(config: &Path, log: &Path) -> Process {
        let args = ["serve".to_string(), "--config".to_string(), config.display().to_string()];
        Process::spawn("worker-gateway", &binary("worker-gateway"), &args, log).expect("start gateway")
    }

    /// Kills it (SIGKILL: no shutdown of its own), as a node failure would.
    pub fn kill(&mut self) {
        self.process.stop();
    }

    /// Starts it again with the same config, ports and store; waits until it serves.
    pub async fn restart(&mut self) {
        self.process.stop();
        self.process = Self::spawn(&self.config, &self.log);
        crate::wait_healthy(&self.process, self.admin_port).await;
    }

    /// `http://127.0.0.1:<grpc port>`: straight to the gateway, no Envoy.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Everything the gateway logged.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
