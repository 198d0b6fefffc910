//! The issuer's audit trail delivered to a real rsyslog as the SIEM, over RELP on mutual TLS:
//! the SIEM is stopped during login traffic, the issuer restarted while it is down, the SIEM
//! started again — and every record of the trail arrives, in order, none missing (a record
//! sent again after a restart is counted, not an error). The SIEM's copy of the latest
//! checkpoint then verifies the trail's end. With the spool full and `when_full = "block"`,
//! admin actions are refused until the SIEM catches up.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use qiria_test_support::authz::copy_dir;
use qiria_test_support::issuer::{Issuer, IssuerFiles};
use qiria_test_support::siem::Siem;
use qiria_test_support::tls::{pki, TestPki};
use qiria_test_support::tokens::SigningKey;
use qiria_test_support::{binary, wait_until, workspace_root};

/// The issuer's identity in the mesh, on its client certificate to the SIEM.
const ISSUER_ID: &str = "spiffe://cluster.local/ns/qiria/sa/issuer";

struct Setup {
    dir: tempfile::TempDir,
    key: SigningKey,
    config: String,
}

impl Setup {
    /// Keys, policy, and the issuer's config keeping its trail and delivering it to `siem`.
    fn new(siem: &Siem, pki: &TestPki, siem_settings: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::rsa("test-rsa-1");
        std::fs::create_dir_all(dir.path().join("keys")).expect("keys");
        key.write_public(&dir.path().join("keys"));
        copy_dir(&workspace_root().join("policies/rego"), &dir.path().join("policy"));
        let config = format!(
            "[limits]\n{}\n{}",
            qiria_test_support::authz::UNLIMITED,
            siem.log_section(dir.path(), pki, siem_settings)
        );
        Self { dir, key, config }
    }

    fn trail(&self) -> std::path::PathBuf {
        Siem::trail(self.dir.path())
    }

    async fn issuer(&self) -> Issuer {
        let (keys, policy) = (self.dir.path().join("keys"), self.dir.path().join("policy"));
        let files = IssuerFiles {
            dir: self.dir.path(),
            key: &self.key,
            keys_dir: &keys,
            policy_dir: &policy,
            database_url: None,
        };
        Issuer::start(&files, &self.config, &[]).await
    }

    /// The sequence numbers of the trail's records, in file order.
    fn trail_seqs(&self) -> Vec<u64> {
        std::fs::read_to_string(self.trail())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|r| r["seq"].as_u64())
            .collect()
    }
}

/// A failed login (an unknown user): one `login_failed` audit record.
async fn failed_login(issuer: &Issuer, n: usize) {
    let form = [("grant_type", "password"), ("username", &format!("mallory{n}")), ("password", "wrong")];
    let response = reqwest::Client::new().post(issuer.token_url("/v1/auth/token")).form(&form).send().await;
    assert_eq!(response.expect("the issuer answers").status().as_u16(), 400, "invalid_grant");
}

