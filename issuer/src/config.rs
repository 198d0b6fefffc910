//! The issuer's settings: embedded defaults, then a TOML file, then `QIRIA_ISSUER_*`
//! environment variables, then command-line flags (unknown keys are an error).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use qiria_identity::{JwtConfig, VerifierSettings};
use qiria_policy::CallerPolicyConfig;
use qiria_runtime::config::{ConfigError, LogConfig};
use serde::{Deserialize, Serialize};

use crate::grants::IssuerSettings;
use crate::throttle::ThrottleSettings;

/// The longest access token lifetime we issue: they cannot be revoked.
pub const MAX_ACCESS_TTL_SECS: u64 = 3600;

/// Everything `issuer serve` needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listening sockets and who may forward client addresses.
    pub server: ServerConfig,
    /// What issued tokens say and how long they live; the signing keys.
    pub tokens: TokensConfig,
    /// The database and its sealing keys.
    pub store: StoreConfig,
    /// Rate limits, lockout and the password hashing pool.
    pub limits: LimitsConfig,
    /// How the admin API verifies its callers' tokens (the same keys authz uses).
    pub jwt: JwtConfig,
    /// The policy that authorizes admin API calls (the same bundle authz uses).
    pub policy: CallerPolicyConfig,
    /// Log format and level.
    pub log: LogConfig,
}

/// Listening sockets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The public token endpoints (`/v1/auth/*`, `/.well-known/*`).
    pub token_addr: SocketAddr,
    /// The admin API (`/v1/admin/users…`), apart from the public endpoints.
    pub admin_api_addr: SocketAddr,
    /// `/metrics` and `/health`.
    pub admin_addr: SocketAddr,
    /// Peers whose `x-forwarded-for` is believed (CIDRs or addresses); empty: none, the client
    /// is always the connection's peer.
    pub trusted_proxies: Vec<String>,
    /// How many `x-forwarded-for` entries, from the right, trusted proxies appended.
    pub xff_num_trusted_hops: u32,
}

/// Issued tokens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Directory of PKCS#8 private keys (the signing secret); `<kid>.pem` each.
    pub signing_keys_dir: PathBuf,
    /// The kid that signs; unset: the `active` file of the directory, or its only key.
    pub active_kid: Option<String>,
    /// `iss` of issued tokens (defaults to the first of `jwt.issuers`).
    pub issuer: Option<String>,
    /// `aud` of issued tokens (defaults to the first of `jwt.audiences`).
    pub audience: Option<String>,
    /// Access token lifetime in seconds (at most 3600).
    pub access_ttl_secs: u64,
    /// Refresh token lifetime in seconds.
    pub refresh_ttl_secs: u64,
    /// A login's refresh family ends this long after the login, however often refreshed.
    pub family_lifetime_secs: u64,
}

/// The store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://FILE` (created on first run) or `postgres://…`.
    pub database_url: String,
    /// Directory of master keys sealing personal data at rest (`<kid>.key`, 32 bytes base64).
    pub master_keys_dir: PathBuf,
    /// The master kid that seals new rows; unset: the `active` file, or the only key.
    pub active_master_kid: Option<String>,
}

/// Limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Token requests (and, apart, revocations) per client address per minute (IPv6 per /64).
    pub rate_per_ip_per_minute: u32,
    /// Login attempts per username per minute.
    pub rate_per_user_per_minute: u32,
    /// Failed logins after which an account is locked.
    pub lockout_failures: u32,
    /// How long a locked account stays locked, from the moment it locks, in seconds.
    pub lockout_secs: u64,
    /// Password hashing threads; 0: one per core.
    pub hashing_workers: usize,
    /// Hashes that may wait per worker; beyond, `503 temporarily_unavailable` at once.
    pub hashing_queue_per_worker: usize,
    /// Longest a login waits for its hash before `503 temporarily_unavailable` (ms).
    pub hashing_max_wait_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            token_addr: SocketAddr::from(([127, 0, 0, 1], 9193)),
            admin_api_addr: SocketAddr::from(([127, 0, 0, 1], 9194)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9195)),
            trusted_proxies: Vec::new(),
            xff_num_trusted_hops: 1,
        }
    }
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            signing_keys_dir: PathBuf::from(".stack/keys/private"),
            active_kid: None,
            issuer: None,
            audience: None,
            access_ttl_secs: 300,
            refresh_ttl_secs: 8 * 3600,
            family_lifetime_secs: 7 * 24 * 3600,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            database_url: "sqlite://.stack/qiria.db".into(),
            master_keys_dir: PathBuf::from(".stack/master-keys"),
            active_master_kid: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            rate_per_ip_per_minute: 120,
            rate_per_user_per_minute: 20,
            lockout_failures: 5,
            lockout_secs: 300,
            hashing_workers: 0,
            hashing_queue_per_worker: 4,
            hashing_max_wait_ms: 1_000,
        }
    }
}

