//! The shipped RBAC policy, through a real Envoy: each role gets exactly its permissions,
//! over HTTP/1.1 and gRPC, and client-supplied identity headers gain nothing.

use qiria_test_support::authz::Stack;
use qiria_test_support::call::Protocol::{Grpc, Http1};
use qiria_test_support::call::{Protocol, Reply};

const AUTHZ: &str = env!("CARGO_BIN_EXE_authz");

/// (roles, protocol, method, path, allowed)
const CASES: &[(&[&str], Protocol, &str, &str, bool)] = &[
    (&["User"], Grpc, "POST", "/qiria.jobs.v1.JobService/SubmitScript", true),
    (&["User"], Grpc, "POST", "/qiria.jobs.v1.JobService/TriggerFlow", true),
    (&["User"], Grpc, "POST", "/qiria.jobs.v1.JobService/ListJobs", true),
    (&["User"], Grpc, "POST", "/qiria.admin.v1.UserService/CreateUser", false),
    (&["User"], Grpc, "POST", "/qiria.admin.v1.KeyService/RotateKeys", false),
    (&["User"], Http1, "POST", "/v1/jobs/scripts", true),
    (&["User"], Http1, "GET", "/v1/jobs/42", true),
    (&["User"], Http1, "GET", "/v1/admin/jobs", false),
    (&["User"], Http1, "GET", "/v1/audit/events", false),
    (&["User"], Http1, "POST", "/v1/flows/qiria.demo/hello/executions", true),
    // Only allow-listed flows (policy data `flows`) have a trigger operation at all.
    (&["User"], Http1, "POST", "/v1/flows/prod/nightly/executions", false),
    (&["Admin"], Http1, "POST", "/v1/flows/prod/nightly/executions", false),
    (&["Auditor"], Grpc, "POST", "/qiria.audit.v1.AuditService/ListEvents", true),
    (&["Auditor"], Grpc, "POST", "/qiria.jobs.v1.JobService/ListJobs", true),
    (&["Auditor"], Grpc, "POST", "/qiria.jobs.v1.JobService/CancelJob", false),
    (&["Auditor"], Grpc, "POST", "/qiria.jobs.v1.JobService/SubmitScript", false),
    (&["Auditor"], Http1, "GET", "/v1/audit/events", true),
    (&["Auditor"], Http1, "POST", "/v1/jobs/scripts", false),
    (&["Auditor"], Http1, "DELETE", "/v1/admin/users/bob", false),
    (&["Admin"], Grpc, "POST", "/qiria.admin.v1.UserService/SetRoles", true),
    (&["Admin"], Grpc, "POST", "/qiria.admin.v1.KeyService/RotateKeys", true),
    (&["Admin"], Http1, "GET", "/v1/admin/jobs", true),
    (&["Admin"], Http1, "POST", "/v1/admin/keys/rotate", true),
    (&["Admin"], Http1, "GET", "/v1/unknown/route", false),
    (&["Admin"], Http1, "PATCH", "/v1/jobs/42", false),
    (&[], Http1, "GET", "/v1/jobs", false),
    (&["Superuser"], Grpc, "POST", "/qiria.jobs.v1.JobService/SubmitScript", false),
];

fn allowed(reply: &Reply, protocol: Protocol) -> bool {
    match protocol {
        Http1 => reply.status == 200 && reply.reached_upstream(),
        Grpc => reply.grpc_status.as_deref() == Some("0") && reply.reached_upstream(),
    }
}

