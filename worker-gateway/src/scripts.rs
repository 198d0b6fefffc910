//! Moves script jobs through the scripting worker. The job store is the queue: a queued script
//! is claimed (`RUNNING`, the attempt counted), handed to the worker over mutual TLS, and its
//! result stored with the job. While it runs, a cancel asked for drops the call, which makes the
//! worker kill the sandbox. A worker that is busy (`RESOURCE_EXHAUSTED`) or unreachable puts the
//! job back in the queue, at most `max_attempts` times; any other failure fails the job, named.
//!
//! A script is run again only when the worker said no sandbox took it or could not be reached:
//! a run that may have happened is never repeated. A `RUNNING` script no gateway follows any
//! more (its gateway stopped) is failed after twice the run timeout.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument as _;

use qiria_runtime::audit::{self, AuditEvent};
use qiria_runtime::shutdown::Shutdown;
use tokio::sync::Notify;
use tonic::Code;

use crate::jobs::{since_ms, state_name, JobStore, ScriptWork};
use crate::pb::{Job, JobState};
use crate::sandbox::LiveWorker;
use crate::sandbox_pb::{RunRequest, RunResult};
use crate::watch::Watchers;

/// Why a script job waits for its turn.
pub const SCRIPT_QUEUED: &str = "waiting for a sandbox";

/// How the script driver paces itself.
#[derive(Debug, Clone)]
pub struct ScriptSettings {
    /// How often queued scripts are looked at.
    pub poll: Duration,
    /// How long one run may take.
    pub run_timeout: Duration,
    /// Runs in flight at once.
    pub max_in_flight: usize,
    /// Hand-overs per job before it fails.
    pub max_attempts: i64,
}

/// The script driver.
pub struct ScriptDriver {
    store: JobStore,
    worker: Arc<LiveWorker>,
    watchers: Arc<Watchers>,
    settings: ScriptSettings,
    wake: Notify,
    in_flight: Mutex<HashSet<String>>,
}

/// What became of one hand-over.
enum Outcome {
    Ran(RunResult),
    /// Not run: back to the queue, saying why.
    NotTaken(String),
    Failed(String),
    Cancelled(String),
}

impl ScriptDriver {
    /// A driver of `store`'s script jobs through `worker`, telling `watchers` of each change.
    pub fn new(store: JobStore, worker: Arc<LiveWorker>, watchers: Arc<Watchers>, settings: ScriptSettings) -> Self {
        Self { store, worker, watchers, settings, wake: Notify::new(), in_flight: Mutex::default() }
    }

    /// Look at queued scripts now (one was submitted or cancelled).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll) => {}
            }
            let batch = u32::try_from(self.settings.max_in_flight * 4 + 16).unwrap_or(u32::MAX);
            let work = match self.store.live_scripts(batch).await {
                Ok(work) => work,
                Err(error) => {
                    tracing::error!(%error, "job store failed; script jobs wait");
                    continue;
                }
            };
            for work in work {
                if work.job.state() == JobState::Running {
                    self.fail_if_abandoned(&work).await;
                } else if self.due(&work) && self.take(&work.job.id) {
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.hand_over(&work).await;
                        this.release(&work.job.id);
                    });
                }
            }
        }
    }

    /// Whether a queued script is due: at once the first time, after a growing backoff once a
    /// worker was busy or unreachable.
    fn due(&self, work: &ScriptWork) -> bool {
        if work.attempts == 0 {
            return true;
        }
        let backoff = (self.settings.poll * (1 << work.attempts.clamp(0, 6))).min(Duration::from_secs(30));
        since_ms(work.last_attempt_ms) >= backoff
    }

    /// Marks `id` in flight here, if there is room and it is not already.
    fn take(&self, id: &str) -> bool {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        in_flight.len() < self.settings.max_in_flight && in_flight.insert(id.to_string())
    }

    fn release(&self, id: &str) {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    fn running_here(&self, id: &str) -> bool {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
    }

    async fn hand_over(&self, work: &ScriptWork) {
        if work.attempts >= self.settings.max_attempts {
            let reason = format!("no sandbox took it in {} attempts; the last: {}", work.attempts, work.job.reason);
            // Claimed first, so that a concurrent gateway cannot run it meanwhile.
            if let Some(job) = self.claim(work, "giving up").await {
                self.settle(&job, JobState::Failed, &reason, None).await;
            }
            return;
        }
        let Some(job) = self.claim(work, "running in a sandbox").await else { return };
        let (state, reason, result) = match self.call(work).await {
            Outcome::Ran(result) => {
                let (state, reason) = verdict(&result);
                (state, reason, Some(result))
            }
            Outcome::NotTaken(reason) => (JobState::Queued, reason, None),
            Outcome::Failed(reason) => (JobState::Failed, reason, None),
            Outcome::Cancelled(by) => {
                (JobState::Cancelled, format!("cancelled by {by}; its sandbox was stopped"), None)
            }
        };
        self.settle(&job, state, &reason, result.as_ref()).await;
    }

    async fn claim(&self, work: &ScriptWork, reason: &str) -> Option<Job> {
        match self.store.claim_script(&work.job.id, reason).await {
            Ok(Some(job)) => {
                self.announce(&job);
                Some(job)
            }
            Ok(None) => None,
            Err(error) => {
                tracing::error!(job = %work.job.id, %error, "job store failed; the script waits");
                None
            }
        }
    }

    async fn settle(&self, job: &Job, state: JobState, reason: &str, result: Option<&RunResult>) {
        match self.store.settle_script(&job.id, state, reason, result).await {
            Ok(Some(job)) => self.announce(&job),
            Ok(None) => {}
            Err(error) => tracing::error!(job = %job.id, %error, "job store failed; the result is lost"),
        }
    }

    fn announce(&self, job: &Job) {
        let state = state_name(job.state());
        audit::record(AuditEvent::JobStateChanged { job: &job.id, owner: &job.owner, state, execution: "" });
        self.watchers.publish(job);
    }

    /// One call to the worker, dropped if a cancel is asked for meanwhile.
    async fn call(&self, work: &ScriptWork) -> Outcome {
        let Some(mut client) = self.worker.client() else {
            return Outcome::NotTaken("no scripting worker connection: its TLS files did not load".into());
        };
        let request =
            RunRequest { job_id: work.job.id.clone(), language: work.language.clone(), body: work.body.clone() };
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.settings.run_timeout);
        let span =
            tracing::info_span!(target: "qiria::trace", "sandbox.run", otel.kind = "client", qiria.job = %work.job.id);
        qiria_runtime::telemetry::continue_recorded(&span, &work.traceparent);
        for (name, value) in qiria_runtime::telemetry::trace_headers(&span) {
            if let (Ok(name), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_bytes()),
                tonic::metadata::MetadataValue::try_from(value.as_str()),
            ) {
                request.metadata_mut().insert(name, value);
            }
        }
        let call = client.run(request).instrument(span);
        tokio::pin!(call);
        let mut tick = tokio::time::interval(self.settings.poll);
        loop {
            tokio::select! {
                answer = &mut call => return outcome(answer),
                _ = tick.tick() => {
                    match self.store.cancel_requested_by(&work.job.id).await {
                        Ok(by) if !by.is_empty() => return Outcome::Cancelled(by),
                        Ok(_) => {}
                        Err(error) => tracing::warn!(job = %work.job.id, %error, "cannot read the job's cancel"),
                    }
                }
            }
        }
    }

    /// A `RUNNING` script this gateway does not run, whose run has long outlived its timeout:
    /// the gateway that ran it stopped; nothing will report it.
    async fn fail_if_abandoned(&self, work: &ScriptWork) {
        if self.running_here(&work.job.id) {
            return;
        }
        let since = since_ms(work.last_attempt_ms);
        if since > self.settings.run_timeout * 2 {
            let reason = format!("no result within {:?}: the gateway that handed it over stopped", since);
            self.settle(&work.job, JobState::Failed, &reason, None).await;
        }
    }
}

