//! Calling the worker-gateway's job API as a client does: a request with the caller's bearer
//! token, and a job watched (`WatchJob`) until it ends.

use std::time::Duration;

use tonic::Request;
use worker_gateway::pb::job_service_client::JobServiceClient;
use worker_gateway::pb::{Job, JobState, SubmitScriptRequest, TriggerFlowRequest, WatchJobRequest};

/// A job API client (through Envoy or straight to the gateway).
pub type Api = JobServiceClient<tonic::transport::Channel>;

/// `message` with a bearer token, as a client sends it.
pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    request
}

/// The states job `id` goes through (as `WatchJob` streams them) until it ends, and the job
/// then; panics if it has not ended within a minute.
pub async fn watch_to_end(api: &Api, token: &str, id: &str) -> (Vec<JobState>, Job) {
    let request = with_token(WatchJobRequest { id: id.into() }, token);
    let mut stream = api.clone().watch_job(request).await.expect("watch").into_inner();
    let (mut states, mut last) = (Vec::new(), None);
    let watched = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = stream.message().await.expect("stream") {
            let job = event.job.expect("job");
            if states.last() != Some(&job.state()) {
                states.push(job.state());
            }
            last = Some(job);
        }
    })
    .await;
    let last = last.expect("at least the job as it is");
    assert!(watched.is_ok(), "job never ended; last seen {last:?}");
    (states, last)
}

/// `TriggerFlow` of `namespace/flow` with `inputs`, no labels, no idempotency key.
pub fn flow(namespace: &str, flow: &str, inputs: &[(&str, &str)]) -> TriggerFlowRequest {
    TriggerFlowRequest {
        namespace: namespace.into(),
        flow_id: flow.into(),
        inputs: inputs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        labels: Default::default(),
        idempotency_key: String::new(),
    }
}

/// `SubmitScript` of the Python `body`, no idempotency key.
pub fn script(body: &str) -> SubmitScriptRequest {
    SubmitScriptRequest { language: "python".into(), body: body.into(), idempotency_key: String::new() }
}
