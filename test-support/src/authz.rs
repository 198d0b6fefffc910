//! The real `authz` binary as a process, and a whole stack (keys, policies, authz, the
//! issuer if asked for, echo upstream, Envoy) for tests that go through Envoy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::envoy::Envoy;
use crate::gateway::Gateway;
use crate::issuer::{Issuer, IssuerFiles};
use crate::process::Process;
use crate::tokens::{SigningKey, AUDIENCE, ISSUER};
use crate::upstream::EchoUpstream;
use crate::{free_port, wait_until, workspace_root};

/// The environment variable of authz's `decision_log.allow_sample`.
const ALLOW_SAMPLE: &str = "QIRIA_AUTHZ_DECISION_LOG__ALLOW_SAMPLE";

/// A running authz process.
pub struct Authz {
    /// ext_authz gRPC port.
    pub grpc_port: u16,
    /// Admin HTTP port (`/health`, `/metrics`).
    pub admin_port: u16,
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    process: Option<Process>,
}

impl Authz {
    /// Starts `bin serve` on free ports with the test issuer and audience, plus `extra` flags,
    /// and waits until `/health` says it serves.
    pub async fn start(bin: &Path, policy_dir: &Path, keys_dir: &Path, log_dir: &Path, extra: &[&str]) -> Self {
        let mut authz = Self::spawn(bin, policy_dir, keys_dir, log_dir, extra);
        authz.wait_healthy().await;
        authz
    }

    /// Like [`Self::start`] without waiting: for tests of a service that is not ready yet.
    pub fn spawn(bin: &Path, policy_dir: &Path, keys_dir: &Path, log_dir: &Path, extra: &[&str]) -> Self {
        let (grpc_port, admin_port) = (free_port(), free_port());
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--grpc-addr".into(),
            format!("127.0.0.1:{grpc_port}"),
            "--admin-addr".into(),
            format!("127.0.0.1:{admin_port}"),
            "--policy-dir".into(),
            policy_dir.display().to_string(),
            "--keys-dir".into(),
            keys_dir.display().to_string(),
            "--issuer".into(),
            ISSUER.into(),
            "--audience".into(),
            AUDIENCE.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut authz =
            Self { grpc_port, admin_port, bin: bin.into(), args, log: log_dir.join("authz.log"), process: None };
        authz.launch();
        authz
    }

    fn launch(&mut self) {
        self.stop();
        // Every allowed request is logged too (the default samples 1 %): tests look decisions
        // up. A test binary of its own may set another sample in its environment.
        let sample = std::env::var(ALLOW_SAMPLE).unwrap_or_else(|_| "1.0".into());
        let env = [(ALLOW_SAMPLE, sample.as_str())];
        self.process =
            Some(Process::spawn_with_env("authz", &self.bin, &self.args, &self.log, &env).expect("start authz"));
    }

    /// Starts the process again on the same ports (after [`Self::stop`]) and waits for it.
    pub async fn restart(&mut self) {
        self.launch();
        self.wait_healthy().await;
    }

