//! Flow jobs through the real path: a client → Envoy → authz → the worker-gateway → the Kestra
//! contract double over mutual TLS with the gateway's credential. What a user sees (a flow
//! watched to SUCCESS, an allowlist, cancels that kill the execution), what Kestra's errors
//! become, and the exactly-once guarantee under lost answers, timeouts and a killed gateway.

use std::time::Duration;

use qiria_test_support::authz::Stack;
use qiria_test_support::gateway::Gateway;
use qiria_test_support::jobs::{watch_to_end, with_token, Api};
use qiria_test_support::kestra::{ForeignPki, KestraDouble, KestraOptions};
use qiria_test_support::wait_until;
use serde_json::{json, Value};
use tonic::Code;
use worker_gateway::pb::job_service_client::JobServiceClient;
use worker_gateway::pb::{CancelJobRequest, GetJobRequest, Job, JobState, TriggerFlowRequest};

fn authz() -> String {
    qiria_test_support::binary("authz").display().to_string()
}

fn trigger(namespace: &str, flow: &str, inputs: &[(&str, &str)], key: &str) -> TriggerFlowRequest {
    TriggerFlowRequest {
        namespace: namespace.into(),
        flow_id: flow.into(),
        inputs: inputs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        labels: [("team".to_string(), "data".to_string())].into(),
        idempotency_key: key.into(),
    }
}

/// Every flow of the double on the allowlist, plus one Kestra does not have; `qiria.demo/hidden`
/// stays off it.
const ALLOWLIST: &str = r#"{"qiria.demo": {"hello": "flows:trigger", "fails": "flows:trigger", "slow": "flows:trigger",
    "disabled": "flows:trigger", "missing": "flows:trigger"}, "qiria.secret": {"payroll": "flows:trigger"}}"#;

struct World {
    stack: Stack,
    kestra: KestraDouble,
    api: Api,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    world_with("").await
}

/// A world whose gateway config also has `extra` (e.g. a `[store]` on PostgreSQL).
async fn world_with(extra: &str) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let kestra = KestraDouble::start(&dir.path().join("kestra"), KestraOptions::default()).await;
    let policy = qiria_test_support::authz::policy_with_flows(dir.path(), ALLOWLIST);
    let toml = kestra.gateway_toml(dir.path(), None) + extra;
    let stack = Stack::with_gateway_config(&authz(), &policy, &toml).await;
    let api = JobServiceClient::connect(stack.envoy.url("")).await.expect("connect through Envoy");
    World { stack, kestra, api, dir }
}

/// `TriggerFlow` as `token`'s holder.
async fn submit(api: &Api, token: &str, request: TriggerFlowRequest) -> Result<Job, tonic::Status> {
    api.clone().trigger_flow(with_token(request, token)).await.map(|r| r.into_inner())
}

