//! The Kubernetes backend: one Job per run in a sandbox namespace, under gVisor
//! (`runtimeClassName: gvisor`), so that the worker's own pod needs no privilege — only a Role
//! in that namespace. This module owns three things, all pure:
//!
//! - what a run becomes: a Job (one pod, never retried, never restarted, no service account
//!   token, no environment, a read-only root, no capabilities) and a ConfigMap holding the
//!   script, owned by the Job so that the Job's deletion (by the worker, or by its TTL when the
//!   worker died) takes the ConfigMap and the pod with it;
//! - the requests the worker sends the API server for a run, Bearer token included (the token
//!   never appears in `Debug` output nor in a log), and their order: the Job, its ConfigMap,
//!   a watch of its pod to the pod's end, the log, the Job's verdict, the Job's deletion —
//!   sent by [`super::api_server`], the deletion whatever happened before it;
//! - the manifests a cluster needs first: the sandbox namespace (Pod Security `restricted`
//!   enforced), a NetworkPolicy denying all ingress and egress, a LimitRange capping any pod at
//!   the run limits, the worker's ServiceAccount with a Role limited to what the requests use,
//!   the `gvisor` RuntimeClass, and an admission policy refusing any pod in the namespace that
//!   is not under gVisor, mounts a token, or runs another image (the Role lets the worker make
//!   arbitrary Jobs there; the policy is what keeps a stolen worker token from using them).
//!
//! Where each limit of [`RunLimits`] is enforced: the wall clock by the Job's
//! `activeDeadlineSeconds` (whole seconds, counted from the Job's start: scheduling and the
//! image pull count); the CPU share, memory (the memory-backed `/tmp` counts in it) and disk
//! (`/out` and the logs) by the container's limits; `/tmp` and `/out` by their `sizeLimit`
//! (the kubelet evicts the pod past them, at its next check rather than at the byte); output
//! by the log request's `limitBytes`. CPU time, processes, open files and file size have no
//! pod field: this backend does not enforce them (the node's `podPidsLimit` bounds processes).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qiria_runtime::config::ConfigError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::api_server::{self, ApiClient};
use super::oci::NOBODY;
use super::{Backend, LimitHit, RunReport, RunSpec, SandboxError};
use crate::config::{Config, RunLimits};

/// Where the kubelet puts the pod's service account token (and rotates it: it is read for
/// every run, never kept).
pub(crate) const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The RuntimeClass every sandbox pod names.
pub(crate) const RUNTIME_CLASS: &str = "gvisor";
/// The container runtime handler the RuntimeClass maps to (containerd's runsc shim).
const HANDLER: &str = "runsc";
/// The script's container, by name (the log request names it).
pub(crate) const CONTAINER: &str = "script";
/// Not an image: the default digest pulls nothing, so that a cluster never runs an image
/// nobody chose. `kubernetes.image` must be set to a Python image pinned by digest.
pub(crate) const PLACEHOLDER_IMAGE: &str =
    "docker.io/library/python:3-slim@sha256:0000000000000000000000000000000000000000000000000000000000000000";
/// What the API server keeps of one object at most (etcd's request limit); the script and
/// the ConfigMap's metadata must fit in it.
const SCRIPT_MAX_BYTES: usize = 1_000_000;
/// Room in the container's disk limit for the logs kubelet keeps beyond the output caps.
const LOG_SLACK: u64 = 1 << 20;
/// How long a watch may outlive the run's own deadline before the API server ends it.
const WATCH_SLACK_SECONDS: u64 = 30;
/// The label every object of a run carries with the run's id.
const RUN_LABEL: &str = "app.kubernetes.io/instance";
/// The label the Job controller puts on a Job's pods (Kubernetes 1.27 and later).
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// `[kubernetes]`: the Kubernetes backend's settings (`sandbox.backend = "kubernetes"`), from
/// which `scripting-worker manifests` also generates the cluster's objects.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// The API server, as the worker's pod reaches it.
    pub api_server: String,
    /// The CA the API server's certificate chains to.
    pub ca_path: PathBuf,
    /// The worker's service account token (read for every run: the kubelet rotates it).
    pub token_path: PathBuf,
    /// Where runs are made; nothing else lives there.
    pub namespace: String,
    /// Where the worker itself runs.
    pub worker_namespace: String,
    /// The worker's service account (in `worker_namespace`).
    pub service_account: String,
    /// The Python image runs use, pinned by digest (`…@sha256:<64 hex>`).
    pub image: String,
    /// How long a finished Job is kept when the worker did not delete it (it died).
    pub ttl_seconds_after_finished: u32,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            api_server: "https://kubernetes.default.svc".into(),
            ca_path: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"),
            token_path: PathBuf::from(TOKEN_PATH),
            namespace: "qiria-sandbox".into(),
            worker_namespace: "qiria".into(),
            service_account: "scripting-worker".into(),
            image: PLACEHOLDER_IMAGE.into(),
            ttl_seconds_after_finished: 300,
        }
    }
}

