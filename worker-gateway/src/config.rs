//! The gateway's settings: embedded defaults, then a TOML file, then `QIRIA_GATEWAY_*`
//! environment variables, then command-line flags (unknown keys are an error).

use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use qiria_identity::{JwtConfig, VerifierSettings};
use qiria_policy::CallerPolicyConfig;
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
    /// How long finished jobs are kept.
    pub retention: RetentionConfig,
    /// Who may call what (authz's bundle; the flow allowlist is its data).
    pub policy: CallerPolicyConfig,
    /// Where flows run.
    pub kestra: KestraConfig,
    /// Where scripts run.
    pub scripts: ScriptsConfig,
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
    /// Calls one user may make per minute (a GCRA bucket of that size); beyond,
    /// `RESOURCE_EXHAUSTED` (429).
    pub requests_per_minute: u32,
    /// Unfinished (queued or running) jobs one user may have; beyond, a submit is
    /// `RESOURCE_EXHAUSTED` (429).
    pub live_jobs: u32,
}

/// How long finished jobs, their transitions and results are kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Seconds a finished job is kept after it ended.
    pub keep_finished_secs: u64,
    /// How often expired jobs are deleted (seconds).
    pub sweep_interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { keep_finished_secs: 30 * 24 * 3600, sweep_interval_secs: 3600 }
    }
}

/// Where flows run, and how the gateway talks to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KestraConfig {
    /// `https://host:port` of Kestra's API; empty: no Kestra, flow jobs stay queued saying so.
    pub url: String,
    /// Kestra tenant (`main` for OSS).
    pub tenant: String,
    /// Client certificate and pinned CA: `ca.crt`, `tls.crt`, `tls.key` (a Kubernetes TLS
    /// secret's names), reloaded when they change.
    pub tls_dir: PathBuf,
    /// Kestra's API credential: `token` (bearer), or `username` + `password` (basic),
    /// reloaded when they change.
    pub credential_dir: PathBuf,
    /// TCP + TLS connect timeout (ms).
    pub connect_timeout_ms: u64,
    /// Whole-request timeout (ms).
    pub request_timeout_ms: u64,
    /// How often live jobs are followed (ms).
    pub poll_interval_ms: u64,
    /// How long an unanswered create is searched for by its job label before another is sent
    /// (ms). Must exceed Kestra's search-indexing lag: it is what keeps one job one execution.
    pub reconcile_wait_ms: u64,
    /// Create attempts per job.
    pub max_attempts: u32,
    /// Kestra calls in flight at once.
    pub max_in_flight: usize,
    /// How often the secret directories are re-read (ms).
    pub secrets_poll_interval_ms: u64,
}

impl Default for KestraConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            tenant: "main".into(),
            tls_dir: PathBuf::from("/var/run/secrets/qiria/kestra-tls"),
            credential_dir: PathBuf::from("/var/run/secrets/qiria/kestra-credential"),
            connect_timeout_ms: 2_000,
            request_timeout_ms: 10_000,
            poll_interval_ms: 1_000,
            reconcile_wait_ms: 15_000,
            max_attempts: 3,
            max_in_flight: 16,
            secrets_poll_interval_ms: 5_000,
        }
    }
}

/// The scripting worker, and how the gateway hands it scripts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptsConfig {
    /// `https://host:port` of the scripting worker; empty: none, script jobs stay queued
    /// saying so.
    pub url: String,
    /// The gateway's client certificate (the identity the worker admits) and the CA the
    /// worker's certificate must chain to: `ca.crt`, `tls.crt`, `tls.key`, reloaded when they
    /// change.
    pub tls_dir: PathBuf,
    /// The name the worker's certificate must carry; empty: the URL's host.
    pub server_name: String,
    /// TCP + TLS connect timeout (ms).
    pub connect_timeout_ms: u64,
    /// How long one run may take, queue and sandbox together (ms); it must exceed the
    /// worker's wall-clock limit plus its queue wait. A run gone this long twice over on a
    /// gateway that stopped is failed.
    pub run_timeout_ms: u64,
    /// How often queued scripts are looked at (ms).
    pub poll_interval_ms: u64,
    /// Scripts in flight at once (the worker's own pool bounds them too).
    pub max_in_flight: usize,
    /// Times a script is handed over when the worker was unreachable or busy before it
    /// fails.
    pub max_attempts: u32,
    /// How often the TLS directory is re-read (ms).
    pub secrets_poll_interval_ms: u64,
}

impl Default for ScriptsConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            tls_dir: PathBuf::from("/var/run/secrets/qiria/scripting-worker-tls"),
            server_name: String::new(),
            connect_timeout_ms: 2_000,
            run_timeout_ms: 120_000,
            poll_interval_ms: 500,
            max_in_flight: 4,
            max_attempts: 20,
            secrets_poll_interval_ms: 5_000,
        }
    }
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
        Self { watch_streams: 8, requests_per_minute: 600, live_jobs: 50 }
    }
}

impl Config {
    /// Layers defaults, the optional TOML file, `QIRIA_GATEWAY_*` env vars, then `overrides`.
    pub fn load(file: Option<&std::path::Path>, overrides: Figment) -> Result<Self, ConfigError> {
        let config: Config = qiria_runtime::config::load(file, "QIRIA_GATEWAY_", overrides)?;
        if let Some((field, reason)) = config.verifier().invalid() {
            return Err(ConfigError::invalid(field, reason));
        }
        if let Some((field, reason)) = config.policy.invalid() {
            return Err(ConfigError::invalid(field, reason));
        }
        let k = &config.kestra;
        if !k.url.is_empty() {
            match reqwest::Url::parse(&k.url) {
                Ok(url) if url.scheme() == "https" && url.host().is_some() => {}
                _ => return Err(ConfigError::invalid("kestra.url", "must be an https:// URL (mutual TLS only)")),
            }
        }
        if k.max_attempts == 0 || k.max_in_flight == 0 || k.poll_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "kestra",
                "max_attempts, max_in_flight and poll_interval_ms must be at least 1",
            ));
        }
        if k.reconcile_wait_ms <= k.request_timeout_ms {
            return Err(ConfigError::invalid("kestra.reconcile_wait_ms", "must exceed kestra.request_timeout_ms"));
        }
        let sc = &config.scripts;
        if !sc.url.is_empty() {
            match reqwest::Url::parse(&sc.url) {
                Ok(url) if url.scheme() == "https" && url.host().is_some() => {}
                _ => return Err(ConfigError::invalid("scripts.url", "must be an https:// URL (mutual TLS only)")),
            }
        }
        if sc.max_attempts == 0 || sc.max_in_flight == 0 || sc.poll_interval_ms == 0 || sc.run_timeout_ms < 1_000 {
            return Err(ConfigError::invalid(
                "scripts",
                "max_attempts, max_in_flight and poll_interval_ms must be at least 1, run_timeout_ms at least 1000",
            ));
        }
        let (u, r) = (&config.users, &config.retention);
        if u.requests_per_minute == 0 || u.live_jobs == 0 {
            return Err(ConfigError::invalid("users", "requests_per_minute and live_jobs must be at least 1"));
        }
        if r.keep_finished_secs == 0 || r.sweep_interval_secs == 0 {
            return Err(ConfigError::invalid(
                "retention",
                "keep_finished_secs and sweep_interval_secs must be at least 1",
            ));
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
