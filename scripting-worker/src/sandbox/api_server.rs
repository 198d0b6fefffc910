//! The Kubernetes API server as the `kubernetes` backend talks to it: HTTPS verified against
//! the cluster's CA only (no public roots, no proxy, no redirect), every answer read up to a
//! bound, and what a run needs read out of the answers — the Job's uid, the pod's end, the
//! Job's verdict. Reading answers is pure and tested on the shapes the API documents; sending
//! is one function, [`ApiClient::send`], shared by every request.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::kubernetes::{ApiRequest, KubernetesError, Method, CONTAINER};

/// An ordinary answer (a Job, a Status) is a few kilobytes; more is not an API server's.
const ANSWER_MAX_BYTES: usize = 1 << 20;
/// One watch event is one pod: far below this.
const EVENT_MAX_BYTES: usize = 1 << 20;
/// Connecting to the API server: in a cluster it is one hop away.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Any request but the watch, from sending to the last byte of its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of an API server's refusal is kept in the error (its `message`).
const REASON_MAX_CHARS: usize = 300;

/// A client of one API server.
pub(crate) struct ApiClient {
    http: reqwest::Client,
    base: String,
}

impl ApiClient {
    /// A client of `api_server` whose certificate must chain to the CA(s) at `ca_path`.
    pub(crate) fn new(api_server: &str, ca_path: &Path) -> Result<Self, KubernetesError> {
        let pem = std::fs::read(ca_path).map_err(|source| KubernetesError::Ca { path: ca_path.into(), source })?;
        let roots =
            reqwest::Certificate::from_pem_bundle(&pem).ok().filter(|roots| !roots.is_empty()).ok_or_else(|| {
                KubernetesError::Ca { path: ca_path.into(), source: std::io::Error::other("no PEM certificate") }
            })?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .https_only(true)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(4)
            .user_agent(concat!("qiria-scripting-worker/", env!("CARGO_PKG_VERSION")));
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
        let http = builder.build().map_err(|e| KubernetesError::Unreachable(e.to_string()))?;
        Ok(Self { http, base: api_server.trim_end_matches('/').to_owned() })
    }

