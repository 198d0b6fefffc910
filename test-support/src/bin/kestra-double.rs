//! The Kestra contract double as a program, for tests and the local stack:
//! - `kestra-double --config FILE.json` serves (see `qiria_test_support::kestra::config`);
//! - `kestra-double init DIR LISTEN` writes a fresh PKI and `DIR/kestra-double.json`, and the
//!   client side the worker-gateway reads: `DIR/gateway-tls/` and `DIR/gateway-credential/`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use qiria_test_support::kestra::{KestraOptions, Setup};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["--config", path] => PathBuf::from(path),
        ["init", dir, listen] => return init(Path::new(dir), listen),
        _ => {
            eprintln!("usage: kestra-double --config FILE.json | kestra-double init DIR LISTEN");
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

fn init(dir: &Path, listen: &str) -> ExitCode {
    let setup = Setup::write(dir, listen, KestraOptions::default());
    match setup.write_client(&dir.join("gateway-tls"), &dir.join("gateway-credential")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kestra-double init: {e}");
            ExitCode::FAILURE
        }
    }
}
