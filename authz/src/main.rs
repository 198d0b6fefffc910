//! `authz`: parses the command line and config, sets up logging, runs a subcommand.

use std::process::ExitCode;

use authz::cli::{self, Cli, Command, KeysCommand, PolicyCommand, TokenCommand};
use authz::config::{Config, LogFormat};
use clap::Parser;

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
        Command::Keys(KeysCommand::Generate { dir, kid, alg }) => cli::keys_generate(&dir, kid, alg).map(|kid| {
            println!("{kid}");
            ExitCode::SUCCESS
        }),
        Command::Users(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(cli::users(args, &mut std::io::stdin().lock())))
            .map(print),
        Command::Store(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(cli::store(args)))
            .map(print),
        Command::Keys(KeysCommand::GenerateMaster { dir, kid }) => {
            authz::sealing::MasterKeys::generate(&dir, &kid).map_err(Into::into).map(|p| print(p.display().to_string()))
        }
        Command::Token(TokenCommand::Mint { key, sub, roles, iss, aud, ttl }) => {
            cli::token_mint(&key, &sub, &roles, &iss, &aud, ttl).map(|token| {
                println!("{token}");
                ExitCode::SUCCESS
            })
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("authz: {e:#}");
        ExitCode::from(2)
    })
}

fn print(out: String) -> ExitCode {
    if !out.is_empty() {
        println!("{out}");
    }
    ExitCode::SUCCESS
}

fn serve(args: cli::ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref(), args.overrides())?;
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(authz::server::run(config, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
