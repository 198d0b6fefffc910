//! Strict layered configuration: embedded defaults, then a TOML file, then environment
//! variables under a service's prefix (nested keys joined by `__`), then command-line flags.
//! Unknown keys are an error, so a typo never silently falls back to a default. Each service
//! defines its own settings type; this module only layers and reports.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A configuration that could not be loaded or makes no sense.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML file, an environment variable or a flag could not be read into the settings.
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

impl ConfigError {
    /// An out-of-range value of `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid { field, reason: reason.into() }
    }
}

/// Layers `T::default()`, the optional TOML `file`, `<env_prefix>*` variables and `overrides`.
pub fn load<T>(file: Option<&Path>, env_prefix: &str, overrides: Figment) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        if !file.exists() {
            return Err(ConfigError::invalid("--config", format!("file {} does not exist", file.display())));
        }
        figment = figment.merge(Toml::file(file));
    }
    figment.merge(Env::prefixed(env_prefix).split("__")).merge(overrides).extract().map_err(|e| Box::new(e).into())
}

/// A figment layer of the flags that were given (`None` values are left out).
#[derive(Default)]
pub struct Overrides(Figment);

impl Overrides {
    /// Sets `key` to `value` when there is one.
    pub fn set(mut self, key: &str, value: Option<impl Into<figment::value::Value>>) -> Self {
        if let Some(value) = value {
            self.0 = self.0.merge(Serialized::default(key, value.into()));
        }
        self
    }

    /// The layer.
    pub fn into_figment(self) -> Figment {
        self.0
    }
}

/// The `--log-format` / `--log-level` flags every service takes, over its `[log]` section.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log format [default: json].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `qiria::decision=warn,info` [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
}

impl LogArgs {
    /// Adds the flags that were given to `overrides`.
    pub fn apply(&self, overrides: Overrides) -> Overrides {
        overrides.set("log.format", self.log_format.map(|f| f.name())).set("log.level", self.log_level.clone())
    }
}

/// Log format and level, the same section in every service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` (default, for collectors) or `text` (for humans).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `authz=debug,info`.
    pub level: String,
    /// Log every decision (id, outcome, status, revision, method, path, subject; never tokens).
    pub decisions: bool,
    /// The tamper-evident audit trail (JSONL, hash-chained, signed checkpoints): every audit
    /// event is appended there too. Unset: audit events go to the log only.
    pub audit_trail: Option<std::path::PathBuf>,
    /// The service's own audit key (`audit.key`, made by `qiria-audit keygen`; used for nothing
    /// else, never a token-signing key).
    pub audit_key_dir: std::path::PathBuf,
    /// A signed checkpoint after this many records.
    pub audit_checkpoint_every: u64,
    /// `[log.siem]`: the audit trail delivered to the SIEM over RELP on mutual TLS.
    pub siem: Option<crate::siem::SiemConfig>,
    /// `[log.tracing]`: spans exported over OTLP.
    pub tracing: crate::telemetry::TracingConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
            decisions: true,
            audit_trail: None,
            audit_key_dir: "/var/run/secrets/qiria/audit-key".into(),
            audit_checkpoint_every: 100,
            siem: None,
            tracing: crate::telemetry::TracingConfig::default(),
        }
    }
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

impl LogFormat {
    /// The name used in config files and flags.
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Text => "text",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Settings {
        log: LogConfig,
        limit: u32,
    }

    fn load_toml(toml: &str, flags: Overrides) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(&file, toml).unwrap();
        load(Some(&file), "QIRIA_RUNTIME_TEST_", flags.into_figment())
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_key() {
        let err = load_toml("[log]\nlevl = \"x\"\n", Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("levl"), "{err}");
    }

    #[test]
    fn file_then_flags_override_defaults() {
        let flags = Overrides::default().set("limit", Some(7u32));
        let settings = load_toml("limit = 5\n[log]\nlevel = \"debug\"\n", flags).unwrap();
        assert_eq!(settings.limit, 7);
        assert_eq!(settings.log.level, "debug");
        assert_eq!(settings.log.format, LogFormat::Json);
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = load::<Settings>(Some(Path::new("/nonexistent/x.toml")), "X_", Figment::new()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.toml"), "{err}");
    }
}
