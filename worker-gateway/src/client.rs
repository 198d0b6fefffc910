//! `worker-gateway jobs …`: a small command-line client of the job API, for people and scripts
//! (and `./dev up`). It speaks gRPC to Envoy (or the gateway) with the caller's bearer token
//! from `QIRIA_TOKEN`, never from a flag (a flag shows in `ps`), and prints one line per job
//! state.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

use crate::pb::job_service_client::JobServiceClient;
use crate::pb::{
    CancelJobRequest, GetJobRequest, Job, JobState, ListJobsRequest, SubmitScriptRequest, TriggerFlowRequest,
    WatchJobRequest,
};

/// `worker-gateway jobs`.
#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    /// Where the job API is: Envoy's listener, or the gateway's port.
    #[arg(long, default_value = "http://127.0.0.1:10000")]
    pub url: String,
    /// The caller's access token.
    #[arg(long, env = "QIRIA_TOKEN", hide_env_values = true)]
    pub token: String,
    /// What to do.
    #[command(subcommand)]
    pub command: JobsCommand,
}

/// One call.
#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// Trigger an allow-listed Kestra flow.
    Trigger {
        /// Kestra namespace.
        namespace: String,
        /// Flow id.
        flow: String,
        /// A flow input, `id=value` (repeatable).
        #[arg(long = "input", value_parser = pair)]
        inputs: Vec<(String, String)>,
        /// A label, `key=value` (repeatable).
        #[arg(long = "label", value_parser = pair)]
        labels: Vec<(String, String)>,
        /// The same key twice gives the same job.
        #[arg(long, default_value = "")]
        idempotency_key: String,
        /// Then watch the job until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Run a Python script in the scripting worker's sandbox.
    Script {
        /// The script file (`-`: standard input).
        file: std::path::PathBuf,
        /// The same key twice gives the same job.
        #[arg(long, default_value = "")]
        idempotency_key: String,
        /// Then watch the job until it ends, and print its output.
        #[arg(long)]
        watch: bool,
    },
    /// One job.
    Get {
        /// Job id.
        id: String,
    },
    /// Jobs, newest first.
    List,
    /// Cancel a job.
    Cancel {
        /// Job id.
        id: String,
    },
    /// Every change of a job until it ends.
    Watch {
        /// Job id.
        id: String,
    },
}

fn pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

/// Runs one command; `Ok(true)` when what it did succeeded (a watched job ended `SUCCESS`).
pub async fn run(args: JobsArgs) -> anyhow::Result<bool> {
    let channel = Channel::from_shared(args.url.clone())?.connect_timeout(Duration::from_secs(5)).connect().await?;
    let mut api = JobServiceClient::new(channel);
    let token: MetadataValue<_> = format!("Bearer {}", args.token).parse()?;
    let call = Caller(token);
    match args.command {
        JobsCommand::Trigger { namespace, flow, inputs, labels, idempotency_key, watch } => {
            let request = TriggerFlowRequest {
                namespace,
                flow_id: flow,
                inputs: inputs.into_iter().collect(),
                labels: labels.into_iter().collect(),
                idempotency_key,
            };
            let job = api.trigger_flow(call.request(request)).await?.into_inner();
            print(&job);
            if watch {
                return follow(&mut api, call.request(WatchJobRequest { id: job.id.clone() }), Some(job)).await;
            }
        }
        JobsCommand::Script { file, idempotency_key, watch } => {
            let body = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
            };
            let request = SubmitScriptRequest { language: "python".into(), body, idempotency_key };
            let job = api.submit_script(call.request(request)).await?.into_inner();
            print(&job);
            if watch {
                return follow(&mut api, call.request(WatchJobRequest { id: job.id.clone() }), Some(job)).await;
            }
        }
        JobsCommand::Get { id } => print(&api.get_job(call.request(GetJobRequest { id })).await?.into_inner()),
        JobsCommand::List => {
            let page =
                api.list_jobs(call.request(ListJobsRequest { page_size: 100, page_token: String::new() })).await?;
            page.into_inner().jobs.iter().for_each(print);
        }
        JobsCommand::Cancel { id } => print(&api.cancel_job(call.request(CancelJobRequest { id })).await?.into_inner()),
        JobsCommand::Watch { id } => return follow(&mut api, call.request(WatchJobRequest { id }), None).await,
    }
    Ok(true)
}

/// Puts the caller's token on each request.
struct Caller(MetadataValue<tonic::metadata::Ascii>);

impl Caller {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("authorization", self.0.clone());
        request
    }
}

/// Prints each change of the watched job (not the one already shown as `shown`).
async fn follow(
    api: &mut JobServiceClient<Channel>,
    request: Request<WatchJobRequest>,
    mut shown: Option<Job>,
) -> anyhow::Result<bool> {
    let mut stream = api.watch_job(request).await?.into_inner();
    while let Some(event) = stream.message().await? {
        let Some(job) = event.job else { continue };
        if shown.as_ref().is_none_or(|s| (s.state, &s.reason) != (job.state, &job.reason)) {
            print(&job);
        }
        shown = Some(job);
    }
    Ok(shown.is_some_and(|job| job.state() == JobState::Success))
}

fn print(job: &Job) {
    let state = crate::jobs::state_name(job.state());
    let what = if job.kind() == crate::pb::JobKind::Script {
        "script".to_string()
    } else {
        format!("{}/{}", job.namespace, job.flow_id)
    };
    let mut line = format!("{} {state:<9} {what} {}", job.id, job.reason);
    if let Some(outputs) = &job.outputs {
        let fields: Vec<String> = outputs.fields.iter().map(|(k, v)| format!("{k}={}", value_text(v))).collect();
        line.push_str(&format!(" outputs: {}", fields.join(", ")));
    }
    println!("{line}");
    if let Some(result) = &job.script_result {
        for (name, text) in [("stdout", &result.stdout), ("stderr", &result.stderr)] {
            for output in text.lines() {
                println!("  {name}| {output}");
            }
        }
        for artifact in &result.artifacts {
            println!("  artifact {} ({} bytes, sha256 {})", artifact.name, artifact.size, artifact.sha256);
        }
        if !result.limits_hit.is_empty() {
            println!("  limits hit: {}", result.limits_hit.join(", "));
        }
    }
}

fn value_text(value: &prost_types::Value) -> String {
    use prost_types::value::Kind;
    match &value.kind {
        Some(Kind::StringValue(s)) => s.clone(),
        Some(Kind::NumberValue(n)) => n.to_string(),
        Some(Kind::BoolValue(b)) => b.to_string(),
        Some(Kind::NullValue(_)) | None => "null".into(),
        Some(other) => format!("{other:?}"),
    }
}
