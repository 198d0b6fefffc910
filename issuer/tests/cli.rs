//! The `issuer` command line as operators use it.

use std::process::Command;

use qiria_test_support::workspace_root;

const ISSUER: &str = env!("CARGO_BIN_EXE_issuer");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(ISSUER).args(args).current_dir(workspace_root()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("issuer.toml");
    std::fs::write(&config, "[tokens]\naccess_ttl_secs = 86400\n").unwrap();
    let (code, _, err) = run(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("tokens.access_ttl_secs"), "{err}");
}

#[test]
fn keys_generate_writes_the_secret_layout_and_minted_tokens_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, kid, err) = run(&["keys", "generate", "--dir", d, "--kid", "k1", "--alg", "es256"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(kid.trim(), "k1");
    let private = dir.path().join("private/k1.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
    let keys = qiria_identity::KeySet::load_dir(&dir.path().join("public")).unwrap();
    assert_eq!(keys.kids().collect::<Vec<_>>(), vec!["k1"]);
    // Refuses to overwrite.
    let (code, _, err) = run(&["keys", "generate", "--dir", d, "--kid", "k1"]);
    assert_eq!(code, 2, "{err}");

    let (code, token, err) =
        run(&["token", "mint", "--key", private.to_str().unwrap(), "--sub", "ada", "--roles", "User,Auditor"]);
    assert_eq!(code, 0, "{err}");
    let verifier: qiria_identity::TokenVerifier = qiria_identity::TokenVerifier::new(&Default::default());
    verifier.set_keys(keys);
    let identity = verifier.verify(token.trim()).unwrap();
    assert_eq!(&*identity.subject, "ada");
    assert_eq!(&*identity.roles, "User,Auditor");
}
