//! The `ScriptRunner` service: who is calling (the gateway's certificate), what it asks
//! (validated), a slot in the bounded pool, one sandbox run, and the result as the API says it.
//! A call whose caller goes away stops its run: the sandbox is killed and removed.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use qiria_runtime::audit::{self, AuditEvent};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::config::RunLimits;
use crate::errors::WorkerError;
use crate::metrics::Metrics;
use crate::pb::script_runner_server::ScriptRunner;
use crate::pb::{Artifact, Durations, EgressAttempt, RunRequest, RunResult};
use crate::pool::Pool;
use crate::sandbox::{Backend, RunReport, RunSpec};

/// The service.
pub(crate) struct Runner<B> {
    pub(crate) backend: B,
    pub(crate) pool: Arc<Pool>,
    pub(crate) limits: RunLimits,
    pub(crate) allowed_clients: Vec<String>,
    pub(crate) metrics: Arc<Metrics>,
}

#[tonic::async_trait]
impl<B: Backend + Clone> ScriptRunner for Runner<B> {
    async fn run(&self, request: Request<RunRequest>) -> Result<Response<RunResult>, Status> {
        // The run is a span of the job's trace (the gateway's `traceparent`).
        let span = tracing::info_span!(
            target: "qiria::trace",
            "script.run",
            otel.kind = "server",
            qiria.job = %request.get_ref().job_id,
            qiria.exit_code = tracing::field::Empty,
            qiria.limits_hit = tracing::field::Empty,
        );
        if !span.is_disabled() {
            let trace = qiria_runtime::telemetry::trace_context(|name| request.metadata().get(name)?.to_str().ok());
            qiria_runtime::telemetry::continue_trace(&span, &trace);
        }
        self.serve(request).instrument(span).await
    }
}

impl<B: Backend + Clone> Runner<B> {
    async fn serve(&self, request: Request<RunRequest>) -> Result<Response<RunResult>, Status> {
        let caller = match crate::peer::allowed_identity(&request, &self.allowed_clients) {
            Ok(caller) => caller,
            Err(error) => {
                let names = match &error {
                    WorkerError::CallerNotAllowed(names) => names.as_str(),
                    _ => "",
                };
                audit::record(AuditEvent::ScriptRefused { caller: names, reason: &error.to_string() });
                Metrics::count(&self.metrics.refused, "caller");
                return Err(error.into());
            }
        };
        let request = request.into_inner();
        if let Err(error) = validate(&request, &self.limits) {
            Metrics::count(&self.metrics.refused, "invalid");
            return Err(error.into());
        }
        let queued = Instant::now();
        let slot = match self.pool.slot().await {
            Ok(slot) => slot,
            Err(full) => {
                Metrics::count(&self.metrics.refused, "busy");
                return Err(WorkerError::from(full).into());
            }
        };
        let queued = queued.elapsed();
        let script_sha256 = hex::encode(Sha256::digest(request.body.as_bytes()));
        let spec = RunSpec {
            id: format!("run-{}", uuid::Uuid::new_v4().simple()),
            script: request.body,
            limits: self.limits.clone(),
        };
        let run_id = spec.id.clone();
        tracing::info!(job = %request.job_id, run = %run_id, %caller, "running a script");
        // The run is its own task: if this call is dropped (the caller went away), `_stop`
        // goes with it and the run is killed and cleaned, not abandoned half-way.
        let (_stop, cancel) = oneshot::channel::<()>();
        let backend = self.backend.clone();
        let started = Instant::now();
        let outcome = tokio::spawn(async move {
            let _slot = slot;
            backend.run(spec, cancel).await
        })
        .await
        .map_err(|e| Status::internal(format!("the run's task failed: {e}")))?;
        self.metrics.run_seconds.observe(started.elapsed().as_secs_f64());
        let report = match outcome {
            Ok(report) => report,
            Err(error) => {
                tracing::error!(job = %request.job_id, run = %run_id, %error, "sandbox failed");
                Metrics::count(&self.metrics.runs, "error");
                return Err(WorkerError::from(error).into());
            }
        };
        let limits_hit: Vec<&str> = report.limits_hit.iter().map(|l| l.name()).collect();
        for limit in &report.limits_hit {
            Metrics::count(&self.metrics.limits, limit.name());
        }
        Metrics::count(&self.metrics.runs, if limits_hit.is_empty() { "exited" } else { "limited" });
        let span = tracing::Span::current();
        span.record("qiria.exit_code", report.exit_code.unwrap_or(-1));
        span.record("qiria.limits_hit", limits_hit.join(",").as_str());
        audit::record(AuditEvent::ScriptRan {
            job: &request.job_id,
            run: &run_id,
            caller: &caller,
            script_sha256: &script_sha256,
            exit_code: report.exit_code.unwrap_or(-1),
            limits_hit: &limits_hit.join(","),
        });
        Ok(Response::new(result(report, queued)))
    }
}

/// Refuses what no sandbox should be made for, naming the field.
fn validate(request: &RunRequest, limits: &RunLimits) -> Result<(), WorkerError> {
    let invalid = |field, reason: &str| Err(WorkerError::Invalid { field, reason: reason.into() });
    if request.language != "python" {
        return invalid("language", "must be \"python\"");
    }
    if request.body.trim().is_empty() {
        return invalid("body", "is empty");
    }
    if request.body.len() > limits.script_bytes {
        return invalid("body", &format!("is larger than {} bytes", limits.script_bytes));
    }
    if request.body.contains('\0') {
        return invalid("body", "contains a NUL byte");
    }
    let id_ok = request.job_id.len() <= 128
        && request.job_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if request.job_id.is_empty() || !id_ok {
        return invalid("job_id", "must be 1 to 128 letters, digits, '-' or '_'");
    }
    Ok(())
}

fn result(report: RunReport, queued: Duration) -> RunResult {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    RunResult {
        exit_code: report.exit_code.unwrap_or(-1),
        stdout: String::from_utf8_lossy(&report.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&report.stderr).into_owned(),
        artifacts: report
            .artifacts
            .into_iter()
            .map(|a| Artifact {
                size: a.content.len() as u64,
                sha256: hex::encode(Sha256::digest(&a.content)),
                name: a.name,
                content: a.content,
            })
            .collect(),
        limits_hit: report.limits_hit.iter().map(|l| l.name().to_string()).collect(),
        durations: Some(Durations {
            setup_ms: ms(report.setup),
            run_ms: ms(report.run),
            cleanup_ms: ms(report.cleanup),
            queued_ms: ms(queued),
        }),
        cpu_ms: ms(report.cpu),
        memory_peak_bytes: report.memory_peak,
        egress: report
            .egress
            .into_iter()
            .map(|a| EgressAttempt { host: a.host, port: u32::from(a.port), allowed: a.allowed, reason: a.reason })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str) -> RunRequest {
        RunRequest { job_id: "job-1".into(), language: "python".into(), body: body.into() }
    }

    #[test]
    fn refuses_naming_the_field() {
        let limits = RunLimits { script_bytes: 16, ..RunLimits::default() };
        let field = |r: &RunRequest| match validate(r, &limits) {
            Err(WorkerError::Invalid { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(field(&RunRequest { language: "bash".into(), ..request("print(1)") }), "language");
        assert_eq!(field(&request("  ")), "body");
        assert_eq!(field(&request("print('much too long')")), "body");
        assert_eq!(field(&request("a\0")), "body");
        assert_eq!(field(&RunRequest { job_id: "../x".into(), ..request("print(1)") }), "job_id");
        assert!(validate(&request("print(1)"), &limits).is_ok());
    }
}
