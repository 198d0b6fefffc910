//! Storage for the services that keep state (the issuer now, the worker-gateway's jobs
//! next): one pool for SQLite or PostgreSQL from a URL and a migrations runner (`db`), and
//! envelope encryption of personal data and secrets at rest (`sealing`).
//!
//! authz never links this crate: the most exposed process holds no database and no sealing key.

pub mod db;
pub mod sealing;

pub use db::DbError;
