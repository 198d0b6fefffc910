//! `gateway-bench [--smoke] [--out FILE]`: the worker-gateway's cost through the real Envoy,
//! against a do-nothing JobService behind the same route (see `qiria_benches::gateway_bench`).
//! Prints the `## worker-gateway` section; the full run also puts it into `benches/RESULTS.md`
//! (or `--out`), replacing that section only. Exits non-zero when a call failed, a figure is
//! missing, or the TriggerFlow answers and Kestra's executions are not one to one.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use qiria_benches::gateway_bench::{self, Binaries, Plan, HEADING};
use qiria_benches::report::replace_section;

#[derive(Parser)]
struct Args {
    /// A few hundred calls per configuration, a second each: shows the harness works (CI).
    #[arg(long)]
    smoke: bool,
    /// The Markdown file whose `## worker-gateway` section to write [default: benches/RESULTS.md;
    /// a smoke run writes nothing unless told].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the working directory (every process's log, the job store) and say where it is.
    #[arg(long)]
    keep_work: bool,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("gateway-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let args = Args::parse();
    let plan = if args.smoke { Plan::smoke() } else { Plan::full() };
    let exe = std::env::current_exe()?;
    // The services must be of this binary's profile: a debug gateway measured against a
    // release floor would measure the compiler.
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("unknown").to_string();
    let bins = Binaries::in_dir(&dir)?;
    let work = tempfile::tempdir()?;
    eprintln!("worker-gateway through Envoy ({}, {profile} build):", if args.smoke { "smoke" } else { "full" });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let results = runtime.block_on(gateway_bench::run(&plan, &bins, work.path()));
    if args.keep_work {
        eprintln!("working directory kept: {}", work.keep().display());
    }
    let results = results?;
    let section = gateway_bench::render(&results, &plan, &profile);
    println!("{section}");
    let out =
        args.out.or_else(|| (!args.smoke).then(|| qiria_test_support::workspace_root().join("benches/RESULTS.md")));
    if let Some(out) = out {
        let existing = std::fs::read_to_string(&out).unwrap_or_default();
        std::fs::write(&out, replace_section(&existing, HEADING, &section))?;
        eprintln!("section {HEADING} written to {}", out.display());
    }
    let problems = results.problems();
    for problem in &problems {
        eprintln!("gateway-bench: {problem}");
    }
    Ok(problems.is_empty())
}
