//! `worker-gateway`: parses the command line and config, sets up logging, serves; or, as
//! `worker-gateway jobs …`, calls the job API as a client.
// Code that ships: no unwrap()/expect()/panic!() outside tests (a panic on a request path
// takes the request, or the task serving it, down with it). Errors are returned or handled.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use qiria_identity::VerifierArgs;
use qiria_runtime::config::{LogArgs, Overrides};
use qiria_runtime::shutdown::{os_signal, Shutdown};
use worker_gateway::config::Config;

/// Qiria worker-gateway: the job API where approved work leaves the mesh.
#[derive(Debug, Parser)]
#[command(name = "worker-gateway", version)]
enum Cli {
    /// Serve the job API (config: defaults < --config TOML < QIRIA_GATEWAY_* env < flags).
    Serve(ServeArgs),
    /// Call the job API (token from QIRIA_TOKEN): trigger, get, list, cancel, watch.
    Jobs(worker_gateway::client::JobsArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML configuration file; unknown keys are an error.
    #[arg(long, short = 'c', env = "QIRIA_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the job API [default: 127.0.0.1:9196].
    #[arg(long)]
    grpc_addr: Option<String>,
    /// Address of /metrics and /health [default: 127.0.0.1:9197].
    #[arg(long)]
    admin_addr: Option<String>,
    /// Job store: sqlite://FILE or postgres://… [default: sqlite://.stack/jobs.db].
    #[arg(long)]
    database_url: Option<String>,
    /// Token verification.
    #[command(flatten)]
    verifier: VerifierArgs,
    /// Load and check the configuration (file, environment, flags) and exit, 0 when it is
    /// valid: what a deployment pipeline runs on a rendered config before rolling it out.
    #[arg(long)]
    check_config: bool,
    /// Logging.
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let args = match Cli::parse() {
        Cli::Serve(args) => args,
        Cli::Jobs(args) => return jobs(args),
    };
    let overrides = Overrides::default()
        .set("server.grpc_addr", args.grpc_addr.clone())
        .set("server.admin_addr", args.admin_addr.clone())
        .set("store.database_url", args.database_url.clone());
    let overrides = args.log.apply(args.verifier.apply(overrides)).into_figment();
    let result = Config::load(args.config.as_deref(), overrides).map_err(anyhow::Error::from).and_then(|config| {
        if args.check_config {
            println!("worker-gateway: configuration ok");
            return Ok(());
        }
        qiria_runtime::logging::init(&config.log, "worker-gateway")?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let served = runtime.block_on(async { worker_gateway::server::run(config, Shutdown::on(os_signal())).await });
        qiria_runtime::telemetry::shutdown();
        served
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker-gateway: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn jobs(args: worker_gateway::client::JobsArgs) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(worker_gateway::client::run(args)));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("worker-gateway jobs: {:?}: {}", status.code(), status.message()),
                None => eprintln!("worker-gateway jobs: {e:#}"),
            }
            ExitCode::from(2)
        }
    }
}
