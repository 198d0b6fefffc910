//! `envoy-bench [--smoke] [--out FILE] [--only NAME] [--rotations N,..] [--soak-minutes M]`: the
//! load benchmark through the real Envoy, the callgrind instruction counts and core scaling;
//! prints the table and writes it (with date, CPU and cores).

use std::path::PathBuf;

use clap::Parser;
use qiria_benches::envoy_bench::{self, Binaries, Plan};
use qiria_benches::scaling::{self, Runs, Workload};

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
    /// Run only the configurations whose name contains this text, e.g. "100000" or "(c)".
    #[arg(long)]
    only: Option<String>,
    /// Token counts for the rotation runs (comma-separated), instead of the plan's.
    #[arg(long, value_delimiter = ',')]
    rotations: Option<Vec<usize>>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut plan = if args.smoke { Plan::smoke() } else { Plan::full() };
    plan.soak_seconds = args.soak_minutes.min(30) * 60;
    plan.only = args.only;
    if let Some(rotations) = args.rotations {
        plan.rotations = rotations;
    }
    let dir = std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_default();
    let bins = Binaries {
        envoy: qiria_test_support::envoy::binary(),
        authz: dir.join("authz"),
        noop: dir.join("noop-authz"),
        loadgen: dir.join("loadgen"),
    };
    let work = tempfile::tempdir()?;
    eprintln!("load through Envoy ({}):", if args.smoke { "smoke" } else { "full" });
    let results = envoy_bench::run(&plan, &bins, work.path())?;
    let n = if args.smoke { 100 } else { 10_000 };
    if plan.only.is_some() {
        // A partial run is for looking at some configurations, not for the record.
        println!("{}", qiria_benches::report::render(&results, &[], &[], &plan, args.smoke));
        return Ok(());
    }
    let decide = dir.join("decide");
    let instructions = [
        ("decision cache hit", envoy_bench::instructions_per_decision(&decide, None, n)),
        ("policy evaluated", envoy_bench::instructions_per_decision(&decide, Some("--no-cache"), n)),
        (
            "a distinct path per decision (one token)",
            envoy_bench::instructions_per_decision(&decide, Some("--distinct-paths"), n),
        ),
        // RSA verification is the same work every time: a few hundred decisions are plenty,
        // and minting them under callgrind is slow.
        (
            "a never-seen token per decision",
            envoy_bench::instructions_per_decision(&decide, Some("--never-seen"), n.min(300)),
        ),
    ];
    eprintln!("core scaling (in process):");
    let runs = if args.smoke {
        Runs { seconds: 0.3, rounds: 1, tokens: 100 }
    } else {
        Runs { seconds: 3.0, rounds: 3, tokens: 2000 }
    };
    let scaling: Vec<_> =
        Workload::ALL.iter().map(|w| (w.label(), scaling::one_and_two_cores(&dir.join("scaling"), *w, runs))).collect();
    let report = qiria_benches::report::render(&results, &instructions, &scaling, &plan, args.smoke);
    println!("{report}");
    if let Some(out) = args.out {
        // The file also holds gateway-bench's and sandbox-bench's sections, which this run
        // does not measure: keep them.
        let old = std::fs::read_to_string(&out).unwrap_or_default();
        let mut report = report;
        for heading in [qiria_benches::gateway_bench::HEADING, qiria_benches::sandbox_bench::HEADING] {
            if let Some(section) = qiria_benches::report::section(&old, heading) {
                report = qiria_benches::report::replace_section(&report, heading, &section);
            }
        }
        std::fs::write(&out, &report)?;
        eprintln!("written to {}", out.display());
    }
    Ok(())
}
