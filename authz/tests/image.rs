//! The authz container image, as `./dev images` builds it: unpacked into an OCI runtime bundle
//! and run under gVisor (`runsc`) with nothing but a policy bundle and a public key mounted
//! read-only, on a read-only root, it answers gRPC health SERVING as its numeric non-root user.
//!
//! Needs the image, root, `umoci` and `runsc`: `./dev test` builds the image and runs this test
//! with `QIRIA_TEST_AUTHZ_IMAGE=<OCI layout>:<tag>` (plain `cargo test` leaves it ignored).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use qiria_test_support::process::Process;
use qiria_test_support::tokens::SigningKey;
use qiria_test_support::{free_port, wait_until, workspace_root};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const IMAGE: &str = "QIRIA_TEST_AUTHZ_IMAGE";
/// The user the image runs as (its config's `User`).
const IMAGE_USER: u64 = 65532;

/// A container runsc knows about: deleted (its sandbox killed) when dropped, whatever the
/// test's outcome.
struct Container {
    runsc_root: PathBuf,
    id: String,
}

impl Container {
    fn runsc(&self) -> Command {
        let mut command = Command::new("runsc");
        command.arg("--root").arg(&self.runsc_root);
        command
    }

    /// The user id `runsc ps` reports for the container's process named `command`.
    fn uid_of(&self, command: &str) -> Option<String> {
        let out = self.runsc().args(["ps", &self.id]).output().ok()?;
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        // UID PID PPID C STIME TIME CMD
        table
            .lines()
            .skip(1)
            .find(|l| l.split_whitespace().last() == Some(command))?
            .split_whitespace()
            .next()
            .map(String::from)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.runsc().args(["delete", "--force", &self.id]).output();
    }
}

/// Runs `program args…`, panicking with its output when it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A read-only bind mount into the container.
fn read_only(source: &Path, destination: &str) -> Value {
    json!({
        "destination": destination,
        "type": "bind",
        "source": source.display().to_string(),
        "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
    })
}

async fn grpc_health(endpoint: &str) -> Option<ServingStatus> {
    let channel = Channel::from_shared(endpoint.to_string()).ok()?.connect().await.ok()?;
    let request = HealthCheckRequest { service: "envoy.service.auth.v3.Authorization".into() };
    let response = HealthClient::new(channel).check(request).await.ok()?;
    Some(response.into_inner().status())
}

#[tokio::test]
#[ignore = "needs the authz image, root, umoci and runsc: ./dev test builds the image and runs this"]
async fn the_authz_image_serves_grpc_health_under_gvisor() {
    let image = std::env::var(IMAGE).unwrap_or_else(|_| panic!("{IMAGE} (an OCI layout:tag) is not set"));
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    run("umoci", &["unpack", "--image", &image, bundle.to_str().unwrap()]);

    // What the image holds, besides what umoci makes of every bundle: the binary and CA
    // certificates. (`./dev test` also lists the layer itself.)
    let rootfs = bundle.join("rootfs");
    assert!(rootfs.join("usr/local/bin/authz").is_file());
    assert!(rootfs.join("etc/ssl/certs/ca-certificates.crt").is_file());
    assert!(!rootfs.join("bin/sh").exists(), "the image has a shell");

    // The mounted secrets and the policy bundle, readable by the image's user (the test's
    // temporary directory is root's alone).
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    SigningKey::ec("image-key").write_public(&keys);
    for path in [&keys, &keys.join("image-key.pem")] {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let policies = workspace_root().join("policies/rego");

    let (grpc_port, admin_port) = (free_port(), free_port());
    let spec_path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    assert_eq!(spec["process"]["user"]["uid"], json!(IMAGE_USER), "the image's user: {}", spec["process"]);
    assert_eq!(spec["process"]["user"]["gid"], json!(IMAGE_USER));
    assert_eq!(spec["process"]["args"], json!(["/usr/local/bin/authz"]), "the image's entrypoint");
    let args = spec["process"]["args"].as_array_mut().unwrap();
    for arg in [
        "serve".to_string(),
        "--grpc-addr".into(),
        format!("127.0.0.1:{grpc_port}"),
        "--admin-addr".into(),
        format!("127.0.0.1:{admin_port}"),
        "--policy-dir".into(),
        "/policies".into(),
        "--keys-dir".into(),
        "/keys".into(),
        "--log-format".into(),
        "text".into(),
    ] {
        args.push(arg.into());
    }
    spec["root"]["readonly"] = json!(true);
    spec["hostname"] = json!("authz");
    spec["mounts"].as_array_mut().unwrap().extend([read_only(&policies, "/policies"), read_only(&keys, "/keys")]);
    // The host's network (runsc --network=host), so that the test reaches it on loopback.
    spec["linux"]["namespaces"].as_array_mut().unwrap().retain(|ns| ns["type"] != "network");
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    let container =
        Container { runsc_root: dir.path().join("runsc"), id: format!("qiria-authz-image-{}", std::process::id()) };
    let log = dir.path().join("runsc.log");
    let root = container.runsc_root.display().to_string();
    let runsc_args: Vec<String> = ["--root", &root, "--network=host", "--ignore-cgroups", "run", "--bundle"]
        .iter()
        .map(|s| s.to_string())
        .chain([bundle.display().to_string(), container.id.clone()])
        .collect();
    let mut sandbox = Process::spawn("authz-image", Path::new("runsc"), &runsc_args, &log).unwrap();

    let endpoint = format!("http://127.0.0.1:{grpc_port}");
    let serving =
        wait_until(Duration::from_secs(60), || async { grpc_health(&endpoint).await == Some(ServingStatus::Serving) })
            .await;
    if !serving {
        sandbox.fail("never answered gRPC health SERVING");
    }
    assert!(sandbox.is_running());

    // authz itself runs as the image's user, not root.
    let uid = container.uid_of("authz");
    assert_eq!(uid, Some(IMAGE_USER.to_string()), "runsc ps shows authz as the image's user");
    let health = qiria_test_support::health(admin_port).await;
    assert_eq!(health["keys"]["count"], 1, "the mounted key is loaded: {health}");
    drop(container);
    sandbox.wait();
}
