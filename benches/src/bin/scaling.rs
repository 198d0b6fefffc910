//! `scaling WORKLOAD [--seconds S] [--tokens N]`: decisions per second in process with one
//! thread per core this process may use; `envoy-bench` runs it under `taskset`.

use std::time::Duration;

use clap::Parser;
use qiria_benches::scaling::{decisions_per_second, Workload};

#[derive(Parser)]
struct Args {
    /// What to decide.
    #[arg(value_enum)]
    workload: Workload,
    /// How long to measure.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Tokens in rotation (rotating-tokens only).
    #[arg(long, default_value_t = 2000)]
    tokens: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rate = decisions_per_second(args.workload, args.tokens, Duration::from_secs_f64(args.seconds))?;
    println!("{rate:.0}");
    Ok(())
}
