//! Every kind of bad token is denied through a real Envoy, with a 401 and an
//! `invalid_token` challenge, and the reason reaches the decision log; good RS256 and ES256
//! tokens pass.

use jsonwebtoken::Header;
use qiria_test_support::authz::Stack;
use qiria_test_support::call::Protocol::{Grpc, Http1};
use qiria_test_support::tokens::{alg_none, claims, now, tampered, SigningKey};

const AUTHZ: &str = env!("CARGO_BIN_EXE_authz");
const ROUTE: &str = "/v1/jobs/42";

#[tokio::test]
async fn bad_tokens_are_denied_with_their_reason() {
    let stack = Stack::start(AUTHZ).await;
    let key = &stack.key;
    let good = claims("alice", &["User"]);
    let with = |field: &str, value: serde_json::Value| {
        let mut c = good.clone();
        c[field] = value;
        c
    };
    let without = |field: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(field);
        c
    };
    let stranger = SigningKey::rsa("test-rsa-1"); // same kid, key not in the secret
    let unknown_kid = SigningKey::rsa("nobody");
    let mut no_kid = Header::new(jsonwebtoken::Algorithm::RS256);
    no_kid.kid = None;
    // Header-supplied key locations are never followed: the stranger's key stays a stranger.
    let mut pointing = Header::new(jsonwebtoken::Algorithm::RS256);
    pointing.kid = Some("test-rsa-1".into());
    pointing.jku = Some("https://evil.example/jwks.json".into());
    pointing.x5u = Some("https://evil.example/cert.pem".into());

    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", key.sign(&with("exp", (now() - 120).into())), "expired"),
        ("not yet valid", key.sign(&with("nbf", (now() + 600).into())), "not_yet_valid"),
        ("wrong issuer", key.sign(&with("iss", "https://evil.example".into())), "wrong_issuer"),
        ("wrong audience", key.sign(&with("aud", "someone-else".into())), "wrong_audience"),
        ("no exp", key.sign(&without("exp")), "missing_claim"),
        ("no iss", key.sign(&without("iss")), "missing_claim"),
        ("no aud", key.sign(&without("aud")), "missing_claim"),
        // Roles travel joined by `,` (the roles header, shared decisions): one holding a `,`
        // would read as two, an empty one as none.
        ("a role with a comma", key.sign(&with("roles", serde_json::json!(["User,Admin"]))), "missing_claim"),
        ("an empty role", key.sign(&with("roles", serde_json::json!(["User", ""]))), "missing_claim"),
        ("refresh typ", key.sign(&with("typ", "refresh".into())), "wrong_type"),
        ("bad signature", stranger.sign(&good), "bad_signature"),
        ("unknown kid", unknown_kid.sign(&good), "unknown_kid"),
        ("no kid", key.sign_with_header(&no_kid, &good), "unknown_kid"),
        ("jku / x5u in the header", stranger.sign_with_header(&pointing, &good), "bad_signature"),
        ("alg none", alg_none(&good), "unsupported_alg"),
        ("HS256 with the public key", key.hs256_with_public_key(&good), "unsupported_alg"),
        ("garbage", "not.a.token".to_string(), "malformed"),
        (
            "tampered payload",
            tampered(&key.sign(&good), |p| p["roles"] = serde_json::json!(["Admin"])),
            "bad_signature",
        ),
        // RFC 7515 §4.1.11: an extension the header marks critical that we do not implement.
        (
            "unknown crit",
            key.sign_with_raw_header(serde_json::json!({"crit": ["exp-tag"], "exp-tag": 1}), &good),
            "unsupported_crit",
        ),
        ("empty crit", key.sign_with_raw_header(serde_json::json!({"crit": []}), &good), "unsupported_crit"),
        // Longer-lived than the one-hour maximum: with `iat`, and without it (`exp − now`).
        ("a year to live", key.sign(&with("exp", (now() + 365 * 86400).into())), "lifetime_too_long"),
        (
            "no iat, two hours",
            key.sign(
                &with("exp", (now() + 7200).into())
                    .as_object()
                    .map(|c| {
                        let mut c = c.clone();
                        c.remove("iat");
                        serde_json::Value::Object(c)
                    })
                    .unwrap(),
            ),
            "lifetime_too_long",
        ),
        ("exp at the end of time", key.sign(&with("exp", u64::MAX.into())), "lifetime_too_long"),
    ];
    for (name, token, reason) in &cases {
        let reply = stack.send(Http1, "GET", ROUTE, Some(token), &[]).await;
        assert_eq!(reply.status, 401, "{name}: {reply:?}");
        assert!(!reply.reached_upstream(), "{name}");
        let challenge = reply.headers.get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(challenge.contains("invalid_token"), "{name}: {challenge}");
        let grpc = stack.send(Grpc, "POST", "/qiria.jobs.v1.JobService/GetJob", Some(token), &[]).await;
        assert_eq!(grpc.grpc_status.as_deref(), Some("16"), "{name}: {grpc:?}");
        let decision_id = reply.headers.get("x-qiria-decision-id").unwrap().to_str().unwrap();
        let logged = stack.authz.decision_log(decision_id).await;
        assert_eq!(logged["qiria"]["identity_error"], *reason, "{name}: {logged}");
    }

    // Tokens never appear in authz's logs.
    let output = stack.authz.output();
    for (name, token, _) in &cases {
        if let Some(signature) = token.rsplit('.').next().filter(|s| s.len() > 16) {
            assert!(!output.contains(signature), "{name}: token leaked into logs");
        }
    }
}

#[tokio::test]
async fn good_rs256_and_es256_tokens_pass_and_leeway_is_honoured() {
    let stack = Stack::start(AUTHZ).await;
    let ec = SigningKey::ec("test-ec-1");
    ec.write_public(&stack.keys_dir);
    let ec_token = ec.sign(&claims("bob", &["User"]));
    // The key directory is watched: the new key verifies without a restart.
    let ready = qiria_test_support::wait_until(std::time::Duration::from_secs(10), || async {
        stack.send(Http1, "GET", ROUTE, Some(&ec_token), &[]).await.status == 200
    })
    .await;
    assert!(ready, "ES256 key never became usable");

    let rs = stack.send(Http1, "GET", ROUTE, Some(&stack.token("alice", &["User"])), &[]).await;
    assert_eq!(rs.status, 200);
    assert_eq!(rs.upstream_header("x-qiria-subject"), vec!["alice".to_string()]);

    // Expired 10 s ago: inside the default 30 s leeway.
    let mut recent = claims("alice", &["User"]);
    recent["exp"] = (now() - 10).into();
    assert_eq!(stack.send(Http1, "GET", ROUTE, Some(&stack.key.sign(&recent)), &[]).await.status, 200);

    // A hand-built header without `crit` verifies (so the `crit` cases fail for `crit` alone),
    // and so does a token living exactly the maximum hour.
    let raw = stack.key.sign_with_raw_header(serde_json::json!({"typ": "JWT"}), &claims("alice", &["User"]));
    assert_eq!(stack.send(Http1, "GET", ROUTE, Some(&raw), &[]).await.status, 200);
    let mut hour = claims("alice", &["User"]);
    hour["exp"] = (hour["iat"].as_u64().unwrap() + 3600).into();
    assert_eq!(stack.send(Http1, "GET", ROUTE, Some(&stack.key.sign(&hour)), &[]).await.status, 200);
}
