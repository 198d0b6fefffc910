//! Traces through a real Envoy with its OpenTelemetry tracer: Envoy and authz export OTLP to a
//! real OTLP receiver (the official protobufs), and authz's `Check` span sits inside Envoy's
//! trace — same trace id, its parent one of Envoy's spans — with the decision, status and
//! bundle revision on it and the token verification and policy evaluation as its children.

use std::time::Duration;

use qiria_test_support::authz::Stack;
use qiria_test_support::call::Protocol::Http1;
use qiria_test_support::otlp::{OtlpReceiver, ReceivedSpan};
use qiria_test_support::{wait_until, workspace_root};

const AUTHZ: &str = env!("CARGO_BIN_EXE_authz");

fn check_spans(spans: &[ReceivedSpan]) -> Vec<ReceivedSpan> {
    spans.iter().filter(|s| s.service == "qiria-authz" && s.name == "ext_authz.check").cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_check_spans_are_children_of_envoys_trace() {
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("authz.toml");
    std::fs::write(
        &config,
        format!("[log.tracing]\nendpoint = \"{}\"\nsample_ratio = 1.0\nbatch_delay_ms = 200\n", receiver.endpoint()),
    )
    .expect("config");
    let config = config.display().to_string();
    let stack =
        Stack::with_tracing(AUTHZ, &workspace_root().join("policies/rego"), &["--config", &config], receiver.port)
            .await;
    let allowed = stack.send(Http1, "GET", "/v1/jobs/42", Some(&stack.token("alice", &["User"])), &[]).await;
    assert_eq!(allowed.status, 200);
    let denied = stack.send(Http1, "GET", "/v1/jobs/42", None, &[]).await;
    assert_eq!(denied.status, 401);

    let both = wait_until(Duration::from_secs(20), || async {
        let spans = receiver.spans();
        check_spans(&spans).len() >= 2 && spans.iter().filter(|s| s.service == "envoy").count() >= 2
    })
    .await;
    let spans = receiver.spans();
    assert!(both, "no Check spans and Envoy spans: {spans:#?}");
    for check in check_spans(&spans) {
        let parent = spans
            .iter()
            .find(|s| s.span_id == check.parent_span_id)
            .unwrap_or_else(|| panic!("the Check span's parent was not exported: {check:#?}\n{spans:#?}"));
        assert_eq!(parent.service, "envoy", "the parent is Envoy's: {parent:#?}");
        assert_eq!(parent.trace_id, check.trace_id, "one trace");
        assert!(!check.attributes["qiria.revision"].is_empty(), "{check:#?}");
        let children: Vec<&str> =
            spans.iter().filter(|s| s.parent_span_id == check.span_id).map(|s| s.name.as_str()).collect();
        assert!(children.contains(&"verify_token") && children.contains(&"evaluate_policy"), "{children:?}");
    }
    let decisions: Vec<(String, String)> = check_spans(&spans)
        .iter()
        .map(|s| (s.attributes["qiria.decision"].clone(), s.attributes["qiria.status"].clone()))
        .collect();
    assert!(decisions.contains(&("allow".into(), "200".into())), "{decisions:?}");
    assert!(decisions.contains(&("deny".into(), "401".into())), "{decisions:?}");
}
