//! Policies and keys change while requests flow through a real Envoy: every decision is the
//! right one for the bundle revision that made it, a broken bundle is refused while the old
//! one keeps serving, and keys come and go without a failed request.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qiria_test_support::authz::Stack;
use qiria_test_support::call::{send, Protocol::Http1};
use qiria_test_support::tokens::{claims, SigningKey};
use qiria_test_support::wait_until;

const AUTHZ: &str = env!("CARGO_BIN_EXE_authz");

/// Runs four request loops until `stop`, returning the (path, status) of every request.
fn load(
    base: String,
    requests: Vec<(&'static str, String)>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(&'static str, u16)>> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for worker in 0..4 {
            let (base, requests, stop) = (base.clone(), requests.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut i = worker;
                // Bounded: at most 20,000 requests per worker, and the test stops it sooner.
                while !stop.load(Ordering::Relaxed) && i < 20_000 {
                    let (path, token) = &requests[i % requests.len()];
                    let reply = send(&base, Http1, "GET", path, Some(token), &[]).await;
                    seen.push((*path, reply.status));
                    i += 1;
                }
                seen
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_edit_under_load_switches_with_no_wrong_decision() {
    let stack = Stack::start(AUTHZ).await;
    let old_revision = stack.authz.health().await["policy"]["active"].as_str().unwrap().to_string();
    let user = stack.token("alice", &["User"]);
    let stop = Arc::new(AtomicBool::new(false));
    let requests = vec![
        ("/v1/jobs/1", user.clone()),        // allowed before and after
        ("/v1/admin/jobs", user.clone()),    // denied before and after
        ("/v1/reports/daily", user.clone()), // no such operation before, allowed after
    ];
    let running = load(stack.envoy.url(""), requests, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Add an operation by editing the data document in place.
    let data_path = stack.policy_dir.join("qiria/data.json");
    let mut data: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&data_path).unwrap()).unwrap();
    data["rbac"]["operations"]["GET"]["/v1/reports/daily"] = "jobs:read".into();
    std::fs::write(&data_path, serde_json::to_string_pretty(&data).unwrap()).unwrap();
    let new_revision = stack.authz.wait_for_revision_change(&old_revision).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A bundle that does not parse is refused; the edited one keeps serving.
    std::fs::write(stack.policy_dir.join("qiria/broken.rego"), "package qiria.authz\nallow if {").unwrap();
    let refused = wait_until(Duration::from_secs(15), || async {
        stack.authz.health().await["policy"]["last_error"].as_str().is_some_and(|e| e.contains("broken.rego"))
    })
    .await;
    assert!(refused, "broken policy not reported: {}", stack.authz.health().await);
    // A bundle whose own tests fail is refused too.
    std::fs::remove_file(stack.policy_dir.join("qiria/broken.rego")).unwrap();
    std::fs::write(
        stack.policy_dir.join("qiria/extra_test.rego"),
        "package qiria.extra_test\nimport data.qiria.authz\ntest_admin_denied_everything if not authz.allow with input as {\"parsed_path\": [\"v1\",\"auth\",\"token\"], \"attributes\": {\"request\": {\"http\": {\"method\": \"POST\"}}}}\n",
    )
    .unwrap();
    let refused = wait_until(Duration::from_secs(15), || async {
        stack.authz.health().await["policy"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("test_admin_denied_everything"))
    })
    .await;
    assert!(refused, "failing-test policy not reported: {}", stack.authz.health().await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = running.await.unwrap();

    let health = stack.authz.health().await;
    assert_eq!(health["policy"]["active"], new_revision.as_str(), "the refused bundles must not serve");
    let metrics = stack.authz.metrics().await;
    assert!(metrics.contains("qiria_authz_policy_reloads_total{result=\"rejected\"}"), "{metrics}");

    // Every decision was right for the revision that made it: Envoy logs each request's status
    // and decision id, the decision log the revision behind that id (Envoy flushes its access
    // log about once a second).
    wait_until(Duration::from_secs(5), || async { stack.envoy.access_log().len() >= seen.len() }).await;
    wait_until(Duration::from_secs(5), || async { stack.authz.decision_logs().len() >= seen.len() }).await;
    let log = stack.envoy.access_log();
    let revisions: HashMap<String, String> = stack
        .authz
        .decision_logs()
        .into_iter()
        .map(|l| {
            (
                l["decision_id"].as_str().unwrap().to_string(),
                l["bundles"]["authz"]["revision"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut by_revision: BTreeMap<String, usize> = BTreeMap::new();
    for line in &log {
        let (path, status, decision_id) =
            (line["path"].as_str().unwrap(), line["status"].as_u64().unwrap(), line["decision_id"].as_str().unwrap());
        let revision = revisions.get(decision_id).unwrap_or_else(|| panic!("decision not logged by authz: {line}"));
        let after = *revision == new_revision;
        assert!(after || *revision == old_revision, "unknown revision {revision}: {line}");
        let expected = match path {
            "/v1/jobs/1" => 200,
            "/v1/admin/jobs" => 403,
            "/v1/reports/daily" if after => 200,
            "/v1/reports/daily" => 403,
            other => panic!("unexpected path {other}"),
        };
        assert_eq!(status, expected, "wrong decision under revision {revision}: {line}");
        *by_revision.entry(revision.to_string()).or_default() += 1;
    }
    assert_eq!(log.len(), seen.len(), "every request was decided and logged");
    assert!(
        by_revision.len() == 2 && by_revision.values().all(|n| *n > 20),
        "load spanned both revisions: {by_revision:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_added_and_removed_under_load() {
    let stack = Stack::start(AUTHZ).await;
    let old_token = stack.token("alice", &["User"]);
    let new_key = SigningKey::ec("test-ec-2");
    let new_token = new_key.sign(&claims("bob", &["User"]));
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(stack.envoy.url(""), vec![("/v1/jobs/1", old_token.clone())], stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Added: verifies at once.
    new_key.write_public(&stack.keys_dir);
    let added = wait_until(Duration::from_secs(10), || async {
        send(&stack.envoy.url(""), Http1, "GET", "/v1/jobs/1", Some(&new_token), &[]).await.status == 200
    })
    .await;
    assert!(added, "new key never verified");
    let metrics = stack.authz.metrics().await;
    for kid in [stack.key.kid.as_str(), "test-ec-2"] {
        assert!(
            metrics.contains(&format!("qiria_authz_key_active{{kid=\"{kid}\"}} 1")),
            "{kid} not active:\n{metrics}"
        );
    }

    // A file that is not a key is reported and skipped; the keys beside it keep verifying.
    std::fs::write(stack.keys_dir.join("garbage.pem"), "-----BEGIN PUBLIC KEY-----\nnope\n").unwrap();
    let reported = wait_until(Duration::from_secs(10), || async {
        stack.authz.health().await["keys"]["last_error"].as_str().is_some_and(|e| e.contains("garbage.pem"))
    })
    .await;
    assert!(reported, "bad key file not reported: {}", stack.authz.health().await);
    assert_eq!(send(&stack.envoy.url(""), Http1, "GET", "/v1/jobs/1", Some(&new_token), &[]).await.status, 200);
    std::fs::remove_file(stack.keys_dir.join("garbage.pem")).unwrap();
    let cleared =
        wait_until(Duration::from_secs(10), || async { stack.authz.health().await["keys"]["last_error"].is_null() })
            .await;
    assert!(cleared, "report not cleared: {}", stack.authz.health().await);
    stop.store(true, Ordering::Relaxed);
    let during = running.await.unwrap();
    assert!(during.len() > 50 && during.iter().all(|(_, s)| *s == 200), "failed requests while keys changed");

    // A file that cannot be read at all (reading it fails with EIO, even as root: a link to
    // the reader's own /proc/self/mem), then a key removed beside it: the removed key stops
    // verifying (even though its tokens were cached), the other key's do not.
    std::os::unix::fs::symlink("/proc/self/mem", stack.keys_dir.join("unreadable.pem")).unwrap();
    let reported = wait_until(Duration::from_secs(10), || async {
        stack.authz.health().await["keys"]["last_error"].as_str().is_some_and(|e| e.contains("unreadable.pem"))
    })
    .await;
    assert!(reported, "unreadable key file not reported: {}", stack.authz.health().await);
    std::fs::remove_file(stack.keys_dir.join(format!("{}.pem", stack.key.kid))).unwrap();
    let removed = wait_until(Duration::from_secs(10), || async {
        send(&stack.envoy.url(""), Http1, "GET", "/v1/jobs/1", Some(&old_token), &[]).await.status == 401
    })
    .await;
    assert!(removed, "removed key still verifies next to an unreadable file");
    assert_eq!(send(&stack.envoy.url(""), Http1, "GET", "/v1/jobs/1", Some(&new_token), &[]).await.status, 200);
    let health = stack.authz.health().await;
    assert!(health["keys"]["last_error"].as_str().is_some_and(|e| e.contains("unreadable.pem")), "{health}");
    let metrics = stack.authz.metrics().await;
    assert!(metrics.contains("qiria_authz_key_reloads_total{result=\"partial\"}"), "{metrics}");
    // The removed key left the active key ids; the other one is still there.
    assert!(!metrics.contains(&format!("qiria_authz_key_active{{kid=\"{}\"}}", stack.key.kid)), "{metrics}");
    assert!(metrics.contains("qiria_authz_key_active{kid=\"test-ec-2\"} 1"), "{metrics}");
}
