//! The token issuer, through a real Envoy: log in, use the access token, refresh, and the
//! refresh-token reuse detection that revokes a whole family. Bad input gets an OAuth error.

use std::process::Command;

use qiria_test_support::authz::Stack;
use qiria_test_support::call::Protocol::Http1;
use qiria_test_support::issuer::PASSWORD;

fn authz() -> String {
    qiria_test_support::binary("authz").display().to_string()
}

fn add_user(stack: &Stack, username: &str, roles: &str) -> String {
    stack.issuer().add_user(username, roles)
}

async fn token_request(stack: &Stack, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new().post(stack.envoy.url("/v1/auth/token")).form(form).send().await.unwrap();
    let status = response.status().as_u16();
    if status == 200 {
        assert_eq!(response.headers().get("cache-control").unwrap(), "no-store");
    }
    (status, response.json().await.unwrap_or_default())
}

/// Logs `username` in with the test password; the access token.
async fn access_token(stack: &Stack, username: &str) -> String {
    let (status, body) =
        token_request(stack, &[("grant_type", "password"), ("username", username), ("password", PASSWORD)]).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn login_refresh_rotation_and_reuse_detection() {
    login_refresh_rotation_and_reuse(Stack::with_issuer(&authz()).await).await;
}

#[tokio::test]
async fn login_refresh_rotation_and_reuse_detection_on_postgres() {
    if let Some(url) = qiria_test_support::postgres::fresh_database() {
        login_refresh_rotation_and_reuse(Stack::with_issuer_on(&authz(), &url).await).await;
    }
}

async fn login_refresh_rotation_and_reuse(stack: Stack) {
    let alice = add_user(&stack, "alice", "User");

    // Wrong password and unknown user: the same answer.
    let (status, wrong) =
        token_request(&stack, &[("grant_type", "password"), ("username", "alice"), ("password", "nope")]).await;
    assert_eq!(status, 400);
    let (_, unknown) =
        token_request(&stack, &[("grant_type", "password"), ("username", "mallory"), ("password", "nope")]).await;
    assert_eq!(wrong, unknown);
    assert_eq!(wrong["error"], "invalid_grant");

    // Log in, call an allowed route with the access token.
    let (status, login) =
        token_request(&stack, &[("grant_type", "password"), ("username", "alice"), ("password", PASSWORD)]).await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["expires_in"], 300);
    let access = login["access_token"].as_str().unwrap();
    let reply = stack.send(Http1, "GET", "/v1/jobs/7", Some(access), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.upstream_header("x-qiria-subject"), vec![alice.clone()]);
    assert_eq!(reply.upstream_header("x-qiria-roles"), vec!["User".to_string()]);
    assert_eq!(stack.send(Http1, "GET", "/v1/admin/jobs", Some(access), &[]).await.status, 403);

    // Refresh: a new pair; the new access token works too.
    let first = login["refresh_token"].as_str().unwrap();
    assert!(first.len() >= 43, "256-bit refresh token");
    let (status, second) = token_request(&stack, &[("grant_type", "refresh_token"), ("refresh_token", first)]).await;
    assert_eq!(status, 200, "{second}");
    let newest = second["refresh_token"].as_str().unwrap();
    assert_ne!(newest, first);
    let reply = stack.send(Http1, "GET", "/v1/jobs/7", Some(second["access_token"].as_str().unwrap()), &[]).await;
    assert_eq!(reply.status, 200);

    // The rotated token is rejected, and its reuse revokes the family: the newest fails too.
    let (status, reuse) = token_request(&stack, &[("grant_type", "refresh_token"), ("refresh_token", first)]).await;
    assert_eq!((status, reuse["error"].as_str()), (400, Some("invalid_grant")));
    let (status, after) = token_request(&stack, &[("grant_type", "refresh_token"), ("refresh_token", newest)]).await;
    assert_eq!((status, after["error"].as_str()), (400, Some("invalid_grant")));

    // Audited, without secrets.
    let output = stack.issuer().output() + &stack.authz.output();
    assert!(output.contains("refresh_token_reuse"), "{output}");
    assert!(output.contains("login_failed"), "{output}");
    for secret in [PASSWORD, first, newest, access] {
        assert!(!output.contains(secret), "a secret reached the logs");
    }
}

