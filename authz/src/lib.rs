//! Qiria's policy enforcement point.
//!
//! A request flows one way through these modules:
//! `check` receives Envoy's `CheckRequest` → `jwt` verifies the bearer token against the
//! `keys` → `input` builds the OPA-Envoy-compatible input document → `policy` evaluates the
//! Rego bundle → `decision` reads the result → `check` answers Envoy.
//! `server` wires them together; `config` says how; `watch` keeps keys and policies fresh;
//! `metrics` and `audit` report what happened.
//!
//! The issuing side: `token_api` serves OAuth endpoints over `issuer`, which signs with
//! `signing` keys and keeps users and refresh tokens in the `store`.

pub mod audit;
pub mod check;
pub mod cli;
pub mod config;
pub mod decision;
pub mod input;
pub mod issuer;
pub mod jwt;
pub mod keys;
pub mod metrics;
pub mod policy;
pub mod sealing;
pub mod secret_dir;
pub mod server;
pub mod signing;
pub mod store;
pub mod thread_slot;
pub mod throttle;
pub mod token_api;
pub mod watch;
