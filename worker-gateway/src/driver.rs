//! Moves flow jobs through Kestra: sends each create once, follows each execution to its end,
//! kills what was cancelled. The job store is the work queue, so a gateway killed at any point
//! and restarted resumes where it was, and a job never becomes two executions:
//!
//! 1. A create attempt is recorded in the store *before* it is sent, and carries the job id as
//!    the Kestra label [`JOB_LABEL`].
//! 2. A job with an attempt and no execution id may have an execution already (the answer was
//!    lost: a timeout, a crash, a 5xx after Kestra stored it). Before any new attempt the
//!    driver searches Kestra by that label — for `reconcile_wait`, since Kestra indexes
//!    executions for search asynchronously — and adopts what it finds.
//! 3. Only when the search has found nothing for `reconcile_wait` after the last attempt is
//!    another sent, at most `max_attempts` in all. Kestra's refusals (4xx) are never retried.
//!    A create known not to have left (connection refused) is resent after a backoff; one whose
//!    fate cannot be learnt (Kestra unreachable for twice the wait) fails the job, never resent.
//!
//! `reconcile_wait` must exceed Kestra's indexing lag; that is the one assumption the
//! exactly-once rests on (Kestra has no idempotent create), and the setting says so.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use futures_util::StreamExt;
use qiria_runtime::audit::{self, AuditEvent};
use qiria_runtime::shutdown::Shutdown;
use tokio::sync::Notify;

use crate::jobs::{is_terminal, since_ms, state_name, FlowWork, JobStore, Observation};
use crate::kestra::{job_state, Execution, KestraClient, KestraError, JOB_LABEL};
use crate::pb::JobState;
use crate::watch::Watchers;

/// How the driver paces itself.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    /// How often live jobs are looked at.
    pub poll: Duration,
    /// How long an unanswered create is searched for before another is sent.
    pub reconcile_wait: Duration,
    /// Create attempts per job.
    pub max_attempts: i64,
    /// Kestra calls in flight at once.
    pub max_in_flight: usize,
    /// Live jobs looked at per round.
    pub batch: u32,
}

/// The driver.
pub struct Driver {
    store: JobStore,
    kestra: Arc<KestraClient>,
    watchers: Arc<Watchers>,
    settings: DriverSettings,
    wake: Notify,
}

impl Driver {
    /// A driver of `store`'s flow jobs through `kestra`, telling `watchers` of each change.
    pub fn new(store: JobStore, kestra: Arc<KestraClient>, watchers: Arc<Watchers>, settings: DriverSettings) -> Self {
        Self { store, kestra, watchers, settings, wake: Notify::new() }
    }

