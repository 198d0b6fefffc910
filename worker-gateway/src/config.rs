//! The gateway's settings: embedded defaults, then a TOML file, then `QIRIA_GATEWAY_*`
//! environment variables, then command-line flags (unknown keys are an error).

use std::net::SocketAddr;

use figment::Figment;
use qiria_identity::{JwtConfig, VerifierSettings};
use qiria_runtime::config::{ConfigError, LogConfig};
use serde::{Deserialize, Serialize};

use crate::validate::Limits;

/// Everything `worker-gateway serve` needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listening sockets.
    pub server: ServerConfig,
    /// How callers' tokens are verified.
    pub jwt: JwtConfig,
    /// The job store.
    pub store: StoreConfig,
    /// Field bounds.
    pub limits: Limits,
    /// Per-user bounds.
    pub users: UserLimits,
    /// Log format and level.
    pub log: LogConfig,
}

/// Listening sockets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The job API (gRPC).
    pub grpc_addr: SocketAddr,
    /// `/metrics` and `/health`.
    pub admin_addr: SocketAddr,
}

/// The job store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://FILE` (created on first run) or `postgres://…`.
    pub database_url: String,
}

/// Per-user bounds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UserLimits {
    /// `WatchJob` streams one user may hold open.
    pub watch_streams: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 9196)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9197)),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { database_url: "sqlite://.stack/jobs.db".into() }
    }
}

impl Default for UserLimits {
    fn default() -> Self {
        Self { watch_streams: 8 }
    }
}

impl Config {
    /// Layers defaults, the optional TOML file, `QIRIA_GATEWAY_*` env vars, then `overrides`.
    pub fn load(file: Option<&std::path::Path>, overrides: Figment) -> Result<Self, ConfigError> {
        let config: Config = qiria_runtime::config::load(file, "QIRIA_GATEWAY_", overrides)?;
        if let Some((field, reason)) = config.verifier().invalid() {
            return Err(ConfigError::invalid(field, reason));
        }
        if config.users.watch_streams == 0 {
            return Err(ConfigError::invalid("users.watch_streams", "must be at least 1"));
        }
        Ok(config)
    }

    /// How callers' tokens are verified.
    pub fn verifier(&self) -> VerifierSettings {
        self.jwt.verifier(10_000)
    }
}
