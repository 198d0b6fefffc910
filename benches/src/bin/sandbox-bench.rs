//! `sandbox-bench [--smoke] [--out FILE]`: the scripting worker's cold start against
//! `python3 -I -c pass` and its runs/s with the pool full (see `qiria_benches::sandbox_bench`).
//! Prints the `## scripting worker` section; the full run also puts it into
//! `benches/RESULTS.md` (or `--out`), replacing that section only. Needs root and runsc. Exits
//! non-zero when a run failed or a figure is missing.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use qiria_benches::report::replace_section;
use qiria_benches::sandbox_bench::{self, Plan, HEADING};

#[derive(Parser)]
struct Args {
    /// A few runs: shows the harness works (CI).
    #[arg(long)]
    smoke: bool,
    /// The Markdown file whose section to write [default: benches/RESULTS.md; a smoke run
    /// writes nothing unless told].
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sandbox-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let args = Args::parse();
    let plan = if args.smoke { Plan::smoke() } else { Plan::full() };
    let profile = std::env::current_exe()?
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("unknown")
        .to_string();
    let work = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let results = runtime.block_on(sandbox_bench::run(&plan, work.path()))?;
    let section = sandbox_bench::render(&results, &plan, &profile);
    println!("{section}");
    let out =
        args.out.or_else(|| (!args.smoke).then(|| qiria_test_support::workspace_root().join("benches/RESULTS.md")));
    if let Some(out) = out {
        let existing = std::fs::read_to_string(&out).unwrap_or_default();
        std::fs::write(&out, replace_section(&existing, HEADING, &section))?;
        eprintln!("section {HEADING} written to {}", out.display());
    }
    for problem in results.problems() {
        eprintln!("sandbox-bench: {problem}");
    }
    Ok(results.problems().is_empty())
}
