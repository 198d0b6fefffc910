//! When authz is down, Envoy denies every request; when it comes back, service resumes.
//! Oversized and malformed requests are refused with a clear status, never allowed, and
//! never take authz down.

use std::io::{Read, Write};

use qiria_test_support::authz::Stack;
use qiria_test_support::call::Protocol::{Grpc, Http1};

const AUTHZ: &str = env!("CARGO_BIN_EXE_authz");

#[tokio::test]
async fn authz_down_means_denied_and_restart_resumes() {
    let mut stack = Stack::start(AUTHZ).await;
    let token = stack.token("alice", &["User"]);
    assert_eq!(stack.send(Http1, "GET", "/v1/jobs/1", Some(&token), &[]).await.status, 200);

    stack.authz.stop();
    for _ in 0..5 {
        let reply = stack.send(Http1, "GET", "/v1/jobs/1", Some(&token), &[]).await;
        assert_eq!(reply.status, 403, "authz down must deny: {reply:?}");
        assert!(!reply.reached_upstream());
        let grpc = stack.send(Grpc, "POST", "/qiria.jobs.v1.JobService/GetJob", Some(&token), &[]).await;
        assert_ne!(grpc.grpc_status.as_deref(), Some("0"));
        assert!(!grpc.reached_upstream());
    }

    stack.authz.restart().await;
    let resumed = qiria_test_support::wait_until(std::time::Duration::from_secs(10), || async {
        stack.send(Http1, "GET", "/v1/jobs/1", Some(&token), &[]).await.status == 200
    })
    .await;
    assert!(resumed, "service did not resume after restart");
}

/// Sends raw bytes over HTTP/1.1 and returns the status line's code.
fn raw_status(port: u16, request: &[u8]) -> u16 {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn oversized_and_malformed_requests_are_refused_cleanly() {
    let stack = Stack::start(AUTHZ).await;
    let admin = stack.token("root", &["Admin"]);
    let port = stack.envoy.port;

    // Headers over Envoy's 60 KiB limit.
    let huge = "a".repeat(70 * 1024);
    let reply = stack.send(Http1, "GET", "/v1/jobs/1", Some(&admin), &[("x-huge", &huge)]).await;
    assert_eq!(reply.status, 431);

    // A huge bearer token under the limit is still just a bad token.
    let big_token = format!("{}.{}.{}", "e".repeat(20_000), "e".repeat(20_000), "e".repeat(1_000));
    let reply = stack.send(Http1, "GET", "/v1/jobs/1", Some(&big_token), &[]).await;
    assert_eq!(reply.status, 401);

    // Body over the 64 KiB ext_authz buffer.
    let reply = reqwest::Client::new()
        .post(stack.envoy.url("/v1/jobs/scripts"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(vec![b'x'; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 413);

    // Percent-encoded bytes that are not UTF-8: authz refuses to build an input from them.
    let reply = stack.send(Http1, "GET", "/v1/jobs/%ff%fe", Some(&admin), &[]).await;
    assert_eq!(reply.status, 400, "{}", reply.body);

    // Raw invalid UTF-8 in the request line, and an encoded slash.
    let request = format!("GET /v1/jobs/\u{0}x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\n\r\n");
    let mut bytes = request.into_bytes();
    let nul = bytes.iter().position(|b| *b == 0).unwrap();
    bytes[nul] = 0xff;
    let status = raw_status(port, &bytes);
    assert!(status == 400 || status == 403, "invalid UTF-8 path gave {status}");
    let encoded_slash = format!("GET /v1/jobs%2F1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\n\r\n");
    assert_eq!(raw_status(port, encoded_slash.as_bytes()), 400);

    // Garbage that is not HTTP at all.
    assert_eq!(raw_status(port, b"\x16\x03\x01garbage\r\n\r\n"), 400);

    // None of it reached the upstream or hurt authz. Envoy flushes its access log every
    // 100 ms: wait until it holds the refusals, so the check below is not vacuous.
    let logged = qiria_test_support::wait_until(std::time::Duration::from_secs(5), || async {
        stack.envoy.access_log().len() >= 5
    })
    .await;
    assert!(logged, "{:?}", stack.envoy.access_log());
    assert!(stack.envoy.access_log().iter().all(|l| l["status"] != 200), "{:?}", stack.envoy.access_log());
    assert_eq!(stack.authz.health().await["policy"]["last_error"], serde_json::Value::Null);
    let ok = stack.send(Http1, "GET", "/v1/jobs/1", Some(&admin), &[]).await;
    assert_eq!(ok.status, 200, "authz must still serve");
}
