//! Load for the job API through Envoy: tonic clients over h2c, several connections × concurrent
//! streams, for a bounded time, as fast as answers come or at a fixed total rate.
//!
//! `jobs-loadgen URL --token-file F --call trigger|get [--job-id ID] [--connections C]
//! [--streams M] [--seconds S] [--rate R] [--ids-out FILE]` prints one JSON line: calls, ok,
//! failed (with their gRPC codes), ok calls per second, p50/p99/max latency (µs) of the ok calls.
//!
//! A call counts as ok only when tonic returns a decoded message: gRPC carries its status in
//! trailers, so an HTTP 200 whose `grpc-status` is not 0 is a failure here (tonic reads the
//! trailers; a non-200 answer, e.g. Envoy's 403, is a failure too).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;
use worker_gateway::pb::job_service_client::JobServiceClient;
use worker_gateway::pb::{GetJobRequest, TriggerFlowRequest};

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Call {
    /// `TriggerFlow` of `qiria.demo/hello` with input `name`, no idempotency key (a new job each).
    Trigger,
    /// `GetJob` of `--job-id`.
    Get,
}

#[derive(Parser)]
struct Args {
    /// Envoy's listener, e.g. http://127.0.0.1:10000.
    url: String,
    /// File holding the bearer token (kept out of the command line).
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// Which call.
    #[arg(long, value_enum)]
    call: Call,
    /// The job `get` reads.
    #[arg(long, default_value = "")]
    job_id: String,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent streams per connection (one with `--rate`).
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Duration in seconds (bounded: at most 600).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// A fixed total rate (calls/s) instead of maximum load.
    #[arg(long)]
    rate: Option<f64>,
    /// Append the id of every job an ok `trigger` returned to this file, one per line.
    #[arg(long)]
    ids_out: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: BTreeMap<String, u64>,
    ids: Vec<String>,
    latency: Option<hdrhistogram::Histogram<u64>>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = std::fs::read_to_string(&args.token_file)?;
    let bearer: MetadataValue<_> = format!("Bearer {}", token.trim()).parse()?;
    anyhow::ensure!(args.call == Call::Trigger || !args.job_id.is_empty(), "--call get needs --job-id");
    let duration = Duration::from_secs_f64(args.seconds.clamp(0.1, 600.0));
    // Fixed rate: one stream per connection, each paced at its share of the rate, as h2load's
    // `-m 1 --rps` does, so that a slow answer delays that stream and shows in the latency.
    let streams = if args.rate.is_some() { 1 } else { args.streams.max(1) };
    let workers = args.connections.max(1) * streams;
    let period = args.rate.map(|r| Duration::from_secs_f64(workers as f64 / r.max(0.001)));
    let keep_ids = args.ids_out.is_some();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (tallies, elapsed) = runtime.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..args.connections.max(1) {
            // One Channel is one h2 connection; its clones share it.
            let channel = Channel::from_shared(args.url.clone())?.connect().await?;
            clients.push(JobServiceClient::new(channel));
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (i, client) in clients.iter().enumerate() {
            for s in 0..streams {
                let (mut client, bearer, job_id, call) =
                    (client.clone(), bearer.clone(), args.job_id.clone(), args.call);
                let worker = i * streams + s;
                tasks.push(tokio::spawn(async move {
                    let mut tally = Tally { latency: hdrhistogram::Histogram::new(3).ok(), ..Tally::default() };
                    let mut ticks = period.map(|p| {
                        // Staggered, so that the workers do not all send at the same instant.
                        let offset = p.mul_f64(worker as f64 / workers as f64);
                        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, p);
                        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        ticks
                    });
                    while started.elapsed() < duration {
                        if let Some(ticks) = ticks.as_mut() {
                            ticks.tick().await;
                            if started.elapsed() >= duration {
                                break;
                            }
                        }
                        let sent = Instant::now();
                        let answer = match call {
                            Call::Trigger => {
                                let mut request = Request::new(TriggerFlowRequest {
                                    namespace: "qiria.demo".into(),
                                    flow_id: "hello".into(),
                                    inputs: [("name".to_string(), "bench".to_string())].into(),
                                    labels: Default::default(),
                                    idempotency_key: String::new(),
                                });
                                request.metadata_mut().insert("authorization", bearer.clone());
                                client.trigger_flow(request).await
                            }
                            Call::Get => {
                                let mut request = Request::new(GetJobRequest { id: job_id.clone() });
                                request.metadata_mut().insert("authorization", bearer.clone());
                                client.get_job(request).await
                            }
                        };
                        match answer {
                            Ok(job) => {
                                if let Some(h) = tally.latency.as_mut() {
                                    let _ = h.record(sent.elapsed().as_micros() as u64);
                                }
                                tally.ok += 1;
                                if keep_ids {
                                    tally.ids.push(job.into_inner().id);
                                }
                            }
                            Err(status) => *tally.failed.entry(format!("{:?}", status.code())).or_default() += 1,
                        }
                    }
                    tally
                }));
            }
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await?);
        }
        anyhow::Ok((all, started.elapsed().as_secs_f64()))
    })?;
    let mut merged = hdrhistogram::Histogram::<u64>::new(3)?;
    let (mut ok, mut failed, mut ids) = (0, BTreeMap::<String, u64>::new(), Vec::new());
    for t in tallies {
        ok += t.ok;
        for (code, n) in t.failed {
            *failed.entry(code).or_default() += n;
        }
        ids.extend(t.ids);
        if let Some(h) = t.latency {
            merged.add(h)?;
        }
    }
    if let Some(path) = &args.ids_out {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        for id in &ids {
            writeln!(file, "{id}")?;
        }
    }
    let failures: u64 = failed.values().sum();
    let latency = |q: f64| (ok > 0).then(|| merged.value_at_quantile(q));
    println!(
        "{}",
        serde_json::json!({
            "calls": ok + failures, "ok": ok, "failed": failures, "codes": failed,
            "seconds": elapsed, "ok_per_s": ok as f64 / elapsed,
            "p50_us": latency(0.5), "p99_us": latency(0.99), "max_us": (ok > 0).then(|| merged.max()),
        })
    );
    Ok(())
}
