//! Qiria's token issuer, its own process: the grants (`grants`: password, refresh rotation
//! with reuse detection, revocation), their HTTP endpoints (`token_api`), the admin API that
//! verifies and authorizes its callers itself (`admin_api`), users and refresh families in the
//! store (`store`), signing keys (`signing`), bounded password hashing (`hashing`), rate limits
//! and lockout (`throttle`), who the client is (`client_addr`), every failure mapped to HTTP
//! in one place (`errors`). `server` wires them; `config` says how; `cli` is the command line.
// Code that ships: no unwrap()/expect()/panic!() outside tests (a panic on a request path
// takes the request, or the task serving it, down with it). Errors are returned or handled.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin_api;
pub mod cli;
pub mod client_addr;
pub mod config;
pub mod errors;
pub mod grants;
pub mod hashing;
pub mod server;
pub mod signing;
pub mod store;
pub mod throttle;
pub mod token_api;