#[tokio::test]
async fn discovery_documents_and_bad_input() {
    let stack = Stack::with_issuer(&authz()).await;
    add_user(&stack, "bob", "Auditor");
    let client = reqwest::Client::new();
    let jwks: serde_json::Value =
        client.get(stack.envoy.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"][0]["kid"], "test-rsa-1");
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert!(jwks["keys"][0].get("d").is_none(), "no private part in the JWKS");
    let discovery: serde_json::Value =
        client.get(stack.envoy.url("/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
    assert!(discovery["token_endpoint"].as_str().unwrap().ends_with("/v1/auth/token"));

    let (status, missing) = token_request(&stack, &[("username", "bob"), ("password", PASSWORD)]).await;
    assert_eq!((status, missing["error"].as_str()), (400, Some("invalid_request")));
    assert!(missing["error_description"].as_str().unwrap().contains("grant_type"));
    let (_, no_password) = token_request(&stack, &[("grant_type", "password"), ("username", "bob")]).await;
    assert!(no_password["error_description"].as_str().unwrap().contains("password"));
    let (_, other_grant) = token_request(&stack, &[("grant_type", "client_credentials")]).await;
    assert_eq!(other_grant["error"], "unsupported_grant_type");

    let post = |body: Vec<u8>, content_type: &'static str| {
        client.post(stack.envoy.url("/v1/auth/token")).header("content-type", content_type).body(body).send()
    };
    let json = post(br#"{"grant_type":"password"}"#.to_vec(), "application/json").await.unwrap();
    assert_eq!(json.status(), 400);
    let json: serde_json::Value = json.json().await.unwrap();
    assert!(json["error_description"].as_str().unwrap().contains("content type"));
    let bad_utf8 =
        post(b"grant_type=password&username=bob&password=%ff%fe".to_vec(), "application/x-www-form-urlencoded")
            .await
            .unwrap();
    let bad_utf8: serde_json::Value = bad_utf8.json().await.unwrap();
    assert_eq!(bad_utf8["error"], "invalid_request");
    let long = format!("grant_type=password&username=bob&password={}", "p".repeat(20_000));
    let long = post(long.into_bytes(), "application/x-www-form-urlencoded").await.unwrap();
    assert_eq!(long.status(), 400);
    let huge = format!("grant_type=password&username=bob&password={}", "p".repeat(1 << 20));
    let huge = post(huge.into_bytes(), "application/x-www-form-urlencoded").await.unwrap();
    assert_eq!(huge.status(), 413);
    assert_eq!(huge.json::<serde_json::Value>().await.unwrap()["error"], "invalid_request");

    // Nothing was issued by any of that: bob's first real login is still the first.
    let (status, _) =
        token_request(&stack, &[("grant_type", "password"), ("username", "bob"), ("password", PASSWORD)]).await;
    assert_eq!(status, 200);
    assert_eq!(stack.issuer().output().matches("login_succeeded").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_rotation_under_load() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    let stack = Arc::new(Stack::with_issuer(&authz()).await);
    add_user(&stack, "carol", "User");
    let old_token = access_token(&stack, "carol").await;

    // Load: two workers calling an allowed route, logging in again every 40 requests.
    let stop = Arc::new(AtomicBool::new(false));
    let logins = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (stack, stop, logins) = (stack.clone(), stop.clone(), logins.clone());
        workers.push(tokio::spawn(async move {
            let (mut statuses, mut kids) = (Vec::new(), std::collections::BTreeSet::new());
            let mut i = 0u32;
            let mut token = String::new();
            // Bounded: the test stops it, and it never runs past 10,000 requests.
            while !stop.load(Ordering::Relaxed) && i < 10_000 {
                if i.is_multiple_of(40) {
                    let (status, body) = token_request(
                        &stack,
                        &[("grant_type", "password"), ("username", "carol"), ("password", PASSWORD)],
                    )
                    .await;
                    statuses.push(status);
                    token = body["access_token"].as_str().unwrap_or_default().to_string();
                    kids.insert(jsonwebtoken::decode_header(&token).ok().and_then(|h| h.kid).unwrap_or_default());
                    logins.fetch_add(1, Ordering::Relaxed);
                }
                statuses.push(stack.send(Http1, "GET", "/v1/jobs/1", Some(&token), &[]).await.status);
                i += 1;
            }
            (statuses, kids)
        }));
    }
    // Both workers hold a token of the old key before the rotation starts (a busy machine
    // can take longer than any fixed pause for the first argon2 logins).
    let started =
        qiria_test_support::wait_until(Duration::from_secs(20), || async { logins.load(Ordering::Relaxed) >= 2 }).await;
    assert!(started, "the workers never logged in");

    // Rotation, in the order operators follow: publish the new public key, wait until it
    // verifies, then make it the signing key.
    let generated = tempfile::tempdir().unwrap();
    let out = Command::new(qiria_test_support::binary("issuer"))
        .args(["keys", "generate", "--dir", generated.path().to_str().unwrap(), "--kid", "rotated-2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::copy(generated.path().join("public/rotated-2.pem"), stack.keys_dir.join("rotated-2.pem")).unwrap();
    let published = qiria_test_support::wait_until(Duration::from_secs(10), || async {
        stack.authz.health().await["keys"]["count"] == 2
    })
    .await;
    assert!(published, "new public key not picked up");
    let signing = stack.issuer().signing_dir.clone();
    std::fs::copy(generated.path().join("private/rotated-2.pem"), signing.join("rotated-2.pem")).unwrap();
    std::fs::write(signing.join("active"), "rotated-2\n").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Tokens of the old key still verify while it is in the secret.
    assert_eq!(stack.send(Http1, "GET", "/v1/jobs/1", Some(&old_token), &[]).await.status, 200);
    stop.store(true, Ordering::Relaxed);
    let mut kids = std::collections::BTreeSet::new();
    for worker in workers {
        let (statuses, seen) = worker.await.unwrap();
        assert!(statuses.len() > 50 && statuses.iter().all(|s| *s == 200), "a request failed during rotation");
        kids.extend(seen);
    }
    assert!(kids.contains("test-rsa-1") && kids.contains("rotated-2"), "load spanned both keys: {kids:?}");

    // The old key leaves: its tokens stop verifying, new logins keep working.
    std::fs::remove_file(signing.join("test-rsa-1.pem")).unwrap();
    std::fs::remove_file(stack.keys_dir.join("test-rsa-1.pem")).unwrap();
    let gone = qiria_test_support::wait_until(Duration::from_secs(10), || async {
        stack.send(Http1, "GET", "/v1/jobs/1", Some(&old_token), &[]).await.status == 401
    })
    .await;
    assert!(gone, "old key still verifies after removal");
    let fresh = access_token(&stack, "carol").await;
    assert_eq!(jsonwebtoken::decode_header(&fresh).unwrap().kid.as_deref(), Some("rotated-2"));
    assert_eq!(stack.send(Http1, "GET", "/v1/jobs/1", Some(&fresh), &[]).await.status, 200);
    let jwks: serde_json::Value =
        reqwest::get(stack.envoy.url("/.well-known/jwks.json")).await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
}

#[tokio::test]
async fn lockout_and_rate_limits() {
    let limits = "lockout_failures = 3\nrate_per_ip_per_minute = 20\nhashing_max_wait_ms = 10000";
    let stack = Stack::with_issuer_config(&authz(), None, limits).await;
    add_user(&stack, "dave", "User");
    let attempt = |password: &'static str| {
        let stack = &stack;
        async move {
            token_request(stack, &[("grant_type", "password"), ("username", "dave"), ("password", password)]).await
        }
    };
    for _ in 0..3 {
        assert_eq!(attempt("guess").await.1["error"], "invalid_grant");
    }
    // Locked: the right password gets the very same answer as a wrong one.
    let (status, locked) = attempt(PASSWORD).await;
    assert_eq!((status, locked["error"].as_str()), (400, Some("invalid_grant")));
    assert!(stack.issuer().output().contains("\"locked\":true"), "lockout not audited");

    // Per client address: past 20 requests a minute, 429 with Retry-After, whatever the request.
    let client = reqwest::Client::new();
    let mut limited = None;
    for _ in 0..20 {
        let r =
            client.post(stack.envoy.url("/v1/auth/token")).form(&[("grant_type", "password")]).send().await.unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("no 429 after the per-address limit");
    assert_eq!(limited.headers().get("retry-after").unwrap(), "60");
    assert_eq!(limited.json::<serde_json::Value>().await.unwrap()["error"], "slow_down");
    assert!(stack.issuer().output().contains("rate_limited"));

    // Revocation has its own limit per address: still open after the token endpoint's was used
    // up, closed past its own 20.
    let revoke = || client.post(stack.envoy.url("/v1/auth/revoke")).form(&[("token", "not-a-token")]).send();
    assert_eq!(revoke().await.unwrap().status(), 200, "its own bucket");
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(revoke().await.unwrap().status().as_u16());
    }
    assert!(statuses.contains(&429), "revocation is rate limited too: {statuses:?}");
}

#[tokio::test]
async fn admin_api_is_for_admins_only_and_disabling_stops_refresh() {
    let stack = Stack::with_issuer(&authz()).await;
    add_user(&stack, "root", "Admin");
    add_user(&stack, "erin", "User");
    let login = |username: &'static str| {
        let stack = &stack;
        async move {
            let (status, body) =
                token_request(stack, &[("grant_type", "password"), ("username", username), ("password", PASSWORD)])
                    .await;
            (status, body)
        }
    };
    let admin = login("root").await.1["access_token"].as_str().unwrap().to_string();
    let erin = login("erin").await.1;
    let client = reqwest::Client::new();
    let url = |path: &str| stack.envoy.url(path);

    // A User is stopped by the policy at Envoy; only Admin (users:manage) gets through.
    let erin_access = erin["access_token"].as_str().unwrap();
    assert_eq!(client.get(url("/v1/admin/users")).bearer_auth(erin_access).send().await.unwrap().status(), 403);
    assert_eq!(client.get(url("/v1/admin/users")).send().await.unwrap().status(), 401);
    let list: serde_json::Value =
        client.get(url("/v1/admin/users")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["erin", "root"]);
    assert!(list.to_string().find("argon2").is_none(), "no password hash in the admin API");
    assert_eq!(list[0]["email"], "erin@example.org");

    // Create, with a clear error for a bad body.
    let create = |body: serde_json::Value| client.post(url("/v1/admin/users")).bearer_auth(&admin).json(&body).send();
    let bad = create(serde_json::json!({"username": "frank", "roles": ["Auditor"]})).await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.json::<serde_json::Value>().await.unwrap()["error_description"].as_str().unwrap().contains("password"));
    let made =
        create(serde_json::json!({"username": "frank", "password": PASSWORD, "roles": ["Auditor"]})).await.unwrap();
    assert_eq!(made.status(), 201);

    // New roles show in the next login's token.
    let put = client
        .put(url("/v1/admin/users/frank/roles"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"roles": ["User"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    let frank = login("frank").await.1;
    let reply = stack.send(Http1, "GET", "/v1/jobs/1", frank["access_token"].as_str(), &[]).await;
    assert_eq!(reply.upstream_header("x-qiria-roles"), vec!["User".to_string()]);

    // Disabling takes effect at the next refresh and login.
    let delete = client.delete(url("/v1/admin/users/erin")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(delete.status(), 204);
    let refresh = erin["refresh_token"].as_str().unwrap();
    let (status, body) = token_request(&stack, &[("grant_type", "refresh_token"), ("refresh_token", refresh)]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(login("erin").await.0, 400);
}

#[tokio::test]
async fn es256_signing_key() {
    let stack = Stack::with_issuer(&authz()).await;
    add_user(&stack, "gina", "Auditor");
    let ec = qiria_test_support::tokens::SigningKey::ec("ec-1");
    ec.write_public(&stack.keys_dir);
    let signing = stack.issuer().signing_dir.clone();
    std::fs::write(signing.join("ec-1.pem"), &ec.private_pem).unwrap();
    std::fs::write(signing.join("active"), "ec-1").unwrap();
    let issued = qiria_test_support::wait_until(std::time::Duration::from_secs(10), || async {
        let (_, body) =
            token_request(&stack, &[("grant_type", "password"), ("username", "gina"), ("password", PASSWORD)]).await;
        let token = body["access_token"].as_str().unwrap_or_default().to_string();
        jsonwebtoken::decode_header(&token).is_ok_and(|h| h.alg == jsonwebtoken::Algorithm::ES256)
            && stack.send(Http1, "GET", "/v1/audit/events", Some(&token), &[]).await.status == 200
    })
    .await;
    assert!(issued, "no verifiable ES256 token");
    let jwks: serde_json::Value =
        reqwest::get(stack.envoy.url("/.well-known/jwks.json")).await.unwrap().json().await.unwrap();
    let ec_jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == "ec-1").cloned().unwrap();
    assert_eq!((ec_jwk["kty"].as_str(), ec_jwk["crv"].as_str()), (Some("EC"), Some("P-256")));
}

/// A key made active before its public half is published would issue tokens that every
/// request refuses: the issuer keeps signing with the previous key, says why (health, audit),
/// and switches by itself once the public half reaches the verification keys.
#[tokio::test]
async fn a_signing_key_active_before_it_is_published_waits_for_its_public_half() {
    use std::time::Duration;

    let stack = Stack::with_issuer(&authz()).await;
    add_user(&stack, "hana", "User");
    let kid = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid.unwrap_or_default();
    assert_eq!(stack.issuer().health().await["signing"]["active"], "test-rsa-1");

    // Private half added and made active, public half not published: held back.
    let early = qiria_test_support::tokens::SigningKey::ec("early-1");
    let signing = stack.issuer().signing_dir.clone();
    std::fs::write(signing.join("early-1.pem"), &early.private_pem).unwrap();
    std::fs::write(signing.join("active"), "early-1").unwrap();
    let held_back = qiria_test_support::wait_until(Duration::from_secs(10), || async {
        stack.issuer().health().await["signing"]["last_error"].as_str().is_some_and(|e| e.contains("early-1"))
    })
    .await;
    assert!(held_back, "not reported: {}", stack.issuer().health().await);
    let token = access_token(&stack, "hana").await;
    assert_eq!(kid(&token), "test-rsa-1");
    assert_eq!(stack.send(Http1, "GET", "/v1/jobs/1", Some(&token), &[]).await.status, 200);
    assert!(stack.issuer().output().contains("signing_key_rejected"));

    // Published: the new key signs, with no other change.
    early.write_public(&stack.keys_dir);
    let switched = qiria_test_support::wait_until(Duration::from_secs(10), || async {
        stack.issuer().health().await["signing"]["active"] == "early-1"
    })
    .await;
    assert!(switched, "never switched: {}", stack.issuer().health().await);
    let token = access_token(&stack, "hana").await;
    assert_eq!(kid(&token), "early-1");
    assert_eq!(stack.send(Http1, "GET", "/v1/jobs/1", Some(&token), &[]).await.status, 200);
    assert!(stack.issuer().health().await["signing"]["last_error"].is_null());
    let activated =
        stack.issuer().output().lines().any(|l| l.contains("signing_key_activated") && l.contains("early-1"));
    assert!(activated, "no audit event for the switch");
}

/// N concurrent refreshes of one refresh token through Envoy: exactly one gets a new pair,
/// the family ends revoked and no refresh token of it works afterwards; a revoke racing a
/// refresh leaves the family revoked too, whichever wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_and_a_revoke_racing_a_refresh() {
    let stack = Stack::with_issuer(&authz()).await;
    add_user(&stack, "ivy", "User");
    let login = |stack: &Stack| {
        let form = [("grant_type", "password"), ("username", "ivy"), ("password", PASSWORD)];
        let url = stack.envoy.url("/v1/auth/token");
        async move {
            let body: serde_json::Value =
                reqwest::Client::new().post(url).form(&form).send().await.unwrap().json().await.unwrap();
            body["refresh_token"].as_str().unwrap().to_string()
        }
    };
    let refresh = |token: String| {
        let url = stack.envoy.url("/v1/auth/token");
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .form(&[("grant_type", "refresh_token"), ("refresh_token", token.as_str())])
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };

    let token = login(&stack).await;
    let outcomes = futures_util::future::join_all((0..8).map(|_| refresh(token.clone()))).await;
    let winners: Vec<&serde_json::Value> = outcomes.iter().filter(|(s, _)| *s == 200).map(|(_, b)| b).collect();
    assert_eq!(winners.len(), 1, "exactly one refresh wins: {outcomes:?}");
    assert!(outcomes.iter().filter(|(s, _)| *s != 200).all(|(s, b)| *s == 400 && b["error"] == "invalid_grant"));
    let newest = winners[0]["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(refresh(newest).await.0, 400, "the family ended revoked");
    assert_eq!(refresh(token).await.0, 400);

    for _ in 0..3 {
        let token = login(&stack).await;
        let revoke =
            reqwest::Client::new().post(stack.envoy.url("/v1/auth/revoke")).form(&[("token", token.as_str())]).send();
        let (refreshed, revoked) = tokio::join!(refresh(token.clone()), revoke);
        assert_eq!(revoked.unwrap().status(), 200);
        if let Some(next) = refreshed.1["refresh_token"].as_str() {
            assert_eq!(refresh(next.to_string()).await.0, 400, "the refresh's new token died with its family");
        }
        assert_eq!(refresh(token).await.0, 400);
    }
}

/// 20 wrong passwords sent in parallel against a lockout of 5: at most 5 of them are checked
/// at all; the rest, and then the right password, get the same `invalid_grant`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_passwords_cannot_exceed_the_lockout() {
    // Room for every guess in the hashing queue: none is refused busy (which would not count).
    let limits = "lockout_failures = 5\nrate_per_ip_per_minute = 1000000\nrate_per_user_per_minute = 1000000\n\
                  hashing_max_wait_ms = 10000\nhashing_queue_per_worker = 16";
    let stack = Stack::with_issuer_config(&authz(), None, limits).await;
    add_user(&stack, "judy", "User");
    let guesses = (0..20).map(|i| {
        let url = stack.envoy.url("/v1/auth/token");
        async move {
            let password = format!("wrong-guess-{i}");
            let form = [("grant_type", "password"), ("username", "judy"), ("password", password.as_str())];
            let r = reqwest::Client::new().post(url).form(&form).send().await.unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap_or_default()["error"].clone())
        }
    });
    for (status, error) in futures_util::future::join_all(guesses).await {
        assert!((status, error.as_str()) == (400, Some("invalid_grant")) || status == 503, "{status} {error}");
    }
    let output = stack.issuer().output();
    let checked = output.lines().filter(|l| l.contains("login_failed") && l.contains("\"locked\":false")).count();
    assert!((1..=5).contains(&checked), "{checked} passwords were checked against a lockout of 5");
    if checked == 5 {
        assert_eq!(output.matches("account_locked").count(), 1, "locked once, by the fifth failure");
    }
    let (status, body) =
        token_request(&stack, &[("grant_type", "password"), ("username", "JUDY"), ("password", PASSWORD)]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "locked, in any case of the name");
}
