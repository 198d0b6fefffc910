//! The command line: `serve`, the policy tools for security teams (`policy test`,
//! `policy eval`), and key and token tools for operators (`keys generate`, `token mint`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use figment::providers::Serialized;
use figment::Figment;

use crate::config::LogFormat;
use crate::decision::Decision;
use crate::policy::{BundleOptions, PolicyBundle};

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
    /// Signing key tools.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Token tools (development and tests; production tokens come from the issuer).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage the issuer's users.
    Users(UsersArgs),
    /// Maintain the issuer's store.
    Store(StoreArgs),
}

/// Where the issuer's store is and how it is sealed.
#[derive(Debug, Args)]
pub struct StoreLocation {
    /// The issuer's database.
    #[arg(long, env = "QIRIA_AUTHZ_ISSUER__DATABASE_URL", default_value = "sqlite://.stack/qiria.db")]
    pub database_url: String,
    /// Directory of master keys (`<kid>.key`, `active` file names the sealing one).
    #[arg(long, env = "QIRIA_AUTHZ_ISSUER__MASTER_KEYS_DIR", default_value = ".stack/master-keys")]
    pub master_keys_dir: PathBuf,
}

impl StoreLocation {
    async fn open(&self) -> anyhow::Result<crate::store::Store> {
        let keys = crate::sealing::MasterKeys::load_dir(&self.master_keys_dir, None)?;
        Ok(crate::store::Store::open(&self.database_url, std::sync::Arc::new(keys)).await?)
    }
}

/// `authz users …`
#[derive(Debug, Args)]
pub struct UsersArgs {
    /// The store.
    #[command(flatten)]
    pub store: StoreLocation,
    /// What to do.
    #[command(subcommand)]
    pub command: UsersCommand,
}

/// `authz store …`
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The store.
    #[command(flatten)]
    pub store: StoreLocation,
    /// What to do.
    #[command(subcommand)]
    pub command: StoreCommand,
}

/// Store maintenance.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Re-seal every row under the active master key (after adding a new one).
    Rekey,
}

/// Runs `authz store …`; returns what to print.
pub async fn store(args: StoreArgs) -> anyhow::Result<String> {
    let store = args.store.open().await?;
    match args.command {
        StoreCommand::Rekey => Ok(format!("{} rows re-sealed", store.rekey().await?)),
    }
}

/// User management.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user; the password is read from standard input (one line).
    Add {
        /// Login name.
        #[arg(long)]
        username: String,
        /// Roles, comma-separated (Admin, User, Auditor).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Email address (sealed at rest).
        #[arg(long)]
        email: Option<String>,
        /// Display name (sealed at rest).
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Replace a user's roles.
    SetRoles {
        /// Login name.
        #[arg(long)]
        username: String,
        /// Roles, comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
    },
    /// Disable a user: no login, no refresh.
    Disable {
        /// Login name.
        #[arg(long)]
        username: String,
    },
    /// List users (never passwords).
    List,
}

