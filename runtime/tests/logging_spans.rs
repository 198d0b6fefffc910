//! The services' logging stack creates no span nobody records: with tracing off, a library's
//! span (h2's, tonic's, on every request) and Qiria's own trace spans stay disabled, while the
//! log lines and the audit events still get through.

use qiria_runtime::config::LogConfig;

#[test]
fn spans_no_layer_records_are_never_created() {
    let config = LogConfig { level: "info".into(), ..LogConfig::default() };
    qiria_runtime::logging::init(&config, "test").unwrap();

    assert!(tracing::trace_span!(target: "h2::proto", "popped").is_disabled(), "a library's trace span");
    assert!(tracing::debug_span!(target: "tonic", "serve").is_disabled(), "below the log level");
    let trace = tracing::info_span!(target: "qiria::trace", "evaluate_policy");
    assert!(trace.is_disabled(), "Qiria's exported spans, with tracing off");

    // The layers still work: an audit event is counted; a log line at the level is enabled.
    // (Asked last: an `enabled!` that no event follows leaves the per-layer filters' state of
    // this thread set, and the next event would be judged on it.)
    tracing::info!(target: "qiria::audit", event = "logging_test_event", "audit");
    let mut metrics = String::new();
    qiria_runtime::metrics::render_shared(&mut metrics);
    assert!(metrics.contains("qiria_audit_events_total{event=\"logging_test_event\"} 1"), "{metrics}");
    assert!(tracing::enabled!(target: "authz::server", tracing::Level::INFO));
}
