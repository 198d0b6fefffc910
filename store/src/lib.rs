//! Storage for the services that keep state (the issuer now, the worker-gateway's jobs
//! next): one pool for SQLite or PostgreSQL from a URL and a migrations runner (`db`), and
//! envelope encryption of personal data and secrets at rest (`sealing`).
//!
//! authz never links this crate: the most exposed process holds no database and no sealing key.
// Code that ships: no unwrap()/expect()/panic!() outside tests (a panic on a request path
// takes the request, or the task serving it, down with it). Errors are returned or handled.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod db;
pub mod sealing;

pub use db::DbError;
