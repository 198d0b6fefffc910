//! Decisions reused through a real Envoy: a repeat of a request by the same token is answered
//! from the token's cache entry, never for another token, and never after a policy reload.

use qiria_test_support::authz::Stack;
use qiria_test_support::call::Protocol::Http1;
use qiria_test_support::call::Reply;

const AUTHZ: &str = env!("CARGO_BIN_EXE_authz");

/// (status, whether the decision came from the cache, bundle revision) of a request.
async fn decided(stack: &Stack, path: &str, token: Option<&str>) -> (u16, bool, String) {
    let reply: Reply = stack.send(Http1, "GET", path, token, &[]).await;
    let id = reply.decision_key().unwrap_or_else(|| panic!("no decision key on {reply:?}"));
    let log = stack.authz.decision_log(&id).await;
    (
        reply.status,
        log["qiria"]["cached"].as_bool().unwrap(),
        log["bundles"]["authz"]["revision"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn decisions_are_reused_per_token_and_request_and_never_across_tokens_or_reloads() {
    let stack = Stack::start(AUTHZ).await;
    let alice = stack.token("alice", &["User"]);
    let audrey = stack.token("audrey", &["Contractor"]);
    let revision = stack.authz.policy_revision().await;

    // The first request is evaluated, its repeat reused; the query is part of the request.
    assert_eq!(decided(&stack, "/v1/jobs/1", Some(&alice)).await, (200, false, revision.clone()));
    assert_eq!(decided(&stack, "/v1/jobs/1", Some(&alice)).await, (200, true, revision.clone()));
    assert_eq!(decided(&stack, "/v1/jobs/1?page=2", Some(&alice)).await, (200, false, revision.clone()));
    // Two requests alternating both stay remembered.
    assert!(decided(&stack, "/v1/jobs/1", Some(&alice)).await.1);
    assert!(decided(&stack, "/v1/jobs/1?page=2", Some(&alice)).await.1);
    // Another token on the same request is decided for itself: a role the policy does not know
    // reads no job.
    assert_eq!(decided(&stack, "/v1/jobs/1", Some(&audrey)).await, (403, false, revision.clone()));
    assert_eq!(decided(&stack, "/v1/jobs/1", Some(&audrey)).await, (403, true, revision.clone()));
    // Requests without a token share decisions by why they have none.
    assert_eq!(decided(&stack, "/v1/jobs/1", None).await, (401, false, revision.clone()));
    assert_eq!(decided(&stack, "/v1/jobs/1", None).await, (401, true, revision.clone()));
    assert_eq!(decided(&stack, "/v1/jobs/1", Some("garbage")).await, (401, false, revision.clone()));

    // A reload that takes the permission away (and the shipped tests that would refuse it):
    // nothing remembered from before is used.
    std::fs::remove_file(stack.policy_dir.join("qiria/authz_test.rego")).unwrap();
    let revision = stack.authz.wait_for_revision_change(&revision).await;
    let data_path = stack.policy_dir.join("qiria/data.json");
    let mut data: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&data_path).unwrap()).unwrap();
    data["rbac"]["roles"]["User"] = serde_json::json!(["jobs:submit-script"]);
    data["rbac"]["roles"]["Contractor"] = serde_json::json!(["jobs:read"]);
    std::fs::write(&data_path, serde_json::to_string_pretty(&data).unwrap()).unwrap();
    let reloaded = stack.authz.wait_for_revision_change(&revision).await;
    assert_eq!(decided(&stack, "/v1/jobs/1", Some(&alice)).await, (403, false, reloaded.clone()));
    assert_eq!(decided(&stack, "/v1/jobs/1", Some(&audrey)).await, (200, false, reloaded.clone()));
    assert_eq!(decided(&stack, "/v1/jobs/1", Some(&alice)).await, (403, true, reloaded));
}
