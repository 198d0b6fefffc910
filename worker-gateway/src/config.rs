//! The gateway's settings: embedded defaults, then a TOML file, then `QIRIA_GATEWAY_*`
//! environment variables, then command-line flags (unknown keys are an error).

use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use qiria_identity::VerifierSettings;
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

/// Verification of callers' tokens (the same keys authz uses).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Directory of public keys (PEM, JWK or JWKS), as a mounted secret.
    pub keys_dir: PathBuf,
    /// Accepted `iss` values.
    pub issuers: Vec<String>,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Clock-skew leeway in seconds (at most 60).
    pub leeway_secs: u64,
    /// Longest token lifetime accepted, in seconds.
    pub max_lifetime_secs: u64,
    /// How often the key directory is re-read in case a notification was missed (ms).
    pub poll_interval_ms: u64,
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

impl Default for JwtConfig {
    fn default() -> Self {
        let v = VerifierSettings::default();
        Self {
            keys_dir: PathBuf::from(".stack/keys/public"),
            issuers: v.issuers,
            audiences: v.audiences,
            leeway_secs: v.leeway_secs,
            max_lifetime_secs: v.max_lifetime_secs,
            poll_interval_ms: 2_000,
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
        VerifierSettings {
            issuers: self.jwt.issuers.clone(),
            audiences: self.jwt.audiences.clone(),
            leeway_secs: self.jwt.leeway_secs,
            required_typ: "access".into(),
            max_lifetime_secs: self.jwt.max_lifetime_secs,
            cache_capacity: 10_000,
        }
    }
}
