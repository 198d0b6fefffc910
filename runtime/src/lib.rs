//! What every Qiria service needs and none of them owns: strict layered configuration
//! (`config`), logging setup (`logging`), the admin server with `/metrics` and `/health`
//! (`admin`, `health`), typed audit events and their sink (`audit`), the tamper-evident trail they are
//! chained into (`audit_trail`), graceful shutdown
//! (`shutdown`), one clock (`clock`), mounted-secret directories (`secret_dir`) and keeping
//! their consumers fresh (`watch`), accepted connections without Nagle (`net`), bounded per-key rate limits
//! (`rate`), and per-thread slots for striped data (`thread_slot`).
//!
//! Nothing here knows a service's domain: no tokens, policies, users or Envoy types.
// Code that ships: no unwrap()/expect()/panic!() outside tests (a panic on a request path
// takes the request, or the task serving it, down with it). Errors are returned or handled.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin;
pub mod audit;
pub mod audit_trail;
pub mod clock;
pub mod config;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod rate;
pub mod secret_dir;
pub mod shutdown;
pub mod siem;
pub mod telemetry;
pub mod thread_slot;
pub mod watch;