/// Runs `authz users …`; returns what to print.
pub async fn users(args: UsersArgs, stdin: &mut impl std::io::BufRead) -> anyhow::Result<String> {
    let store = args.store.open().await?;
    match args.command {
        UsersCommand::Add { username, roles, email, display_name } => {
            let mut password = String::new();
            stdin.read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(password.len() >= 12, "the password must have at least 12 characters");
            let user = crate::store::User {
                id: uuid::Uuid::new_v4().to_string(),
                username,
                password_hash: crate::issuer::hash_password(password)?,
                roles,
                disabled: false,
                email,
                display_name,
            };
            store.add_user(&user).await?;
            Ok(user.id)
        }
        UsersCommand::SetRoles { username, roles } => {
            store.set_roles(&username, &roles).await?;
            Ok(String::new())
        }
        UsersCommand::Disable { username } => {
            store.disable(&username).await?;
            Ok(String::new())
        }
        UsersCommand::List => Ok(store
            .users()
            .await?
            .iter()
            .map(|u| {
                let state = if u.disabled { "disabled" } else { "active" };
                format!(
                    "{}\t{}\t{}\t{state}\t{}",
                    u.id,
                    u.username,
                    u.roles.join(","),
                    u.email.as_deref().unwrap_or("-")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")),
    }
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
    /// Directory of verification keys (PEM / JWK / JWKS), e.g. a mounted secret.
    #[arg(long)]
    pub keys_dir: Option<PathBuf>,
    /// Accepted token issuer (repeat for several) [default: https://qiria.local].
    #[arg(long = "issuer")]
    pub issuers: Vec<String>,
    /// Accepted token audience (repeat for several) [default: qiria].
    #[arg(long = "audience")]
    pub audiences: Vec<String>,
    /// Clock-skew leeway for exp/nbf in seconds, at most 60 [default: 30].
    #[arg(long)]
    pub leeway_secs: Option<u64>,
    /// Serve the token endpoints (issuer.enabled).
    #[arg(long)]
    pub issue_tokens: bool,
    /// Address of the token endpoints [default: 127.0.0.1:9193].
    #[arg(long)]
    pub token_addr: Option<String>,
    /// Directory of signing keys (PKCS#8 PEM, `active` file names the signing kid).
    #[arg(long)]
    pub signing_keys_dir: Option<PathBuf>,
    /// Issuer database: sqlite://FILE or postgres://… [default: sqlite://.stack/qiria.db].
    #[arg(long)]
    pub database_url: Option<String>,
    /// Master keys sealing personal data at rest [default: .stack/master-keys].
    #[arg(long)]
    pub master_keys_dir: Option<PathBuf>,
    /// Log format [default: json].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `qiria::decision=warn,info` [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
}

impl ServeArgs {
    /// The flags that were given, as a figment layer.
    pub fn overrides(&self) -> Figment {
        let mut f = Figment::new();
        let mut set = |key: &str, value: Option<figment::value::Value>| {
            if let Some(value) = value {
                f = std::mem::take(&mut f).merge(Serialized::default(key, value));
            }
        };
        let s = |v: &Option<String>| v.clone().map(Into::into);
        let p = |v: &Option<PathBuf>| v.as_ref().map(|p| p.display().to_string().into());
        set("server.grpc_addr", s(&self.grpc_addr));
        set("server.admin_addr", s(&self.admin_addr));
        set("server.tls_cert", p(&self.tls_cert));
        set("server.tls_key", p(&self.tls_key));
        set("server.tls_client_ca", p(&self.tls_client_ca));
        set("policy.dir", p(&self.policy_dir));
        set("policy.decision_rule", s(&self.decision_rule));
        set("policy.rego_v0", self.rego_v0.then(|| true.into()));
        set("jwt.keys_dir", p(&self.keys_dir));
        set("jwt.issuers", (!self.issuers.is_empty()).then(|| self.issuers.clone().into()));
        set("jwt.audiences", (!self.audiences.is_empty()).then(|| self.audiences.clone().into()));
        set("jwt.leeway_secs", self.leeway_secs.map(Into::into));
        set("issuer.enabled", self.issue_tokens.then(|| true.into()));
        set("issuer.addr", s(&self.token_addr));
        set("issuer.signing_keys_dir", p(&self.signing_keys_dir));
        set("issuer.database_url", s(&self.database_url));
        set("issuer.master_keys_dir", p(&self.master_keys_dir));
        set("log.format", self.log_format.map(|f| format!("{f:?}").to_lowercase().into()));
        set("log.level", s(&self.log_level));
        f
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

/// `authz keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new master key (sealing personal data at rest) as DIR/KID.key (0600).
    GenerateMaster {
        /// Master key directory (the layout of its secret).
        #[arg(long)]
        dir: PathBuf,
        /// Key id.
        #[arg(long)]
        kid: String,
    },
    /// Write a new signing key pair: DIR/private/KID.pem (0600) and DIR/public/KID.pem.
    Generate {
        /// Key directory (the layout of the signing and verification secrets).
        #[arg(long)]
        dir: PathBuf,
        /// Key id; defaults to the current date and time.
        #[arg(long)]
        kid: Option<String>,
        /// Algorithm.
        #[arg(long, value_enum, default_value_t = KeyAlg::Rs256)]
        alg: KeyAlg,
    },
}

/// Signing algorithms we issue with.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum KeyAlg {
    /// RSA 2048, PKCS#1 v1.5 SHA-256.
    Rs256,
    /// ECDSA P-256 SHA-256.
    Es256,
}

/// `authz token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Sign an access token with a private key file (for development and tests).
    Mint {
        /// Private key (PKCS#8 PEM), e.g. DIR/private/KID.pem; its file stem is the kid.
        #[arg(long)]
        key: PathBuf,
        /// Subject.
        #[arg(long)]
        sub: String,
        /// Roles, comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Issuer.
        #[arg(long, default_value = "https://qiria.local")]
        iss: String,
        /// Audience.
        #[arg(long, default_value = "qiria")]
        aud: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 300)]
        ttl: u64,
    },
}

/// Runs `authz policy test`; returns whether every test passed.
pub fn policy_test(dir: &Path, rego_v0: bool, out: &mut impl std::io::Write) -> anyhow::Result<bool> {
    let options = BundleOptions { decision_rule: None, ..tool_options(rego_v0) };
    let bundle = PolicyBundle::load_dir(dir, &options)?;
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
    let options = BundleOptions { decision_rule: Some(rule.to_string()), ..tool_options(rego_v0) };
    let bundle = PolicyBundle::load_dir(dir, &options)?;
    let text = std::fs::read_to_string(input).map_err(|e| anyhow::anyhow!("reading {}: {e}", input.display()))?;
    let input =
        regorus::Value::from_json_str(&text).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", input.display()))?;
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

/// Tools evaluate once, with a generous time limit and no cache.
fn tool_options(rego_v0: bool) -> BundleOptions {
    BundleOptions {
        decision_rule: None,
        rego_v0,
        eval_timeout: Duration::from_secs(5),
        run_tests: false,
        decision_cache_capacity: 0,
        decision_cache_ttl: Duration::ZERO,
    }
}

fn to_json(v: &regorus::Value) -> serde_json::Value {
    v.to_json_str().ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(serde_json::Value::Null)
}

/// Runs `authz keys generate`; returns the kid.
pub fn keys_generate(dir: &Path, kid: Option<String>, alg: KeyAlg) -> anyhow::Result<String> {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let kid = kid.unwrap_or_else(|| {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        format!("k{secs}")
    });
    if !kid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        anyhow::bail!("--kid may only hold letters, digits, '-' and '_'");
    }
    let (private, public) = (dir.join("private"), dir.join("public"));
    let (private_file, public_file) = (private.join(format!("{kid}.pem")), public.join(format!("{kid}.pem")));
    if private_file.exists() || public_file.exists() {
        anyhow::bail!("a key with kid `{kid}` already exists in {}", dir.display());
    }
    let mut rng = rand::rngs::OsRng;
    let (private_pem, public_pem) = match alg {
        KeyAlg::Rs256 => {
            let key = rsa::RsaPrivateKey::new(&mut rng, 2048)?;
            (key.to_pkcs8_pem(LineEnding::LF)?.to_string(), key.to_public_key().to_public_key_pem(LineEnding::LF)?)
        }
        KeyAlg::Es256 => {
            let key = p256::SecretKey::random(&mut rng);
            (key.to_pkcs8_pem(LineEnding::LF)?.to_string(), key.public_key().to_public_key_pem(LineEnding::LF)?)
        }
    };
    std::fs::create_dir_all(&private)?;
    std::fs::create_dir_all(&public)?;
    write_private(&private_file, private_pem.as_bytes())?;
    std::fs::write(&public_file, public_pem)?;
    Ok(kid)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?.write_all(bytes)
}

/// Runs `authz token mint`; returns the compact JWS.
pub fn token_mint(key: &Path, sub: &str, roles: &[String], iss: &str, aud: &str, ttl: u64) -> anyhow::Result<String> {
    let pem = std::fs::read(key)?;
    let kid = key.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
    let (encoding, alg) = match jsonwebtoken::EncodingKey::from_rsa_pem(&pem) {
        Ok(k) => (k, jsonwebtoken::Algorithm::RS256),
        Err(_) => (jsonwebtoken::EncodingKey::from_ec_pem(&pem)?, jsonwebtoken::Algorithm::ES256),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "iss": iss, "sub": sub, "aud": aud, "iat": now, "nbf": now, "exp": now + ttl,
        "jti": uuid::Uuid::new_v4().to_string(), "roles": roles, "typ": "access",
    });
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid);
    Ok(jsonwebtoken::encode(&header, &claims, &encoding)?)
}
