//! authz's settings: embedded defaults, then a TOML file, then `QIRIA_AUTHZ_*` environment
//! variables, then command-line flags (layered by `qiria_runtime::config`; unknown keys are
//! an error). Each library takes its own part: the verifier its [`VerifierSettings`], the
//! policy library its [`BundleOptions`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use qiria_identity::VerifierSettings;
use qiria_policy::{BundleOptions, EvalCounters};
use qiria_runtime::config::{ConfigError, LogConfig};
use serde::{Deserialize, Serialize};

use crate::check::AnswerSettings;
use crate::decision_log::DecisionLogConfig;

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
    /// Log format and level; `log.decisions` turns the decision log on.
    pub log: LogConfig,
    /// What the decision log holds.
    pub decision_log: DecisionLogConfig,
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
    /// Connections held open at once on `grpc_addr`; one more is closed at accept (each Envoy
    /// keeps a few; keep it below the process's file descriptor limit).
    pub max_connections: usize,
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
    /// CPU time one evaluation may use, in milliseconds; past it the request is denied.
    pub eval_timeout_ms: u64,
    /// Wall-clock time one evaluation may take, stalls of its thread included (ms); keep it
    /// below Envoy's ext_authz timeout (500 ms in `envoy/`).
    pub eval_deadline_ms: u64,
    /// Run the bundle's own `test_*` rules before accepting it.
    pub run_tests_on_load: bool,
    /// How often the directory is re-read in case a change notification was missed (ms).
    pub poll_interval_ms: u64,
    /// Decisions shared between requests: every decision of a bundle that declares a
    /// `decision_key`, else those of requests without a valid token when it declares
    /// `cache_decisions := true` (verified tokens keep theirs in the token cache); 0 turns
    /// decision caching off.
    pub decision_cache_capacity: u64,
    /// Seconds a cached decision may be reused.
    pub decision_cache_ttl_secs: u64,
    /// Shadow mode: decide and log, but allow every request (denials are logged with
    /// `qiria.shadow: true` and counted as `shadow_deny`), to try a policy on live traffic.
    /// Routes may turn it on or off with the context extension `qiria.shadow`.
    pub shadow: bool,
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
    /// Longest token lifetime accepted (`exp − iat`, or `exp − now`), in seconds.
    pub max_lifetime_secs: u64,
    /// How many verified tokens (each with its last decisions) are kept in the cache.
    pub cache_capacity: u64,
    /// How often the key directory is re-read in case a change notification was missed (ms).
    pub poll_interval_ms: u64,
    /// Forward the `Authorization` header upstream on every allowed request. Off by default:
    /// the upstream gets the verified identity in `x-qiria-*` headers and never sees the token,
    /// except on routes whose upstream verifies it again (context extension
    /// `qiria.forward_token: "true"`).
    pub forward_token: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 9191)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9192)),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            max_connections: 4096,
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
            eval_deadline_ms: 400,
            run_tests_on_load: true,
            poll_interval_ms: 2_000,
            decision_cache_capacity: 10_000,
            decision_cache_ttl_secs: 60,
            shadow: false,
        }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        let verifier = VerifierSettings::default();
        Self {
            keys_dir: PathBuf::from(".stack/keys/public"),
            issuers: verifier.issuers,
            audiences: verifier.audiences,
            leeway_secs: verifier.leeway_secs,
            required_typ: verifier.required_typ,
            max_lifetime_secs: verifier.max_lifetime_secs,
            cache_capacity: verifier.cache_capacity,
            poll_interval_ms: 2_000,
            forward_token: false,
        }
    }
}

impl JwtConfig {
    /// The verifier's part.
    pub fn verifier(&self) -> VerifierSettings {
        VerifierSettings {
            issuers: self.issuers.clone(),
            audiences: self.audiences.clone(),
            leeway_secs: self.leeway_secs,
            required_typ: self.required_typ.clone(),
            max_lifetime_secs: self.max_lifetime_secs,
            cache_capacity: self.cache_capacity,
        }
    }
}

impl Config {
    /// Layers defaults, the optional TOML file, `QIRIA_AUTHZ_*` env vars, then `overrides`.
    ///
    /// Nested keys in env vars use `__`: `QIRIA_AUTHZ_JWT__LEEWAY_SECS=10`.
    pub fn load(file: Option<&std::path::Path>, overrides: Figment) -> Result<Self, ConfigError> {
        let config: Config = qiria_runtime::config::load(file, "QIRIA_AUTHZ_", overrides)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| Err(ConfigError::invalid(field, reason));
        if self.server.max_connections == 0 {
            return invalid("server.max_connections", "must be at least 1");
        }
        if let Some((field, reason)) = self.decision_log.invalid() {
            return Err(ConfigError::invalid(field, reason));
        }
        if let Some((field, reason)) = self.jwt.verifier().invalid() {
            let field = match field {
                "leeway_secs" => "jwt.leeway_secs",
                "issuers" => "jwt.issuers",
                "audiences" => "jwt.audiences",
                "cache_capacity" => "jwt.cache_capacity",
                _ => "jwt.max_lifetime_secs",
            };
            return invalid(field, reason);
        }
        if !self.policy.decision_rule.starts_with("data.") {
            return invalid("policy.decision_rule", "must be a rule path starting with `data.`");
        }
        if self.policy.eval_timeout_ms == 0 {
            return invalid("policy.eval_timeout_ms", "must be at least 1");
        }
        if self.policy.eval_deadline_ms < self.policy.eval_timeout_ms {
            return invalid("policy.eval_deadline_ms", "must be at least policy.eval_timeout_ms");
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return invalid("server.tls_cert", "and server.tls_key must be set together");
        }
        if self.server.tls_client_ca.is_some() && self.server.tls_cert.is_none() {
            return invalid("server.tls_client_ca", "needs server.tls_cert and server.tls_key");
        }
        Ok(())
    }

    /// How the policy bundle is loaded for serving; evaluation outcomes are counted in `counters`.
    pub fn bundle_options(&self, counters: std::sync::Arc<EvalCounters>) -> BundleOptions {
        BundleOptions {
            decision_rule: Some(self.policy.decision_rule.clone()),
            rego_v0: self.policy.rego_v0,
            eval_timeout: Duration::from_millis(self.policy.eval_timeout_ms),
            eval_deadline: Duration::from_millis(self.policy.eval_deadline_ms),
            run_tests: self.policy.run_tests_on_load,
            counters,
            builtins: qiria_policy::opa_builtins(),
        }
    }

    /// How the decision service answers, besides the policy.
    pub fn answer_settings(&self) -> AnswerSettings {
        AnswerSettings {
            shadow: self.policy.shadow,
            forward_token: self.jwt.forward_token,
            decision_cache_capacity: self.policy.decision_cache_capacity,
            decision_cache_ttl: Duration::from_secs(self.policy.decision_cache_ttl_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;

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
        let err = load("[issuer]\nenabled = true\n", Figment::new()).unwrap_err().to_string();
        assert!(err.contains("issuer"), "the issuer is its own service now: {err}");
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_field_named() {
        let err = load("[jwt]\nleeway_secs = 61\n", Figment::new()).unwrap_err().to_string();
        assert!(err.contains("jwt.leeway_secs"), "{err}");
        let err = load("[policy]\neval_deadline_ms = 10\n", Figment::new()).unwrap_err().to_string();
        assert!(err.contains("policy.eval_deadline_ms"), "{err}");
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
