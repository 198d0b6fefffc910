//! The Kestra client: the four calls the gateway makes (create an execution, get one, find one
//! by its job label, kill one) over the mTLS connection of [`connection`]. Every failure says
//! whether the request may have reached Kestra — that is what decides if a create can be sent
//! again or must first be reconciled ([`KestraError::may_have_happened`]).
//!
//! Paths follow Kestra's API (`/api/v1/{tenant}/…`, see `shared/reference/kestra-api.md`);
//! where Kestra versions differ the client speaks both (search filters in the `filters[…]`
//! and the legacy flat form; kill at 2.x's `…/actions/kill`, then 1.x's `…/kill`).

pub mod connection;
pub mod execution;

use std::collections::BTreeMap;
use std::sync::Arc;

use reqwest::{Method, StatusCode, Url};

use self::connection::LiveConnection;
use self::execution::SearchPage;
pub use self::execution::{job_state, Execution, JOB_LABEL};

/// Why a call to Kestra failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KestraError {
    /// The connection files never loaded.
    #[error("no usable Kestra connection: {0}")]
    NotConnected(String),
    /// The request could not be sent (TCP or TLS refused): Kestra did nothing.
    #[error("Kestra unreachable: {0}")]
    Unreachable(String),
    /// The request was sent and no answer came (timeout, connection lost): it may have happened.
    #[error("no answer from Kestra: {0}")]
    NoAnswer(String),
    /// Kestra answered with an error status.
    #[error("Kestra answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// What Kestra said (its `message`, shortened).
        message: String,
    },
    /// Kestra answered something that is not what its API returns.
    #[error("unexpected answer from Kestra: {0}")]
    BadAnswer(String),
}

impl KestraError {
    /// Whether Kestra may have acted on the request although it failed: no answer, or a
    /// server error (Kestra can fail after storing an execution).
    pub fn may_have_happened(&self) -> bool {
        match self {
            Self::NoAnswer(_) | Self::BadAnswer(_) => true,
            Self::Status { status, .. } => *status >= 500,
            Self::NotConnected(_) | Self::Unreachable(_) => false,
        }
    }

    /// What the job's owner is told: Kestra's errors in the gateway's words.
    pub fn explain(&self) -> String {
        match self {
            Self::Status { status: 401, .. } => "Kestra refused the gateway's credential (401)".into(),
            Self::Status { status: 403, .. } => "the gateway's Kestra credential may not run this flow (403)".into(),
            Self::Status { status: 404, message } => format!("Kestra has no such flow (404: {message})"),
            Self::Status { status: 409, message } => format!("Kestra cannot run this flow now (409: {message})"),
            Self::Status { status: 422, message } => format!("Kestra rejected the request (422: {message})"),
            other => other.to_string(),
        }
    }
}

/// Where Kestra is.
#[derive(Debug, Clone)]
pub struct KestraTarget {
    /// `https://host:port`.
    pub url: Url,
    /// `main` for OSS.
    pub tenant: String,
}

/// The client.
pub struct KestraClient {
    target: KestraTarget,
    connection: Arc<LiveConnection>,
}

/// Longest Kestra message kept in a job's reason.
const MAX_MESSAGE: usize = 300;

impl KestraClient {
    /// A client of `target` over `connection`.
    pub fn new(target: KestraTarget, connection: Arc<LiveConnection>) -> Self {
        Self { target, connection }
    }

    /// `POST {api}/executions/{namespace}/{flow}`: inputs as multipart text parts, labels as
    /// `labels=key:value` (the job label among them).
    pub async fn create(
        &self,
        namespace: &str,
        flow: &str,
        inputs: &BTreeMap<String, String>,
        labels: &[(String, String)],
        trace: &[(String, String)],
    ) -> Result<Execution, KestraError> {
        let mut form = reqwest::multipart::Form::new();
        for (name, value) in inputs {
            form = form.text(name.clone(), value.clone());
        }
        let query: Vec<(&str, String)> = labels.iter().map(|(k, v)| ("labels", format!("{k}:{v}"))).collect();
        let mut request = self.request(Method::POST, &["executions", namespace, flow])?.query(&query).multipart(form);
        // Kestra continues the trace (it reads W3C trace context when its tracing is on).
        for (name, value) in trace {
            request = request.header(name.as_str(), value.as_str());
        }
        json(send(request).await?).await
    }

