//! The real `worker-gateway` binary as a process, on free loopback ports, its job store in a
//! directory of the test's.

use std::path::Path;

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
    log: std::path::PathBuf,
}

impl Gateway {
    /// Starts `worker-gateway serve` verifying tokens against `keys_dir`, its SQLite store in
    /// `dir` (or `database_url`), and waits until `/health` says it serves.
    pub async fn start(dir: &Path, keys_dir: &Path, database_url: Option<&str>) -> Self {
        let (grpc_port, admin_port) = (free_port(), free_port());
        let sqlite = format!("sqlite://{}", dir.join("jobs.db").display());
        let args: Vec<String> = [
            "serve",
            "--grpc-addr",
            &format!("127.0.0.1:{grpc_port}"),
            "--admin-addr",
            &format!("127.0.0.1:{admin_port}"),
            "--keys-dir",
            &keys_dir.display().to_string(),
            "--issuer",
            ISSUER,
            "--audience",
            AUDIENCE,
            "--database-url",
            database_url.unwrap_or(&sqlite),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = dir.join("gateway.log");
        let process = Process::spawn("worker-gateway", &binary("worker-gateway"), &args, &log).expect("start gateway");
        let gateway = Self { grpc_port, admin_port, process, log };
        crate::wait_healthy(&gateway.process, admin_port).await;
        gateway
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
