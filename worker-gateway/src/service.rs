//! `qiria.jobs.v1.JobService`: each call authenticated, scoped, validated, then recorded.
//! A recorded flow job is the driver's to send to Kestra (`driver`), a script job the script
//! driver's to hand to the scripting worker (`scripts`). Without one configured, the job stays
//! `QUEUED` saying so in `reason` — a job is never given a result it did not get.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use qiria_identity::{bearer_token, TokenVerifier};
use qiria_policy::LivePolicy;
use qiria_runtime::audit;
use qiria_runtime::rate::KeyedRateLimiter;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::access::{self, Scope};
use crate::caller::{authenticate, authenticate_header, Caller};
use crate::driver::Driver;
use crate::errors::GatewayError;
use crate::flows;
use crate::jobs::{is_terminal, JobStore, NewJob};
use crate::pb::job_service_server::JobService;
use crate::pb::{
    CancelJobRequest, EraseUserJobsRequest, EraseUserJobsResponse, GetJobRequest, Job, JobEvent, JobKind,
    ListJobsRequest, ListJobsResponse, SubmitScriptRequest, TriggerFlowRequest, WatchJobRequest,
};
use crate::scripts::{ScriptDriver, SCRIPT_QUEUED};
use crate::validate::{self, Limits};
use crate::watch::Watchers;

/// Why a flow job waits when a Kestra is configured.
pub const FLOW_SENDING: &str = "waiting to be sent to Kestra";
/// Why a flow job waits when none is.
pub const FLOW_WAITS: &str = "no Kestra is configured for this gateway (kestra.url); the job waits";
/// Why a script job waits when no scripting worker is configured.
pub const SCRIPT_WAITS: &str = "no scripting worker is configured for this gateway (scripts.url); the job waits";

/// The service.
pub struct Jobs {
    /// Verifies callers.
    pub verifier: Arc<TokenVerifier>,
    /// Where jobs live.
    pub store: JobStore,
    /// Open `WatchJob` streams.
    pub watchers: Arc<Watchers>,
    /// Field bounds.
    pub limits: Limits,
    /// The policy that holds the flow allowlist.
    pub policy: Arc<LivePolicy>,
    /// Sends flow jobs to Kestra; `None` without a Kestra.
    pub driver: Option<Arc<Driver>>,
    /// Hands script jobs to the scripting worker; `None` without one.
    pub scripts: Option<Arc<ScriptDriver>>,
    /// Calls per user per minute.
    pub rate: KeyedRateLimiter<String>,
    /// Unfinished jobs per user.
    pub live_jobs: u32,
}

type Result<T> = std::result::Result<Response<T>, Status>;

impl Jobs {
    /// Refuses headers without a valid bearer token, before a body is read as a message.
    pub fn require_token(&self, headers: &axum::http::HeaderMap) -> std::result::Result<(), GatewayError> {
        let header = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        authenticate_header(&self.verifier, header).map(drop)
    }

    /// The verified caller, within their request rate (a flood from one user slows nobody
    /// else: every other user has their own bucket).
    fn caller<T>(&self, request: &Request<T>) -> std::result::Result<Caller, GatewayError> {
        let caller = authenticate(&self.verifier, request.metadata())?;
        if !self.rate.admit(&caller.subject) {
            return Err(GatewayError::ResourceExhausted("too many calls from this user; slow down"));
        }
        Ok(caller)
    }

    /// Cancels the live job `id` (in `scope`) at once when nothing of it has left the gateway,
    /// else records the cancel for the driver to kill its execution. `None`: no live job.
    async fn stop(
        &self,
        id: &str,
        scope: &Scope,
        by: &str,
        reason: &str,
    ) -> std::result::Result<Option<Job>, sqlx::Error> {
        match self.store.cancel_unsent(id, scope, reason).await? {
            Some(job) => Ok(Some(job)),
            None => self.store.request_cancel(id, scope, by).await,
        }
    }

    fn wake_driver(&self) {
        if let Some(driver) = &self.driver {
            driver.wake();
        }
        if let Some(scripts) = &self.scripts {
            scripts.wake();
        }
    }

    async fn submit(
        &self,
        caller: &Caller,
        mut new: NewJob,
        trace: &tracing::Span,
    ) -> std::result::Result<Job, GatewayError> {
        // The job's later work (the Kestra call, the sandbox run) continues this trace.
        let traceparent = qiria_runtime::telemetry::traceparent(trace);
        if let (false, Some(payload)) = (traceparent.is_empty(), new.payload.as_object_mut()) {
            payload.insert("traceparent".into(), serde_json::Value::String(traceparent));
        }
        // Checked before the insert, not in it: concurrent submits of one user can pass it
        // together, so the bound holds to within that user's own concurrency.
        if self.store.live_count(&new.owner).await? >= i64::from(self.live_jobs) {
            return Err(GatewayError::ResourceExhausted("too many unfinished jobs for this user"));
        }
        let (job, created) = self.store.create(&new).await?;
        if created {
            audit::record(audit::AuditEvent::JobSubmitted { job: &job.id, owner: &job.owner, kind: kind(&job) });
            self.watchers.publish(&job);
            self.wake_driver();
        } else {
            tracing::info!(job = %job.id, owner = %caller.subject, "same idempotency key: the existing job");
        }
        trace.record("qiria.job", job.id.as_str());
        Ok(job)
    }
}

