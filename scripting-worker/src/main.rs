//! `scripting-worker serve`: parses the command line and config, sets up logging, serves.
// Code that ships: no unwrap()/expect()/panic!() outside tests (a panic on a request path
// takes the request, or the task serving it, down with it). Errors are returned or handled.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use qiria_runtime::config::{LogArgs, Overrides};
use qiria_runtime::shutdown::{os_signal, Shutdown};
use scripting_worker::config::Config;

/// Qiria scripting worker: every user script in a fresh gVisor sandbox.
#[derive(Debug, Parser)]
#[command(name = "scripting-worker", version)]
enum Cli {
    /// Serve the sandbox API (config: defaults < --config TOML < QIRIA_WORKER_* env < flags).
    Serve(ServeArgs),
    /// Write the Kubernetes objects the sandbox namespace needs (its `[kubernetes]` section):
    /// namespace, deny-all NetworkPolicy, LimitRange, the worker's ServiceAccount, Role and
    /// RoleBinding, the gVisor RuntimeClass and the admission policy, one JSON file each.
    Manifests {
        /// TOML configuration file.
        #[arg(long, short = 'c', env = "QIRIA_WORKER_CONFIG")]
        config: Option<PathBuf>,
        /// Where to write them.
        #[arg(long)]
        out: PathBuf,
    },
    /// Build the sandbox's root filesystem into OUT/rootfs — the host's Python, its standard
    /// library, the allow-listed `sandbox.packages`, nothing else: what the runsc backend
    /// mounts, and what `./dev images` makes the `kubernetes` backend's image of.
    Rootfs {
        /// TOML configuration file.
        #[arg(long, short = 'c', env = "QIRIA_WORKER_CONFIG")]
        config: Option<PathBuf>,
        /// Where to build it.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML configuration file; unknown keys are an error.
    #[arg(long, short = 'c', env = "QIRIA_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the sandbox API [default: 127.0.0.1:9198].
    #[arg(long)]
    grpc_addr: Option<String>,
    /// Address of /metrics and /health [default: 127.0.0.1:9199].
    #[arg(long)]
    admin_addr: Option<String>,
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
        Cli::Manifests { config, out } => return manifests(config.as_deref(), &out),
        Cli::Rootfs { config, out } => return rootfs(config.as_deref(), &out),
    };
    let overrides = Overrides::default()
        .set("server.grpc_addr", args.grpc_addr.clone())
        .set("server.admin_addr", args.admin_addr.clone());
    let overrides = args.log.apply(overrides).into_figment();
    let result = Config::load(args.config.as_deref(), overrides).map_err(anyhow::Error::from).and_then(|config| {
        if args.check_config {
            println!("scripting-worker: configuration ok");
            return Ok(());
        }
        qiria_runtime::logging::init(&config.log, "scripting-worker")?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let served = runtime.block_on(async { scripting_worker::server::run(config, Shutdown::on(os_signal())).await });
        qiria_runtime::telemetry::shutdown();
        served
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scripting-worker: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn manifests(config: Option<&std::path::Path>, out: &std::path::Path) -> ExitCode {
    let written = Config::load(config, figment::Figment::new()).map_err(anyhow::Error::from).and_then(|config| {
        config.kubernetes.validate()?;
        std::fs::create_dir_all(out)?;
        for (n, manifest) in scripting_worker::kubernetes_manifests(&config).iter().enumerate() {
            let kind = manifest["kind"].as_str().unwrap_or("object").to_lowercase();
            let name = manifest["metadata"]["name"].as_str().unwrap_or("unnamed");
            let path = out.join(format!("{n:02}-{kind}-{name}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(manifest)?)?;
            println!("{}", path.display());
        }
        Ok(())
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scripting-worker manifests: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn rootfs(config: Option<&std::path::Path>, out: &std::path::Path) -> ExitCode {
    let built = Config::load(config, figment::Figment::new())
        .map_err(anyhow::Error::from)
        .and_then(|config| Ok(scripting_worker::build_rootfs(&config, out)?));
    match built {
        Ok(dir) => {
            println!("{}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("scripting-worker rootfs: {e:#}");
            ExitCode::from(2)
        }
    }
}
