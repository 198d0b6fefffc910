//! Qiria's scripting worker: it runs the scripts the worker-gateway (and only it) hands over,
//! each in a sandbox made for that run and removed after it, and has no database, no other
//! service and no secret a script could reach.
//!
//! A call flows one way: `peer` (who is calling, by certificate) → `service` (validation, a
//! `pool` slot) → a `sandbox` backend (on this host: gVisor or bubblewrap over a read-only
//! `rootfs`, a `cgroup` of its own per run, `egress` only through its proxy) → the result.
//! `errors` maps every failure to a gRPC status in one place.

pub mod config;
pub mod egress;
pub mod server;

mod cgroup;
mod errors;
mod metrics;
mod peer;
mod pool;
mod rootfs;
mod sandbox;
mod service;

/// The generated sandbox API (`proto/qiria/sandbox/v1/sandbox.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("qiria.sandbox.v1");
}

/// Builds the sandbox's root filesystem under `out/rootfs` (as the runsc backend does under
/// its state directory) and returns where it is.
pub fn build_rootfs(config: &config::Config, out: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    Ok(rootfs::build(out, &config.sandbox.python, &config.sandbox.packages)?.dir)
}

/// The Kubernetes objects the `kubernetes` backend needs in a cluster before its first run:
/// the sandbox namespace, its deny-all NetworkPolicy and LimitRange, the worker's
/// ServiceAccount, Role and RoleBinding, the `gvisor` RuntimeClass and the admission policy
/// holding every sandbox pod to it.
pub fn kubernetes_manifests(config: &config::Config) -> Vec<serde_json::Value> {
    sandbox::kubernetes::manifests(config)
}

/// The Job and ConfigMap (owned by the Job of uid `job_uid`) the `kubernetes` backend makes
/// for a run `run_id` of `script`.
pub fn kubernetes_run_manifests(
    config: &config::Config,
    run_id: &str,
    job_uid: &str,
    script: &str,
) -> Vec<serde_json::Value> {
    sandbox::kubernetes::run_manifests(config, run_id, job_uid, script)
}