    /// Look at live jobs now (a job was submitted or cancelled).
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
            let work = match self.store.live_flows(self.settings.batch).await {
                Ok(work) => work,
                Err(error) => {
                    tracing::error!(%error, "job store failed; flow jobs wait");
                    continue;
                }
            };
            futures_util::stream::iter(work).for_each_concurrent(self.settings.max_in_flight, |w| self.step(w)).await;
        }
    }

    async fn step(&self, work: FlowWork) {
        let seen = if work.job.execution_id.is_empty() {
            self.send_or_reconcile(&work).await
        } else {
            self.follow(&work).await
        };
        let Some(seen) = seen else { return };
        match self.store.observe(&work.job, &seen).await {
            Ok(Some(job)) => {
                if job.state != work.job.state {
                    let state = state_name(job.state());
                    let execution = &job.execution_id;
                    audit::record(AuditEvent::JobStateChanged { job: &job.id, owner: &job.owner, state, execution });
                }
                self.watchers.publish(&job);
            }
            Ok(None) => {}
            Err(error) => tracing::error!(job = %work.job.id, %error, "job store failed; the job is looked at again"),
        }
    }

    /// A job without an execution: find the one a lost answer may have created, else send.
    async fn send_or_reconcile(&self, work: &FlowWork) -> Option<Observation> {
        let job = &work.job;
        if work.attempts > 0 && !work.attempt_pending {
            // The last attempt never left: back off, then send again (nothing to reconcile).
            let backoff = (self.settings.poll * 4 * (1 << work.attempts.min(6))).min(self.settings.reconcile_wait);
            if since_ms(work.last_attempt_ms) < backoff {
                return None;
            }
        } else if work.attempts > 0 {
            match self.kestra.find_by_job(&job.namespace, &job.flow_id, &job.id).await {
                Ok(Some(execution)) => return Some(self.adopt(work, execution).await),
                Ok(None) if since_ms(work.last_attempt_ms) < self.settings.reconcile_wait => return None,
                // No execution after the whole wait: that attempt created none.
                Ok(None) => {}
                // Kestra cannot be asked: never resend blindly. After twice the wait, say so
                // and stop (bounded), naming the label an operator can look the execution up by.
                Err(error) if since_ms(work.last_attempt_ms) > self.settings.reconcile_wait * 2 => {
                    return Some(failed(format!(
                        "could not confirm with Kestra whether attempt {} created an execution (label {JOB_LABEL}={}): {}",
                        work.attempts,
                        job.id,
                        error.explain()
                    )));
                }
                Err(error) => {
                    let reason = format!("cannot yet tell whether Kestra created an execution: {}", error.explain());
                    return Some(queued(work, reason));
                }
            }
        }
        if !work.cancel_requested_by.is_empty() {
            return Some(Observation {
                state: JobState::Cancelled,
                reason: format!("cancelled by {} before Kestra ran it", work.cancel_requested_by),
                kestra_state: String::new(),
                execution_id: None,
                outputs: None,
                not_sent: false,
            });
        }
        if work.attempts >= self.settings.max_attempts {
            let reason = format!("Kestra created no execution in {} attempts; the last: {}", work.attempts, job.reason);
            return Some(failed(reason));
        }
        match self.store.claim_attempt(&job.id, work.attempts).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(error) => {
                tracing::error!(job = %job.id, %error, "job store failed; nothing sent");
                return None;
            }
        }
        let attempt = work.attempts + 1;
        let flow = format!("{}/{}", job.namespace, job.flow_id);
        audit::record(AuditEvent::JobTriggered { job: &job.id, owner: &job.owner, flow: &flow, attempt });
        let mut labels: Vec<(String, String)> = work.labels.clone().into_iter().collect();
        labels.push((JOB_LABEL.to_string(), job.id.clone()));
        let span = tracing::info_span!(target: "qiria::trace", "kestra.create_execution", otel.kind = "client", qiria.job = %job.id, qiria.flow = %flow, qiria.attempt = attempt);
        qiria_runtime::telemetry::continue_recorded(&span, &work.traceparent);
        let trace = qiria_runtime::telemetry::trace_headers(&span);
        let created =
            self.kestra.create(&job.namespace, &job.flow_id, &work.inputs, &labels, &trace).instrument(span).await;
        match created {
            Ok(execution) => Some(self.adopt(work, execution).await),
            Err(error) => {
                tracing::warn!(job = %job.id, attempt, %error, "create failed");
                Some(after_failed_create(work, attempt, &error))
            }
        }
    }

    /// The job's execution is `execution`: record it, and kill it if a cancel is pending.
    async fn adopt(&self, work: &FlowWork, execution: Execution) -> Observation {
        if !work.cancel_requested_by.is_empty() && !is_terminal(execution.job_state()) {
            if let Err(error) = self.kestra.kill(&execution.id).await {
                tracing::warn!(job = %work.job.id, %error, "kill failed; tried again next round");
            }
        }
        observed(work, execution)
    }

    /// A job with an execution: where is it now?
    async fn follow(&self, work: &FlowWork) -> Option<Observation> {
        let id = &work.job.execution_id;
        let killable = !matches!(work.job.kestra_state.as_str(), "KILLING" | "KILLED");
        if !work.cancel_requested_by.is_empty() && killable {
            if let Err(error) = self.kestra.kill(id).await {
                tracing::warn!(job = %work.job.id, %error, "kill failed; tried again next round");
            }
        }
        match self.kestra.get(id).await {
            Ok(Some(execution)) => Some(observed(work, execution)),
            Ok(None) => Some(failed(format!("Kestra no longer has execution {id}"))),
            Err(error) => {
                tracing::warn!(job = %work.job.id, %error, "cannot read the execution; tried again next round");
                None
            }
        }
    }
}

fn observed(work: &FlowWork, execution: Execution) -> Observation {
    let state = job_state(&execution.state.current);
    let kestra = &execution.state.current;
    let reason = match state {
        JobState::Cancelled if !work.cancel_requested_by.is_empty() => {
            format!("execution {} {kestra} at the request of {}", execution.id, work.cancel_requested_by)
        }
        _ if !work.cancel_requested_by.is_empty() && !is_terminal(state) => {
            format!("execution {} is {kestra}; killing it at the request of {}", execution.id, work.cancel_requested_by)
        }
        _ if is_terminal(state) => format!("execution {} ended {kestra}", execution.id),
        _ => format!("execution {} is {kestra}", execution.id),
    };
    Observation {
        state,
        reason,
        kestra_state: kestra.clone(),
        execution_id: Some(execution.id),
        outputs: execution.outputs.filter(|_| is_terminal(state)),
        not_sent: false,
    }
}

fn after_failed_create(work: &FlowWork, attempt: i64, error: &KestraError) -> Observation {
    match error {
        e if e.may_have_happened() => queued(
            work,
            format!("attempt {attempt}: {}; looking for its execution before any new attempt", e.explain()),
        ),
        KestraError::Unreachable(_) | KestraError::NotConnected(_) => {
            Observation { not_sent: true, ..queued(work, format!("attempt {attempt}: {}", error.explain())) }
        }
        refused => failed(refused.explain()),
    }
}

fn queued(work: &FlowWork, reason: String) -> Observation {
    Observation {
        state: work.job.state(),
        reason,
        kestra_state: work.job.kestra_state.clone(),
        execution_id: None,
        outputs: None,
        not_sent: false,
    }
}

fn failed(reason: String) -> Observation {
    Observation {
        state: JobState::Failed,
        reason,
        kestra_state: String::new(),
        execution_id: None,
        outputs: None,
        not_sent: false,
    }
}