    /// Waits until `/health` answers 200; panics with the log otherwise.
    pub async fn wait_healthy(&mut self) {
        if let Some(p) = self.process.as_ref() {
            crate::wait_healthy(p, self.admin_port).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    /// Kills the process.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// The `/health` document.
    pub async fn health(&self) -> serde_json::Value {
        crate::health(self.admin_port).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin_port);
        match reqwest::get(url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Everything authz logged.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The decision log event whose decision id or request id is `key` (see
    /// [`crate::call::Reply::decision_key`]), waiting a moment for it (the log is written
    /// after the answer, by a thread of its own); panics with the log when there is none.
    pub async fn decision_log(&self, key: &str) -> serde_json::Value {
        let find =
            || self.decision_logs().into_iter().find(|l| l["decision_id"] == key || l["qiria"]["request_id"] == key);
        wait_until(Duration::from_secs(5), || async { find().is_some() }).await;
        find().unwrap_or_else(|| panic!("decision {key} not logged:\n{}", self.output()))
    }

    /// Every decision log event so far (OPA's decision-log shape), in order.
    pub fn decision_logs(&self) -> Vec<serde_json::Value> {
        let output = self.output();
        output
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["decision_id"].is_string() && l["path"].is_string() && l["qiria"].is_object())
            .collect()
    }

    /// The active policy revision ("" when none).
    pub async fn policy_revision(&self) -> String {
        self.health().await["policy"]["active"].as_str().unwrap_or_default().to_string()
    }

    /// Waits until the active policy revision is no longer `old`; returns the new one.
    pub async fn wait_for_revision_change(&self, old: &str) -> String {
        let changed = wait_until(Duration::from_secs(15), || async {
            let new = self.policy_revision().await;
            !new.is_empty() && new != old
        })
        .await;
        assert!(changed, "policy revision never changed from {old}: {}", self.health().await);
        self.policy_revision().await
    }
}

/// Keys, a private copy of a policy directory, authz, the issuer (if asked for), an echo
/// upstream and Envoy in front.
pub struct Stack {
    /// The signing key whose public half is in `keys_dir` from the start.
    pub key: SigningKey,
    /// Verification key directory (a stand-in for the mounted secret).
    pub keys_dir: PathBuf,
    /// Policy directory authz watches (a copy; tests may edit it).
    pub policy_dir: PathBuf,
    /// The authz process.
    pub authz: Authz,
    /// The issuer process, for stacks that have one.
    pub issuer: Option<Issuer>,
    /// The worker-gateway, for stacks that have one (the job API's route goes to it).
    pub gateway: Option<Gateway>,
    /// The upstream behind Envoy.
    pub upstream: EchoUpstream,
    /// Envoy.
    pub envoy: Envoy,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// The shipped policy (`policies/rego`) behind a real Envoy.
    pub async fn start(authz_bin: &str) -> Self {
        Self::with_policy(authz_bin, &workspace_root().join("policies/rego"), &[]).await
    }

    /// Any policy directory, with extra authz flags.
    pub async fn with_policy(authz_bin: &str, policy_src: &Path, extra: &[&str]) -> Self {
        Self::build(authz_bin, policy_src, extra, None).await
    }

    /// The shipped policy, with the issuer behind Envoy too: signing key `test-rsa-1`, an
    /// SQLite store in the stack's directory, Envoy as its trusted proxy. Rate limits are
    /// lifted, as the flows under test log in far more often than people do.
    pub async fn with_issuer(authz_bin: &str) -> Self {
        Self::with_issuer_config(authz_bin, None, UNLIMITED).await
    }

    /// The same with the issuer's store at `database_url` (e.g. PostgreSQL).
    pub async fn with_issuer_on(authz_bin: &str, database_url: &str) -> Self {
        Self::with_issuer_config(authz_bin, Some(database_url), UNLIMITED).await
    }

    /// An issuer with `limits_toml` as the `[limits]` section of its config file.
    pub async fn with_issuer_config(authz_bin: &str, database_url: Option<&str>, limits_toml: &str) -> Self {
        let config = format!("[server]\ntrusted_proxies = [\"127.0.0.1\"]\n[limits]\n{limits_toml}\n");
        Self::build(authz_bin, &workspace_root().join("policies/rego"), &[], Some((database_url, &config))).await
    }

    /// `issuer`: `None` for no issuer, else its database (`None`: SQLite) and config file.
    async fn build(authz_bin: &str, policy_src: &Path, extra: &[&str], issuer: Option<(Option<&str>, &str)>) -> Self {
        Self::build_with(authz_bin, policy_src, extra, issuer, None, None).await
    }

    /// [`Self::with_policy`] with Envoy's OpenTelemetry tracer exporting to the OTLP receiver
    /// at `otlp_port` (authz's own export is its config's, in `extra`).
    pub async fn with_tracing(authz_bin: &str, policy_src: &Path, extra: &[&str], otlp_port: u16) -> Self {
        Self::build_with(authz_bin, policy_src, extra, None, None, Some(otlp_port)).await
    }

    /// Everything behind Envoy: authz on `policy_src`, the issuer (SQLite, Envoy its trusted
    /// proxy, rate limits lifted, plus `issuer_toml`) and the worker-gateway (`gateway_toml`).
    pub async fn with_issuer_and_gateway(
        authz_bin: &str,
        policy_src: &Path,
        issuer_toml: &str,
        gateway_toml: &str,
    ) -> Self {
        let config = format!("[server]\ntrusted_proxies = [\"127.0.0.1\"]\n[limits]\n{UNLIMITED}\n{issuer_toml}\n");
        Self::build_with(authz_bin, policy_src, &[], Some((None, &config)), Some(gateway_toml), None).await
    }

    /// The shipped policy with the worker-gateway behind Envoy's job API route.
    pub async fn with_gateway(authz_bin: &str) -> Self {
        Self::with_gateway_config(authz_bin, &workspace_root().join("policies/rego"), "").await
    }

    /// A policy directory (a copy is used by authz and the gateway alike) and `gateway_toml`
    /// added to the gateway's config file (e.g. its `[kestra]` section).
    pub async fn with_gateway_config(authz_bin: &str, policy_src: &Path, gateway_toml: &str) -> Self {
        Self::build_with(authz_bin, policy_src, &[], None, Some(gateway_toml), None).await
    }

    /// [`Self::with_gateway_config`] with Envoy's OpenTelemetry tracer exporting to the OTLP
    /// receiver at `otlp_port` (the services export where their environment says).
    pub async fn with_gateway_traced(authz_bin: &str, policy_src: &Path, gateway_toml: &str, otlp_port: u16) -> Self {
        Self::build_with(authz_bin, policy_src, &[], None, Some(gateway_toml), Some(otlp_port)).await
    }

    async fn build_with(
        authz_bin: &str,
        policy_src: &Path,
        extra: &[&str],
        issuer: Option<(Option<&str>, &str)>,
        gateway: Option<&str>,
        otlp_port: Option<u16>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys_dir = dir.path().join("keys");
        let policy_dir = dir.path().join("policy");
        std::fs::create_dir_all(&keys_dir).expect("keys dir");
        copy_dir(policy_src, &policy_dir);
        let key = SigningKey::rsa("test-rsa-1");
        key.write_public(&keys_dir);
        let authz = Authz::start(Path::new(authz_bin), &policy_dir, &keys_dir, dir.path(), extra).await;
        let issuer = match issuer {
            Some((database_url, config)) => {
                let files = IssuerFiles {
                    dir: dir.path(),
                    key: &key,
                    keys_dir: &keys_dir,
                    policy_dir: &policy_dir,
                    database_url,
                };
                Some(Issuer::start(&files, config, &[]).await)
            }
            None => None,
        };
        let gateway = match gateway {
            Some(toml) => Some(Gateway::start(dir.path(), &keys_dir, &policy_dir, toml).await),
            None => None,
        };
        let upstream = EchoUpstream::start().await;
        let ports = issuer.as_ref().map(|i| (i.token_port, i.admin_api_port));
        let gateway_port = gateway.as_ref().map(|g| g.grpc_port);
        let envoy = Envoy::start_full(authz.grpc_port, upstream.port, ports, gateway_port, otlp_port).await;
        Self { key, keys_dir, policy_dir, authz, issuer, gateway, upstream, envoy, _dir: dir }
    }

    /// The issuer; panics for a stack without one.
    pub fn issuer(&self) -> &Issuer {
        self.issuer.as_ref().expect("a stack started with an issuer")
    }

    /// Sends a request through Envoy.
    pub async fn send(
        &self,
        protocol: crate::call::Protocol,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> crate::call::Reply {
        crate::call::send(&self.envoy.url(""), protocol, method, path, token, headers).await
    }

    /// A valid bearer token for `sub` with `roles`, signed by [`Self::key`].
    pub fn token(&self, sub: &str, roles: &[&str]) -> String {
        self.key.sign(&crate::tokens::claims(sub, roles))
    }
}

/// `[limits]` settings that lift the rate limits and the lockout, and let a login wait for
/// its hash as long as a loaded test machine needs (only the flood tests want saturation).
pub const UNLIMITED: &str = "rate_per_ip_per_minute = 1000000\nrate_per_user_per_minute = 1000000\n\
                             lockout_failures = 1000000\nhashing_max_wait_ms = 10000\nhashing_queue_per_worker = 16";

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// A copy of the shipped policy under `dir` whose flow allowlist (`data.flows`) is `flows`
/// (JSON: namespace → flow → permission).
pub fn policy_with_flows(dir: &Path, flows: &str) -> PathBuf {
    let policy = dir.join("policy-src");
    copy_dir(&workspace_root().join("policies/rego"), &policy);
    let data_path = policy.join("qiria/data.json");
    let mut data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&data_path).expect("data")).expect("json");
    data["flows"] = serde_json::from_str(flows).expect("flows JSON");
    std::fs::write(&data_path, data.to_string()).expect("write data");
    policy
}
