//! `authz`: parses the command line and config, sets up logging, runs a subcommand.
// Code that ships: no unwrap()/expect()/panic!() outside tests (a panic on a request path
// takes the request, or the task serving it, down with it). Errors are returned or handled.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::process::ExitCode;

use authz::cli::{self, Cli, Command, PolicyCommand};
use authz::config::Config;
use clap::Parser;
use qiria_runtime::shutdown::{os_signal, Shutdown};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Policy(PolicyCommand::Test { dir, rego_v0 }) => {
            cli::policy_test(&dir, rego_v0, &mut std::io::stdout()).map(|ok| {
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            })
        }
        Command::Policy(PolicyCommand::Eval { input, dir, rule, rego_v0 }) => {
            cli::policy_eval(&dir, &input, &rule, rego_v0).map(|out| {
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
                ExitCode::SUCCESS
            })
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("authz: {e:#}");
        ExitCode::from(2)
    })
}

fn serve(args: cli::ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref(), args.overrides())?;
    if args.check_config {
        println!("authz: configuration ok");
        return Ok(ExitCode::SUCCESS);
    }
    qiria_runtime::logging::init(&config.log, "authz")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async { authz::server::run(config, Shutdown::on(os_signal())).await })?;
    qiria_runtime::telemetry::shutdown();
    Ok(ExitCode::SUCCESS)
}
