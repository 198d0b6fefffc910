//! The `authz` command line as security teams and operators use it.

use std::process::Command;

use qiria_test_support::workspace_root;

const AUTHZ: &str = env!("CARGO_BIN_EXE_authz");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(AUTHZ).args(args).current_dir(workspace_root()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_explains_every_serve_option() {
    let (code, help, _) = run(&["serve", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--config",
        "--grpc-addr",
        "--admin-addr",
        "--tls-cert",
        "--tls-key",
        "--tls-client-ca",
        "--policy-dir",
        "--decision-rule",
        "--rego-v0",
        "--keys-dir",
        "--issuer",
        "--audience",
        "--leeway-secs",
        "--log-format",
        "--log-level",
    ] {
        assert!(help.contains(flag), "{flag} missing from help:\n{help}");
    }
}

#[test]
fn policy_test_passes_on_the_shipped_policy_and_fails_on_a_broken_one() {
    let (code, out, err) = run(&["policy", "test", "policies/rego"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("PASS data.qiria.authz_test.test_default_deny"), "{out}");
    assert!(out.contains(" passed, 0 failed"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.rego"), "package p\nallow := false\ntest_allows if allow\ntest_ok if true\n")
        .unwrap();
    let (code, out, _) = run(&["policy", "test", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL data.p.test_allows"), "{out}");
    assert!(out.contains("PASS data.p.test_ok"), "{out}");
}

#[test]
fn policy_eval_prints_the_decision_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(
        &input,
        r#"{"attributes":{"request":{"http":{"method":"POST","path":"/v1/jobs/scripts"}}},
            "parsed_path":["v1","jobs","scripts"],"identity":{"sub":"eve","roles":["Auditor"]}}"#,
    )
    .unwrap();
    let (code, out, err) = run(&["policy", "eval", "--input", input.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["decision"]["allowed"], false);
    assert_eq!(out["why"]["required_permission"], "jobs:submit-script");
    assert!(out["why"]["reason"].as_str().unwrap().contains("lack permission"), "{out}");
    assert!(out["why"].get("test_default_deny").is_none());
}

#[test]
fn bad_configuration_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("authz.toml");
    std::fs::write(&config, "[jwt]\nleway_secs = 5\n").unwrap();
    let (code, _, err) = run(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("leway_secs"), "{err}");

    let (code, _, err) = run(&["serve", "--leeway-secs", "600"]);
    assert_eq!(code, 2);
    assert!(err.contains("jwt.leeway_secs"), "{err}");
}

#[test]
fn authz_has_no_issuer_verbs() {
    let (code, help, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for verb in ["users", "keys", "token", "store"] {
        assert!(!help.lines().any(|l| l.trim_start().starts_with(verb)), "authz still offers `{verb}`:\n{help}");
    }
    let (code, _, err) = run(&["serve", "--issue-tokens"]);
    assert_eq!(code, 2, "the issuer is its own binary: {err}");
}

#[test]
fn policy_test_refuses_a_bundle_calling_an_unsupported_builtin_naming_it_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package p\nimport rego.v1\n\ndefault allow := false\n\nallow if {\n\tinput.x\n\tcrypto.x509.parse_rsa_private_key(input.x)\n}\n\ntest_ok if true\n",
    )
    .unwrap();
    let (code, out, err) = run(&["policy", "test", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("crypto.x509.parse_rsa_private_key") && err.contains("p.rego:8"), "{err}");
    // The OPA builtins Qiria provides load and run.
    std::fs::write(dir.path().join("p.rego"), "package p\nimport rego.v1\n\ntest_sha if crypto.sha256(\"abc\") == \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\n").unwrap();
    let (code, out, err) = run(&["policy", "test", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}
