//! Decisions reused through a real Envoy. With the shipped bundle's decision key, one decision
//! serves every request with the same method, route and roles — a new token, another job id —
//! and never one whose route or roles differ. Without it (`cache_decisions` only), a repeat of
//! a request by the same token is answered from the token's cache entry, never for another
//! token. Never after a policy reload.

use qiria_test_support::authz::{copy_dir, Stack};
use qiria_test_support::call::Protocol::Http1;
use qiria_test_support::call::Reply;

const AUTHZ: &str = env!("CARGO_BIN_EXE_authz");

/// (status, whether the decision came from the cache, bundle revision) of a request.
async fn decided(stack: &Stack, path: &str, token: Option<&str>) -> (u16, bool, String) {
    decided_as(stack, "GET", path, token).await
}

async fn decided_as(stack: &Stack, method: &str, path: &str, token: Option<&str>) -> (u16, bool, String) {
    let reply: Reply = stack.send(Http1, method, path, token, &[]).await;
    let id = reply.decision_key().unwrap_or_else(|| panic!("no decision key on {reply:?}"));
    let log = stack.authz.decision_log(&id).await;
    (
        reply.status,
        log["qiria"]["cached"].as_bool().unwrap(),
        log["bundles"]["authz"]["revision"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn one_decision_serves_a_key_across_tokens_and_ids_and_never_another_route_or_roles() {
    let stack = Stack::start(AUTHZ).await;
    let revision = stack.authz.policy_revision().await;
    let (alice, bob) = (stack.token("alice", &["User"]), stack.token("bob", &["User"]));
    let audrey = stack.token("audrey", &["Auditor"]);

    // GET /v1/jobs/* with the roles [User]: decided once, for everyone with those roles.
    assert_eq!(decided(&stack, "/v1/jobs/1", Some(&alice)).await, (200, false, revision.clone()));
    assert_eq!(decided(&stack, "/v1/jobs/2", Some(&alice)).await, (200, true, revision.clone()));
    assert_eq!(decided(&stack, "/v1/jobs/3?page=2", Some(&bob)).await, (200, true, revision.clone()));
    // Other roles, another route of the same prefix, an exact route: decided for themselves.
    assert_eq!(decided(&stack, "/v1/jobs/4", Some(&audrey)).await, (200, false, revision.clone()));
    assert_eq!(decided(&stack, "/v1/jobs/4/events", Some(&alice)).await, (200, false, revision.clone()));
    assert_eq!(decided(&stack, "/v1/jobs/5/events", Some(&bob)).await, (200, true, revision.clone()));
    assert_eq!(decided(&stack, "/v1/admin/jobs", Some(&alice)).await, (403, false, revision.clone()));
    assert_eq!(decided(&stack, "/v1/admin/jobs", Some(&audrey)).await, (200, false, revision.clone()));
    // A path of no route is keyed whole: one id's decision is not another's.
    assert_eq!(decided(&stack, "/v1/unknown/1", Some(&alice)).await, (403, false, revision.clone()));
    assert_eq!(decided(&stack, "/v1/unknown/2", Some(&bob)).await, (403, false, revision.clone()));
    assert_eq!(decided(&stack, "/v1/unknown/2", Some(&alice)).await, (403, true, revision.clone()));
    // Flows are not a keyed route: an allowlisted flow's decision is never another flow's.
    let trigger = |flow: &str| format!("/v1/flows/qiria.demo/{flow}/executions");
    assert_eq!(decided_as(&stack, "POST", &trigger("hello"), Some(&alice)).await, (200, false, revision.clone()));
    assert_eq!(decided_as(&stack, "POST", &trigger("hello"), Some(&bob)).await, (200, true, revision.clone()));
    assert_eq!(decided_as(&stack, "POST", &trigger("other"), Some(&bob)).await, (403, false, revision.clone()));
    // No token: keyed by why there is none.
    assert_eq!(decided(&stack, "/v1/jobs/1", None).await, (401, false, revision.clone()));
    assert_eq!(decided(&stack, "/v1/jobs/9", None).await, (401, true, revision.clone()));
    assert_eq!(decided(&stack, "/v1/jobs/9", Some("garbage")).await, (401, false, revision.clone()));

    // After a reload that takes the permission away (and the shipped tests that would refuse
    // it), nothing from before is used.
    for file in ["authz_test.rego", "decision_key_test.rego"] {
        std::fs::remove_file(stack.policy_dir.join("qiria").join(file)).unwrap();
    }
    let revision = stack.authz.wait_for_revision_change(&revision).await;
    let data_path = stack.policy_dir.join("qiria/data.json");
    let mut data: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&data_path).unwrap()).unwrap();
    data["rbac"]["roles"]["User"] = serde_json::json!(["jobs:submit-script"]);
    std::fs::write(&data_path, serde_json::to_string_pretty(&data).unwrap()).unwrap();
    let reloaded = stack.authz.wait_for_revision_change(&revision).await;
    assert_eq!(decided(&stack, "/v1/jobs/1", Some(&alice)).await, (403, false, reloaded.clone()));
    assert_eq!(decided(&stack, "/v1/jobs/2", Some(&bob)).await, (403, true, reloaded));
}

#[tokio::test]
async fn without_a_decision_key_decisions_are_reused_per_token_and_never_across_tokens_or_reloads() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&qiria_test_support::workspace_root().join("policies/rego"), dir.path());
    for file in ["decision_key.rego", "decision_key_test.rego"] {
        std::fs::remove_file(dir.path().join("qiria").join(file)).unwrap();
    }
    let stack = Stack::with_policy(AUTHZ, dir.path(), &[]).await;
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
