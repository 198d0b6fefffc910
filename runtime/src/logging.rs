//! Logging setup: one line per event on standard error, JSON by default (for collectors),
//! text for humans; the level is a `tracing` filter from configuration.

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; a bad filter falls back to `info` rather than to silence.
/// Panics (the request paths catch them) are logged as events too, so that they reach the
/// collector as JSON instead of as free text on standard error.
pub fn init(config: &LogConfig) {
    std::panic::set_hook(Box::new(|info| tracing::error!(target: "qiria::panic", panic = %info, "panic")));
    let filter = tracing_subscriber::EnvFilter::try_new(&config.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
