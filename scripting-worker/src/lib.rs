//! Qiria's scripting worker: it runs the scripts the worker-gateway (and only it) hands over,
//! each in a sandbox made for that run and removed after it, and has no database, no other
//! service and no secret a script could reach.
//!
//! A call flows one way: `peer` (who is calling, by certificate) → `service` (validation, a
//! `pool` slot) → a `sandbox` backend (`runsc`: `rootfs` read-only, an `oci` spec, a `cgroup`
//! of its own) → the result. `errors` maps every failure to a gRPC status in one place.

pub mod config;
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
