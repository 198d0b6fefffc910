//! Qiria's policy enforcement point: the Envoy ext_authz v3 decision service, and only that.
//!
//! A request flows one way through these modules:
//! `check` receives Envoy's `CheckRequest` → the bearer token is verified (`qiria_identity`)
//! → `envoy_input` builds the OPA-Envoy input document (`qiria_policy::input`) → the Rego
//! bundle decides (`qiria_policy`) → `decision` reads the result, `decision_cache` may keep it
//! → `check` answers Envoy. `server` wires them together; `config` says how; `metrics` reports
//! what happened; `cli` is the command line.
//!
//! It holds public keys, policies and its own TLS keys: no database, no signing or sealing
//! key, no password hashing (those are the issuer's, in its own process).
// Code that ships: no unwrap()/expect()/panic!() outside tests (a panic on a request path
// takes the request, or the task serving it, down with it). Errors are returned or handled.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod check;
pub mod cli;
pub mod config;
pub mod decision;
pub mod decision_cache;
pub mod decision_log;
pub mod envoy_input;
pub mod metrics;
pub mod server;
