//! The job API through a real Envoy + authz, and straight to the gateway's port: the gateway
//! verifies every caller itself, scopes every read and cancel by owner and role in its queries,
//! validates every field, gives one job per idempotency key, and streams state changes.

use std::time::Duration;

use qiria_test_support::authz::Stack;
use qiria_test_support::jobs::with_token;
use tonic::{Code, Request};
use worker_gateway::pb::job_service_client::JobServiceClient;
use worker_gateway::pb::{
    CancelJobRequest, GetJobRequest, JobState, ListJobsRequest, SubmitScriptRequest, TriggerFlowRequest,
    WatchJobRequest,
};

fn authz() -> String {
    qiria_test_support::binary("authz").display().to_string()
}

async fn client(url: String) -> JobServiceClient<tonic::transport::Channel> {
    JobServiceClient::connect(url).await.expect("connect")
}

/// The ids of the jobs `token`'s holder may list.
async fn listed(api: &JobServiceClient<tonic::transport::Channel>, token: &str) -> Vec<String> {
    let request = with_token(ListJobsRequest { page_size: 50, page_token: String::new() }, token);
    let jobs = api.clone().list_jobs(request).await.expect("list").into_inner().jobs;
    jobs.into_iter().map(|j| j.id).collect()
}

fn trigger(namespace: &str, flow: &str, key: &str) -> TriggerFlowRequest {
    TriggerFlowRequest {
        namespace: namespace.into(),
        flow_id: flow.into(),
        inputs: [("when".to_string(), "'; DROP TABLE jobs; -- $(rm -rf /) {{ 7*7 }}".to_string())].into(),
        labels: [("team".to_string(), "data".to_string())].into(),
        idempotency_key: key.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_roles_idempotency_and_watching_through_envoy() {
    let stack = Stack::with_gateway(&authz()).await;
    let mut api = client(stack.envoy.url("")).await;
    let (alice, bob) = (stack.token("alice", &["User"]), stack.token("bob", &["User"]));
    let (auditor, admin) = (stack.token("audrey", &["Auditor"]), stack.token("root", &["Admin"]));

    // A User triggers a flow; the same key again is the same job, inputs travel as data.
    let first = api.trigger_flow(with_token(trigger("qiria.demo", "hello", "k-1"), &alice)).await.unwrap().into_inner();
    assert_eq!((first.owner.as_str(), first.state()), ("alice", JobState::Queued));
    assert!(first.reason.contains("Kestra"), "says what it waits for: {}", first.reason);
    let again = api.trigger_flow(with_token(trigger("qiria.demo", "hello", "k-1"), &alice)).await.unwrap();
    assert_eq!(again.into_inner().id, first.id, "one job per idempotency key");
    let second = api.trigger_flow(with_token(trigger("qiria.demo", "hello", ""), &alice)).await.unwrap().into_inner();
    assert_ne!(second.id, first.id);
    // A flow off the allowlist is refused by the gateway itself: over gRPC the flow is inside
    // the message, where authz's path-level decision cannot see it.
    let off = api.trigger_flow(with_token(trigger("company.team", "weekly", ""), &alice)).await.unwrap_err();
    assert_eq!(off.code(), Code::PermissionDenied, "{}", off.message());
    assert!(off.message().contains("allowlist"), "{}", off.message());
    let script =
        SubmitScriptRequest { language: "python".into(), body: "print('hi')".into(), idempotency_key: String::new() };
    let bobs = api.submit_script(with_token(script, &bob)).await.unwrap().into_inner();
    assert!(bobs.reason.contains("scripting worker"), "{}", bobs.reason);

    // Another User can neither see nor cancel alice's jobs (not even learn they exist).
    let get = |id: &str| GetJobRequest { id: id.into() };
    assert_eq!(api.get_job(with_token(get(&first.id), &bob)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        api.cancel_job(with_token(CancelJobRequest { id: first.id.clone() }, &bob)).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(listed(&api, &bob).await, vec![bobs.id.clone()]);
    assert_eq!(listed(&api, &alice).await.len(), 2);

    // An Auditor reads every job, submits and cancels nothing (refused by authz at Envoy).
    assert_eq!(listed(&api, &auditor).await.len(), 3);
    assert_eq!(api.get_job(with_token(get(&first.id), &auditor)).await.unwrap().into_inner().owner, "alice");
    let refused = api.trigger_flow(with_token(trigger("qiria.demo", "hello", ""), &auditor)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = api.cancel_job(with_token(CancelJobRequest { id: first.id.clone() }, &auditor)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // alice watches her second job; an Admin cancels it; the stream says so and ends.
    let mut stream =
        api.watch_job(with_token(WatchJobRequest { id: second.id.clone() }, &alice)).await.unwrap().into_inner();
    let now = stream.message().await.unwrap().unwrap().job.unwrap();
    assert_eq!(now.state(), JobState::Queued);
    let cancelled =
        api.cancel_job(with_token(CancelJobRequest { id: second.id.clone() }, &admin)).await.unwrap().into_inner();
    assert_eq!(cancelled.state(), JobState::Cancelled);
    let next = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("a change in time");
    assert_eq!(next.unwrap().unwrap().job.unwrap().state(), JobState::Cancelled);
    assert!(tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("end").unwrap().is_none());
    // A finished job cannot be cancelled again; alice cancels her own live job.
    let again = api.cancel_job(with_token(CancelJobRequest { id: second.id.clone() }, &alice)).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let own = api.cancel_job(with_token(CancelJobRequest { id: first.id.clone() }, &alice)).await.unwrap().into_inner();
    assert_eq!(own.state(), JobState::Cancelled);

    // Bad fields are refused, naming the field; nothing is recorded.
    let bad = api.trigger_flow(with_token(trigger("Company Team", "nightly", ""), &alice)).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("/namespace"), "{}", bad.message());
    let mut nul = trigger("qiria.demo", "hello", "");
    nul.inputs.insert("when".into(), "a\0b".into());
    let bad = api.trigger_flow(with_token(nul, &alice)).await.unwrap_err();
    assert_eq!((bad.code(), bad.message()), (Code::InvalidArgument, "/inputs/when: must not contain NUL"));
    assert_eq!(listed(&api, &alice).await.len(), 2);

    // Audited, without the inputs or script.
    let output = stack.gateway.as_ref().unwrap().output();
    assert!(output.contains("job_submitted") && output.contains("job_cancelled"), "{output}");
    assert!(!output.contains("DROP TABLE") && !output.contains("print('hi')"), "request contents reached the log");
}

#[tokio::test]
async fn straight_to_the_gateway_no_valid_token_means_no_access() {
    let stack = Stack::with_gateway(&authz()).await;
    let gateway = stack.gateway.as_ref().unwrap();
    let mut direct = client(gateway.url()).await;

    let mut forged = Request::new(trigger("qiria.demo", "hello", ""));
    forged.metadata_mut().insert("x-qiria-subject", "alice".parse().unwrap());
    forged.metadata_mut().insert("x-qiria-roles", "Admin".parse().unwrap());
    assert_eq!(direct.trigger_flow(forged).await.unwrap_err().code(), Code::Unauthenticated);
    let stranger = qiria_test_support::tokens::SigningKey::rsa("test-rsa-1");
    let unsigned = stranger.sign(&qiria_test_support::tokens::claims("alice", &["Admin"]));
    let refused = direct.list_jobs(with_token(ListJobsRequest::default(), &unsigned)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // A valid token is the gateway's own gate, with the same scoping as through Envoy.
    let alice = stack.token("alice", &["User"]);
    let job = direct.trigger_flow(with_token(trigger("qiria.demo", "hello", ""), &alice)).await.unwrap().into_inner();
    let auditor = stack.token("audrey", &["Auditor"]);
    let refused = direct.trigger_flow(with_token(trigger("qiria.demo", "hello", ""), &auditor)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "the gateway refuses an Auditor's submit itself");
    let bob = stack.token("bob", &["User"]);
    assert_eq!(
        direct.get_job(with_token(GetJobRequest { id: job.id }, &bob)).await.unwrap_err().code(),
        Code::NotFound
    );
}

/// A gRPC frame of raw protobuf bytes, sent through Envoy; the `grpc-status` and message.
async fn raw_call(stack: &Stack, method: &str, message: Vec<u8>, token: &str) -> (String, String) {
    let mut frame = vec![0u8];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend(message);
    let response = qiria_test_support::client(true)
        .post(stack.envoy.url(&format!("/qiria.jobs.v1.JobService/{method}")))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .bearer_auth(token)
        .body(frame)
        .send()
        .await
        .expect("through envoy");
    let header =
        |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    (header("grpc-status"), header("grpc-message"))
}

#[tokio::test]
async fn binary_requests_with_unknown_fields_or_invalid_utf8_are_refused_naming_where() {
    use prost::Message as _;
    let stack = Stack::with_gateway(&authz()).await;
    let alice = stack.token("alice", &["User"]);
    let valid = TriggerFlowRequest { namespace: "qiria.demo".into(), flow_id: "hello".into(), ..Default::default() };

    // Field 99 (varint 1) is not in the schema: prost would drop it silently.
    let mut unknown = valid.encode_to_vec();
    unknown.extend([0x98, 0x06, 0x01]);
    let (status, message) = raw_call(&stack, "TriggerFlow", unknown, &alice).await;
    assert_eq!(status, "3", "INVALID_ARGUMENT: {message}");
    assert!(message.contains("%2F99") || message.contains("/99"), "names the field: {message}");

    // A namespace that is not UTF-8 (field 1, length 2, 0xff 0xfe).
    let (status, message) = raw_call(&stack, "TriggerFlow", vec![0x0a, 0x02, 0xff, 0xfe], &alice).await;
    assert_eq!(status, "3", "INVALID_ARGUMENT, not INTERNAL: {message}");

    // The same message without the stray field is accepted: the check is about the field.
    let (status, message) = raw_call(&stack, "TriggerFlow", valid.encode_to_vec(), &alice).await;
    assert!(status.is_empty() || status == "0", "{status} {message}");
    let api = client(stack.envoy.url("")).await;
    assert_eq!(listed(&api, &alice).await.len(), 1, "only the valid request made a job");
}
