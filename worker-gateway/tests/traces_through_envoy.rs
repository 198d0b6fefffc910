//! A job's trace, end to end, through the real path: Envoy (its OpenTelemetry tracer) → authz
//! → the worker-gateway → the Kestra double (which records the `traceparent` it got) or the
//! scripting worker (runsc) — every service exporting OTLP to a real receiver, every span in
//! Envoy's trace, and a log line written in a span carrying its `trace_id` and `span_id`. (Its own test binary: the services read where to export from the
//! environment this process passes on.)

use std::time::Duration;

use qiria_test_support::authz::{policy_with_flows, Stack};
use qiria_test_support::jobs::{flow, script, watch_to_end, with_token};
use qiria_test_support::kestra::{KestraDouble, KestraOptions};
use qiria_test_support::otlp::{OtlpReceiver, ReceivedSpan};
use qiria_test_support::tls::pki;
use qiria_test_support::wait_until;
use qiria_test_support::worker::{OuterCgroup, ScriptingWorker, GATEWAY_ID};
use worker_gateway::pb::job_service_client::JobServiceClient;
use worker_gateway::pb::JobState;

fn named<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.service == service && s.name == name).collect()
}

/// The trace id of a W3C `traceparent` (`00-<trace>-<span>-<flags>`).
fn trace_of(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_trace_goes_from_envoy_through_authz_and_the_gateway_to_kestra_and_the_sandbox() {
    let receiver = OtlpReceiver::start().await;
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");

    let dir = tempfile::tempdir().expect("tempdir");
    let kestra = KestraDouble::start(&dir.path().join("kestra"), KestraOptions::default()).await;
    let outer = OuterCgroup::new(1 << 30, 1024);
    let worker_pki = pki(GATEWAY_ID);
    let worker = ScriptingWorker::start(dir.path(), &dir.path().join("state"), &worker_pki, &outer, "").await;
    let toml = kestra.gateway_toml(dir.path(), None) + &worker.gateway_toml(&worker_pki, dir.path());
    let policy = policy_with_flows(dir.path(), r#"{"qiria.demo": {"hello": "flows:trigger"}}"#);
    let authz = qiria_test_support::binary("authz").display().to_string();
    let stack = Stack::with_gateway_traced(&authz, &policy, &toml, receiver.port).await;
    let api = JobServiceClient::connect(stack.envoy.url("")).await.expect("connect through Envoy");
    let alice = stack.token("alice", &["User"]);

    let flow = flow("qiria.demo", "hello", &[("name", "trace")]);
    let flow_job = api.clone().trigger_flow(with_token(flow, &alice)).await.expect("trigger").into_inner();
    let script_job =
        api.clone().submit_script(with_token(script("print(6 * 7)\n"), &alice)).await.expect("submit").into_inner();
    let (states, done) = watch_to_end(&api, &alice, &script_job.id).await;
    assert_eq!(states.last(), Some(&JobState::Success), "{done:?}");

    let complete = wait_until(Duration::from_secs(30), || async {
        let spans = receiver.spans();
        !named(&spans, "qiria-scripting-worker", "script.run").is_empty()
            && !named(&spans, "qiria-worker-gateway", "sandbox.run").is_empty()
            && !named(&spans, "qiria-worker-gateway", "kestra.create_execution").is_empty()
            && !kestra.traceparents().is_empty()
    })
    .await;
    let spans = receiver.spans();
    assert!(complete, "not every service's span arrived: {spans:#?}\nkestra: {:?}", kestra.traceparents());

    // Each submit is a gateway span whose trace is Envoy's, with authz's Check in it too.
    for job in [&flow_job.id, &script_job.id] {
        let submit = named(&spans, "qiria-worker-gateway", "jobs.submit")
            .into_iter()
            .find(|s| s.attributes.get("qiria.job") == Some(job))
            .unwrap_or_else(|| panic!("no submit span for {job}: {spans:#?}"));
        let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == submit.trace_id).collect();
        assert!(in_trace.iter().any(|s| s.service == "envoy"), "Envoy's spans are in the trace: {in_trace:#?}");
        assert!(in_trace.iter().any(|s| s.service == "qiria-authz" && s.name == "ext_authz.check"), "{in_trace:#?}");
        let parent = spans.iter().find(|s| s.span_id == submit.parent_span_id).expect("the submit's parent");
        assert_eq!(parent.service, "envoy", "the gateway continues Envoy's span: {parent:#?}");
    }
    let submit_trace = |job: &str| {
        named(&spans, "qiria-worker-gateway", "jobs.submit")
            .into_iter()
            .find(|s| s.attributes.get("qiria.job").map(String::as_str) == Some(job))
            .map(|s| s.trace_id.clone())
            .unwrap_or_default()
    };

    // The flow: the gateway's call to Kestra is in the submit's trace, and Kestra got it.
    let create = named(&spans, "qiria-worker-gateway", "kestra.create_execution");
    let create = create.iter().find(|s| s.attributes.get("qiria.job") == Some(&flow_job.id)).expect("a create span");
    assert_eq!(create.trace_id, submit_trace(&flow_job.id), "{create:#?}");
    let sent: Vec<String> = kestra.traceparents();
    assert!(sent.iter().any(|t| trace_of(t) == create.trace_id), "Kestra got the trace: {sent:?} vs {create:#?}");

    // The script: the gateway's sandbox call and the worker's run are in the submit's trace.
    let run = named(&spans, "qiria-scripting-worker", "script.run");
    let run = run.iter().find(|s| s.attributes.get("qiria.job") == Some(&script_job.id)).expect("a run span");
    assert_eq!(run.trace_id, submit_trace(&script_job.id), "{run:#?}");
    assert_eq!(run.attributes.get("qiria.exit_code").map(String::as_str), Some("0"));
    let call = spans.iter().find(|s| s.span_id == run.parent_span_id).expect("the run's parent");
    assert_eq!((call.service.as_str(), call.name.as_str()), ("qiria-worker-gateway", "sandbox.run"));

    // The worker's log line of that run leads to its trace.
    let logged: Vec<serde_json::Value> = worker.output().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let line = logged
        .iter()
        .find(|l| l["message"] == "running a script" && l["job"] == script_job.id.as_str())
        .unwrap_or_else(|| panic!("no log line of the run: {}", worker.output()));
    assert_eq!(line["trace_id"], run.trace_id.as_str(), "{line}");
    assert_eq!(line["span_id"], run.span_id.as_str(), "{line}");
}
