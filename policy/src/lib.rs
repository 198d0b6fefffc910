//! Rego policies for every Qiria service that decides: the bundle (load, compile, its own
//! tests, evaluation bounded by CPU, panics contained: `bundle`), the live bundle and its hot
//! reload (`live`), the OPA-Envoy-shaped input document policies read (`input`), and the
//! OPA builtins regorus lacks (`io.jwt.*`, `crypto.*`: `builtins`).
//!
//! Plain Rego in, `regorus::Value` out: nothing here knows Envoy, gRPC or HTTP servers.

mod builtins;
mod bundle;
mod calls;
mod cpu;
pub mod input;
mod live;
mod service;

pub use builtins::opa_builtins;
pub use bundle::{dir_fingerprint, BundleOptions, EvalCounters, HostBuiltin, PolicyBundle, PolicyError, TestResult};
pub use live::{LivePolicy, Reload};
pub use regorus::Value;
pub use service::{allows, CallerPolicyConfig};
