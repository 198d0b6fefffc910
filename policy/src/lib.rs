//! Rego policies for every Qiria service that decides: the bundle (load, compile, its own
//! tests, evaluation bounded by CPU, panics contained: `bundle`), the live bundle and its hot
//! reload (`live`), the OPA-Envoy-shaped input document policies read (`input`), and the
//! OPA builtins regorus lacks (`io.jwt.*`, `crypto.*`: `builtins`), and what a bundle declares
//! its decisions read (`decision_key`).
//!
//! Plain Rego in, `regorus::Value` out: nothing here knows Envoy, gRPC or HTTP servers.
// Code that ships: no unwrap()/expect()/panic!() outside tests (a panic on a request path
// takes the request, or the task serving it, down with it). Errors are returned or handled.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod builtins;
mod bundle;
mod calls;
mod cpu;
mod decision_key;
pub mod input;
mod live;
mod service;

pub use builtins::opa_builtins;
pub use bundle::{dir_fingerprint, BundleOptions, EvalCounters, HostBuiltin, PolicyBundle, PolicyError, TestResult};
pub use decision_key::{DecisionKey, DecisionKeyError, KeyedClaim};
pub use live::{LivePolicy, Reload};
pub use regorus::Value;
pub use service::{allows, CallerPolicyConfig};