impl Config {
    /// Layers defaults, the optional TOML file, `QIRIA_ISSUER_*` env vars, then `overrides`.
    pub fn load(file: Option<&std::path::Path>, overrides: Figment) -> Result<Self, ConfigError> {
        let config: Config = qiria_runtime::config::load(file, "QIRIA_ISSUER_", overrides)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| Err(ConfigError::invalid(field, reason));
        let t = &self.tokens;
        if t.access_ttl_secs == 0 || t.access_ttl_secs > MAX_ACCESS_TTL_SECS {
            return invalid("tokens.access_ttl_secs", "must be between 1 and 3600");
        }
        if t.refresh_ttl_secs < t.access_ttl_secs {
            return invalid("tokens.refresh_ttl_secs", "must be at least tokens.access_ttl_secs");
        }
        if t.family_lifetime_secs < t.refresh_ttl_secs {
            return invalid("tokens.family_lifetime_secs", "must be at least tokens.refresh_ttl_secs");
        }
        let l = &self.limits;
        if l.lockout_failures == 0 {
            return invalid("limits.lockout_failures", "must be at least 1");
        }
        if l.rate_per_ip_per_minute == 0 || l.rate_per_user_per_minute == 0 {
            return invalid("limits.rate_per_ip_per_minute", "and limits.rate_per_user_per_minute must be at least 1");
        }
        if l.hashing_max_wait_ms == 0 || l.hashing_max_wait_ms > 10_000 {
            return invalid("limits.hashing_max_wait_ms", "must be between 1 and 10000");
        }
        if l.hashing_queue_per_worker == 0 || l.hashing_queue_per_worker > 64 || l.hashing_workers > 64 {
            return invalid(
                "limits.hashing_queue_per_worker",
                "must be between 1 and 64 (and hashing_workers at most 64)",
            );
        }
        if let Some((field, reason)) = self.verifier().invalid() {
            let field = match field {
                "leeway_secs" => "jwt.leeway_secs",
                "issuers" => "jwt.issuers",
                "audiences" => "jwt.audiences",
                _ => "jwt.max_lifetime_secs",
            };
            return invalid(field, reason);
        }
        if crate::client_addr::ClientAddress::new(&self.server.trusted_proxies, 1).is_err() {
            return invalid("server.trusted_proxies", "must hold addresses or CIDRs");
        }
        if let Some((field, reason)) = self.policy.invalid() {
            return invalid(field, reason);
        }
        Ok(())
    }

    /// How admin callers' tokens are verified (they are few: a small cache).
    pub fn verifier(&self) -> VerifierSettings {
        self.jwt.verifier(1_000)
    }

    /// What issued tokens say.
    pub fn issuer_settings(&self) -> IssuerSettings {
        let t = &self.tokens;
        IssuerSettings {
            issuer: t.issuer.clone().or_else(|| self.jwt.issuers.first().cloned()).unwrap_or_default(),
            audience: t.audience.clone().or_else(|| self.jwt.audiences.first().cloned()).unwrap_or_default(),
            access_ttl: i64::try_from(t.access_ttl_secs).unwrap_or(300),
            refresh_ttl: i64::try_from(t.refresh_ttl_secs).unwrap_or(i64::MAX),
            family_lifetime: i64::try_from(t.family_lifetime_secs).unwrap_or(i64::MAX),
        }
    }

    /// The limits of the token endpoints.
    pub fn throttle(&self) -> ThrottleSettings {
        ThrottleSettings {
            per_ip_per_minute: self.limits.rate_per_ip_per_minute,
            per_user_per_minute: self.limits.rate_per_user_per_minute,
            lockout_failures: self.limits.lockout_failures,
            lockout: Duration::from_secs(self.limits.lockout_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("issuer.toml");
        std::fs::write(&file, toml).unwrap();
        Config::load(Some(&file), Figment::new())
    }

    #[test]
    fn out_of_range_and_unknown_values_are_refused_with_the_field_named() {
        let err = load("[tokens]\naccess_ttl_secs = 86400\n").unwrap_err().to_string();
        assert!(err.contains("tokens.access_ttl_secs"), "{err}");
        let err = load("[server]\ntrusted_proxies = [\"nope\"]\n").unwrap_err().to_string();
        assert!(err.contains("server.trusted_proxies"), "{err}");
        let err = load("[limits]\nrate_per_ip = 5\n").unwrap_err().to_string();
        assert!(err.contains("rate_per_ip"), "{err}");
        assert_eq!(load("").unwrap(), Config::default());
    }
}
