//! Configuration: embedded defaults, then a TOML file, then `QIRIA_AUTHZ_*` environment
//! variables, then command-line flags. Unknown keys are an error so that a typo never
//! silently falls back to a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The largest clock-skew leeway we accept: more would stretch every token's life.
pub const MAX_LEEWAY_SECS: u64 = 60;

/// Everything the `authz serve` command needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listening sockets and TLS.
    pub server: ServerConfig,
    /// Where the Rego bundle lives and how it is evaluated.
    pub policy: PolicyConfig,
    /// How bearer tokens are verified.
    pub jwt: JwtConfig,
    /// The token issuer (off unless enabled).
    pub issuer: IssuerConfig,
    /// Log format and level.
    pub log: LogConfig,
}

/// Listening sockets and TLS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the ext_authz gRPC service (and gRPC health).
    pub grpc_addr: SocketAddr,
    /// Address of the admin HTTP server (`/metrics`, `/health`).
    pub admin_addr: SocketAddr,
    /// PEM certificate chain; when set, the gRPC service speaks TLS instead of h2c.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle; when set, clients (Envoy) must present a certificate it signed.
    pub tls_client_ca: Option<PathBuf>,
}

/// Where the Rego bundle lives and how it is evaluated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Directory of `.rego` files and `data.json`/`data.yaml` documents (OPA bundle layout).
    pub dir: PathBuf,
    /// The rule whose value decides, e.g. `data.qiria.authz.allow` (bool or OPA-Envoy object).
    pub decision_rule: String,
    /// Parse policies as Rego v0 (pre-OPA-1.0 syntax) instead of v1.
    pub rego_v0: bool,
    /// Evaluation time limit per request, in milliseconds; past it the request is denied.
    pub eval_timeout_ms: u64,
    /// Run the bundle's own `test_*` rules before accepting it.
    pub run_tests_on_load: bool,
    /// How often the directory is re-read in case a change notification was missed (ms).
    pub poll_interval_ms: u64,
    /// Decisions kept for requests without a valid token when the bundle declares
    /// `cache_decisions := true` (verified tokens keep theirs in the token cache); 0 turns
    /// decision caching off.
    pub decision_cache_capacity: u64,
    /// Seconds a cached decision may be reused.
    pub decision_cache_ttl_secs: u64,
}

/// How bearer tokens are verified.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Directory of public keys (PEM, JWK or JWKS files), as a mounted Kubernetes secret.
    pub keys_dir: PathBuf,
    /// Accepted `iss` values; a token must carry one of them.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; a token must carry at least one of them.
    pub audiences: Vec<String>,
    /// Clock-skew leeway for `exp` and `nbf`, in seconds (at most 60).
    pub leeway_secs: u64,
    /// Required value of the `typ` claim (our issuer writes `access`); empty accepts any.
    pub required_typ: String,
    /// How many verified tokens (each with its last decisions) are kept in the cache.
    pub cache_capacity: u64,
    /// How often the key directory is re-read in case a change notification was missed (ms).
    pub poll_interval_ms: u64,
    /// Forward the `Authorization` header upstream on allowed requests. Off by default: the
    /// upstream gets the verified identity in `x-qiria-*` headers and never sees the token.
    pub forward_token: bool,
}

/// The token issuer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IssuerConfig {
    /// Serve the token endpoints.
    pub enabled: bool,
    /// Address of the token endpoints (reached through Envoy).
    pub addr: SocketAddr,
    /// Directory of PKCS#8 private keys (the signing secret); `<kid>.pem` each.
    pub signing_keys_dir: PathBuf,
    /// The kid that signs; unset: the `active` file of the directory, or its only key.
    pub active_kid: Option<String>,
    /// `sqlite://FILE` (created on first run) or `postgres://…`.
    pub database_url: String,
    /// Directory of master keys sealing personal data at rest (`<kid>.key`, 32 bytes base64).
    pub master_keys_dir: PathBuf,
    /// The master kid that seals new rows; unset: the `active` file, or the only key.
    pub active_master_kid: Option<String>,
    /// `iss` of issued tokens (defaults to the first of `jwt.issuers`).
    pub issuer: Option<String>,
    /// `aud` of issued tokens (defaults to the first of `jwt.audiences`).
    pub audience: Option<String>,
    /// Access token lifetime in seconds (at most 3600).
    pub access_ttl_secs: u64,
    /// Refresh token lifetime in seconds.
    pub refresh_ttl_secs: u64,
    /// Token requests per client address per minute.
    pub rate_per_ip_per_minute: u32,
    /// Login attempts per username per minute.
    pub rate_per_user_per_minute: u32,
    /// Failed logins after which an account is locked.
    pub lockout_failures: u32,
    /// How long a locked account stays locked, in seconds.
    pub lockout_secs: u64,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            addr: SocketAddr::from(([127, 0, 0, 1], 9193)),
            signing_keys_dir: PathBuf::from(".stack/keys/private"),
            active_kid: None,
            database_url: "sqlite://.stack/qiria.db".into(),
            master_keys_dir: PathBuf::from(".stack/master-keys"),
            active_master_kid: None,
            issuer: None,
            audience: None,
            access_ttl_secs: 300,
            refresh_ttl_secs: 8 * 3600,
            rate_per_ip_per_minute: 120,
            rate_per_user_per_minute: 20,
            lockout_failures: 5,
            lockout_secs: 300,
        }
    }
}

/// The longest access token lifetime we issue: they cannot be revoked.
pub const MAX_ACCESS_TTL_SECS: u64 = 3600;