impl KubernetesConfig {
    /// Checks the values (the field names are those of a future `[kubernetes]` section).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.api_server.starts_with("https://") {
            return Err(ConfigError::invalid("kubernetes.api_server", "must be an https:// URL"));
        }
        for (field, name) in [
            ("kubernetes.namespace", &self.namespace),
            ("kubernetes.worker_namespace", &self.worker_namespace),
            ("kubernetes.service_account", &self.service_account),
        ] {
            if !dns_label(name) {
                return Err(ConfigError::invalid(field, "must be a DNS label (a-z, 0-9, '-', at most 63)"));
            }
        }
        if self.namespace == self.worker_namespace {
            return Err(ConfigError::invalid(
                "kubernetes.namespace",
                "must differ from kubernetes.worker_namespace: sandboxes share nothing with the worker",
            ));
        }
        if !pinned_image(&self.image) {
            return Err(ConfigError::invalid(
                "kubernetes.image",
                "must be an image pinned by digest (…@sha256:<64 hex>)",
            ));
        }
        if self.image == PLACEHOLDER_IMAGE {
            return Err(ConfigError::invalid(
                "kubernetes.image",
                "is the placeholder: set a Python image pinned by digest",
            ));
        }
        if self.ttl_seconds_after_finished == 0 {
            return Err(ConfigError::invalid("kubernetes.ttl_seconds_after_finished", "must be at least 1"));
        }
        Ok(())
    }
}

/// Why a request could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KubernetesError {
    #[error("reading the service account token at {path}: {source}")]
    Token { path: PathBuf, source: std::io::Error },
    /// Its content is never part of the message.
    #[error("the service account token at {0} is empty or not a bearer token")]
    BadToken(PathBuf),
    #[error("{what} {name:?} is not a valid Kubernetes name")]
    Name { what: &'static str, name: String },
    #[error("the script is {0} bytes; a ConfigMap holds at most {SCRIPT_MAX_BYTES}")]
    ScriptTooLarge(usize),
    #[error("reading the API server's CA at {path}: {source}")]
    Ca { path: PathBuf, source: std::io::Error },
    /// No answer: connecting, TLS (a certificate not from the CA), or the answer cut short.
    #[error("the Kubernetes API server is unreachable: {0}")]
    Unreachable(String),
    /// An answer that is not a success (the `message` of its Status).
    #[error("the Kubernetes API server refused {method} {path}: {status} {reason}")]
    Refused { method: &'static str, path: String, status: u16, reason: String },
    #[error("the answer to {path} is over {limit} bytes")]
    AnswerTooLarge { path: String, limit: usize },
    #[error("an answer of the Kubernetes API server is not what its API documents: {0}")]
    Answer(String),
    /// Nothing the script did: the image or the volumes.
    #[error("the run's pod cannot start: {0}")]
    PodCannotStart(String),
    #[error("the run's pod did not end within the run's deadline")]
    NoEnd,
    #[error("the caller went away; the run was stopped")]
    Cancelled,
}

/// A service account token. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub(crate) struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads the token at `path` (in a cluster, [`TOKEN_PATH`]).
    pub(crate) fn read(path: &Path) -> Result<Self, KubernetesError> {
        let content = std::fs::read_to_string(path)
            .map_err(|source| KubernetesError::Token { path: path.to_path_buf(), source })?;
        let token = content.trim();
        // A byte outside visible ASCII (a newline above all) would end the header early and
        // put the rest of the file in a header of its own.
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(KubernetesError::BadToken(path.to_path_buf()));
        }
        Ok(Self(token.to_owned()))
    }
}

/// An HTTP method the backend uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// One request to the API server.
#[derive(Clone)]
pub(crate) struct ApiRequest {
    pub(crate) method: Method,
    /// Path and query, from the API server's root.
    pub(crate) path: String,
    pub(crate) body: Option<Value>,
    token: Token,
}

/// Neither the token nor the body (a ConfigMap's body is the script) is shown.
impl fmt::Debug for ApiRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("body", &self.body.as_ref().map(|_| "<json>"))
            .field("token", &self.token)
            .finish()
    }
}

impl ApiRequest {
    fn new(method: Method, path: String, body: Option<Value>, token: &Token) -> Self {
        Self { method, path, body, token: token.clone() }
    }

    /// Every header to send, `Authorization` included: for the client that sends it, and
    /// nothing else.
    pub(crate) fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("Authorization", format!("Bearer {}", self.token.0)),
            ("Accept", "application/json".to_owned()),
            ("User-Agent", concat!("qiria-scripting-worker/", env!("CARGO_PKG_VERSION")).to_owned()),
        ];
        if self.body.is_some() {
            headers.push(("Content-Type", "application/json".to_owned()));
        }
        headers
    }
}

/// The requests of a run, made from the backend's settings.
pub(crate) struct RunRequests {
    config: KubernetesConfig,
}

