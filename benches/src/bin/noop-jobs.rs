//! The job API's floor: a `qiria.jobs.v1.JobService` that answers every call at once with one
//! fixed job, verifying, deciding and storing nothing. `noop-jobs PORT`. Behind the same Envoy
//! route and authz as the worker-gateway, what it costs is the mesh and the gRPC plumbing; the
//! gateway's figures minus (or over) these are the gateway's own cost.
//!
//! It uses the gateway's generated server (and so its strict codec) and the gateway's runtime
//! (tokio's default multi-thread runtime, one worker per core it may use), so that the two
//! differ only in what the service does.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use worker_gateway::pb::job_service_server::{JobService, JobServiceServer};
use worker_gateway::pb::{
    CancelJobRequest, EraseUserJobsRequest, EraseUserJobsResponse, GetJobRequest, Job, JobEvent, JobKind, JobState,
    ListJobsRequest, ListJobsResponse, SubmitScriptRequest, TriggerFlowRequest, WatchJobRequest,
};

struct Noop {
    /// What `TriggerFlow` (and the other calls that answer a job) return.
    new: Job,
    /// What `GetJob` returns.
    ended: Job,
}

/// Jobs shaped like the gateway's answers (the same fields set, strings of the same lengths),
/// so that Envoy and the client move as many bytes for either backend: a new flow job, as
/// `TriggerFlow` answers it, and one that ended, as `GetJob` of the benchmark's job answers.
fn fixed_jobs() -> (Job, Job) {
    let new = Job {
        id: "0b6f8c1e-6d3a-4c1f-9a57-3f2d8e4b7c10".into(),
        owner: "alice".into(),
        kind: JobKind::Flow.into(),
        state: JobState::Queued.into(),
        reason: "waiting to be sent to Kestra".into(),
        namespace: "qiria.demo".into(),
        flow_id: "hello".into(),
        idempotency_key: "5e0f2a7b-1c9d-4e3a-8b6f-2d4c7a9e1f03".into(),
        created_at: 1_764_000_000_000,
        updated_at: 1_764_000_000_000,
        ..Job::default()
    };
    let greeting = prost_types::Value { kind: Some(prost_types::value::Kind::StringValue("hello bench".into())) };
    let ended = Job {
        state: JobState::Success.into(),
        reason: "execution 4Xb2mQ9fLkT7pR1sVwYz3c ended SUCCESS".into(),
        execution_id: "4Xb2mQ9fLkT7pR1sVwYz3c".into(),
        kestra_state: "SUCCESS".into(),
        updated_at: 1_764_000_000_400,
        outputs: Some(prost_types::Struct { fields: [("greeting".to_string(), greeting)].into() }),
        ..new.clone()
    };
    (new, ended)
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl JobService for Noop {
    async fn trigger_flow(&self, _request: Request<TriggerFlowRequest>) -> Answer<Job> {
        Ok(Response::new(self.new.clone()))
    }

    async fn submit_script(&self, _request: Request<SubmitScriptRequest>) -> Answer<Job> {
        Ok(Response::new(self.new.clone()))
    }

    async fn get_job(&self, _request: Request<GetJobRequest>) -> Answer<Job> {
        Ok(Response::new(self.ended.clone()))
    }

    async fn list_jobs(&self, _request: Request<ListJobsRequest>) -> Answer<ListJobsResponse> {
        Ok(Response::new(ListJobsResponse { jobs: vec![self.new.clone()], next_page_token: String::new() }))
    }

    async fn cancel_job(&self, _request: Request<CancelJobRequest>) -> Answer<Job> {
        Ok(Response::new(self.new.clone()))
    }

    async fn erase_user_jobs(&self, _request: Request<EraseUserJobsRequest>) -> Answer<EraseUserJobsResponse> {
        Ok(Response::new(EraseUserJobsResponse { erased: 0, still_live: 0 }))
    }

    type WatchJobStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;

    async fn watch_job(&self, _request: Request<WatchJobRequest>) -> Answer<Self::WatchJobStream> {
        let event = JobEvent { job: Some(self.new.clone()) };
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(event)))))
    }
}

fn main() -> anyhow::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(port) => port.parse().map_err(|e| anyhow::anyhow!("port {port:?}: {e}"))?,
        None => anyhow::bail!("usage: noop-jobs PORT"),
    };
    let (new, ended) = fixed_jobs();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        tonic::transport::Server::builder()
            .add_service(JobServiceServer::new(Noop { new, ended }))
            .serve_with_incoming(qiria_runtime::net::incoming(listener))
            .await?;
        Ok(())
    })
}