/// The span of a submit call, continuing the caller's trace (Envoy's `traceparent`).
fn submit_span<T>(request: &Request<T>, kind: &'static str) -> tracing::Span {
    let span = tracing::info_span!(
        target: "qiria::trace",
        "jobs.submit",
        otel.kind = "server",
        qiria.kind = kind,
        qiria.job = tracing::field::Empty,
    );
    if !span.is_disabled() {
        let trace = qiria_runtime::telemetry::trace_context(|name| request.metadata().get(name)?.to_str().ok());
        qiria_runtime::telemetry::continue_trace(&span, &trace);
    }
    span
}

fn kind(job: &Job) -> &'static str {
    if job.kind() == JobKind::Script {
        "script"
    } else {
        "flow"
    }
}

/// The caller's key, or a fresh one: every job has one.
fn idempotency_key(given: &str) -> std::result::Result<String, GatewayError> {
    validate::idempotency_key(given)?;
    Ok(if given.is_empty() { uuid::Uuid::new_v4().to_string() } else { given.to_string() })
}

#[tonic::async_trait]
impl JobService for Jobs {
    async fn trigger_flow(&self, request: Request<TriggerFlowRequest>) -> Result<Job> {
        let span = submit_span(&request, "flow");
        let caller = self.caller(&request)?;
        access::may_submit(&caller)?;
        let r = request.get_ref();
        validate::namespace(&r.namespace)?;
        validate::flow_id(&r.flow_id)?;
        validate::inputs(&r.inputs, &self.limits)?;
        validate::labels(&r.labels, &self.limits)?;
        let token = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(bearer_token);
        flows::may_trigger(&self.policy, token.unwrap_or_default(), &r.namespace, &r.flow_id)?;
        let new = NewJob {
            owner: caller.subject.clone(),
            kind: JobKind::Flow,
            namespace: r.namespace.clone(),
            flow_id: r.flow_id.clone(),
            idempotency_key: idempotency_key(&r.idempotency_key)?,
            reason: if self.driver.is_some() { FLOW_SENDING } else { FLOW_WAITS }.into(),
            payload: serde_json::json!({ "inputs": r.inputs, "labels": r.labels }),
        };
        Ok(Response::new(self.submit(&caller, new, &span).instrument(span.clone()).await?))
    }