/// The double's executions carrying `job`'s label (the ground truth, search index or not).
async fn executions_of(kestra: &KestraDouble, job: &str) -> Vec<Value> {
    let all = kestra.executions().await;
    all.into_iter()
        .filter(|e| {
            e["labels"].as_array().is_some_and(|l| l.iter().any(|l| l["key"] == "qiria-job" && l["value"] == job))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_watches_an_allowlisted_flow_succeed_and_an_admin_cancel_kills_the_execution() {
    let w = world().await;
    let (alice, bob) = (w.stack.token("alice", &["User"]), w.stack.token("bob", &["User"]));
    let (auditor, admin) = (w.stack.token("audrey", &["Auditor"]), w.stack.token("root", &["Admin"]));
    let hostile = "'; DROP TABLE jobs; -- $(rm -rf /) {{ 7*7 }} ${jndi:ldap://x}";

    let job = submit(&w.api, &alice, trigger("qiria.demo", "hello", &[("name", hostile)], "")).await.expect("trigger");
    let (states, done) = watch_to_end(&w.api, &alice, &job.id).await;
    assert_eq!(states.last(), Some(&JobState::Success), "{states:?} {done:?}");
    assert!(states.contains(&JobState::Running) || states.len() >= 2, "watched it move: {states:?}");
    assert_eq!((done.kestra_state.as_str(), done.execution_id.is_empty()), ("SUCCESS", false), "{done:?}");
    let outputs = done.outputs.as_ref().expect("the flow's outputs");
    assert!(outputs.fields.contains_key("greeting"), "{outputs:?}");

    // Exactly one execution, labelled with the job, the inputs as the user sent them.
    let executions = executions_of(&w.kestra, &job.id).await;
    assert_eq!(executions.len(), 1, "{executions:?}");
    assert_eq!(executions[0]["id"], done.execution_id.as_str());
    assert_eq!(executions[0]["inputs"]["name"], hostile, "inputs travel as inert data");
    assert!(executions[0]["labels"].as_array().unwrap().iter().any(|l| l["key"] == "team" && l["value"] == "data"));

    // Nobody else's view: bob does not see it, an Auditor does and cannot submit.
    let get = |id: &str| GetJobRequest { id: id.into() };
    assert_eq!(w.api.clone().get_job(with_token(get(&job.id), &bob)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(w.api.clone().get_job(with_token(get(&job.id), &auditor)).await.unwrap().into_inner().owner, "alice");
    let refused = submit(&w.api, &auditor, trigger("qiria.demo", "hello", &[("name", "a")], "")).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);

    // Off the allowlist: refused by the gateway before anything reaches Kestra.
    let before = w.kestra.executions().await.len();
    let off = submit(&w.api, &alice, trigger("qiria.demo", "hidden", &[], "")).await;
    assert_eq!(off.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(w.kestra.executions().await.len(), before, "nothing reached Kestra");

    // The same idempotency key twice: one job, one execution.
    let once = trigger("qiria.demo", "hello", &[("name", "once")], "nightly-2026-12-02");
    let first = submit(&w.api, &alice, once.clone()).await.expect("trigger");
    let second = submit(&w.api, &alice, once).await.expect("trigger again");
    assert_eq!(first.id, second.id);
    let (_, ended) = watch_to_end(&w.api, &alice, &first.id).await;
    assert_eq!(ended.state(), JobState::Success);
    assert_eq!(executions_of(&w.kestra, &first.id).await.len(), 1);

    // alice's long flow: bob cannot cancel it; an Admin can, and that kills the execution.
    let slow = submit(&w.api, &alice, trigger("qiria.demo", "slow", &[], "")).await.expect("trigger");
    let running = wait_until(Duration::from_secs(20), || async {
        let job = w.api.clone().get_job(with_token(get(&slow.id), &alice)).await.unwrap().into_inner();
        job.state() == JobState::Running
    })
    .await;
    assert!(running, "the slow flow never ran");
    let cancel = |token: String| {
        let (mut api, id) = (w.api.clone(), slow.id.clone());
        async move { api.cancel_job(with_token(CancelJobRequest { id }, &token)).await }
    };
    assert_eq!(cancel(bob.clone()).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(cancel(auditor.clone()).await.unwrap_err().code(), Code::PermissionDenied);
    let asked = cancel(admin.clone()).await.expect("admin cancels").into_inner();
    assert!(asked.reason.contains("cancel requested by root"), "{}", asked.reason);
    let (_, killed) = watch_to_end(&w.api, &alice, &slow.id).await;
    assert_eq!((killed.state(), killed.kestra_state.as_str()), (JobState::Cancelled, "KILLED"), "{killed:?}");
    let execution = executions_of(&w.kestra, &slow.id).await;
    assert_eq!(execution.len(), 1);
    assert_eq!(execution[0]["state"]["current"], "KILLED");

    // Every step audited; the inputs are not in the log.
    let log = w.stack.gateway.as_ref().unwrap().output();
    for event in ["job_submitted", "job_triggered", "job_state_changed", "job_cancelled"] {
        assert!(log.contains(event), "{event} missing from the audit trail");
    }
    assert!(
        !log.contains("DROP TABLE") && !log.contains(w.kestra.authorization().as_str()),
        "secrets or inputs logged"
    );
    drop(w.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kestras_refusals_become_clear_job_errors_and_are_never_retried() {
    let w = world().await;
    let alice = w.stack.token("alice", &["User"]);
    let cases = [
        ("qiria.demo", "fails", vec![], "ended FAILED"),
        ("qiria.demo", "missing", vec![], "no such flow (404"),
        ("qiria.demo", "disabled", vec![], "cannot run this flow now (409"),
        ("qiria.secret", "payroll", vec![], "may not run this flow (403"),
        ("qiria.demo", "hello", vec![], "rejected the request (422"),
    ];
    for (namespace, flow, inputs, says) in cases {
        let job = submit(&w.api, &alice, trigger(namespace, flow, &inputs, "")).await.expect("trigger");
        let (_, done) = watch_to_end(&w.api, &alice, &job.id).await;
        assert_eq!(done.state(), JobState::Failed, "{flow}: {done:?}");
        assert!(done.reason.contains(says), "{flow}: {:?} should say {says:?}", done.reason);
        assert!(executions_of(&w.kestra, &job.id).await.len() <= 1, "{flow}: refused creates are not retried");
    }
    let log = w.stack.gateway.as_ref().unwrap().output();
    assert_eq!(log.matches("\"attempt\":2").count(), 0, "a refusal was retried:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_timeouts_and_server_errors_still_make_exactly_one_execution() {
    let w = world().await;
    let alice = w.stack.token("alice", &["User"]);
    // Each fault hits one create: the execution exists but the answer is lost (held past the
    // gateway's 1 s timeout, or a 500 after storing it), or nothing is stored (503).
    for fault in [json!({"delay_ms": 4000}), json!({"status": 500, "after_create": true}), json!({"status": 503})] {
        w.kestra.fault(fault.clone()).await;
        let job = submit(&w.api, &alice, trigger("qiria.demo", "hello", &[("name", "x")], "")).await.expect("trigger");
        let (_, done) = watch_to_end(&w.api, &alice, &job.id).await;
        assert_eq!(done.state(), JobState::Success, "{fault}: {done:?}");
        let executions = executions_of(&w.kestra, &job.id).await;
        assert_eq!(executions.len(), 1, "{fault}: one job, one execution: {executions:?}");
        assert_eq!(executions[0]["id"], done.execution_id.as_str(), "{fault}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_trigger_and_restarted_loses_and_duplicates_nothing() {
    killed_mid_trigger(world().await).await;
}

/// The same code and migrations on PostgreSQL: a job through Kestra, a crash mid-trigger, a
/// cancel that kills the execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_jobs_run_survive_a_crash_and_cancel_the_same() {
    let Some(url) = qiria_test_support::postgres::fresh_database() else { return };
    let w = world_with(&format!("[store]\ndatabase_url = \"{url}\"\n")).await;
    let (alice, admin) = (w.stack.token("alice", &["User"]), w.stack.token("root", &["Admin"]));
    let slow = submit(&w.api, &alice, trigger("qiria.demo", "slow", &[], "")).await.expect("trigger");
    let running = wait_until(Duration::from_secs(20), || async {
        let request = with_token(GetJobRequest { id: slow.id.clone() }, &alice);
        w.api.clone().get_job(request).await.is_ok_and(|j| j.into_inner().state() == JobState::Running)
    })
    .await;
    assert!(running, "the slow flow never ran on PostgreSQL");
    let cancel = with_token(CancelJobRequest { id: slow.id.clone() }, &admin);
    w.api.clone().cancel_job(cancel).await.expect("cancel");
    let (_, killed) = watch_to_end(&w.api, &alice, &slow.id).await;
    assert_eq!((killed.state(), killed.kestra_state.as_str()), (JobState::Cancelled, "KILLED"));
    killed_mid_trigger(w).await;
}

async fn killed_mid_trigger(mut w: World) {
    let alice = w.stack.token("alice", &["User"]);
    // The create reaches Kestra and its answer is held; the gateway dies waiting for it.
    w.kestra.fault(json!({"delay_ms": 8000})).await;
    let job = submit(&w.api, &alice, trigger("qiria.demo", "hello", &[("name", "x")], "")).await.expect("trigger");
    let arrived =
        wait_until(Duration::from_secs(10), || async { executions_of(&w.kestra, &job.id).await.len() == 1 }).await;
    assert!(arrived, "the create never reached Kestra");
    let gateway = w.stack.gateway.as_mut().unwrap();
    gateway.kill();
    gateway.restart().await;

    let (_, done) = watch_to_end(&w.api, &alice, &job.id).await;
    assert_eq!(done.state(), JobState::Success, "{done:?}");
    let executions = executions_of(&w.kestra, &job.id).await;
    assert_eq!(executions.len(), 1, "{executions:?}");
    assert_eq!(executions[0]["id"], done.execution_id.as_str());
    let got = w.api.clone().get_job(with_token(GetJobRequest { id: job.id.clone() }, &alice)).await.unwrap();
    assert_eq!(got.into_inner().state(), JobState::Success, "the store agrees after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_certificate_an_unknown_ca_or_a_bad_credential_fail_closed() {
    let w = world().await;
    let alice = w.stack.token("alice", &["User"]);
    let policy = w.stack.policy_dir.clone();
    let foreign = ForeignPki::write(&w.dir.path().join("foreign"));
    // A client certificate the double's CA did not sign; a pinned CA that did not sign the
    // double's server certificate.
    let wrong_cert = w.dir.path().join("wrong-cert");
    w.kestra.write_tls_secret(&wrong_cert).unwrap();
    std::fs::copy(&foreign.client_cert_pem, wrong_cert.join("tls.crt")).unwrap();
    std::fs::copy(&foreign.client_key_pem, wrong_cert.join("tls.key")).unwrap();
    let unknown_ca = w.dir.path().join("unknown-ca");
    w.kestra.write_tls_secret(&unknown_ca).unwrap();
    std::fs::copy(&foreign.ca_pem, unknown_ca.join("ca.crt")).unwrap();

    for (name, tls) in [("wrong client certificate", &wrong_cert), ("unknown CA", &unknown_ca)] {
        let dir = w.dir.path().join(name.replace(' ', "-"));
        std::fs::create_dir_all(&dir).unwrap();
        let toml = w.kestra.gateway_toml(&dir, Some(tls));
        let gateway = Gateway::start(&dir, &w.stack.keys_dir, &policy, &toml).await;
        let direct = JobServiceClient::connect(gateway.url()).await.unwrap();
        let job = submit(&direct, &alice, trigger("qiria.demo", "hello", &[("name", "x")], "")).await.expect("trigger");
        let (_, done) = watch_to_end(&direct, &alice, &job.id).await;
        assert_eq!(done.state(), JobState::Failed, "{name}: {done:?}");
        let closed = ["unreachable", "could not confirm"].iter().any(|s| done.reason.contains(s));
        assert!(closed, "{name}: says Kestra could not be used: {}", done.reason);
        assert!(executions_of(&w.kestra, &job.id).await.is_empty(), "{name}: nothing ran");
        // The mounted TLS secret is fixed (a rotated certificate, a corrected CA): the gateway
        // reloads it by itself and the next job runs.
        w.kestra.write_tls_secret(tls).unwrap();
        let fixed = wait_until(Duration::from_secs(30), || async {
            let job =
                submit(&direct, &alice, trigger("qiria.demo", "hello", &[("name", "x")], "")).await.expect("trigger");
            watch_to_end(&direct, &alice, &job.id).await.1.state() == JobState::Success
        })
        .await;
        assert!(fixed, "{name}: the fixed TLS files were never used:\n{}", gateway.output());
    }

    // The right certificates, a wrong credential: Kestra's 401, said plainly, never retried.
    let dir = w.dir.path().join("bad-credential");
    std::fs::create_dir_all(&dir).unwrap();
    let toml = w.kestra.gateway_toml(&dir, None);
    let credential = dir.join("kestra-credential");
    std::fs::write(credential.join("password"), "not-the-password").unwrap();
    let gateway = Gateway::start(&dir, &w.stack.keys_dir, &policy, &toml).await;
    let direct = JobServiceClient::connect(gateway.url()).await.unwrap();
    let job = submit(&direct, &alice, trigger("qiria.demo", "hello", &[("name", "x")], "")).await.expect("trigger");
    let (_, done) = watch_to_end(&direct, &alice, &job.id).await;
    assert_eq!(done.state(), JobState::Failed);
    assert!(done.reason.contains("refused the gateway's credential (401)"), "{}", done.reason);

    // The mounted secret is fixed (as a rotated Kubernetes secret would be): the gateway
    // reloads it by itself, and the next job runs.
    w.kestra.write_credential(&credential).unwrap();
    let fixed = wait_until(Duration::from_secs(20), || async {
        let job = submit(&direct, &alice, trigger("qiria.demo", "hello", &[("name", "x")], "")).await.expect("trigger");
        watch_to_end(&direct, &alice, &job.id).await.1.state() == JobState::Success
    })
    .await;
    assert!(fixed, "the new credential was never used:\n{}", gateway.output());
    let log = gateway.output();
    assert!(log.matches("Kestra connection loaded").count() >= 2, "reloaded: {log}");
    assert!(!log.contains("not-the-password") && !log.contains(w.kestra.authorization().as_str()), "credential logged");
}
