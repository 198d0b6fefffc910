//! The tamper-evident audit trail as an operator keeps it: authz behind the real Envoy writes
//! its audit events (key set and policy activations, a refused reload) into a hash-chained
//! JSONL trail with checkpoints signed by its own audit key (denials too, by decision id), and
//! `qiria-audit verify` finds a
//! clean trail intact and names the first bad record of every tampered copy — edited, removed,
//! inserted, reordered, cut from the end (against the checkpoint the SIEM holds), or checked
//! against another key (a forged checkpoint).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use qiria_test_support::authz::Stack;
use qiria_test_support::call::Protocol::Http1;
use qiria_test_support::{binary, wait_until, workspace_root};

fn audit(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary("qiria-audit")).args(args).output().expect("qiria-audit runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn verify(trail: &Path, public: &Path, held: Option<&Path>) -> (i32, String) {
    let (trail, public) = (trail.display().to_string(), public.display().to_string());
    let mut args = vec!["verify", &trail, "--public-key", &public, "--max-unsealed", "3"];
    let held = held.map(|h| h.display().to_string());
    if let Some(held) = &held {
        args.extend(["--checkpoint", held]);
    }
    audit(&args)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_keeps_a_trail_that_verifies_and_every_tampering_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("audit-key");
    let (code, out) = audit(&["keygen", "--dir", &keys.display().to_string()]);
    assert_eq!(code, 0, "{out}");
    let trail = dir.path().join("authz-audit.jsonl");
    let config = dir.path().join("authz.toml");
    std::fs::write(
        &config,
        format!(
            "[log]\naudit_trail = \"{}\"\naudit_key_dir = \"{}\"\naudit_checkpoint_every = 3\n",
            trail.display(),
            keys.display()
        ),
    )
    .expect("config");
    let config = config.display().to_string();
    let stack = Stack::with_policy(
        &binary("authz").display().to_string(),
        &workspace_root().join("policies/rego"),
        &["--config", &config],
    )
    .await;
    // Reloads: a good one, a refused one (a syntax error), a good one again.
    let revision = stack.authz.policy_revision().await;
    let extra = stack.policy_dir.join("qiria/extra.rego");
    std::fs::write(&extra, "package qiria.extra\n\nanswer := 42\n").expect("write policy");
    let revision = stack.authz.wait_for_revision_change(&revision).await;
    std::fs::write(&extra, "package qiria.extra\n\nanswer := \n").expect("write broken policy");
    let refused = wait_until(Duration::from_secs(15), || async {
        lines(&trail).iter().any(|l| l.contains("\"event\":\"policy_rejected\""))
    })
    .await;
    assert!(refused, "no policy_rejected record: {:#?}", lines(&trail));
    std::fs::write(&extra, "package qiria.extra\n\nanswer := 43\n").expect("write policy");
    stack.authz.wait_for_revision_change(&revision).await;
    let complete = wait_until(Duration::from_secs(15), || async {
        lines(&trail).iter().filter(|l| l.contains("\"event\":\"policy_activated\"")).count() >= 3
    })
    .await;
    assert!(complete, "not every activation was recorded: {:#?}", lines(&trail));
    // A denial is an audit record too, joined to its decision by the decision id.
    let denied = stack.send(Http1, "GET", "/v1/jobs/42?token=not-for-the-trail", None, &[]).await;
    assert_eq!(denied.status, 401);
    let decision_id = denied.decision_key().expect("a decision id");
    let audited = wait_until(Duration::from_secs(10), || async {
        lines(&trail).iter().any(|l| l.contains("\"event\":\"access_denied\"") && l.contains(&decision_id))
    })
    .await;
    assert!(audited, "no access_denied record for {decision_id}: {:#?}", lines(&trail));
    let record = lines(&trail).into_iter().find(|l| l.contains(&decision_id)).expect("the record");
    let record: serde_json::Value = serde_json::from_str(&record).expect("json");
    assert_eq!(record["fields"]["path"], "/v1/jobs/42", "no query string: {record}");
    assert_eq!(record["fields"]["reason"], "missing");
    assert_eq!(record["fields"]["status"], 401);
    drop(stack);

    let records = lines(&trail);
    let public = keys.join("audit.pub");
    assert!(records.iter().any(|l| l.contains("\"event\":\"keyset_activated\"")), "{records:#?}");
    assert!(records.iter().filter(|l| l.contains("\"event\":\"checkpoint\"")).count() >= 2, "{records:#?}");
    let (code, out) = verify(&trail, &public, None);
    assert_eq!(code, 0, "a clean trail: {out}");
    assert!(out.contains("intact"), "{out}");

    // Each tampered copy is refused, naming the line of the first bad record.
    let write = |name: &str, lines: &[String]| {
        let path = dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").expect("write copy");
        path
    };
    let victim = records.iter().position(|l| l.contains("\"event\":\"policy_activated\"")).expect("an activation");
    let mut edited = records.clone();
    edited[victim] = edited[victim].replacen("policy_activated", "policy_activatee", 1);
    let mut removed = records.clone();
    removed.remove(victim);
    let mut inserted = records.clone();
    inserted.insert(victim, records[victim - 1].clone());
    let mut reordered = records.clone();
    reordered.swap(victim, victim + 1);
    for (name, copy, line) in [
        ("edited", edited, victim + 1),
        ("removed", removed, victim + 1),
        ("inserted", inserted, victim + 1),
        ("reordered", reordered, victim + 1),
    ] {
        let (code, out) = verify(&write(name, &copy), &public, None);
        assert_eq!(code, 1, "{name} was not found: {out}");
        assert!(out.contains(&format!("TAMPERED at line {line} ")), "{name}: {out}");
    }

    // Cut from the end: the file alone looks intact; the checkpoint the SIEM holds tells.
    let last = records.iter().rposition(|l| l.contains("\"event\":\"checkpoint\"")).expect("a checkpoint");
    let held = write("held-checkpoint", &records[last..=last]);
    let cut = write("cut", &records[..last]);
    assert_eq!(verify(&cut, &public, None).0, 0);
    let (code, out) = verify(&cut, &public, Some(&held));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cut from the end"), "{out}");
    assert_eq!(verify(&trail, &public, Some(&held)).0, 0);

    // Checked against another service's key: the first checkpoint is not its signature.
    let other = dir.path().join("other-key");
    assert_eq!(audit(&["keygen", "--dir", &other.display().to_string()]).0, 0);
    let (code, out) = verify(&trail, &other.join("audit.pub"), None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signature"), "{out}");
}
