//! Per-user bounds, retention and erasure, through the real Envoy + authz: one user's flood or
//! pile of unfinished jobs is refused with RESOURCE_EXHAUSTED (429 over REST) while everyone
//! else carries on; finished jobs go after their retention period; an Admin erases a user's jobs.

use std::time::Duration;

use qiria_test_support::authz::Stack;
use qiria_test_support::jobs::{with_token, Api};
use qiria_test_support::{wait_until, workspace_root};
use tonic::Code;
use worker_gateway::pb::job_service_client::JobServiceClient;
use worker_gateway::pb::{
    CancelJobRequest, EraseUserJobsRequest, GetJobRequest, Job, ListJobsRequest, SubmitScriptRequest,
};

fn authz() -> String {
    qiria_test_support::binary("authz").display().to_string()
}

async fn stack(gateway_toml: &str) -> (Stack, Api) {
    let stack = Stack::with_gateway_config(&authz(), &workspace_root().join("policies/rego"), gateway_toml).await;
    let api = JobServiceClient::connect(stack.envoy.url("")).await.expect("connect through Envoy");
    (stack, api)
}

async fn script(api: &Api, token: &str) -> Result<Job, tonic::Status> {
    let message =
        SubmitScriptRequest { language: "python".into(), body: "print(1)".into(), idempotency_key: String::new() };
    api.clone().submit_script(with_token(message, token)).await.map(|r| r.into_inner())
}

async fn list(api: &Api, token: &str) -> Result<Vec<Job>, tonic::Status> {
    api.clone().list_jobs(with_token(ListJobsRequest::default(), token)).await.map(|r| r.into_inner().jobs)
}

/// A REST call through Envoy: its status.
async fn rest(stack: &Stack, method: reqwest::Method, path: &str, token: &str, body: Option<&str>) -> u16 {
    let mut request = qiria_test_support::client(false).request(method, stack.envoy.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    request.send().await.expect("through Envoy").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_too_many_unfinished_jobs_is_refused_and_nobody_else_is() {
    let (stack, api) = stack("[users]\nlive_jobs = 2\n").await;
    let (alice, bob) = (stack.token("alice", &["User"]), stack.token("bob", &["User"]));
    // Scripts stay queued (no scripting worker configured here): unfinished.
    let first = script(&api, &alice).await.expect("first");
    script(&api, &alice).await.expect("second");
    let refused = script(&api, &alice).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{}", refused.message());
    assert_eq!(
        rest(&stack, reqwest::Method::POST, "/v1/jobs/scripts", &alice, Some(r#"{"language":"python","body":"x"}"#))
            .await,
        429
    );
    script(&api, &bob).await.expect("another user is not held back");
    // Finishing one makes room again.
    api.clone().cancel_job(with_token(CancelJobRequest { id: first.id }, &alice)).await.expect("cancel");
    script(&api, &alice).await.expect("room again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_user_is_slowed_down_alone() {
    let (stack, api) = stack("[users]\nrequests_per_minute = 5\n").await;
    let (alice, bob) = (stack.token("alice", &["User"]), stack.token("bob", &["User"]));
    for _ in 0..5 {
        list(&api, &alice).await.expect("within the rate");
    }
    assert_eq!(list(&api, &alice).await.unwrap_err().code(), Code::ResourceExhausted);
    assert_eq!(rest(&stack, reqwest::Method::GET, "/v1/jobs", &alice, None).await, 429);
    list(&api, &bob).await.expect("bob has his own bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_expire_after_their_retention() {
    let (stack, api) = stack("[retention]\nkeep_finished_secs = 1\nsweep_interval_secs = 1\n").await;
    let alice = stack.token("alice", &["User"]);
    let (done, live) = (script(&api, &alice).await.unwrap(), script(&api, &alice).await.unwrap());
    api.clone().cancel_job(with_token(CancelJobRequest { id: done.id.clone() }, &alice)).await.expect("cancel");
    let get = |id: String| {
        let (mut api, token) = (api.clone(), alice.clone());
        async move { api.get_job(with_token(GetJobRequest { id }, &token)).await }
    };
    let expired = wait_until(Duration::from_secs(20), || async {
        get(done.id.clone()).await.is_err_and(|e| e.code() == Code::NotFound)
    })
    .await;
    assert!(expired, "the finished job outlived its retention");
    assert!(get(live.id.clone()).await.is_ok(), "an unfinished job is never expired");
    let log = stack.gateway.as_ref().unwrap().output();
    assert!(log.contains("jobs_expired"), "audited: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_erases_a_users_jobs_and_only_theirs() {
    let (stack, api) = stack("").await;
    let (alice, bob) = (stack.token("alice", &["User"]), stack.token("bob", &["User"]));
    let admin = stack.token("root", &["Admin"]);
    let finished = script(&api, &alice).await.unwrap();
    api.clone().cancel_job(with_token(CancelJobRequest { id: finished.id }, &alice)).await.unwrap();
    script(&api, &alice).await.unwrap();
    let bobs = script(&api, &bob).await.unwrap();

    let erase = |token: &str, owner: &str| {
        let (mut api, request) = (api.clone(), with_token(EraseUserJobsRequest { owner: owner.into() }, token));
        async move { api.erase_user_jobs(request).await }
    };
    assert_eq!(erase(&alice, "bob").await.unwrap_err().code(), Code::PermissionDenied, "a User erases nothing");
    assert_eq!(rest(&stack, reqwest::Method::POST, "/v1/jobs/erase", &bob, Some(r#"{"owner":"alice"}"#)).await, 403);
    // The live job is cancelled (nothing of it had left the gateway), then both are erased.
    let erased = erase(&admin, "alice").await.expect("an Admin erases").into_inner();
    assert_eq!((erased.erased, erased.still_live), (2, 0));
    assert!(list(&api, &alice).await.unwrap().is_empty(), "alice's jobs are gone");
    let left = list(&api, &bob).await.unwrap();
    assert_eq!(left.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), vec![bobs.id], "bob's are not");
    assert_eq!(rest(&stack, reqwest::Method::POST, "/v1/jobs/erase", &admin, Some(r#"{"owner":"alice"}"#)).await, 200);
    let log = stack.gateway.as_ref().unwrap().output();
    assert!(log.contains("jobs_erased") && log.contains("\"by\":\"root\""), "audited: {log}");
}