    /// `GET {api}/executions/{id}`; `None` when Kestra has no such execution.
    pub async fn get(&self, id: &str) -> Result<Option<Execution>, KestraError> {
        match send(self.request(Method::GET, &["executions", id])?).await {
            Ok(response) => json(response).await.map(Some),
            Err(KestraError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The execution of `namespace/flow` labelled with `job`, if Kestra's search index has it
    /// (it indexes asynchronously: a fresh execution may be missing for a while).
    pub async fn find_by_job(&self, namespace: &str, flow: &str, job: &str) -> Result<Option<Execution>, KestraError> {
        let label_filter = format!("filters[labels][EQUALS][{JOB_LABEL}]");
        let query = [
            (label_filter.as_str(), job.to_string()),
            ("filters[namespace][EQUALS]", namespace.to_string()),
            ("filters[flowId][EQUALS]", flow.to_string()),
            ("labels", format!("{JOB_LABEL}:{job}")),
            ("namespace", namespace.to_string()),
            ("flowId", flow.to_string()),
            ("size", "10".to_string()),
        ];
        let request = self.request(Method::GET, &["executions", "search"])?.query(&query);
        let page: SearchPage = json(send(request).await?).await?;
        Ok(page
            .results
            .into_iter()
            .find(|e| e.has_label(JOB_LABEL, job) && e.namespace == namespace && e.flow_id == flow))
    }

    /// Kills the execution `id`: `Ok(true)` when Kestra took the kill, `Ok(false)` when it was
    /// already finished.
    pub async fn kill(&self, id: &str) -> Result<bool, KestraError> {
        let current = send(self.request(Method::DELETE, &["executions", id, "actions", "kill"])?).await;
        let outcome = match current {
            // Kestra 1.x has no `actions/` path; its kill is one level up.
            Err(KestraError::Status { status: 404, .. }) => {
                send(self.request(Method::DELETE, &["executions", id, "kill"])?).await
            }
            other => other,
        };
        match outcome {
            Ok(_) => Ok(true),
            Err(KestraError::Status { status: 409, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn request(&self, method: Method, segments: &[&str]) -> Result<reqwest::RequestBuilder, KestraError> {
        let connection = self
            .connection
            .current()
            .ok_or_else(|| KestraError::NotConnected(self.connection.status().last_error.unwrap_or_default()))?;
        let mut url = self.target.url.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| KestraError::NotConnected("kestra.url cannot take a path".into()))?;
            path.pop_if_empty().extend(["api", "v1", self.target.tenant.as_str()]).extend(segments);
        }
        Ok(connection
            .http
            .request(method, url)
            .header(reqwest::header::AUTHORIZATION, connection.authorization.clone()))
    }
}

/// Kestra calls by outcome: the HTTP status, `unreachable` or `no_answer`.
static CALLS: std::sync::Mutex<BTreeMap<String, u64>> = std::sync::Mutex::new(BTreeMap::new());

fn count_call(outcome: &str) {
    let mut calls = CALLS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Statuses and the two failures: a few dozen at most.
    if calls.len() < 128 || calls.contains_key(outcome) {
        *calls.entry(outcome.to_owned()).or_default() += 1;
    }
}

/// `qiria_gateway_kestra_calls_total{status}` for `/metrics`.
pub(crate) fn render_calls(out: &mut String) {
    use std::fmt::Write as _;
    let calls = CALLS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    out.push_str(
        "# HELP qiria_gateway_kestra_calls Calls to Kestra by outcome\n# TYPE qiria_gateway_kestra_calls counter\n",
    );
    for (status, n) in calls.iter() {
        let _ = writeln!(out, "qiria_gateway_kestra_calls_total{{status=\"{status}\"}} {n}");
    }
}

async fn send(request: reqwest::RequestBuilder) -> Result<reqwest::Response, KestraError> {
    let response = request.send().await.map_err(|e| {
        // reqwest's Display is short; the source chain says what failed (refused, TLS alert).
        // The URL is left out: it is known, and long enough to push the cause out of view.
        let e = e.without_url();
        let why = error_chain(&e);
        if e.is_connect() || never_written(&e) {
            count_call("unreachable");
            KestraError::Unreachable(why)
        } else {
            count_call("no_answer");
            KestraError::NoAnswer(why)
        }
    })?;
    let status = response.status();
    count_call(status.as_str());
    if status.is_success() {
        return Ok(response);
    }
    let body = response.bytes().await.unwrap_or_default();
    Err(KestraError::Status { status: status.as_u16(), message: message(status, &body) })
}

async fn json<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, KestraError> {
    let body = response.bytes().await.map_err(|e| KestraError::NoAnswer(error_chain(&e)))?;
    serde_json::from_slice(&body).map_err(|e| KestraError::BadAnswer(e.to_string()))
}

/// Kestra's error message: `message` (Micronaut's JSON error, 0.x–1.x) or `detail`/`title`
/// (RFC 9457, 2.x), else the status's reason; shortened, control characters dropped.
fn message(status: StatusCode, body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| parsed.as_ref().and_then(|v| v.get(name)).and_then(|v| v.as_str()).map(str::to_string);
    let text = field("message")
        .or_else(|| field("detail"))
        .or_else(|| field("title"))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    text.chars().filter(|c| !c.is_control()).take(MAX_MESSAGE).collect()
}

/// Whether the request was dropped before it was written: the connection closed while the
/// request waited for it (hyper's "canceled"). With TLS 1.3 a server that refuses the client
/// certificate does exactly this, after the client thinks the handshake is done.
fn never_written(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled) {
            return true;
        }
        source = e.source();
    }
    false
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(MAX_MESSAGE).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unanswered_or_failed_server_side_calls_may_have_happened() {
        assert!(KestraError::NoAnswer("timeout".into()).may_have_happened());
        assert!(KestraError::Status { status: 500, message: String::new() }.may_have_happened());
        assert!(!KestraError::Status { status: 422, message: String::new() }.may_have_happened());
        assert!(!KestraError::Unreachable("refused".into()).may_have_happened());
    }

    #[test]
    fn kestra_messages_are_read_from_every_error_shape() {
        let hal = br#"{"message":"Not Found: Requested Flow is not found.","_links":{},"_embedded":{}}"#;
        assert_eq!(message(StatusCode::NOT_FOUND, hal), "Not Found: Requested Flow is not found.");
        let problem = br#"{"type":"about:blank","title":"Conflict","detail":"flow disabled","status":409}"#;
        assert_eq!(message(StatusCode::CONFLICT, problem), "flow disabled");
        assert_eq!(message(StatusCode::UNAUTHORIZED, b""), "Unauthorized");
        assert_eq!(message(StatusCode::BAD_GATEWAY, &[b'x'; 1000]).len(), "Bad Gateway".len());
    }
}
