//! `issuer`: parses the command line and config, sets up logging, runs a subcommand.
// Code that ships: no unwrap()/expect()/panic!() outside tests (a panic on a request path
// takes the request, or the task serving it, down with it). Errors are returned or handled.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::process::ExitCode;

use clap::Parser;
use issuer::cli::{self, Cli, Command, KeysCommand, TokenCommand};
use issuer::config::Config;
use qiria_runtime::shutdown::{os_signal, Shutdown};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Users(args) => {
            current_thread().and_then(|rt| rt.block_on(cli::users(args, &mut std::io::stdin().lock()))).map(print)
        }
        Command::Store(args) => current_thread().and_then(|rt| rt.block_on(cli::store(args))).map(print),
        Command::Keys(KeysCommand::Generate { dir, kid, alg }) => cli::keys_generate(&dir, kid, alg).map(print),
        Command::Keys(KeysCommand::GenerateMaster { dir, kid }) => {
            qiria_store::sealing::MasterKeys::generate(&dir, &kid)
                .map_err(Into::into)
                .map(|p| print(p.display().to_string()))
        }
        Command::Token(TokenCommand::Mint { key, sub, roles, iss, aud, ttl }) => {
            cli::token_mint(&key, &sub, &roles, &iss, &aud, ttl).map(print)
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("issuer: {e:#}");
        ExitCode::from(2)
    })
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn print(out: String) -> ExitCode {
    if !out.is_empty() {
        println!("{out}");
    }
    ExitCode::SUCCESS
}

fn serve(args: cli::ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref(), args.overrides())?;
    if args.check_config {
        println!("issuer: configuration ok");
        return Ok(ExitCode::SUCCESS);
    }
    qiria_runtime::logging::init(&config.log, "issuer")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async { issuer::server::run(config, Shutdown::on(os_signal())).await })?;
    qiria_runtime::telemetry::shutdown();
    Ok(ExitCode::SUCCESS)
}
