//! The Kestra contract double as a program, for tests and the local stack:
//! `kestra-double --config FILE.json` (see `qiria_test_support::kestra::config`).

use std::path::PathBuf;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let config = match (args.next().as_deref(), args.next(), args.next()) {
        (Some("--config"), Some(path), None) => PathBuf::from(path),
        _ => {
            eprintln!("usage: kestra-double --config FILE.json");
            return ExitCode::from(2);
        }
    };
    let config = match qiria_test_support::kestra::config::Config::load(&config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kestra-double: {e}");
            return ExitCode::from(2);
        }
    };
    match qiria_test_support::kestra::server::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kestra-double: {e}");
            ExitCode::FAILURE
        }
    }
}
