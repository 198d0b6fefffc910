//! `envoy-bench [--smoke] [--out FILE]`: the load benchmark through the real Envoy and the
//! callgrind instruction counts; prints the table and writes it (with date, CPU and cores).

use std::path::PathBuf;

use clap::Parser;
use qiria_benches::envoy_bench::{self, Binaries, Plan};

#[derive(Parser)]
struct Args {
    /// Short run that only shows the harness works (CI).
    #[arg(long)]
    smoke: bool,
    /// Where to write the Markdown report.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the 100,000-token load this many minutes, sampling authz's memory (at most 30).
    #[arg(long, default_value_t = 0)]
    soak_minutes: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut plan = if args.smoke { Plan::smoke() } else { Plan::full() };
    plan.soak_seconds = args.soak_minutes.min(30) * 60;
    let dir = std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_default();
    let bins = Binaries {
        envoy: qiria_test_support::envoy::binary(),
        authz: dir.join("authz"),
        noop: dir.join("noop-authz"),
        loadgen: dir.join("loadgen"),
    };
    let work = tempfile::tempdir()?;
    eprintln!("load through Envoy ({}):", if args.smoke { "smoke" } else { "full" });
    let rows = envoy_bench::run(&plan, &bins, work.path())?;
    let n = if args.smoke { 100 } else { 10_000 };
    let decide = dir.join("decide");
    let instructions = [
        ("decision cache hit", envoy_bench::instructions_per_decision(&decide, true, n)),
        ("policy evaluated", envoy_bench::instructions_per_decision(&decide, false, n)),
    ];
    let report = qiria_benches::report::render(&rows, &instructions, &plan, args.smoke);
    println!("{report}");
    if let Some(out) = args.out {
        std::fs::write(&out, &report)?;
        eprintln!("written to {}", out.display());
    }
    Ok(())
}