    /// Sends `request` and reads its answer whole (at most `ANSWER_MAX_BYTES`, or `limit` when
    /// given), refused unless it is a success.
    pub(crate) async fn send(&self, request: &ApiRequest, limit: Option<usize>) -> Result<Vec<u8>, KubernetesError> {
        let mut response = self.start(request, Some(REQUEST_TIMEOUT)).await?;
        let limit = limit.unwrap_or(ANSWER_MAX_BYTES);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| KubernetesError::Unreachable(e.to_string()))? {
            if body.len() + chunk.len() > limit {
                return Err(KubernetesError::AnswerTooLarge { path: request.path.clone(), limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Sends a watch and hands each event to `observe` until it says the watch is over; the
    /// API server ends the watch itself at its `timeoutSeconds`.
    pub(crate) async fn watch<T>(
        &self,
        request: &ApiRequest,
        mut observe: impl FnMut(&Value) -> Result<Option<T>, KubernetesError>,
    ) -> Result<Option<T>, KubernetesError> {
        let mut response = self.start(request, None).await?;
        let mut line = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| KubernetesError::Unreachable(e.to_string()))? {
            for piece in chunk.split_inclusive(|b| *b == b'\n') {
                line.extend_from_slice(piece);
                if line.len() > EVENT_MAX_BYTES {
                    return Err(KubernetesError::AnswerTooLarge { path: request.path.clone(), limit: EVENT_MAX_BYTES });
                }
                if line.last() != Some(&b'\n') {
                    continue;
                }
                let event: Value = serde_json::from_slice(&line).map_err(|e| KubernetesError::Answer(e.to_string()))?;
                line.clear();
                if let Some(end) = observe(&event)? {
                    return Ok(Some(end));
                }
            }
        }
        Ok(None)
    }

    async fn start(
        &self,
        request: &ApiRequest,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, KubernetesError> {
        let method = match request.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self.http.request(method, format!("{}{}", self.base, request.path));
        for (name, value) in request.headers() {
            builder = builder.header(name, value);
        }
        if let Some(body) = &request.body {
            builder = builder.body(serde_json::to_vec(body).map_err(|e| KubernetesError::Answer(e.to_string()))?);
        }
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        // The error's text names the URL, never a header: the token stays out of it.
        let response = builder.send().await.map_err(|e| KubernetesError::Unreachable(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(KubernetesError::Refused {
            method: request.method.as_str(),
            path: request.path.split('?').next().unwrap_or_default().to_owned(),
            status: status.as_u16(),
            reason: refusal_reason(&body),
        })
    }
}

/// The `message` of the `Status` an API server refuses with, shortened.
fn refusal_reason(body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|status| status["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "no Status in the answer".to_owned());
    message.chars().take(REASON_MAX_CHARS).collect()
}

/// The uid of the object an API server answered a create with.
pub(crate) fn created_uid(body: &[u8]) -> Result<String, KubernetesError> {
    let object: Value = serde_json::from_slice(body).map_err(|e| KubernetesError::Answer(e.to_string()))?;
    object["metadata"]["uid"]
        .as_str()
        .filter(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .map(str::to_owned)
        .ok_or_else(|| KubernetesError::Answer("the created object has no metadata.uid".into()))
}

/// How the run's pod ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodEnd {
    pub(crate) pod: String,
    /// The script container's exit code, when it terminated (not when its pod was deleted).
    pub(crate) exit_code: Option<i32>,
    /// The kernel killed it for memory (`OOMKilled`).
    pub(crate) oom: bool,
}

/// Reads one watch event of the run's pods: `Some` once the pod is over — its script
/// container terminated, the pod failed or succeeded, or it was deleted (the Job controller
/// deletes it at the deadline). A pod that cannot start for a reason the script cannot cause
/// (its image, its volumes) is an error, so that the run fails as the cluster's fault.
pub(crate) fn pod_event(event: &Value) -> Result<Option<PodEnd>, KubernetesError> {
    let kind = event["type"].as_str().unwrap_or_default();
    let pod = &event["object"];
    match kind {
        "ADDED" | "MODIFIED" | "DELETED" => {}
        "BOOKMARK" => return Ok(None),
        "ERROR" => {
            return Err(KubernetesError::Answer(format!("watch error: {}", pod["message"].as_str().unwrap_or("?"))))
        }
        other => return Err(KubernetesError::Answer(format!("unknown watch event type {other:?}"))),
    }
    let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let status = &pod["status"];
    let container =
        status["containerStatuses"].as_array().and_then(|statuses| statuses.iter().find(|c| c["name"] == CONTAINER));
    let state = container.map(|c| &c["state"]);
    if let Some(terminated) = state.map(|s| &s["terminated"]).filter(|t| t.is_object()) {
        let exit_code = terminated["exitCode"].as_i64().and_then(|code| i32::try_from(code).ok());
        let oom = terminated["reason"] == "OOMKilled";
        return Ok(Some(PodEnd { pod: name, exit_code, oom }));
    }
    if let Some(reason) = state.and_then(|s| s["waiting"]["reason"].as_str()) {
        if matches!(
            reason,
            "ErrImagePull"
                | "ImagePullBackOff"
                | "InvalidImageName"
                | "ErrImageNeverPull"
                | "CreateContainerConfigError"
        ) {
            return Err(KubernetesError::PodCannotStart(reason.to_owned()));
        }
    }
    let over = matches!(status["phase"].as_str(), Some("Succeeded" | "Failed"));
    if kind == "DELETED" || over {
        return Ok(Some(PodEnd { pod: name, exit_code: None, oom: false }));
    }
    Ok(None)
}

/// Whether the Job's deadline stopped it (its `Failed` condition, reason `DeadlineExceeded`).
pub(crate) fn deadline_exceeded(body: &[u8]) -> Result<bool, KubernetesError> {
    let job: Value = serde_json::from_slice(body).map_err(|e| KubernetesError::Answer(e.to_string()))?;
    Ok(job["status"]["conditions"].as_array().is_some_and(|conditions| {
        conditions.iter().any(|c| c["type"] == "Failed" && c["status"] == "True" && c["reason"] == "DeadlineExceeded")
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(phase: &str, state: Value) -> Value {
        json!({
            "kind": "Pod",
            "metadata": { "name": "run-1-x7k2p" },
            "status": { "phase": phase, "containerStatuses": [{ "name": "script", "state": state }] },
        })
    }

    #[test]
    fn a_pod_is_over_when_its_script_terminates_and_the_exit_code_and_oom_are_read() {
        let pending = json!({ "type": "ADDED", "object": { "metadata": { "name": "run-1-x7k2p" }, "status": { "phase": "Pending" } } });
        assert_eq!(pod_event(&pending).expect("read"), None);
        let running = json!({ "type": "MODIFIED", "object": pod("Running", json!({ "running": { "startedAt": "2026-12-02T10:00:00Z" } })) });
        assert_eq!(pod_event(&running).expect("read"), None);
        let done = json!({ "type": "MODIFIED", "object": pod("Failed", json!({ "terminated": { "exitCode": 3, "reason": "Error" } })) });
        assert_eq!(
            pod_event(&done).expect("read"),
            Some(PodEnd { pod: "run-1-x7k2p".into(), exit_code: Some(3), oom: false })
        );
        let oom = json!({ "type": "MODIFIED", "object": pod("Failed", json!({ "terminated": { "exitCode": 137, "reason": "OOMKilled" } })) });
        assert_eq!(
            pod_event(&oom).expect("read"),
            Some(PodEnd { pod: "run-1-x7k2p".into(), exit_code: Some(137), oom: true })
        );
    }

    #[test]
    fn a_deleted_pod_is_over_without_an_exit_code_and_a_pod_that_cannot_start_is_an_error() {
        let deleted = json!({ "type": "DELETED", "object": pod("Running", json!({ "running": {} })) });
        assert_eq!(
            pod_event(&deleted).expect("read"),
            Some(PodEnd { pod: "run-1-x7k2p".into(), exit_code: None, oom: false })
        );
        let pull = json!({ "type": "MODIFIED", "object": pod("Pending", json!({ "waiting": { "reason": "ImagePullBackOff" } })) });
        assert!(
            matches!(pod_event(&pull), Err(KubernetesError::PodCannotStart(reason)) if reason == "ImagePullBackOff")
        );
        let creating = json!({ "type": "MODIFIED", "object": pod("Pending", json!({ "waiting": { "reason": "ContainerCreating" } })) });
        assert_eq!(pod_event(&creating).expect("read"), None);
        let gone = json!({ "type": "ERROR", "object": { "kind": "Status", "code": 410, "message": "too old resource version" } });
        assert!(pod_event(&gone).is_err());
        assert!(pod_event(&json!({ "type": "BOOKMARK", "object": {} })).expect("read").is_none());
    }

    #[test]
    fn the_jobs_deadline_is_read_from_its_failed_condition() {
        let failed = json!({ "status": { "conditions": [
            { "type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded" },
            { "type": "Failed", "status": "True", "reason": "DeadlineExceeded" },
        ] } });
        assert!(deadline_exceeded(&serde_json::to_vec(&failed).expect("json")).expect("read"));
        let backoff = json!({ "status": { "conditions": [{ "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded" }] } });
        assert!(!deadline_exceeded(&serde_json::to_vec(&backoff).expect("json")).expect("read"));
        assert!(!deadline_exceeded(b"{\"status\":{}}").expect("read"));
        assert!(deadline_exceeded(b"not json").is_err());
    }

    #[test]
    fn a_created_objects_uid_is_required_and_plain() {
        assert_eq!(created_uid(br#"{"metadata":{"uid":"3f0c1e9a-5b7d"}}"#).expect("uid"), "3f0c1e9a-5b7d");
        assert!(created_uid(br#"{"metadata":{}}"#).is_err());
        assert!(created_uid(br#"{"metadata":{"uid":"a\"b"}}"#).is_err());
        assert_eq!(
            refusal_reason(br#"{"kind":"Status","message":"jobs.batch is forbidden"}"#),
            "jobs.batch is forbidden"
        );
        assert_eq!(refusal_reason(b"<html>"), "no Status in the answer");
    }
}
