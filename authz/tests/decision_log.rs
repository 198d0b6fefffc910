//! The decision log through a real Envoy: its events have OPA's decision-log shape (checked
//! field by field against OPA's documented format), credentials, cookies, the raw body and
//! the password, refresh-token and script fields are erased by default, a configured JSON
//! pointer erases exactly what it names, the bundle's own `system.log.mask` rule is applied
//! as OPA applies it, a log nobody reads never holds a decision up (events are dropped and
//! counted), and shadow mode allows what the policy denies while the log and the metrics say
//! so. Sampling is in `decision_log_sampling.rs` (its own process: it sets the environment).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use qiria_test_support::authz::{copy_dir, Stack};
use qiria_test_support::call::Protocol::Http1;
use qiria_test_support::{wait_until, workspace_root};
use serde_json::{json, Value};

const AUTHZ: &str = env!("CARGO_BIN_EXE_authz");

const PASSWORD: &str = "hunter2-not-for-logs";
const REFRESH: &str = "rt-not-for-logs-0123456789";
const COOKIE: &str = "session=cookie-not-for-logs";
const SCRIPT: &str = "print('script body not for logs')";

/// The shipped policy plus `extra` files, in `dir`.
fn policy_with(dir: &Path, extra: &[(&str, &str)]) -> std::path::PathBuf {
    let policy = dir.join("policy");
    copy_dir(&workspace_root().join("policies/rego"), &policy);
    for (name, text) in extra {
        std::fs::write(policy.join(name), text).expect("write policy file");
    }
    policy
}

fn config(dir: &Path, toml: &str) -> String {
    let path = dir.join("authz.toml");
    std::fs::write(&path, toml).expect("write config");
    path.display().to_string()
}

/// POSTs a JSON body full of secrets to `path` through Envoy, with a bearer token, a cookie,
/// and two headers of our own.
fn secrets_body() -> Value {
    json!({ "username": "alice", "password": PASSWORD, "refresh_token": REFRESH, "token": REFRESH, "body": SCRIPT })
}

async fn post_secrets(stack: &Stack, path: &str, token: &str) -> u16 {
    let body = secrets_body();
    reqwest::Client::new()
        .post(stack.envoy.url(path))
        .bearer_auth(token)
        .header("cookie", COOKIE)
        .header("x-secret-header", "s3cr3t-header-value")
        .header("x-other-header", "kept")
        .json(&body)
        .send()
        .await
        .expect("through envoy")
        .status()
        .as_u16()
}

/// The logged event of the request to `path`, waiting for the writer.
async fn event_for(stack: &Stack, path: &str) -> Value {
    let find = || {
        stack.authz.decision_logs().into_iter().find(|e| e["input"]["attributes"]["request"]["http"]["path"] == path)
    };
    wait_until(Duration::from_secs(5), || async { find().is_some() }).await;
    find().unwrap_or_else(|| panic!("no event for {path}:\n{}", stack.authz.output()))
}

/// Every field OPA documents for a decision-log event, with its type; ours are under `qiria`.
fn assert_opa_shape(event: &Value) {
    let fields = event.as_object().expect("an object");
    let opa = [
        "labels",
        "decision_id",
        "path",
        "input",
        "result",
        "error",
        "timestamp",
        "bundles",
        "metrics",
        "erased",
        "masked",
        "qiria",
    ];
    for key in fields.keys() {
        assert!(opa.contains(&key.as_str()), "{key} is not a field of OPA's decision log: {event}");
    }
    assert!(event["labels"].is_object(), "{event}");
    let id = event["decision_id"].as_str().expect("decision_id");
    assert!(uuid_like(id), "{id}");
    assert_eq!(event["path"], "qiria/authz/allow", "the decision rule in OPA's slash form");
    assert!(event["input"].is_object(), "{event}");
    assert!(event.get("result").is_some() != event.get("error").is_some(), "a result or an error: {event}");
    let timestamp = event["timestamp"].as_str().expect("timestamp");
    assert!(timestamp.ends_with('Z') && timestamp.contains('T') && timestamp.len() >= 20, "RFC 3339: {timestamp}");
    assert!(event["bundles"]["authz"]["revision"].as_str().is_some_and(|r| !r.is_empty()), "{event}");
    for (name, value) in event["metrics"].as_object().expect("metrics") {
        assert!(name.starts_with("timer_") && name.ends_with("_ns") && value.is_u64(), "{name}: {value}");
    }
    for list in ["erased", "masked"] {
        if let Some(pointers) = event.get(list) {
            assert!(pointers
                .as_array()
                .expect("a list")
                .iter()
                .all(|p| p.as_str().is_some_and(|p| p.starts_with('/'))));
        }
    }
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.bytes().filter(|b| *b == b'-').count() == 4
}