impl RunRequests {
    /// Requests from checked settings.
    pub(crate) fn new(config: KubernetesConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self { config })
    }

    fn namespaced(&self, group: &str, resource: &str) -> String {
        format!("{group}/namespaces/{}/{resource}", self.config.namespace)
    }

    /// The run's first request: its Job. The ConfigMap follows it (it needs the Job's uid).
    pub(crate) fn create_job(&self, spec: &RunSpec, token: &Token) -> Result<ApiRequest, KubernetesError> {
        run_name(&spec.id)?;
        let path = self.namespaced("/apis/batch/v1", "jobs");
        Ok(ApiRequest::new(Method::Post, path, Some(job(&self.config, spec)), token))
    }

    /// The run's second request: the script, owned by the Job the first made (`job_uid`,
    /// from its answer). Until it exists the pod waits: a missing ConfigMap volume is retried
    /// by the kubelet, never skipped.
    pub(crate) fn create_config_map(
        &self,
        spec: &RunSpec,
        job_uid: &str,
        token: &Token,
    ) -> Result<ApiRequest, KubernetesError> {
        run_name(&spec.id)?;
        if spec.script.len() > SCRIPT_MAX_BYTES {
            return Err(KubernetesError::ScriptTooLarge(spec.script.len()));
        }
        let path = self.namespaced("/api/v1", "configmaps");
        Ok(ApiRequest::new(Method::Post, path, Some(config_map(&self.config, spec, job_uid)), token))
    }

    /// The run's pod as it changes, to its end: a watch, ended by the API server a little
    /// after the run's deadline at the latest.
    pub(crate) fn watch_pod(&self, spec: &RunSpec, token: &Token) -> Result<ApiRequest, KubernetesError> {
        run_name(&spec.id)?;
        let selector = format!("{JOB_NAME_LABEL}={}", spec.id);
        let timeout = deadline_seconds(&spec.limits) + WATCH_SLACK_SECONDS;
        let path = format!(
            "{}?labelSelector={}&watch=true&timeoutSeconds={timeout}",
            self.namespaced("/api/v1", "pods"),
            query_value(&selector)
        );
        Ok(ApiRequest::new(Method::Get, path, None, token))
    }

    /// What the script printed: standard output and error as one stream (the pod log API
    /// mixes them), up to both caps and one byte more, so that passing them shows.
    pub(crate) fn read_log(&self, pod: &str, limits: &RunLimits, token: &Token) -> Result<ApiRequest, KubernetesError> {
        if !dns_subdomain(pod) {
            return Err(KubernetesError::Name { what: "pod", name: pod.to_owned() });
        }
        let limit = limits.output_bytes.saturating_mul(2).saturating_add(1);
        let path = format!("{}/{pod}/log?container={CONTAINER}&limitBytes={limit}", self.namespaced("/api/v1", "pods"));
        Ok(ApiRequest::new(Method::Get, path, None, token))
    }

    /// The Job's status: whether its deadline stopped it (`DeadlineExceeded`).
    pub(crate) fn job_status(&self, spec: &RunSpec, token: &Token) -> Result<ApiRequest, KubernetesError> {
        run_name(&spec.id)?;
        let path = format!("{}/{}", self.namespaced("/apis/batch/v1", "jobs"), spec.id);
        Ok(ApiRequest::new(Method::Get, path, None, token))
    }

    /// The run's last request: the Job goes at once, and the garbage collector takes its pod
    /// and ConfigMap after it (so the worker needs no right to delete either).
    pub(crate) fn delete_job(&self, spec: &RunSpec, token: &Token) -> Result<ApiRequest, KubernetesError> {
        run_name(&spec.id)?;
        let path = format!("{}/{}?propagationPolicy=Background", self.namespaced("/apis/batch/v1", "jobs"), spec.id);
        Ok(ApiRequest::new(Method::Delete, path, None, token))
    }
}

/// The backend: a run's requests, sent to the API server in their order.
pub(crate) struct KubernetesBackend {
    requests: RunRequests,
    api: ApiClient,
}

impl KubernetesBackend {
    /// A backend with checked settings and the cluster's CA read (start-up fails without it).
    pub(crate) fn open(config: KubernetesConfig) -> anyhow::Result<Self> {
        let requests = RunRequests::new(config)?;
        let api = ApiClient::new(&requests.config.api_server, &requests.config.ca_path)?;
        Ok(Self { requests, api })
    }

    async fn token(&self) -> Result<Token, KubernetesError> {
        let path = self.requests.config.token_path.clone();
        tokio::task::spawn_blocking(move || Token::read(&path))
            .await
            .map_err(|e| KubernetesError::Answer(format!("reading the token: {e}")))?
    }

