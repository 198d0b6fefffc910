//! The services' logging stack creates no span nobody records: with tracing off, a library's
//! span (h2's, tonic's, on every request) and Qiria's own trace spans stay disabled, while the
//! log lines and every audit event still get through.

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
    // Even right after an `enabled!` that no event followed, as sqlx's query logger asks after
    // every query (the log's filter says yes, the audit layers' say no): it leaves the per-layer
    // filters' verdicts on this thread, and an event whose callsite skips asking was judged on
    // them (tokio-rs/tracing#2519): the issuer's audit events after a PostgreSQL query were lost.
    for _ in 0..3 {
        assert!(tracing::enabled!(target: "sqlx::query", tracing::Level::WARN));
        tracing::info!(target: "qiria::audit", event = "logging_test_event", "audit");
    }
    let mut metrics = String::new();
    qiria_runtime::metrics::render_shared(&mut metrics);
    assert!(metrics.contains("qiria_audit_events_total{event=\"logging_test_event\"} 3"), "{metrics}");
    assert!(tracing::enabled!(target: "authz::server", tracing::Level::INFO));
}