fn strings(value: &Value) -> Vec<&str> {
    value.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

#[tokio::test]
async fn events_have_opas_shape_and_secrets_and_named_fields_are_erased() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_with(dir.path(), &[]);
    let config =
        config(dir.path(), "[decision_log]\nmask = [\"/input/attributes/request/http/headers/x-secret-header\"]\n");
    let stack = Stack::with_policy(AUTHZ, &policy, &["--config", &config]).await;
    let token = stack.token("alice", &["User"]);

    // A public operation (allowed) and a protected one without a token (denied).
    post_secrets(&stack, "/v1/auth/token", &token).await;
    let denied = stack.send(Http1, "GET", "/v1/jobs/42", None, &[]).await;
    assert_eq!(denied.status, 401);

    let allowed = event_for(&stack, "/v1/auth/token").await;
    assert_opa_shape(&allowed);
    assert_eq!(allowed["result"], true);
    assert_eq!(allowed["qiria"]["allowed"], true);
    assert_eq!(allowed["qiria"]["subject"], "alice");
    assert_eq!(allowed["bundles"]["authz"]["revision"], stack.authz.policy_revision().await);
    let http = &allowed["input"]["attributes"]["request"]["http"];
    assert_eq!(http["method"], "POST");
    let headers = http["headers"].as_object().expect("headers");
    for gone in ["authorization", "cookie", "x-secret-header"] {
        assert!(!headers.contains_key(gone), "{gone} logged: {headers:?}");
    }
    assert_eq!(headers["x-other-header"], "kept", "a pointer erases exactly what it names");
    assert!(http.get("body").is_none() && http.get("rawBody").is_none(), "the raw body is erased: {http}");
    let parsed = &allowed["input"]["parsed_body"];
    assert_eq!(parsed["username"], "alice", "the rest of the body is kept");
    for field in ["password", "refresh_token", "token", "body"] {
        assert!(parsed.get(field).is_none(), "{field} logged: {parsed}");
    }
    let erased = strings(&allowed["erased"]);
    for pointer in [
        "/input/attributes/request/http/headers/authorization",
        "/input/attributes/request/http/headers/cookie",
        "/input/attributes/request/http/headers/x-secret-header",
        "/input/attributes/request/http/rawBody",
        "/input/parsed_body/password",
        "/input/parsed_body/refresh_token",
        "/input/parsed_body/token",
        "/input/parsed_body/body",
    ] {
        assert!(erased.contains(&pointer), "{pointer} not listed as erased: {erased:?}");
    }
    assert!(!erased.contains(&"/input/attributes/request/http/headers/proxy-authorization"), "only what was there");

    let denial = stack.authz.decision_log(&denied.decision_key().expect("a decision id")).await;
    assert_opa_shape(&denial);
    assert_eq!(denial["result"], false);
    assert_eq!(denial["qiria"]["status"], 401);
    assert_eq!(denial["qiria"]["identity_error"], "missing");

    let output = stack.authz.output();
    let signature = token.rsplit('.').next().expect("a signature");
    use base64::Engine as _;
    // The body as Envoy packs it (bytes, base64 in the input) must not be there either.
    let packed = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&secrets_body()).expect("json"));
    for secret in [PASSWORD, REFRESH, COOKIE, SCRIPT, signature, "s3cr3t-header-value", &packed[..40]] {
        assert!(!output.contains(secret), "{secret} is in authz's output");
    }
}

#[tokio::test]
async fn the_bundles_system_log_mask_rule_erases_and_replaces_as_opa_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mask = r#"package system.log

mask contains "/input/attributes/request/http/headers/x-other-header" if input.input.attributes.request.http.method == "POST"

mask contains {"op": "upsert", "path": "/input/parsed_body/username", "value": "**REDACTED**"}
"#;
    let policy = policy_with(dir.path(), &[("system_log.rego", mask)]);
    let stack = Stack::with_policy(AUTHZ, &policy, &[]).await;
    post_secrets(&stack, "/v1/auth/token", &stack.token("alice", &["User"])).await;
    let event = event_for(&stack, "/v1/auth/token").await;
    assert_opa_shape(&event);
    let headers = &event["input"]["attributes"]["request"]["http"]["headers"];
    assert!(headers.get("x-other-header").is_none(), "{headers}");
    assert_eq!(event["input"]["parsed_body"]["username"], "**REDACTED**");
    assert!(strings(&event["erased"]).contains(&"/input/attributes/request/http/headers/x-other-header"));
    assert_eq!(strings(&event["masked"]), vec!["/input/parsed_body/username"]);
}

