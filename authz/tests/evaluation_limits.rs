//! Through a real Envoy: a policy that loops is stopped at its CPU budget (403, counted), and
//! authz stalled mid-evaluation past the wall-clock limit (stopped with SIGSTOP, as CFS
//! throttling or a descheduled VM stops it) still allows every request it should.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qiria_test_support::authz::Stack;
use qiria_test_support::call::Protocol::Http1;

const AUTHZ: &str = env!("CARGO_BIN_EXE_authz");

/// `/work` costs real evaluation (no decision cache: this policy does not declare one);
/// `/loop` runs 10^8 evaluation steps.
const POLICY: &str = r#"package qiria.authz
import rego.v1

default allow := false

allow if {
	input.attributes.request.http.path == "/work"
	count([x | some x in numbers.range(1, 5000)]) > 0
}

allow if {
	input.attributes.request.http.path == "/loop"
	count([x | some i in numbers.range(1, 10000); some j in numbers.range(1, 10000); x := i * j]) < 0
}
"#;

/// A 100 ms CPU budget within a 450 ms deadline (Envoy's own timeout is 500 ms).
async fn stack() -> Stack {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.rego"), POLICY).unwrap();
    let config = dir.path().join("authz.toml");
    std::fs::write(&config, "[policy]\neval_timeout_ms = 100\neval_deadline_ms = 450\n").unwrap();
    let stack = Stack::with_policy(AUTHZ, dir.path(), &["--config", config.to_str().unwrap()]).await;
    drop(dir);
    stack
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_looping_policy_is_stopped_and_counted() {
    let stack = stack().await;
    let token = stack.token("alice", &["User"]);
    let started = Instant::now();
    let reply = stack.send(Http1, "GET", "/loop", Some(&token), &[]).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(started.elapsed() < Duration::from_secs(2), "not stopped: {:?}", started.elapsed());
    // Stopped at its CPU budget; on a machine so loaded that the thread gets little CPU, at
    // the deadline first. Either way it is counted.
    let metrics = stack.authz.metrics().await;
    let stopped =
        metric(&metrics, "qiria_authz_policy_cpu_limit_total") + metric(&metrics, "qiria_authz_policy_deadline_total");
    assert_eq!(stopped, 1, "{metrics}");
    // The service is unharmed.
    assert_eq!(stack.send(Http1, "GET", "/work", Some(&token), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_past_the_wall_clock_limit_never_turns_an_allow_into_a_deny() {
    let stack = stack().await;
    let token = stack.token("alice", &["User"]);
    assert_eq!(stack.send(Http1, "GET", "/work", Some(&token), &[]).await.status, 200);
    let pid = stack.authz.pid().expect("authz pid").to_string();

    // Stall authz for 150 ms (longer than the whole CPU budget) every 200 ms while requests run.
    let stop = Arc::new(AtomicBool::new(false));
    let staller = {
        let (stop, pid) = (stop.clone(), pid.clone());
        std::thread::spawn(move || {
            let signal =
                |sig: &str| std::process::Command::new("kill").args([sig, &pid]).status().is_ok_and(|s| s.success());
            let mut stalls = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                if signal("-STOP") {
                    stalls += 1;
                }
                std::thread::sleep(Duration::from_millis(150));
                signal("-CONT");
            }
            stalls
        })
    };
    let mut statuses = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        statuses.push(stack.send(Http1, "GET", "/work", Some(&token), &[]).await.status);
    }
    stop.store(true, Ordering::Relaxed);
    let stalls = staller.join().unwrap();
    let _ = std::process::Command::new("kill").args(["-CONT", &pid]).status();

    let denied = statuses.iter().filter(|s| **s != 200).count();
    assert!(stalls >= 20 && statuses.len() >= 20, "{stalls} stalls, {} requests", statuses.len());
    assert_eq!(denied, 0, "{denied} of {} allowed requests denied while authz was stalled", statuses.len());
    let metrics = stack.authz.metrics().await;
    assert!(
        metric(&metrics, "qiria_authz_policy_stall_retries_total") > 0,
        "no evaluation was caught by a stall, so this run shows nothing: {metrics}"
    );
    assert_eq!(metric(&metrics, "qiria_authz_policy_cpu_limit_total"), 0, "{metrics}");
}