    /// The run from its Job's creation to its report; the caller deletes the Job.
    async fn follow(&self, spec: &RunSpec, job_uid: &str, token: &Token) -> Result<RunReport, KubernetesError> {
        let started = Instant::now();
        let r = &self.requests;
        self.api.send(&r.create_config_map(spec, job_uid, token)?, None).await?;
        let setup = started.elapsed();
        // The API server ends the watch a little after the deadline; this bounds a server
        // that does not.
        let bound = Duration::from_secs(deadline_seconds(&spec.limits) + 2 * WATCH_SLACK_SECONDS);
        let end = tokio::time::timeout(bound, self.api.watch(&r.watch_pod(spec, token)?, api_server::pod_event))
            .await
            .map_err(|_| KubernetesError::NoEnd)??;
        let run = started.elapsed().saturating_sub(setup);
        let deadline = api_server::deadline_exceeded(&self.api.send(&r.job_status(spec, token)?, None).await?)?;
        let Some(end) = end else {
            return if deadline { Ok(timed_out(setup, run)) } else { Err(KubernetesError::NoEnd) };
        };
        let cap = spec.limits.output_bytes;
        let log_request = r.read_log(&end.pod, &spec.limits, token)?;
        let mut log = self.api.send(&log_request, Some(cap.saturating_mul(2).saturating_add(1))).await?;
        let mut limits_hit = Vec::new();
        if deadline {
            limits_hit.push(LimitHit::Timeout);
        }
        if end.oom {
            limits_hit.push(LimitHit::Oom);
        }
        if log.len() > cap {
            log.truncate(cap);
            limits_hit.push(LimitHit::OutputTruncated);
        }
        limits_hit.sort();
        Ok(RunReport { exit_code: end.exit_code, stdout: log, limits_hit, setup, run, ..RunReport::default() })
    }
}

/// A run the Job's deadline stopped before its pod was seen ending.
fn timed_out(setup: Duration, run: Duration) -> RunReport {
    RunReport { limits_hit: vec![LimitHit::Timeout], setup, run, ..RunReport::default() }
}

/// What the cluster cannot give back: standard error apart from standard output (the log API
/// mixes them: all of it is in `stdout`), artifacts (`/out` goes with the pod), CPU time and
/// peak memory (not in the pod's status).
impl Backend for Arc<KubernetesBackend> {
    async fn run(
        &self,
        spec: RunSpec,
        mut cancel: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<RunReport, SandboxError> {
        let token = self.token().await?;
        let create = self.requests.create_job(&spec, &token)?;
        let job_uid = match self.api.send(&create, None).await {
            Ok(answer) => api_server::created_uid(&answer)?,
            Err(e @ KubernetesError::Unreachable(_)) => return Err(SandboxError::NotStarted(e)),
            Err(e) => return Err(e.into()),
        };
        let outcome = tokio::select! {
            outcome = self.follow(&spec, &job_uid, &token) => outcome,
            _ = &mut cancel => Err(KubernetesError::Cancelled),
        };
        let cleaning = Instant::now();
        // Whatever happened: the Job goes now, or by its TTL if the API server is out of reach.
        if let Err(e) = self.api.send(&self.requests.delete_job(&spec, &token)?, None).await {
            tracing::warn!(run = %spec.id, error = %e, "deleting the run's Job failed; its TTL will");
        }
        let mut report = outcome?;
        report.cleanup = cleaning.elapsed();
        Ok(report)
    }
}

/// The manifests a cluster needs before any run, for `config`.
pub(crate) fn manifests(config: &Config) -> Vec<Value> {
    static_manifests(&config.kubernetes, &config.limits)
}

/// The Job and ConfigMap of a run `id` of `script`, as the backend sends them (the ConfigMap
/// owned by the Job of uid `job_uid`).
pub(crate) fn run_manifests(config: &Config, id: &str, job_uid: &str, script: &str) -> Vec<Value> {
    let k = &config.kubernetes;
    let spec = RunSpec { id: id.to_owned(), script: script.to_owned(), limits: config.limits.clone() };
    vec![job(k, &spec), config_map(k, &spec, job_uid)]
}

fn labels(id: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "qiria-sandbox",
        "app.kubernetes.io/component": "script-run",
        "app.kubernetes.io/managed-by": "qiria-scripting-worker",
        RUN_LABEL: id,
    })
}

/// The wall clock in whole seconds, rounded up (a Job's deadline has no finer unit).
fn deadline_seconds(limits: &RunLimits) -> u64 {
    limits.wall_ms.div_ceil(1_000).max(1)
}

/// Millicores: `cpu_percent` is hundredths of a core.
fn cpu_quantity(limits: &RunLimits) -> String {
    format!("{}m", u64::from(limits.cpu_percent) * 10)
}

/// The container's disk: `/out`, and the logs of both streams at their caps.
fn disk_bytes(limits: &RunLimits) -> u64 {
    let logs = u64::try_from(limits.output_bytes).unwrap_or(u64::MAX).saturating_mul(2);
    limits.artifact_bytes.saturating_add(logs).saturating_add(LOG_SLACK)
}

fn resources(limits: &RunLimits) -> Value {
    let quantities = json!({
        "cpu": cpu_quantity(limits),
        "memory": limits.memory_bytes.to_string(),
        "ephemeral-storage": disk_bytes(limits).to_string(),
    });
    // Requests equal to limits: the pod is Guaranteed, never the first evicted under pressure
    // nor scheduled where its limits do not fit.
    json!({ "requests": quantities, "limits": quantities })
}

