//! Core scaling of the decision path, in process: the same decisions with one worker thread
//! per allowed core, run under `taskset -c 0` and `taskset -c 0,1`. Each decision is what a
//! Check costs authz short of HTTP/2 and the socket: decode the protobuf `CheckRequest`,
//! decide, encode the `CheckResponse`. Through Envoy, a 2-core machine cannot give authz two
//! cores of its own (Envoy and the load generator need them); in process, what is measured is
//! what limits scaling inside authz: the shared token cache, the decision memos, the
//! per-thread policy engines, the metrics.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use prost::Message;

use crate::{check_request, Fixture};

/// What every thread decides, round after round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// One token, one request: token and decision come from the cache.
    OneToken,
    /// Tokens in rotation, each decision remembered with its token.
    RotatingTokens,
    /// One token, the policy evaluated on every request (no decision cache).
    Evaluated,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Self; 3] = [Self::OneToken, Self::RotatingTokens, Self::Evaluated];

    /// The command-line name.
    pub fn arg(self) -> &'static str {
        match self {
            Self::OneToken => "one-token",
            Self::RotatingTokens => "rotating-tokens",
            Self::Evaluated => "evaluated",
        }
    }

    /// A short label for reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::OneToken => "one token, cached decision",
            Self::RotatingTokens => "rotating tokens (2,000; 100 in a smoke run)",
            Self::Evaluated => "policy evaluated per request",
        }
    }
}

/// Decisions per second over `duration`, one thread per core this process may run on.
/// Every decision must allow: a run that denies measures nothing.
pub fn decisions_per_second(workload: Workload, tokens: usize, duration: Duration) -> anyhow::Result<f64> {
    let fixture = match workload {
        Workload::Evaluated => Fixture::without_decision_cache(),
        _ => Fixture::new(),
    };
    let count = if workload == Workload::RotatingTokens { tokens.max(1) } else { 1 };
    let requests: Vec<Vec<u8>> = (0..count)
        .map(|i| check_request(Some(&fixture.token(&format!("user-{i}"), &["User"])), "GET", "/v1/jobs/42"))
        .map(|request| request.encode_to_vec())
        .collect();
    let decide = |bytes: &[u8]| -> bool {
        let Ok(request) = CheckRequest::decode(bytes) else { return false };
        let (response, _) = fixture.authorizer.check(&request);
        let allowed = response.status.as_ref().is_some_and(|s| s.code == 0);
        std::hint::black_box(response.encode_to_vec());
        allowed
    };
    for request in &requests {
        decide(request); // fills the caches, prepares this thread's engine
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let counts = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (decide, requests, stop) = (&decide, &requests, &stop);
                scope.spawn(move || {
                    let (mut done, mut denied) = (0u64, 0u64);
                    // Each thread starts at its own place in the rotation.
                    let mut i = t * requests.len() / threads;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..64 {
                            denied += u64::from(!decide(&requests[i % requests.len()]));
                            i += 1;
                        }
                        done += 64;
                    }
                    (done, denied)
                })
            })
            .collect();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        workers.into_iter().map(|w| w.join().unwrap_or((0, 1))).collect::<Vec<_>>()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let (done, denied) = counts.iter().fold((0, 0), |(d, n), (d2, n2)| (d + d2, n + n2));
    anyhow::ensure!(denied == 0, "{denied} of {done} decisions denied");
    Ok(done as f64 / elapsed)
}

/// How long and how often [`one_and_two_cores`] measures.
#[derive(Debug, Clone, Copy)]
pub struct Runs {
    /// Seconds per run.
    pub seconds: f64,
    /// Runs per core count (the best is kept).
    pub rounds: u32,
    /// Tokens in rotation for [`Workload::RotatingTokens`].
    pub tokens: usize,
}

/// Decisions per second of the `scaling` binary on core 0 and on cores 0 and 1, each the best
/// of its runs, the two alternating so that a noisy neighbour hits both.
pub fn one_and_two_cores(bin: &Path, workload: Workload, runs: Runs) -> anyhow::Result<(f64, f64)> {
    let run = |cpus: &str| -> anyhow::Result<f64> {
        let output = Command::new("taskset")
            .args(["-c", cpus])
            .arg(bin)
            .args([workload.arg(), "--seconds", &runs.seconds.to_string(), "--tokens", &runs.tokens.to_string()])
            .output()?;
        anyhow::ensure!(output.status.success(), "scaling failed: {}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
    };
    let (mut one, mut two) = (0f64, 0f64);
    for _ in 0..runs.rounds.max(1) {
        one = one.max(run("0")?);
        two = two.max(run("0,1")?);
    }
    Ok((one, two))
}