#[tokio::test]
async fn each_role_gets_exactly_its_permissions() {
    let stack = Stack::start(AUTHZ).await;
    let mut wrong = Vec::new();
    for (roles, protocol, method, path, expected) in CASES {
        let token = stack.token("alice", roles);
        let reply = stack.send(*protocol, method, path, Some(&token), &[]).await;
        if allowed(&reply, *protocol) != *expected {
            wrong.push(format!("{roles:?} {protocol:?} {method} {path}: expected allowed={expected}, got {reply:?}"));
        }
        if !expected {
            // Denied with a valid identity: 403 / PERMISSION_DENIED, never the upstream.
            match protocol {
                Http1 => assert_eq!(reply.status, 403, "{method} {path}: {}", reply.body),
                Grpc => assert_eq!(reply.grpc_status.as_deref(), Some("7"), "{method} {path}"),
            }
        }
    }
    assert!(wrong.is_empty(), "wrong decisions:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn verified_identity_reaches_upstream_and_forged_headers_never_do() {
    let stack = Stack::start(AUTHZ).await;
    let forged = [
        ("x-qiria-roles", "Admin"),
        ("x-qiria-subject", "root"),
        ("x-qiria-decision-id", "forged"),
        ("X-Qiria-Tenant", "other"),
        ("x-qiria-anything", "forged"),
    ];
    let no_forged_header_arrives = |reply: &qiria_test_support::call::Reply| {
        let echo = reply.echo.as_ref().expect("reached the upstream");
        let ours = ["x-qiria-roles", "x-qiria-subject"];
        let leaked: Vec<&String> =
            echo.headers.keys().filter(|h| h.starts_with("x-qiria-") && !ours.contains(&h.as_str())).collect();
        assert!(leaked.is_empty(), "client-sent {leaked:?} reached the upstream");
    };

    // A User forging Admin gains nothing, and the upstream sees only the verified identity.
    let user = stack.token("alice", &["User"]);
    let denied = stack.send(Http1, "POST", "/v1/admin/keys/rotate", Some(&user), &forged).await;
    assert_eq!(denied.status, 403);
    let allowed = stack.send(Http1, "GET", "/v1/jobs/1", Some(&user), &forged).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(allowed.upstream_header("x-qiria-roles"), vec!["User".to_string()]);
    assert_eq!(allowed.upstream_header("x-qiria-subject"), vec!["alice".to_string()]);
    assert!(allowed.upstream_header("x-qiria-decision-id").is_empty());
    no_forged_header_arrives(&allowed);
    // The upstream joins its logs to the decision through Envoy's request id.
    let request_id = allowed.decision_key().unwrap();
    assert_eq!(stack.authz.decision_log(&request_id).await["qiria"]["subject"], "alice");

    // Over gRPC too.
    let grpc = stack.send(Grpc, "POST", "/qiria.jobs.v1.JobService/GetJob", Some(&user), &forged).await;
    assert_eq!(grpc.grpc_status.as_deref(), Some("0"));
    assert_eq!(grpc.upstream_header("x-qiria-roles"), vec!["User".to_string()]);

    // Anonymous on a public route: the forged headers are stripped, not forwarded.
    let public = stack.send(Http1, "GET", "/healthz", None, &forged).await;
    assert_eq!(public.status, 200, "{}", public.body);
    assert!(public.upstream_header("x-qiria-roles").is_empty(), "{:?}", public.echo);
    assert!(public.upstream_header("x-qiria-subject").is_empty(), "{:?}", public.echo);
    no_forged_header_arrives(&public);
    no_forged_header_arrives(&grpc);

    // The bearer token itself is consumed by authz, not forwarded.
    assert!(allowed.upstream_header("authorization").is_empty(), "{:?}", allowed.echo);
    let log = stack.envoy.access_log();
    assert!(log.iter().all(|l| l["decision_id"].as_str().is_some_and(|d| d.len() == 36)), "{log:?}");
}

#[tokio::test]
async fn anonymous_requests_get_401_with_a_bearer_challenge() {
    let stack = Stack::start(AUTHZ).await;
    let reply = stack.send(Http1, "GET", "/v1/jobs", None, &[]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.headers.get("www-authenticate").unwrap(), "Bearer realm=\"qiria\"");
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["error"], "unauthenticated");
    assert_eq!(body["decision_id"].as_str().unwrap().len(), 36);
    assert_eq!(reply.headers.get("x-qiria-decision-id").unwrap(), body["decision_id"].as_str().unwrap());
    assert_eq!(body.as_object().unwrap().len(), 2, "no policy internals in the body: {body}");

    let grpc = stack.send(Grpc, "POST", "/qiria.jobs.v1.JobService/SubmitScript", None, &[]).await;
    assert_eq!(grpc.grpc_status.as_deref(), Some("16"), "UNAUTHENTICATED");
}