/// The ConfigMap holding a run's script, owned by its Job.
fn config_map(k: &KubernetesConfig, spec: &RunSpec, job_uid: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": spec.id,
            "namespace": k.namespace,
            "labels": labels(&spec.id),
            // No `blockOwnerDeletion`: setting it needs the right to update the Job's
            // finalizers, which the worker has no use for.
            "ownerReferences": [{ "apiVersion": "batch/v1", "kind": "Job", "name": spec.id, "uid": job_uid }],
        },
        "immutable": true,
        "data": { "main.py": spec.script },
    })
}

fn restricted_security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": NOBODY,
        "runAsGroup": NOBODY,
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

/// The Job of a run.
fn job(k: &KubernetesConfig, spec: &RunSpec) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": spec.id, "namespace": k.namespace, "labels": labels(&spec.id) },
        "spec": {
            // A failed run is the script's result, not something to try again.
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": deadline_seconds(&spec.limits),
            "ttlSecondsAfterFinished": k.ttl_seconds_after_finished,
            "template": { "metadata": { "labels": labels(&spec.id) }, "spec": pod(k, spec) },
        },
    })
}

/// The run's pod: under gVisor, with no token, no service links, nothing of the host's.
fn pod(k: &KubernetesConfig, spec: &RunSpec) -> Value {
    let limits = &spec.limits;
    json!({
        "restartPolicy": "Never",
        "runtimeClassName": RUNTIME_CLASS,
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "hostNetwork": false,
        "hostPID": false,
        "hostIPC": false,
        "shareProcessNamespace": false,
        // The script gets no time to clean up: nothing of it is kept.
        "terminationGracePeriodSeconds": 1,
        "securityContext": restricted_security_context(),
        "containers": [container(k, limits)],
        "volumes": [
            { "name": "job", "configMap": {
                "name": spec.id,
                "optional": false,
                "defaultMode": 0o444,
                "items": [{ "key": "main.py", "path": "main.py" }],
            } },
            { "name": "tmp", "emptyDir": { "medium": "Memory", "sizeLimit": limits.tmp_bytes.to_string() } },
            { "name": "out", "emptyDir": { "sizeLimit": limits.artifact_bytes.to_string() } },
        ],
    })
}

fn container(k: &KubernetesConfig, limits: &RunLimits) -> Value {
    let mut security = restricted_security_context();
    if let Some(fields) = security.as_object_mut() {
        fields.insert("allowPrivilegeEscalation".into(), json!(false));
        fields.insert("privileged".into(), json!(false));
        fields.insert("readOnlyRootFilesystem".into(), json!(true));
        fields.insert("capabilities".into(), json!({ "drop": ["ALL"] }));
    }
    let none: [Value; 0] = [];
    json!({
        "name": CONTAINER,
        "image": k.image,
        // Pinned by digest: the node's copy is the same image.
        "imagePullPolicy": "IfNotPresent",
        // -I: no environment variables, no user site, no script directory on sys.path;
        // -B: no bytecode written (the root is read-only anyway).
        "command": ["python3", "-I", "-B", "/job/main.py"],
        "env": none,
        "workingDir": "/tmp",
        "stdin": false,
        "tty": false,
        "securityContext": security,
        "resources": resources(limits),
        "volumeMounts": [
            { "name": "job", "mountPath": "/job", "readOnly": true },
            { "name": "tmp", "mountPath": "/tmp" },
            { "name": "out", "mountPath": "/out" },
        ],
    })
}

/// The objects a cluster needs before the first run.
fn static_manifests(k: &KubernetesConfig, limits: &RunLimits) -> Vec<Value> {
    let ns = &k.namespace;
    let caps = json!({
        "cpu": cpu_quantity(limits),
        "memory": limits.memory_bytes.to_string(),
        "ephemeral-storage": disk_bytes(limits).to_string(),
    });
    let policy = "qiria-sandbox-pods";
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ns,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                    "pod-security.kubernetes.io/warn": "restricted",
                    "pod-security.kubernetes.io/audit": "restricted",
                },
            },
        }),
        // No rule: nothing in, nothing out, DNS included (where the CNI enforces policies).
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": { "name": "deny-all", "namespace": ns },
            "spec": { "podSelector": {}, "policyTypes": ["Ingress", "Egress"] },
        }),
        // A pod made outside the worker's Jobs is held to the same limits.
        json!({
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": { "name": "run-limits", "namespace": ns },
            "spec": { "limits": [{ "type": "Container", "max": caps }] },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": { "name": k.service_account, "namespace": k.worker_namespace },
        }),
        // Exactly what the requests of a run use; pods and ConfigMaps are deleted by the
        // garbage collector with their Job, so there is no delete of either.
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": { "name": k.service_account, "namespace": ns },
            "rules": [
                { "apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "delete"] },
                { "apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"] },
                { "apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"] },
                { "apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"] },
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": { "name": k.service_account, "namespace": ns },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": k.service_account },
            "subjects": [{ "kind": "ServiceAccount", "name": k.service_account, "namespace": k.worker_namespace }],
        }),
        json!({
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": { "name": RUNTIME_CLASS },
            "handler": HANDLER,
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": { "name": policy },
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": { "resourceRules": [{
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["pods", "pods/ephemeralcontainers"],
                }] },
                "validations": pod_rules(&k.image),
            },
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": { "name": policy },
            "spec": {
                "policyName": policy,
                "validationActions": ["Deny"],
                "matchResources": { "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": ns } } },
            },
        }),
    ]
}

