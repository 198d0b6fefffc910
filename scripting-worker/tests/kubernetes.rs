//! Every manifest the `kubernetes` backend generates — the cluster's static objects and a
//! run's Job and ConfigMap — against the Kubernetes 1.32 schemas, offline, with
//! `kubernetes-validate --strict` (unknown fields are errors). The validator's own rejection
//! of a broken Job is checked too, so that a validator accepting anything fails the test. The
//! test fails, never skips, when the validator is missing (`./dev` installs it in `.venv`).

use std::path::{Path, PathBuf};
use std::process::Command;

use scripting_worker::config::Config;
use serde_json::{json, Value};

const KUBERNETES_VERSION: &str = "1.32.0";
const RUN_ID: &str = "run-0123456789abcdef0123456789abcdef";
const JOB_UID: &str = "3f0c1e9a-5b7d-4c2e-9f10-6a8b2c4d6e8f";

fn validator() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/kubernetes-validate");
    assert!(
        path.is_file(),
        "{} is missing: run ./dev (or .venv/bin/python3 -m pip install kubernetes-validate)",
        path.display()
    );
    path
}

/// Each manifest in a file of its own, named by kind and name.
fn write_all(dir: &Path, manifests: &[Value]) -> Vec<PathBuf> {
    manifests
        .iter()
        .map(|manifest| {
            let kind = manifest["kind"].as_str().expect("a kind").to_lowercase();
            let name = manifest["metadata"]["name"].as_str().expect("a name");
            let path = dir.join(format!("{kind}-{name}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(manifest).expect("json")).expect("write");
            path
        })
        .collect()
}

struct Verdict {
    success: bool,
    output: String,
}

fn validate(files: &[PathBuf]) -> Verdict {
    let out = Command::new(validator())
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .args(files)
        .output()
        .expect("kubernetes-validate runs");
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Verdict { success: out.status.success(), output }
}

fn all_manifests() -> Vec<Value> {
    let config = Config::default();
    let mut manifests = scripting_worker::kubernetes_manifests(&config);
    manifests.extend(scripting_worker::kubernetes_run_manifests(&config, RUN_ID, JOB_UID, "print('hello')\n"));
    manifests
}

#[test]
fn every_generated_manifest_passes_the_kubernetes_schemas() {
    let manifests = all_manifests();
    let kinds: Vec<&str> = manifests.iter().filter_map(|m| m["kind"].as_str()).collect();
    for kind in [
        "Namespace",
        "NetworkPolicy",
        "LimitRange",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "RuntimeClass",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "Job",
        "ConfigMap",
    ] {
        assert!(kinds.contains(&kind), "no {kind} among {kinds:?}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_all(dir.path(), &manifests);
    let verdict = validate(&files);
    assert!(verdict.success, "kubernetes-validate refused a manifest:\n{}", verdict.output);
    // An unknown kind is only a warning: every file must have been checked against a schema.
    for file in &files {
        let shown = file.display().to_string();
        assert!(
            verdict.output.lines().any(|l| l.starts_with("INFO") && l.contains(&shown) && l.contains("passed")),
            "{shown} was not validated:\n{}",
            verdict.output
        );
    }
    assert!(!verdict.output.contains("WARN"), "{}", verdict.output);
}

#[test]
fn the_validator_rejects_a_job_with_a_wrong_field_type_or_an_unknown_field() {
    let manifests = all_manifests();
    let job = manifests.iter().find(|m| m["kind"] == "Job").expect("a Job").clone();
    let dir = tempfile::tempdir().expect("tempdir");

    let mut wrong_type = job.clone();
    wrong_type["spec"]["backoffLimit"] = json!("zero");
    let file = dir.path().join("wrong-type.json");
    std::fs::write(&file, serde_json::to_vec(&wrong_type).expect("json")).expect("write");
    let verdict = validate(std::slice::from_ref(&file));
    assert!(!verdict.success, "a string backoffLimit was accepted:\n{}", verdict.output);
    assert!(verdict.output.contains("backoffLimit"), "{}", verdict.output);

    let mut unknown = job;
    unknown["spec"]["template"]["spec"]["containers"][0]["privilegedd"] = json!(false);
    let file = dir.path().join("unknown-field.json");
    std::fs::write(&file, serde_json::to_vec(&unknown).expect("json")).expect("write");
    let verdict = validate(std::slice::from_ref(&file));
    assert!(!verdict.success, "an unknown field was accepted (is --strict in effect?):\n{}", verdict.output);
    assert!(verdict.output.contains("privilegedd"), "{}", verdict.output);
}

#[test]
fn the_sandbox_pod_is_held_to_the_design() {
    let manifests = all_manifests();
    let job = manifests.iter().find(|m| m["kind"] == "Job").expect("a Job");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["runtimeClassName"], "gvisor");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(job["metadata"]["namespace"], "qiria-sandbox");
    let config_map = manifests.iter().find(|m| m["kind"] == "ConfigMap").expect("a ConfigMap");
    assert_eq!(config_map["data"]["main.py"], "print('hello')\n");
    assert_eq!(config_map["metadata"]["ownerReferences"][0]["uid"], JOB_UID);
    let policy = manifests.iter().find(|m| m["kind"] == "NetworkPolicy").expect("a NetworkPolicy");
    assert_eq!(policy["metadata"]["namespace"], "qiria-sandbox");
    assert!(policy["spec"].get("egress").is_none() && policy["spec"].get("ingress").is_none(), "no rule");
}

#[test]
fn scripting_worker_manifests_writes_them_from_the_config_and_refuses_an_unpinned_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = qiria_test_support::binary("scripting-worker");
    let config = dir.path().join("worker.toml");
    let image = format!("registry.example.org/python@sha256:{}", "ab".repeat(32));
    std::fs::write(&config, format!("[kubernetes]\nnamespace = \"team-sandbox\"\nimage = \"{image}\"\n"))
        .expect("config");
    let out = dir.path().join("manifests");
    let run = Command::new(&worker)
        .args(["manifests", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("runs");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let files: Vec<PathBuf> = std::fs::read_dir(&out).expect("written").flatten().map(|e| e.path()).collect();
    assert!(files.len() >= 8, "{files:?}");
    let verdict = validate(&files);
    assert!(verdict.success, "{}", verdict.output);
    let namespace: Value = serde_json::from_slice(
        &std::fs::read(files.iter().find(|f| f.to_string_lossy().contains("-namespace-")).expect("a namespace"))
            .expect("read"),
    )
    .expect("json");
    assert_eq!(namespace["metadata"]["name"], "team-sandbox", "the config's namespace, not the default");

    std::fs::write(&config, "[kubernetes]\nimage = \"python:3\"\n").expect("config");
    let run = Command::new(&worker)
        .args(["manifests", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("runs");
    assert_eq!(run.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("kubernetes.image"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