/// Creates `username` through the admin API as an Admin; the status and body.
async fn create_user(issuer: &Issuer, key: &SigningKey, username: &str) -> (u16, String) {
    let admin = key.sign(&qiria_test_support::tokens::claims("root", &["Admin"]));
    let body = serde_json::json!({ "username": username, "password": "0123456789abcdef", "roles": ["User"] });
    let response = reqwest::Client::new()
        .post(issuer.admin_api_url("/v1/admin/users"))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .expect("the admin API answers");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

/// The value of an unlabelled metric.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until the SIEM holds every record of the trail and the issuer knows it (rsyslog
/// may write a record before its acknowledgement reaches the issuer).
async fn delivered(siem: &Siem, setup: &Setup, issuer: &Issuer) -> bool {
    wait_until(Duration::from_secs(30), || async {
        let received: BTreeSet<u64> = siem.received().iter().filter_map(|r| r["seq"].as_u64()).collect();
        let trail = setup.trail_seqs();
        let all = !trail.is_empty() && trail.iter().all(|seq| received.contains(seq));
        all && metric(&issuer.metrics().await, "qiria_audit_spool_records") == Some(0)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audit_record_reaches_the_siem_in_order_across_its_outage_and_a_restart() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let pki = pki(ISSUER_ID);
    let mut siem = Siem::start(scratch.path(), &pki).await;
    let setup = Setup::new(&siem, &pki, "");
    let mut issuer = setup.issuer().await;
    for n in 0..5 {
        failed_login(&issuer, n).await;
    }
    assert!(
        delivered(&siem, &setup, &issuer).await,
        "before the outage: {:?}\n{}",
        setup.trail_seqs(),
        issuer.output()
    );

    // The SIEM goes away during traffic; records wait in the trail.
    siem.stop();
    let before = setup.trail_seqs().len();
    for n in 5..10 {
        failed_login(&issuer, n).await;
    }
    let grew = wait_until(Duration::from_secs(10), || async { setup.trail_seqs().len() >= before + 5 }).await;
    assert!(grew, "the logins were not audited");
    // The sender restarts while the SIEM is down, and more traffic comes.
    drop(issuer);
    issuer = setup.issuer().await;
    for n in 10..15 {
        failed_login(&issuer, n).await;
    }
    let spooled = issuer.metrics().await;
    assert_eq!(metric(&spooled, "qiria_audit_siem_connected"), Some(0), "{spooled}");
    assert!(
        metric(&spooled, "qiria_audit_spool_records").is_some_and(|n| n >= 10),
        "records wait for the SIEM:\n{spooled}"
    );

    siem.resume().await;
    assert!(delivered(&siem, &setup, &issuer).await, "after the outage: {:?}\n{}", setup.trail_seqs(), issuer.output());
    let received: Vec<u64> = siem.received().iter().filter_map(|r| r["seq"].as_u64()).collect();
    let trail = setup.trail_seqs();
    // In order: each record first arrives after the one before it; duplicates only repeat.
    let mut seen = BTreeSet::new();
    let mut first_arrivals = Vec::new();
    for seq in &received {
        if seen.insert(*seq) {
            first_arrivals.push(*seq);
        }
    }
    assert_eq!(first_arrivals, trail, "every record, once, in the trail's order");
    let duplicates = received.len() - first_arrivals.len();
    eprintln!("{} records delivered, {duplicates} sent twice (a restart between sending and the cursor)", trail.len());
    assert!(trail.len() >= 15 + 3, "15 logins and the checkpoints: {trail:?}");
    let metrics = issuer.metrics().await;
    assert_eq!(metric(&metrics, "qiria_audit_spool_records"), Some(0), "{metrics}");
    assert_eq!(metric(&metrics, "qiria_audit_siem_connected"), Some(1), "{metrics}");

    // The SIEM's copy of the latest checkpoint seals the trail's end.
    // (The line as received: a record's hash is over its exact bytes.)
    let checkpoint =
        siem.received_lines().into_iter().rfind(|l| l.contains("\"event\":\"checkpoint\"")).expect("a checkpoint");
    let held = setup.dir.path().join("held-checkpoint.json");
    std::fs::write(&held, checkpoint).expect("write held checkpoint");
    let public = setup.dir.path().join("audit-key/audit.pub");
    let verify = Command::new(binary("qiria-audit"))
        .arg("verify")
        .arg(setup.trail())
        .arg("--public-key")
        .arg(&public)
        .arg("--checkpoint")
        .arg(&held)
        .output()
        .expect("qiria-audit verify");
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_blocks_admin_actions_until_the_siem_catches_up() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let pki = pki(ISSUER_ID);
    let mut siem = Siem::start(scratch.path(), &pki).await;
    let setup = Setup::new(&siem, &pki, "spool_max_records = 3\nwhen_full = \"block\"\n");
    // The SIEM away: the opening checkpoint and three failed logins fill the spool.
    siem.stop();
    let issuer = setup.issuer().await;
    for n in 0..3 {
        failed_login(&issuer, n).await;
    }
    let full = wait_until(Duration::from_secs(10), || async {
        metric(&issuer.metrics().await, "qiria_audit_spool_records").is_some_and(|n| n >= 3)
    })
    .await;
    assert!(full, "{}", issuer.metrics().await);
    let user = create_user(&issuer, &setup.key, "carol").await;
    assert_eq!(user.0, 503, "an admin action while the SIEM is behind: {}", user.1);
    assert!(user.1.contains("audit spool"), "{}", user.1);

    siem.resume().await;
    assert!(delivered(&siem, &setup, &issuer).await, "{}", issuer.output());
    let user = create_user(&issuer, &setup.key, "carol").await;
    assert_eq!(user.0, 201, "the SIEM caught up: {}", user.1);
    // The admin action itself is audited and delivered.
    assert!(delivered(&siem, &setup, &issuer).await);
    assert!(siem.received().iter().any(|r| r["event"] == "admin_action"), "{:?}", siem.received());
}
