//! `qiria-audit`: makes a service's audit key, and checks an audit trail.
//!
//!     qiria-audit keygen --dir DIR
//!     qiria-audit verify FILE --public-key audit.pub [--checkpoint LINE_FILE] [--max-unsealed N]
//!
//! `verify` exits 0 for a clean trail, 1 naming the first bad record, 2 when it cannot run.
// Code that ships: no unwrap()/expect()/panic!() outside tests (a panic on a request path
// takes the request, or the task serving it, down with it). Errors are returned or handled.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use qiria_runtime::audit_trail;

#[derive(Parser)]
#[command(name = "qiria-audit", version)]
enum Cli {
    /// Make an audit key pair: `DIR/audit.key` (private, 0600) and `DIR/audit.pub`.
    Keygen {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Check a trail's hashes, sequence, links and checkpoint signatures.
    Verify {
        /// The trail (JSONL).
        file: PathBuf,
        /// The service's published audit key (`audit.pub`).
        #[arg(long)]
        public_key: PathBuf,
        /// The latest checkpoint as the SIEM received it (a file holding its line): finds
        /// records cut from the end.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Most records in a row without a checkpoint (the services' `audit_checkpoint_every`).
        #[arg(long, default_value_t = 100)]
        max_unsealed: u64,
    },
}

fn main() -> ExitCode {
    match Cli::parse() {
        Cli::Keygen { dir } => match audit_trail::generate_key(&dir) {
            Ok(id) => {
                println!("audit key {id} in {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        Cli::Verify { file, public_key, checkpoint, max_unsealed } => {
            let key = match audit_trail::load_public_key(&public_key) {
                Ok(key) => key,
                Err(e) => return fail(&e.to_string()),
            };
            let held = match checkpoint.map(std::fs::read_to_string).transpose() {
                Ok(held) => held,
                Err(e) => return fail(&format!("--checkpoint: {e}")),
            };
            let trail = match std::fs::File::open(&file) {
                Ok(f) => std::io::BufReader::new(f),
                Err(e) => return fail(&format!("{}: {e}", file.display())),
            };
            match audit_trail::verify(trail, &key, max_unsealed, held.as_deref()) {
                Ok(v) => {
                    println!(
                        "{}: intact — {} records, {} signed checkpoints, {} after the last",
                        file.display(),
                        v.records,
                        v.checkpoints,
                        v.unsealed_tail
                    );
                    ExitCode::SUCCESS
                }
                Err(broken) => {
                    println!("{}: TAMPERED at {broken}", file.display());
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn fail(why: &str) -> ExitCode {
    eprintln!("qiria-audit: {why}");
    ExitCode::from(2)
}