/// What Pod Security `restricted` leaves open and a sandbox pod must not do (CEL). `image` is
/// a checked pinned reference: it has no quote to escape.
fn pod_rules(image: &str) -> Value {
    json!([
        { "expression": format!("has(object.spec.runtimeClassName) && object.spec.runtimeClassName == '{RUNTIME_CLASS}'"),
          "message": format!("sandbox pods run under gVisor (runtimeClassName {RUNTIME_CLASS})") },
        { "expression": "has(object.spec.automountServiceAccountToken) && object.spec.automountServiceAccountToken == false",
          "message": "sandbox pods mount no service account token" },
        { "expression": format!("object.spec.containers.all(c, c.image == '{image}')"),
          "message": "sandbox pods run the configured image only" },
        { "expression": "!has(object.spec.initContainers) && !has(object.spec.ephemeralContainers)",
          "message": "sandbox pods have one container" },
        { "expression": "!has(object.spec.volumes) || object.spec.volumes.all(v, has(v.configMap) || has(v.emptyDir))",
          "message": "sandbox pods mount ConfigMaps and emptyDirs only" },
    ])
}

/// RFC 1123 label: what namespaces, service accounts, Jobs and ConfigMaps of a run are named.
fn dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// RFC 1123 subdomain: what pods are named.
fn dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(dns_label)
}

/// A run's id names its Job and ConfigMap and is put in paths: it must be a DNS label (the
/// Job controller also puts it in a label value, at most 63 characters).
fn run_name(id: &str) -> Result<(), KubernetesError> {
    if dns_label(id) {
        Ok(())
    } else {
        Err(KubernetesError::Name { what: "run", name: id.to_owned() })
    }
}

