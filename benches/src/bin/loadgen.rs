//! A load generator for what h2load cannot do: a different bearer token on every request.
//! `loadgen URL TOKENS_FILE --connections C --streams M --seconds S [--once]` prints one JSON
//! line: requests, status counts, errors, requests/s, p50 and p99 latency (µs). With `--once`
//! every token is sent once and the run ends when they are used up (never-seen tokens).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// URL to GET.
    url: String,
    /// File with one bearer token per line, used in rotation.
    tokens: std::path::PathBuf,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent streams per connection.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Duration in seconds (bounded: at most 600).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Send each token once, then stop (else they are used in rotation).
    #[arg(long)]
    once: bool,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    denied: u64,
    other: u64,
    errors: u64,
    latency: Option<hdrhistogram::Histogram<u64>>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tokens: Arc<Vec<String>> = Arc::new(
        std::fs::read_to_string(&args.tokens)?.lines().map(str::to_string).filter(|l| !l.is_empty()).collect(),
    );
    anyhow::ensure!(!tokens.is_empty(), "no tokens in {}", args.tokens.display());
    let duration = Duration::from_secs_f64(args.seconds.clamp(0.1, 600.0));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let once = args.once;
    let started = Instant::now();
    let tallies = runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..args.connections {
            let client = reqwest::Client::builder().http2_prior_knowledge().pool_max_idle_per_host(1).build()?;
            for _ in 0..args.streams {
                let (client, url, tokens, next) = (client.clone(), args.url.clone(), tokens.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    let mut tally = Tally { latency: hdrhistogram::Histogram::new(3).ok(), ..Tally::default() };
                    while started.elapsed() < duration {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if once && n >= tokens.len() {
                            break;
                        }
                        let token = &tokens[n % tokens.len()];
                        let sent = Instant::now();
                        match client.get(&url).bearer_auth(token).send().await {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let _ = r.bytes().await;
                                if let Some(h) = tally.latency.as_mut() {
                                    let _ = h.record(sent.elapsed().as_micros() as u64);
                                }
                                match status {
                                    200 => tally.ok += 1,
                                    401 | 403 => tally.denied += 1,
                                    _ => tally.other += 1,
                                }
                            }
                            Err(_) => tally.errors += 1,
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
        anyhow::Ok(all)
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut merged = hdrhistogram::Histogram::<u64>::new(3)?;
    let (mut ok, mut denied, mut other, mut errors) = (0, 0, 0, 0);
    for t in tallies {
        ok += t.ok;
        denied += t.denied;
        other += t.other;
        errors += t.errors;
        if let Some(h) = t.latency {
            merged.add(h)?;
        }
    }
    let requests = ok + denied + other;
    println!(
        "{}",
        serde_json::json!({
            "requests": requests, "ok": ok, "denied": denied, "other": other, "errors": errors,
            "rps": requests as f64 / elapsed,
            "p50_us": merged.value_at_quantile(0.5), "p99_us": merged.value_at_quantile(0.99),
        })
    );
    Ok(())
}