#[tokio::test]
async fn a_decision_log_nobody_reads_never_holds_a_decision_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stack = Stack::start(AUTHZ).await;
    // A second authz whose standard output is a pipe nobody reads: once the pipe's buffer is
    // full its writer blocks, its queue fills, and events must be dropped, not decisions.
    let (grpc, admin) = (qiria_test_support::free_port(), qiria_test_support::free_port());
    let config = config(dir.path(), "[decision_log]\nqueue = 8\n");
    let stderr = std::fs::File::create(dir.path().join("stalled.log")).expect("log");
    let stalled = Command::new(AUTHZ)
        .args(["serve", "--config", &config, "--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .args(["--policy-dir", &workspace_root().join("policies/rego").display().to_string()])
        .args(["--keys-dir", &stack.keys_dir.display().to_string()])
        .args(["--issuer", qiria_test_support::tokens::ISSUER, "--audience", qiria_test_support::tokens::AUDIENCE])
        .env("QIRIA_AUTHZ_DECISION_LOG__ALLOW_SAMPLE", "1.0")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start authz");
    // Killed however the test ends (a panic included).
    let _stalled = KillOnDrop(stalled);
    let ready = wait_until(Duration::from_secs(20), || async {
        qiria_test_support::health(admin).await["policy"]["active"].is_string()
    })
    .await;
    assert!(ready, "the second authz never served");

    // Through an Envoy of its own. Each denial's event is over a kilobyte: the pipe's 64 KiB
    // are full after a few dozen.
    let upstream = qiria_test_support::upstream::EchoUpstream::start().await;
    let envoy = qiria_test_support::envoy::Envoy::start(grpc, upstream.port, None).await;
    let started = std::time::Instant::now();
    for n in 0..1500 {
        let reply =
            qiria_test_support::call::send(&envoy.url(""), Http1, "GET", &format!("/v1/jobs/{n}"), None, &[]).await;
        assert_eq!(reply.status, 401, "request {n}: {reply:?}");
    }
    let elapsed = started.elapsed();
    let metrics =
        reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await.expect("metrics").text().await.expect("text");
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    assert!(value("qiria_authz_decision_log_dropped_total") > 1000, "events were not dropped:\n{metrics}");
    assert!(value("qiria_authz_decision_log_queued") <= 8, "the queue is bounded:\n{metrics}");
    // Not a timing claim: only that 1,500 decisions did not each wait for a writer that
    // never writes (a blocked decision would never finish at all).
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
}

/// A child process killed when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn shadow_mode_allows_what_the_policy_denies_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_with(dir.path(), &[]);
    let config = config(dir.path(), "[policy]\nshadow = true\n");
    let stack = Stack::with_policy(AUTHZ, &policy, &["--config", &config]).await;

    let reply = stack.send(Http1, "GET", "/v1/jobs/42", None, &[]).await;
    assert_eq!(reply.status, 200, "shadow mode let it through: {reply:?}");
    assert!(reply.reached_upstream());
    assert!(reply.upstream_header("x-qiria-subject").is_empty(), "no identity was verified: none is sent");
    let event = stack.authz.decision_log(&reply.decision_key().expect("request id")).await;
    assert_opa_shape(&event);
    assert_eq!(event["result"], false, "what the policy decided");
    assert_eq!(event["qiria"]["shadow"], true);
    assert_eq!(event["qiria"]["allowed"], false);
    assert_eq!(event["qiria"]["status"], 401, "what would have been sent");
    let metrics = stack.authz.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with("qiria_authz_decisions_total{")
            && l.contains("outcome=\"shadow_deny\"")
            && l.contains("status=\"401\"")),
        "{metrics}"
    );

    // A verified, allowed request is unchanged.
    let allowed = stack.send(Http1, "GET", "/v1/jobs/42", Some(&stack.token("alice", &["User"])), &[]).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.upstream_header("x-qiria-subject"), vec!["alice".to_string()]);
}

#[tokio::test]
async fn a_route_in_shadow_mode_lets_denials_through_and_the_others_still_deny() {
    let stack = Stack::start(AUTHZ).await;
    // `/v1/preview…` carries the context extension `qiria.shadow: "true"` in the Envoy config.
    let shadowed = stack.send(Http1, "GET", "/v1/preview/report", None, &[]).await;
    assert_eq!(shadowed.status, 200, "the shadow route let it through: {shadowed:?}");
    assert!(shadowed.reached_upstream());
    let event = stack.authz.decision_log(&shadowed.decision_key().expect("request id")).await;
    assert_eq!(event["qiria"]["shadow"], true, "{event}");
    assert_eq!(event["qiria"]["allowed"], false, "{event}");
    // Every other route enforces.
    let enforced = stack.send(Http1, "GET", "/v1/jobs/42", None, &[]).await;
    assert_eq!(enforced.status, 401);
    assert!(!enforced.reached_upstream());
}