/// `name[:tag]@sha256:<64 hex>`, of the characters an image reference has (and no quote).
fn pinned_image(image: &str) -> bool {
    let Some((name, digest)) = image.split_once("@sha256:") else {
        return false;
    };
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"./_:-".contains(&b))
        && digest.len() == 64
        && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn query_value(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str =
        "docker.io/library/python:3.13-slim@sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const SECRET: &str = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2Vu.c2lnbmF0dXJl";

    fn backend() -> RunRequests {
        let config = KubernetesConfig { image: IMAGE.into(), ..KubernetesConfig::default() };
        RunRequests::new(config).expect("valid settings")
    }

    fn spec() -> RunSpec {
        RunSpec {
            id: "run-0123456789abcdef0123456789abcdef".into(),
            script: "print('hello')\n".into(),
            limits: RunLimits::default(),
        }
    }

    /// A token file as the kubelet writes it (with no trailing newline) or as a hand-made
    /// secret often is (with one).
    fn token_file(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, content).expect("write token");
        (dir, path)
    }

    fn token() -> (tempfile::TempDir, Token) {
        let (dir, path) = token_file(&format!("{SECRET}\n"));
        let token = Token::read(&path).expect("token");
        (dir, token)
    }

    fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_job_is_posted_to_the_sandbox_namespace_with_the_bearer_token_from_the_file() {
        let (_dir, token) = token();
        let request = backend().create_job(&spec(), &token).expect("request");
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.path, "/apis/batch/v1/namespaces/qiria-sandbox/jobs");
        let headers = request.headers();
        assert_eq!(header(&headers, "Authorization"), Some(format!("Bearer {SECRET}").as_str()));
        assert_eq!(header(&headers, "Content-Type"), Some("application/json"));
        assert_eq!(header(&headers, "Accept"), Some("application/json"));
        let body = request.body.expect("a body");
        assert_eq!(body["kind"], "Job");
        assert_eq!(body["metadata"]["name"], spec().id);
        assert_eq!(body["metadata"]["namespace"], "qiria-sandbox");
    }

    #[test]
    fn the_script_is_posted_as_a_config_map_owned_by_the_job() {
        let (_dir, token) = token();
        let request =
            backend().create_config_map(&spec(), "3f0c1e9a-0000-4000-8000-000000000001", &token).expect("request");
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.path, "/api/v1/namespaces/qiria-sandbox/configmaps");
        assert_eq!(header(&request.headers(), "Authorization"), Some(format!("Bearer {SECRET}").as_str()));
        let body = request.body.expect("a body");
        assert_eq!(body["data"]["main.py"], "print('hello')\n");
        assert_eq!(body["immutable"], true);
        let owner = &body["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Job");
        assert_eq!(owner["name"], spec().id);
        assert_eq!(owner["uid"], "3f0c1e9a-0000-4000-8000-000000000001");
    }

    #[test]
    fn the_job_is_deleted_in_the_background_so_its_pod_and_config_map_go_with_it() {
        let (_dir, token) = token();
        let request = backend().delete_job(&spec(), &token).expect("request");
        assert_eq!(request.method, Method::Delete);
        assert_eq!(
            request.path,
            "/apis/batch/v1/namespaces/qiria-sandbox/jobs/run-0123456789abcdef0123456789abcdef?propagationPolicy=Background"
        );
        assert!(request.body.is_none());
        assert_eq!(header(&request.headers(), "Content-Type"), None);
        assert_eq!(header(&request.headers(), "Authorization"), Some(format!("Bearer {SECRET}").as_str()));
    }

    #[test]
    fn the_pod_is_watched_by_its_job_label_its_log_read_capped_and_the_job_status_read() {
        let (_dir, token) = token();
        let backend = backend();
        let watch = backend.watch_pod(&spec(), &token).expect("request");
        assert_eq!(watch.method, Method::Get);
        assert_eq!(
            watch.path,
            "/api/v1/namespaces/qiria-sandbox/pods?labelSelector=batch.kubernetes.io%2Fjob-name%3Drun-0123456789abcdef0123456789abcdef&watch=true&timeoutSeconds=60"
        );
        let limits = RunLimits { output_bytes: 1024, ..RunLimits::default() };
        let log = backend.read_log("run-0123456789abcdef0123456789abcdef-x7k2p", &limits, &token).expect("request");
        assert_eq!(log.method, Method::Get);
        assert_eq!(
            log.path,
            "/api/v1/namespaces/qiria-sandbox/pods/run-0123456789abcdef0123456789abcdef-x7k2p/log?container=script&limitBytes=2049"
        );
        let status = backend.job_status(&spec(), &token).expect("request");
        assert_eq!(status.method, Method::Get);
        assert_eq!(status.path, "/apis/batch/v1/namespaces/qiria-sandbox/jobs/run-0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn the_token_is_in_no_debug_output() {
        let (_dir, token) = token();
        assert!(!format!("{token:?}").contains(SECRET));
        let backend = backend();
        let requests = [
            backend.create_job(&spec(), &token).expect("request"),
            backend.create_config_map(&spec(), "uid", &token).expect("request"),
            backend.delete_job(&spec(), &token).expect("request"),
        ];
        for request in &requests {
            let shown = format!("{request:?} {request:#?}");
            assert!(!shown.contains(SECRET), "{shown}");
            assert!(!shown.contains("eyJ"), "{shown}");
            assert!(shown.contains(&request.path), "the rest is shown: {shown}");
        }
        // The script neither: a request's body is never shown.
        assert!(!format!("{:?}", requests[1]).contains("hello"));
    }

    #[test]
    fn a_missing_empty_or_multi_line_token_is_refused_without_showing_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = Token::read(&dir.path().join("absent")).expect_err("missing");
        assert!(matches!(missing, KubernetesError::Token { .. }), "{missing}");
        let (_d, empty) = token_file(" \n");
        assert!(matches!(Token::read(&empty), Err(KubernetesError::BadToken(_))));
        let (_d, injected) = token_file(&format!("{SECRET}\nX-Injected: yes\n"));
        let error = Token::read(&injected).expect_err("two lines");
        assert!(matches!(error, KubernetesError::BadToken(_)));
        assert!(!error.to_string().contains(SECRET));
        let (_d, bare) = token_file(SECRET);
        assert_eq!(Token::read(&bare).expect("no newline").0, SECRET);
    }

    #[test]
    fn names_that_would_change_a_path_are_refused() {
        let (_dir, token) = token();
        let backend = backend();
        for id in ["../../secrets", "run/x", "Run-1", "run?x=1", "", &"a".repeat(64)] {
            let spec = RunSpec { id: id.to_owned(), ..spec() };
            assert!(matches!(backend.create_job(&spec, &token), Err(KubernetesError::Name { .. })), "{id:?}");
            assert!(matches!(backend.delete_job(&spec, &token), Err(KubernetesError::Name { .. })), "{id:?}");
        }
        for pod in ["../x", "a/b", "a?b", "A"] {
            assert!(backend.read_log(pod, &RunLimits::default(), &token).is_err(), "{pod:?}");
        }
    }

    #[test]
    fn a_script_too_large_for_a_config_map_is_refused() {
        let (_dir, token) = token();
        let spec = RunSpec { script: "#".repeat(SCRIPT_MAX_BYTES + 1), ..spec() };
        assert!(matches!(backend().create_config_map(&spec, "uid", &token), Err(KubernetesError::ScriptTooLarge(_))));
    }

    #[test]
    fn the_job_carries_the_limits_and_the_hardening() {
        let limits = RunLimits {
            wall_ms: 30_001,
            cpu_percent: 150,
            memory_bytes: 256 << 20,
            tmp_bytes: 16 << 20,
            artifact_bytes: 8 << 20,
            output_bytes: 1 << 20,
            ..RunLimits::default()
        };
        let spec = RunSpec { limits, ..spec() };
        let job = job(&KubernetesConfig { image: IMAGE.into(), ..KubernetesConfig::default() }, &spec);
        let s = &job["spec"];
        assert_eq!(s["backoffLimit"], 0);
        assert_eq!(s["activeDeadlineSeconds"], 31, "rounded up");
        assert_eq!(s["ttlSecondsAfterFinished"], 300);
        let pod = &s["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["runtimeClassName"], "gvisor");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["enableServiceLinks"], false);
        assert_eq!(pod["hostNetwork"], false);
        assert_eq!(pod["hostPID"], false);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let c = &pod["containers"][0];
        assert_eq!(c["image"], IMAGE);
        assert_eq!(c["command"], json!(["python3", "-I", "-B", "/job/main.py"]));
        assert_eq!(c["env"], json!([]));
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsUser"], 65534);
        assert_eq!(sc["runAsGroup"], 65534);
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        let l = &c["resources"]["limits"];
        assert_eq!(l["cpu"], "1500m");
        assert_eq!(l["memory"], (256u64 << 20).to_string());
        assert_eq!(l["ephemeral-storage"], ((8u64 << 20) + (2 << 20) + LOG_SLACK).to_string());
        assert_eq!(c["resources"]["requests"], *l);
        assert_eq!(c["volumeMounts"][0], json!({ "name": "job", "mountPath": "/job", "readOnly": true }));
        let v = &pod["volumes"];
        assert_eq!(v[0]["configMap"]["name"], spec.id);
        assert_eq!(v[0]["configMap"]["defaultMode"], 0o444);
        assert_eq!(v[1]["emptyDir"], json!({ "medium": "Memory", "sizeLimit": (16u64 << 20).to_string() }));
        assert_eq!(v[2]["emptyDir"], json!({ "sizeLimit": (8u64 << 20).to_string() }));
        for labels in [&job["metadata"]["labels"], &s["template"]["metadata"]["labels"]] {
            assert_eq!(labels[RUN_LABEL], spec.id);
        }
    }

    #[test]
    fn the_role_grants_exactly_what_the_requests_use() {
        let manifests = static_manifests(&KubernetesConfig::default(), &RunLimits::default());
        let role = manifests.iter().find(|m| m["kind"] == "Role").expect("a Role");
        assert_eq!(role["metadata"]["namespace"], "qiria-sandbox");
        assert_eq!(
            role["rules"],
            json!([
                { "apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "delete"] },
                { "apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"] },
                { "apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"] },
                { "apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"] },
            ])
        );
        let binding = manifests.iter().find(|m| m["kind"] == "RoleBinding").expect("a RoleBinding");
        assert_eq!(
            binding["subjects"],
            json!([{ "kind": "ServiceAccount", "name": "scripting-worker", "namespace": "qiria" }])
        );
        let ns = manifests.iter().find(|m| m["kind"] == "Namespace").expect("a Namespace");
        assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
        let deny = manifests.iter().find(|m| m["kind"] == "NetworkPolicy").expect("a NetworkPolicy");
        assert_eq!(deny["spec"], json!({ "podSelector": {}, "policyTypes": ["Ingress", "Egress"] }));
        let class = manifests.iter().find(|m| m["kind"] == "RuntimeClass").expect("a RuntimeClass");
        assert_eq!((&class["metadata"]["name"], &class["handler"]), (&json!("gvisor"), &json!("runsc")));
    }

    #[test]
    fn settings_are_checked() {
        assert!(KubernetesConfig::default().validate().is_err(), "the placeholder image is refused");
        let good = KubernetesConfig { image: IMAGE.into(), ..KubernetesConfig::default() };
        assert!(good.validate().is_ok());
        let bad = [
            KubernetesConfig { image: "python:3.13-slim".into(), ..good.clone() },
            KubernetesConfig { image: format!("python'@sha256:{}", "1".repeat(64)), ..good.clone() },
            KubernetesConfig { namespace: "Qiria_Sandbox".into(), ..good.clone() },
            KubernetesConfig { namespace: "qiria".into(), ..good.clone() },
            KubernetesConfig { api_server: "http://kubernetes.default.svc".into(), ..good.clone() },
            KubernetesConfig { ttl_seconds_after_finished: 0, ..good.clone() },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn the_backend_does_not_open_without_the_clusters_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let absent = dir.path().join("ca.crt");
        let config = KubernetesConfig { image: IMAGE.into(), ca_path: absent.clone(), ..KubernetesConfig::default() };
        let error = KubernetesBackend::open(config.clone()).err().expect("no CA");
        assert!(error.to_string().contains(&absent.display().to_string()), "{error}");
        std::fs::write(&absent, "not a certificate").expect("write");
        assert!(KubernetesBackend::open(config).is_err(), "a file with no certificate is refused");
    }
}