/// Log format and level.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` (default, for collectors) or `text` (for humans).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `authz=debug,info`.
    pub level: String,
    /// Log every decision (id, outcome, status, revision, method, path, subject; never tokens).
    pub decisions: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 9191)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9192)),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("policies/rego"),
            decision_rule: "data.qiria.authz.allow".into(),
            rego_v0: false,
            eval_timeout_ms: 50,
            run_tests_on_load: true,
            poll_interval_ms: 2_000,
            decision_cache_capacity: 10_000,
            decision_cache_ttl_secs: 60,
        }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            keys_dir: PathBuf::from(".stack/keys/public"),
            issuers: vec!["https://qiria.local".into()],
            audiences: vec!["qiria".into()],
            leeway_secs: 30,
            required_typ: "access".into(),
            cache_capacity: 100_000,
            poll_interval_ms: 2_000,
            forward_token: false,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Json, level: "info".into(), decisions: true }
    }
}

/// A configuration that could not be loaded or makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file, an environment variable or a flag could not be read into `Config`.
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is out of its allowed range.
    #[error("configuration: `{field}` {reason}")]
    Invalid {
        /// The dotted key, e.g. `jwt.leeway_secs`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Config {
    /// Layers defaults, the optional TOML file, `QIRIA_AUTHZ_*` env vars, then `overrides`.
    ///
    /// Nested keys in env vars use `__`: `QIRIA_AUTHZ_JWT__LEEWAY_SECS=10`.
    pub fn load(file: Option<&std::path::Path>, overrides: Figment) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid {
                    field: "--config",
                    reason: format!("file {} does not exist", file.display()),
                });
            }
            figment = figment.merge(Toml::file(file));
        }
        let config: Config =
            figment.merge(Env::prefixed("QIRIA_AUTHZ_").split("__")).merge(overrides).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| Err(ConfigError::Invalid { field, reason: reason.into() });
        if self.jwt.leeway_secs > MAX_LEEWAY_SECS {
            return invalid("jwt.leeway_secs", "must be at most 60");
        }
        if self.jwt.issuers.is_empty() {
            return invalid("jwt.issuers", "must name at least one issuer");
        }
        if self.jwt.audiences.is_empty() {
            return invalid("jwt.audiences", "must name at least one audience");
        }
        if self.jwt.cache_capacity == 0 {
            return invalid("jwt.cache_capacity", "must be at least 1");
        }
        if !self.policy.decision_rule.starts_with("data.") {
            return invalid("policy.decision_rule", "must be a rule path starting with `data.`");
        }
        if self.issuer.access_ttl_secs == 0 || self.issuer.access_ttl_secs > MAX_ACCESS_TTL_SECS {
            return invalid("issuer.access_ttl_secs", "must be between 1 and 3600");
        }
        if self.issuer.lockout_failures == 0 || self.issuer.rate_per_ip_per_minute == 0 {
            return invalid("issuer.lockout_failures", "and issuer.rate_per_ip_per_minute must be at least 1");
        }
        if self.issuer.refresh_ttl_secs < self.issuer.access_ttl_secs {
            return invalid("issuer.refresh_ttl_secs", "must be at least issuer.access_ttl_secs");
        }
        if self.policy.eval_timeout_ms == 0 {
            return invalid("policy.eval_timeout_ms", "must be at least 1");
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return invalid("server.tls_cert", "and server.tls_key must be set together");
        }
        if self.server.tls_client_ca.is_some() && self.server.tls_cert.is_none() {
            return invalid("server.tls_client_ca", "needs server.tls_cert and server.tls_key");
        }
        Ok(())
    }

    /// How a policy bundle is loaded for serving.
    pub fn bundle_options(&self) -> crate::policy::BundleOptions {
        crate::policy::BundleOptions {
            decision_rule: Some(self.policy.decision_rule.clone()),
            rego_v0: self.policy.rego_v0,
            eval_timeout: self.eval_timeout(),
            run_tests: self.policy.run_tests_on_load,
            decision_cache_capacity: self.policy.decision_cache_capacity,
            decision_cache_ttl: Duration::from_secs(self.policy.decision_cache_ttl_secs),
        }
    }

    /// The policy evaluation time limit.
    pub fn eval_timeout(&self) -> Duration {
        Duration::from_millis(self.policy.eval_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `toml` as the config file, with `flags` on top.
    fn load(toml: &str, flags: Figment) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("authz.toml");
        std::fs::write(&file, toml).unwrap();
        Config::load(Some(&file), flags)
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_key() {
        let err = load("[jwt]\nleeway_seconds = 5\n", Figment::new()).unwrap_err().to_string();
        assert!(err.contains("leeway_seconds"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_field_named() {
        let err = load("[jwt]\nleeway_secs = 61\n", Figment::new()).unwrap_err().to_string();
        assert!(err.contains("jwt.leeway_secs"), "{err}");
        let err = load("[issuer]\naccess_ttl_secs = 86400\n", Figment::new()).unwrap_err().to_string();
        assert!(err.contains("issuer.access_ttl_secs"), "{err}");
    }

    #[test]
    fn file_then_flags_override_defaults() {
        let flags = Figment::new().merge(Serialized::default("jwt.leeway_secs", 7));
        let config = load("[jwt]\nleeway_secs = 5\naudiences = [\"a\"]\n", flags).unwrap();
        assert_eq!(config.jwt.leeway_secs, 7);
        assert_eq!(config.jwt.audiences, vec!["a".to_string()]);
        assert_eq!(config.policy.decision_rule, "data.qiria.authz.allow");
    }
}
