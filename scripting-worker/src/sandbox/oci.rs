//! The OCI runtime spec (`config.json`) of one run, for runsc: a read-only root of the built
//! Python, uid/gid 65534, no capabilities, `noNewPrivileges`, an empty environment, a fresh
//! hostname, fresh pid/net/ipc/uts/mount namespaces, and only these mounts: its own `/proc`,
//! `/dev`, a size-capped `noexec` `/tmp`, the run's script read-only at `/job`, and the run's
//! size-capped `/out` (and, with egress, the proxy's socket read-only at `/run/qiria`). No
//! host path but these is visible.

use std::path::Path;

use serde_json::{json, Value};

use crate::config::RunLimits;

/// The uid and gid the script runs as (the kernel's overflow id: owns nothing).
pub(crate) const NOBODY: u32 = 65534;

/// The loopback address the egress bootstrap forwards to the worker's proxy.
const PROXY_URL: &str = "http://127.0.0.1:3128";

/// What the interpreter runs and the whole environment of the sandbox: the script and
/// nothing, or (with egress) the bootstrap and the proxy variables.
pub(crate) fn entry_and_env(egress: bool) -> (&'static str, Vec<String>) {
    if egress {
        let proxy = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"];
        (crate::rootfs::EGRESS_BOOTSTRAP, proxy.iter().map(|v| format!("{v}={PROXY_URL}")).collect())
    } else {
        ("/job/main.py", Vec::new())
    }
}

/// The spec of a run whose root filesystem is `rootfs`, interpreter `python` (a path inside
/// it), script directory `job_dir` and artifact directory `out_dir` (host paths); with
/// `egress_dir` (holding the proxy's socket), the script starts behind the egress bootstrap
/// and finds the proxy in the usual variables.
pub(crate) fn spec(
    rootfs: &Path,
    python: &Path,
    job_dir: &Path,
    out_dir: &Path,
    egress_dir: Option<&Path>,
    limits: &RunLimits,
) -> Value {
    let none: [&str; 0] = [];
    let (entry, env) = entry_and_env(egress_dir.is_some());
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": NOBODY, "gid": NOBODY },
            // -I: no environment variables, no user site, no script directory on sys.path;
            // -B: no bytecode written (the root is read-only anyway).
            "args": [python, "-I", "-B", entry],
            "env": env,
            "cwd": "/tmp",
            "noNewPrivileges": true,
            "capabilities": { "bounding": none, "effective": none, "inheritable": none, "permitted": none, "ambient": none },
            "rlimits": [
                { "type": "RLIMIT_NOFILE", "hard": limits.open_files, "soft": limits.open_files },
                { "type": "RLIMIT_FSIZE", "hard": limits.file_size_bytes, "soft": limits.file_size_bytes },
                { "type": "RLIMIT_CORE", "hard": 0, "soft": 0 },
            ],
        },
        "root": { "path": rootfs, "readonly": true },
        "hostname": "sandbox",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "noexec", "mode=755", "size=64k"] },
            { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", format!("size={}", limits.tmp_bytes)] },
            { "destination": "/job", "type": "bind", "source": job_dir, "options": ["rbind", "ro", "nosuid", "noexec", "nodev"] },
            { "destination": "/out", "type": "bind", "source": out_dir, "options": ["rbind", "rw", "nosuid", "noexec", "nodev"] },
        ],
        "linux": {
            "namespaces": [ { "type": "pid" }, { "type": "network" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" } ],
        },
    });
    if let (Some(dir), Some(mounts)) = (egress_dir, spec["mounts"].as_array_mut()) {
        mounts.push(json!({ "destination": "/run/qiria", "type": "bind", "source": dir,
                            "options": ["rbind", "ro", "nosuid", "noexec", "nodev"] }));
    }
    spec
}
