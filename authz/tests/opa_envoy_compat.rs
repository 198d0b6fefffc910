//! A policy written for OPA-Envoy (its input document, its result object, Rego v0) runs
//! unchanged behind authz and a real Envoy, with the decisions and response changes it
//! would have there.

use std::path::Path;

use qiria_test_support::authz::Stack;
use qiria_test_support::call::Protocol::Http1;
use qiria_test_support::tokens::primer_token;

const AUTHZ: &str = env!("CARGO_BIN_EXE_authz");

#[tokio::test]
async fn opa_envoy_policy_decides_the_same_here() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/opa-envoy");
    let stack = Stack::with_policy(AUTHZ, &fixture, &["--rego-v0", "--decision-rule", "data.envoy.authz.allow"]).await;

    // Allowed, with the policy's header changes applied both ways.
    let reply = stack.send(Http1, "GET", "/people?lang=en", None, &[("x-internal", "secret")]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.upstream_header("x-ext-auth-allow"), vec!["yes".to_string()]);
    assert!(reply.upstream_header("x-internal").is_empty(), "request_headers_to_remove ignored");
    assert_eq!(reply.headers.get("x-served-by").unwrap(), "opa-policy");
    // The policy's dynamic metadata reaches Envoy next to ours, which it cannot override.
    let decision_id =
        stack.authz.decision_log(&reply.decision_key().unwrap()).await["decision_id"].as_str().unwrap().to_string();
    let logged =
        qiria_test_support::wait_until(std::time::Duration::from_secs(5), || async {
            stack.envoy.access_log().iter().any(|l| {
                l["ext_authz"]["policy_tag"] == "people" && l["ext_authz"]["decision_id"] == decision_id.as_str()
            })
        })
        .await;
    assert!(logged, "{:?}", stack.envoy.access_log());

    // `parsed_path` works on Envoy's normalised path: /people/../admin is /admin.
    let reply = stack.send(Http1, "GET", "/people/../admin", None, &[]).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body, r#"{"reason":"not allowed"}"#);
    assert_eq!(reply.headers.get("x-ext-auth-allow").unwrap(), "no");

    // `parsed_body` from a JSON body.
    let json = [("content-type", "application/json")];
    let client = reqwest::Client::new();
    let post =
        |body: &'static str| client.post(stack.envoy.url("/people")).header(json[0].0, json[0].1).body(body).send();
    assert_eq!(post(r#"{"firstname":"Ada"}"#).await.unwrap().status(), 200);
    assert_eq!(post(r#"{"firstname":""}"#).await.unwrap().status(), 403);
    assert_eq!(post("{not json").await.unwrap().status(), 403, "an unparsable body gives a null parsed_body");

    // A policy-chosen status and body.
    let reply = stack.send(Http1, "GET", "/people?slow=1", None, &[]).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.body, "slow down");
}

/// OPA-Envoy's tutorial shape, unchanged: the JWT verified in Rego with `io.jwt.decode_verify`
/// (authz's own verifier refuses HS256; inside Rego the policy's constraints rule, as in OPA).
#[tokio::test]
async fn the_tutorial_policy_verifying_the_token_in_rego_runs_unchanged() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/opa-envoy-primer");
    let stack = Stack::with_policy(AUTHZ, &fixture, &["--decision-rule", "data.envoy.authz.allow"]).await;
    let get = |token: String| {
        let stack = &stack;
        async move { stack.send(Http1, "GET", "/people/ada", Some(&token), &[]).await.status }
    };
    assert_eq!(get(primer_token("guest", "alice", "secret", 300)).await, 200);
    assert_eq!(get(primer_token("admin", "alice", "secret", 300)).await, 200);
    assert_ne!(get(primer_token("intruder", "alice", "secret", 300)).await, 200, "unknown role");
    assert_ne!(get(primer_token("guest", "alice", "not-the-secret", 300)).await, 200, "wrong secret");
    assert_ne!(get(primer_token("guest", "alice", "secret", -60)).await, 200, "expired");
    let token = primer_token("guest", "alice", "secret", 300);
    let tampered = qiria_test_support::tokens::tampered(&token, |p| p["role"] = "admin".into());
    assert_ne!(get(tampered).await, 200, "tampered payload");

    // A JSON body rule against the token's base64url subject.
    let client = reqwest::Client::new();
    let post = |token: String, body: &'static str| {
        client
            .post(stack.envoy.url("/people"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let admin = primer_token("admin", "alice", "secret", 300);
    assert_eq!(post(admin.clone(), r#"{"firstname": "Bob"}"#).await.unwrap().status(), 200);
    assert_ne!(post(admin, r#"{"firstname": "Alice"}"#).await.unwrap().status(), 200, "may not add oneself");
    assert_ne!(
        post(primer_token("guest", "alice", "secret", 300), r#"{"firstname": "Bob"}"#).await.unwrap().status(),
        200
    );
}
