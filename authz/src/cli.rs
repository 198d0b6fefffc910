//! The command line: `serve`, and the policy tools for security teams (`policy test`,
//! `policy eval`). Users, keys and tokens are the issuer's (`issuer --help`).

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use figment::Figment;
use qiria_identity::VerifierArgs;
use qiria_policy::{BundleOptions, PolicyBundle, Value};
use qiria_runtime::config::{LogArgs, Overrides};

use crate::decision::Decision;

/// Qiria authz: Envoy ext_authz v3 service that verifies RS256/ES256 bearer tokens and
/// decides with a Rego RBAC policy (default deny).
#[derive(Debug, Parser)]
#[command(name = "authz", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the ext_authz gRPC service (config: defaults < --config TOML < QIRIA_AUTHZ_* env < flags).
    Serve(Box<ServeArgs>),
    /// Policy tools for security teams.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

/// Flags of `authz serve`; each overrides the same key of the TOML file and environment.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML configuration file; unknown keys are an error.
    #[arg(long, short = 'c', env = "QIRIA_AUTHZ_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the ext_authz gRPC service [default: 127.0.0.1:9191].
    #[arg(long)]
    pub grpc_addr: Option<String>,
    /// Address of the admin server (/metrics, /health) [default: 127.0.0.1:9192].
    #[arg(long)]
    pub admin_addr: Option<String>,
    /// PEM certificate chain: serve gRPC over TLS instead of h2c.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it (mTLS).
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// Policy directory (.rego files, data.json/data.yaml) [default: policies/rego].
    #[arg(long)]
    pub policy_dir: Option<PathBuf>,
    /// Rule that decides, bool or OPA-Envoy object [default: data.qiria.authz.allow].
    #[arg(long)]
    pub decision_rule: Option<String>,
    /// Parse policies with Rego v0 syntax.
    #[arg(long)]
    pub rego_v0: bool,
    /// Token verification.
    #[command(flatten)]
    pub verifier: VerifierArgs,
    /// Load and check the configuration (file, environment, flags) and exit, 0 when it is
    /// valid: what a deployment pipeline runs on a rendered config before rolling it out.
    #[arg(long)]
    pub check_config: bool,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

impl ServeArgs {
    /// The flags that were given, as a figment layer.
    pub fn overrides(&self) -> Figment {
        let p = |v: &Option<PathBuf>| v.as_ref().map(|p| p.display().to_string());
        let own = Overrides::default()
            .set("server.grpc_addr", self.grpc_addr.clone())
            .set("server.admin_addr", self.admin_addr.clone())
            .set("server.tls_cert", p(&self.tls_cert))
            .set("server.tls_key", p(&self.tls_key))
            .set("server.tls_client_ca", p(&self.tls_client_ca))
            .set("policy.dir", p(&self.policy_dir))
            .set("policy.decision_rule", self.decision_rule.clone())
            .set("policy.rego_v0", self.rego_v0.then_some(true));
        self.log.apply(self.verifier.apply(own)).into_figment()
    }
}

/// `authz policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run every `test_*` rule under DIR (OPA style); exit 1 if any fails.
    Test {
        /// Policy directory.
        #[arg(default_value = "policies/rego")]
        dir: PathBuf,
        /// Parse with Rego v0 syntax.
        #[arg(long)]
        rego_v0: bool,
    },
    /// Evaluate the decision for one input document and show why.
    Eval {
        /// The input document (JSON), as a policy sees it (`input`).
        #[arg(long)]
        input: PathBuf,
        /// Policy directory.
        #[arg(long, default_value = "policies/rego")]
        dir: PathBuf,
        /// Rule that decides.
        #[arg(long, default_value = "data.qiria.authz.allow")]
        rule: String,
        /// Parse with Rego v0 syntax.
        #[arg(long)]
        rego_v0: bool,
    },
}

/// Runs `authz policy test`; returns whether every test passed.
pub fn policy_test(dir: &Path, rego_v0: bool, out: &mut impl std::io::Write) -> anyhow::Result<bool> {
    let bundle = PolicyBundle::load_dir(dir, &BundleOptions::for_tools(rego_v0))?;
    let results = bundle.run_tests();
    let failed = results.iter().filter(|t| t.failure.is_some()).count();
    for t in &results {
        match &t.failure {
            None => writeln!(out, "PASS {}", t.name)?,
            Some(why) => writeln!(out, "FAIL {}: {why}", t.name)?,
        }
    }
    writeln!(out, "policy tests: {} passed, {} failed", results.len() - failed, failed)?;
    Ok(failed == 0 && !results.is_empty())
}

/// Runs `authz policy eval`: the decision rule's value, the decision it makes, and every
/// other rule of its package as the explanation.
pub fn policy_eval(dir: &Path, input: &Path, rule: &str, rego_v0: bool) -> anyhow::Result<serde_json::Value> {
    let options = BundleOptions { decision_rule: Some(rule.to_string()), ..BundleOptions::for_tools(rego_v0) };
    let bundle = PolicyBundle::load_dir(dir, &options)?;
    let text = std::fs::read_to_string(input).map_err(|e| anyhow::anyhow!("reading {}: {e}", input.display()))?;
    let input = Value::from_json_str(&text).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", input.display()))?;
    let value = bundle.evaluate(input.clone())?;
    let decision = match Decision::from_value(&value) {
        Ok(d) => serde_json::json!({ "allowed": d.allowed, "http_status": d.http_status }),
        Err(e) => serde_json::json!({ "allowed": false, "error": e.to_string() }),
    };
    let package = rule.rsplit_once('.').map(|(p, _)| p).unwrap_or(rule);
    let mut why = to_json(&bundle.query(input, package)?);
    if let Some(rules) = why.as_object_mut() {
        rules.retain(|name, _| !name.starts_with("test_"));
    }
    Ok(serde_json::json!({
        "revision": bundle.revision(),
        "rule": rule,
        "result": to_json(&value),
        "decision": decision,
        "why": why,
    }))
}

fn to_json(v: &Value) -> serde_json::Value {
    v.to_json_str().ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(serde_json::Value::Null)
}