    async fn submit_script(&self, request: Request<SubmitScriptRequest>) -> Result<Job> {
        let span = submit_span(&request, "script");
        let caller = self.caller(&request)?;
        access::may_submit(&caller)?;
        let r = request.get_ref();
        validate::script(&r.language, &r.body, &self.limits)?;
        let new = NewJob {
            owner: caller.subject.clone(),
            kind: JobKind::Script,
            namespace: String::new(),
            flow_id: String::new(),
            idempotency_key: idempotency_key(&r.idempotency_key)?,
            reason: if self.scripts.is_some() { SCRIPT_QUEUED } else { SCRIPT_WAITS }.into(),
            payload: serde_json::json!({ "language": r.language, "body": r.body }),
        };
        Ok(Response::new(self.submit(&caller, new, &span).instrument(span.clone()).await?))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Job> {
        let caller = self.caller(&request)?;
        let scope = access::read_scope(&caller)?;
        validate::job_id(&request.get_ref().id).map_err(|_| GatewayError::NotFound)?;
        let job = self.store.get(&request.get_ref().id, &scope).await.map_err(GatewayError::from)?;
        Ok(Response::new(job.ok_or(GatewayError::NotFound)?))
    }

    async fn list_jobs(&self, request: Request<ListJobsRequest>) -> Result<ListJobsResponse> {
        let caller = self.caller(&request)?;
        let scope = access::read_scope(&caller)?;
        let r = request.get_ref();
        let size = match r.page_size {
            0 => 20,
            n @ 1..=100 => n,
            _ => return Err(GatewayError::invalid("/page_size", "at most 100").into()),
        };
        let before = match r.page_token.as_str() {
            "" => None,
            token => Some(page_token(token).ok_or_else(|| GatewayError::invalid("/page_token", "not a page token"))?),
        };
        let jobs = self.store.list(&scope, size, before).await.map_err(GatewayError::from)?;
        let next_page_token = match jobs.last() {
            Some(last) if jobs.len() == size as usize => format!("{}:{}", last.created_at, last.id),
            _ => String::new(),
        };
        Ok(Response::new(ListJobsResponse { jobs, next_page_token }))
    }

    async fn cancel_job(&self, request: Request<CancelJobRequest>) -> Result<Job> {
        let caller = self.caller(&request)?;
        let scope = access::cancel_scope(&caller)?;
        let id = &request.get_ref().id;
        validate::job_id(id).map_err(|_| GatewayError::NotFound)?;
        let by = &caller.subject;
        let store = |e: sqlx::Error| Status::from(GatewayError::from(e));
        let job = self.store.get(id, &scope).await.map_err(store)?.ok_or(GatewayError::NotFound)?;
        if is_terminal(job.state()) {
            return Err(GatewayError::FailedPrecondition(format!("the job is {:?} already", job.state())).into());
        }
        // Nothing left the gateway: cancelled here and now. Otherwise the driver kills the
        // execution (or one a lost answer may have made) and the job ends when Kestra says so.
        let cancelled = self.stop(id, &scope, by, &format!("cancelled by {by}")).await.map_err(store)?;
        let Some(job) = cancelled else {
            let now = self.store.get(id, &scope).await.map_err(store)?.ok_or(GatewayError::NotFound)?;
            return Err(GatewayError::FailedPrecondition(format!("the job is {:?} already", now.state())).into());
        };
        audit::record(audit::AuditEvent::JobCancelled { job: &job.id, owner: &job.owner, by });
        self.watchers.publish(&job);
        self.wake_driver();
        Ok(Response::new(job))
    }

    async fn erase_user_jobs(&self, request: Request<EraseUserJobsRequest>) -> Result<EraseUserJobsResponse> {
        let caller = self.caller(&request)?;
        access::may_erase(&caller)?;
        let owner = &request.get_ref().owner;
        if owner.is_empty() || owner.len() > 256 {
            return Err(GatewayError::invalid("/owner", "1 to 256 bytes: the subject whose jobs go").into());
        }
        let store = |e: sqlx::Error| Status::from(GatewayError::from(e));
        // Live jobs are stopped first (a cancel, as `CancelJob` does); they are erased by a
        // later call once they have ended, with their final state.
        let live = self.store.live_ids_of(owner).await.map_err(store)?;
        let reason = format!("cancelled by {} (erasure of the owner's jobs)", caller.subject);
        for id in &live {
            if let Some(job) = self.stop(id, &Scope::All, &caller.subject, &reason).await.map_err(store)? {
                self.watchers.publish(&job);
            }
        }
        self.wake_driver();
        let erased = self.store.erase_finished_of(owner).await.map_err(store)?;
        let still_live = self.store.live_count(owner).await.map_err(store)?.unsigned_abs();
        audit::record(audit::AuditEvent::JobsErased { owner, by: &caller.subject, count: erased, live: still_live });
        Ok(Response::new(EraseUserJobsResponse { erased, still_live }))
    }

    type WatchJobStream = Pin<Box<dyn Stream<Item = std::result::Result<JobEvent, Status>> + Send>>;

    async fn watch_job(&self, request: Request<WatchJobRequest>) -> Result<Self::WatchJobStream> {
        let caller = self.caller(&request)?;
        let scope = access::read_scope(&caller)?;
        let id = request.get_ref().id.clone();
        validate::job_id(&id).map_err(|_| GatewayError::NotFound)?;
        let (slot, mut changes) = self
            .watchers
            .open(&caller.subject)
            .ok_or(GatewayError::ResourceExhausted("too many open WatchJob streams for this user"))?;
        let job = self.store.get(&id, &scope).await.map_err(GatewayError::from)?.ok_or(GatewayError::NotFound)?;
        let store = self.store.clone();
        let stream = async_stream(move |tx| async move {
            let _slot = slot;
            let mut last = job;
            if tx.send(Ok(JobEvent { job: Some(last.clone()) })).await.is_err() {
                return;
            }
            while !is_terminal(last.state()) {
                let next = match changes.recv().await {
                    Ok(job) if job.id == id => job,
                    Ok(_) => continue,
                    // Missed changes: the job's state now says where it is.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        match store.get(&id, &Scope::All).await {
                            Ok(Some(job)) => job,
                            _ => break,
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                if next.state != last.state || next.updated_at != last.updated_at {
                    last = next;
                    if tx.send(Ok(JobEvent { job: Some(last.clone()) })).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task through a small bounded channel (the task ends with the stream).
fn async_stream<F, Fut>(task: F) -> Pin<Box<dyn Stream<Item = std::result::Result<JobEvent, Status>> + Send>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<std::result::Result<JobEvent, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(task(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// `created_at:id` of the last job of the previous page.
fn page_token(token: &str) -> Option<(i64, String)> {
    let (at, id) = token.split_once(':')?;
    uuid::Uuid::parse_str(id).ok()?;
    Some((at.parse().ok()?, id.to_string()))
}