/// The metadata key the worker sets on a status when nothing of the run was made
/// (`sandbox.proto`).
const RUN_NOT_STARTED: &str = "qiria-run-not-started";

fn outcome(answer: Result<tonic::Response<RunResult>, tonic::Status>) -> Outcome {
    match answer {
        Ok(result) => Outcome::Ran(result.into_inner()),
        Err(status) => match status.code() {
            Code::ResourceExhausted => Outcome::NotTaken(format!("every sandbox is busy: {}", status.message())),
            // Refused before the worker read the call: nothing ran (tonic's own words for a
            // failed connect; a connection cut mid-call is also UNAVAILABLE, and may have run).
            Code::Unavailable if ["tcp connect error", "dns error"].iter().any(|m| status.message().starts_with(m)) => {
                Outcome::NotTaken(format!("scripting worker unreachable: {}", status.message()))
            }
            // The worker says nothing of the run was made (its cluster was out of reach).
            Code::Unavailable if status.metadata().get(RUN_NOT_STARTED).is_some() => {
                Outcome::NotTaken(format!("scripting worker: {}", status.message()))
            }
            code => Outcome::Failed(format!("scripting worker: {code:?}: {}", status.message())),
        },
    }
}

/// The job's end from its run: success only for exit 0 with no limit fired.
fn verdict(result: &RunResult) -> (JobState, String) {
    if !result.limits_hit.is_empty() {
        return (JobState::Failed, format!("stopped by its limits: {}", result.limits_hit.join(", ")));
    }
    match result.exit_code {
        0 => (JobState::Success, "the script exited 0".into()),
        code => (JobState::Failed, format!("the script exited {code}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(status: tonic::Status) -> bool {
        !matches!(outcome(Err(status)), Outcome::NotTaken(_))
    }

    /// A script is handed over again only when the worker cannot have run it: busy, not
    /// connected, or it says nothing of the run was made. A call cut mid-run may have run.
    #[test]
    fn only_a_call_that_made_nothing_is_handed_over_again() {
        assert!(!taken(tonic::Status::resource_exhausted("every sandbox is busy")));
        assert!(!taken(tonic::Status::unavailable("tcp connect error: Connection refused")));
        let mut not_started = tonic::Status::unavailable("not started: the Kubernetes API server is unreachable");
        not_started.metadata_mut().insert(RUN_NOT_STARTED, tonic::metadata::MetadataValue::from_static("true"));
        assert!(!taken(not_started));
        assert!(taken(tonic::Status::unavailable("error reading a body from connection: connection reset")));
        assert!(taken(tonic::Status::internal("the Kubernetes API server refused POST …: 403")));
    }

    /// What tonic itself answers when the worker's port is closed.
    #[tokio::test]
    async fn a_worker_that_is_not_listening_did_not_take_the_script() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
        let endpoint = format!("http://127.0.0.1:{}", port.expect("a free port"));
        let channel = tonic::transport::Endpoint::from_shared(endpoint).expect("endpoint").connect_lazy();
        let request = RunRequest { job_id: "job-1".into(), language: "python".into(), body: "print(1)".into() };
        let status = crate::sandbox_pb::script_runner_client::ScriptRunnerClient::new(channel)
            .run(request)
            .await
            .expect_err("nothing listens");
        assert!(!taken(status.clone()), "{status:?}");
    }
}
