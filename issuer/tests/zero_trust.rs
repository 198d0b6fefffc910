//! Zero trust in the issuer: its admin API authenticates and authorizes every call itself,
//! whether it came through Envoy or straight to its own listener, and the escalation an
//! attacker once got (creating an Admin with no credential, straight to the issuer's port)
//! fails. A flood of password grants at the issuer's port never slows down, let alone breaks,
//! the decisions Envoy and authz make meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qiria_test_support::authz::Stack;
use qiria_test_support::call::Protocol::Http1;
use qiria_test_support::issuer::PASSWORD;

fn authz() -> String {
    qiria_test_support::binary("authz").display().to_string()
}

async fn login(stack: &Stack, username: &str) -> String {
    let response = reqwest::Client::new()
        .post(stack.envoy.url("/v1/auth/token"))
        .form(&[("grant_type", "password"), ("username", username), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "login of {username}");
    response.json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_admin_api_checks_its_callers_itself_through_envoy_or_not() {
    let stack = Stack::with_issuer(&authz()).await;
    let issuer = stack.issuer();
    issuer.add_user("root", "Admin");
    issuer.add_user("erin", "User");
    let (admin, user) = (login(&stack, "root").await, login(&stack, "erin").await);
    let client = reqwest::Client::new();
    let eve = serde_json::json!({"username": "eve", "password": "0123456789abcdef", "roles": ["Admin"]});

    // The attack: straight to the issuer, no credential. Refused, and eve cannot log in.
    let direct = issuer.admin_api_url("/v1/admin/users");
    let attack = client.post(&direct).json(&eve).send().await.unwrap();
    assert_eq!(attack.status(), 401);
    assert!(attack.headers().get("www-authenticate").is_some());
    let eve_login = client
        .post(stack.envoy.url("/v1/auth/token"))
        .form(&[("grant_type", "password"), ("username", "eve"), ("password", "0123456789abcdef")])
        .send()
        .await
        .unwrap();
    assert_eq!(eve_login.status(), 400, "the escalation created no user");
    // Nor does the public listener serve the admin API at all.
    let public = client.post(issuer.token_url("/v1/admin/users")).json(&eve).send().await.unwrap();
    assert_eq!(public.status(), 404);

    // Straight to the admin listener: no token 401, a forged or User token 403 / 401, Admin acts.
    let minted = stack.key.sign(&qiria_test_support::tokens::claims("root", &["Admin"]));
    let stranger = qiria_test_support::tokens::SigningKey::rsa("test-rsa-1");
    let unsigned = stranger.sign(&qiria_test_support::tokens::claims("mallory", &["Admin"]));
    assert_eq!(client.get(&direct).send().await.unwrap().status(), 401);
    assert_eq!(client.get(&direct).bearer_auth(&unsigned).send().await.unwrap().status(), 401);
    assert_eq!(client.get(&direct).bearer_auth(&user).send().await.unwrap().status(), 403);
    assert_eq!(client.post(&direct).bearer_auth(&user).json(&eve).send().await.unwrap().status(), 403);
    // x-qiria-* headers are never believed: a User claiming Admin in them is still a User.
    let claimed = client
        .post(&direct)
        .bearer_auth(&user)
        .header("x-qiria-roles", "Admin")
        .header("x-qiria-subject", "root")
        .json(&eve)
        .send()
        .await
        .unwrap();
    assert_eq!(claimed.status(), 403);
    let made = client
        .post(&direct)
        .bearer_auth(&admin)
        .json(&serde_json::json!({"username": "frank", "password": PASSWORD, "roles": ["Auditor"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    // A token the issuer's own verifier accepts works too (minted by the test, same key).
    assert_eq!(client.get(&direct).bearer_auth(&minted).send().await.unwrap().status(), 200);

    // The same through Envoy: authz is the first gate, the issuer the second.
    let through = stack.envoy.url("/v1/admin/users");
    assert_eq!(client.get(&through).send().await.unwrap().status(), 401);
    assert_eq!(client.get(&through).bearer_auth(&user).send().await.unwrap().status(), 403);
    let listed = client.get(&through).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(listed.status(), 200, "authz forwards the token on this route, the issuer verifies it");
    let names: Vec<String> = listed
        .json::<Vec<serde_json::Value>>()
        .await
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["erin", "frank", "root"]);
    // Everywhere else the token is still not forwarded.
    let reply = stack.send(Http1, "GET", "/v1/jobs/1", Some(&user), &[]).await;
    assert!(reply.upstream_header("authorization").is_empty());

    // Refusals and actions are audited, with who asked.
    let output = issuer.output();
    assert!(output.contains("admin_refused") && output.contains("unauthenticated") && output.contains("forbidden"));
    assert!(output.lines().any(|l| l.contains("admin_action") && l.contains("user_created") && l.contains("frank")));
    for secret in [PASSWORD, admin.as_str(), user.as_str(), "0123456789abcdef"] {
        assert!(!output.contains(secret), "a secret reached the issuer's logs");
    }
}

/// A process's peak resident set (`VmHWM`), from /proc, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    field("VmHWM:").unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_password_grants_breaks_no_decision_and_every_flood_request_gets_its_answer() {
    // Default limits: hashing bounded to one worker per core with a short queue.
    let stack = Arc::new(
        Stack::with_issuer_config(
            &authz(),
            None,
            "rate_per_ip_per_minute = 1000000\nrate_per_user_per_minute = 1000000",
        )
        .await,
    );
    let token = stack.token("alice", &["User"]);
    assert_eq!(stack.send(Http1, "GET", "/v1/jobs/1", Some(&token), &[]).await.status, 200);
    let stop = Arc::new(AtomicBool::new(false));

    // The flood: 64 concurrent attackers, random usernames, random x-forwarded-for, straight
    // at the issuer's token port. Each request must be answered within 2 s.
    let url = stack.issuer().token_url("/v1/auth/token");
    let flooders: Vec<_> = (0..64)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
                let mut answers: Vec<Result<(u16, String), String>> = Vec::new();
                while !stop.load(Ordering::Relaxed) && answers.len() < 2_000 {
                    let user = format!("u{}", rand::random::<u64>());
                    let ip = format!("10.{}.{}.{}", rand::random::<u8>(), rand::random::<u8>(), rand::random::<u8>());
                    let sent = client
                        .post(&url)
                        .header("x-forwarded-for", ip)
                        .form(&[
                            ("grant_type", "password"),
                            ("username", user.as_str()),
                            ("password", "guess-guess-guess"),
                        ])
                        .send()
                        .await;
                    let answer = match sent {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body: serde_json::Value = r.json().await.unwrap_or_default();
                            Ok((status, body["error"].as_str().unwrap_or_default().to_string()))
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    answers.push(answer);
                }
                answers
            })
        })
        .collect();

    // Meanwhile, allowed requests through Envoy + authz at about 100 per second.
    let started = Instant::now();
    let mut decisions = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        let reply = stack.send(Http1, "GET", "/v1/jobs/1", Some(&token), &[]).await;
        decisions.push(reply.status);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for flooder in flooders {
        answers.extend(flooder.await.unwrap());
    }

    let wrong: Vec<&u16> = decisions.iter().filter(|s| **s != 200).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} allowed requests failed during the flood: {wrong:?}",
        wrong.len(),
        decisions.len()
    );
    // Enough of them to mean something (a cold CI machine builds and tests at once: ~30/s).
    assert!(decisions.len() >= 100, "only {} allowed requests ran", decisions.len());
    let unanswered: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        unanswered.is_empty(),
        "{} flood requests got no answer within 2 s: {:?}",
        unanswered.len(),
        unanswered.first()
    );
    let odd: Vec<&(u16, String)> = answers
        .iter()
        .flatten()
        .filter(|(status, error)| {
            !matches!(
                (status, error.as_str()),
                (400, "invalid_grant") | (429, "slow_down") | (503, "temporarily_unavailable")
            )
        })
        .collect();
    assert!(odd.is_empty(), "flood requests got other answers: {:?}", &odd[..odd.len().min(5)]);
    let busy = answers.iter().flatten().filter(|(s, _)| *s == 503).count();
    assert!(answers.len() > 1_000 && busy > 0, "the flood did saturate hashing: {busy} of {} refused", answers.len());
    let peak = peak_rss_kib(stack.issuer().pid().unwrap());
    assert!(peak > 0 && peak < 256 * 1024, "issuer peak RSS {peak} KiB");
}
