//! Qiria's policy enforcement point.
//!
//! A request flows one way through these modules:
//! `check` receives Envoy's `CheckRequest` → `jwt` verifies the bearer token against the
//! `keys` → `input` builds the OPA-Envoy-compatible input document → `policy` evaluates the
//! Rego bundle → `decision` reads the result → `check` answers Envoy.
//! `server` wires them together; `config` says how; `watch` keeps keys and policies fresh;
//! `metrics` and `audit` report what happened.

pub mod audit;
pub mod check;
pub mod cli;
pub mod config;
pub mod decision;
pub mod input;
pub mod jwt;
pub mod keys;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod watch;
