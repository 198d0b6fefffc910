//! The command line: `serve`, and the operators' verbs: `users` (manage the store's users),
//! `store rekey` (re-seal under a new master key), `keys generate` / `keys generate-master`
//! (write signing and master keys in the layout of their secrets) and `token mint` (sign an
//! access token for development and tests).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use figment::Figment;
use qiria_identity::VerifierArgs;
use qiria_runtime::config::{LogArgs, Overrides};

/// Qiria issuer: short-lived access tokens, rotating refresh tokens, users sealed at rest,
/// and an admin API that verifies and authorizes its callers itself.
#[derive(Debug, Parser)]
#[command(name = "issuer", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the issuer (config: defaults < --config TOML < QIRIA_ISSUER_* env < flags).
    Serve(Box<ServeArgs>),
    /// Manage users.
    Users(UsersArgs),
    /// Maintain the store.
    Store(StoreArgs),
    /// Signing and master key tools.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Token tools (development and tests; production tokens come from `serve`).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// Flags of `issuer serve`; each overrides the same key of the TOML file and environment.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML configuration file; unknown keys are an error.
    #[arg(long, short = 'c', env = "QIRIA_ISSUER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the token endpoints [default: 127.0.0.1:9193].
    #[arg(long)]
    pub token_addr: Option<String>,
    /// Address of the admin API [default: 127.0.0.1:9194].
    #[arg(long)]
    pub admin_api_addr: Option<String>,
    /// Address of /metrics and /health [default: 127.0.0.1:9195].
    #[arg(long)]
    pub admin_addr: Option<String>,
    /// A peer whose x-forwarded-for is believed (address or CIDR; repeat for several).
    #[arg(long = "trusted-proxy")]
    pub trusted_proxies: Vec<String>,
    /// Directory of signing keys (PKCS#8 PEM, `active` file names the signing kid).
    #[arg(long)]
    pub signing_keys_dir: Option<PathBuf>,
    /// Policy directory authorizing admin API calls [default: policies/rego].
    #[arg(long)]
    pub policy_dir: Option<PathBuf>,
    /// Verification of admin callers' tokens; the keys directory is also where the signing
    /// keys' public halves must be published. The first issuer and audience are stamped into
    /// issued tokens.
    #[command(flatten)]
    pub verifier: VerifierArgs,
    /// Database: sqlite://FILE or postgres://… [default: sqlite://.stack/qiria.db].
    #[arg(long)]
    pub database_url: Option<String>,
    /// Master keys sealing personal data at rest [default: .stack/master-keys].
    #[arg(long)]
    pub master_keys_dir: Option<PathBuf>,
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
            .set("server.token_addr", self.token_addr.clone())
            .set("server.admin_api_addr", self.admin_api_addr.clone())
            .set("server.admin_addr", self.admin_addr.clone())
            .set("server.trusted_proxies", (!self.trusted_proxies.is_empty()).then(|| self.trusted_proxies.clone()))
            .set("tokens.signing_keys_dir", p(&self.signing_keys_dir))
            .set("policy.dir", p(&self.policy_dir))
            .set("store.database_url", self.database_url.clone())
            .set("store.master_keys_dir", p(&self.master_keys_dir));
        self.log.apply(self.verifier.apply(own)).into_figment()
    }
}

/// Where the issuer's store is and how it is sealed.
#[derive(Debug, Args)]
pub struct StoreLocation {
    /// The issuer's database.
    #[arg(long, env = "QIRIA_ISSUER_STORE__DATABASE_URL", default_value = "sqlite://.stack/qiria.db")]
    pub database_url: String,
    /// Directory of master keys (`<kid>.key`, `active` file names the sealing one).
    #[arg(long, env = "QIRIA_ISSUER_STORE__MASTER_KEYS_DIR", default_value = ".stack/master-keys")]
    pub master_keys_dir: PathBuf,
}

impl StoreLocation {
    async fn open(&self) -> anyhow::Result<crate::store::Store> {
        let keys = qiria_store::sealing::MasterKeys::load_dir(&self.master_keys_dir, None)?;
        Ok(crate::store::Store::open(&self.database_url, std::sync::Arc::new(keys)).await?)
    }
}

/// `issuer users …`
#[derive(Debug, Args)]
pub struct UsersArgs {
    /// The store.
    #[command(flatten)]
    pub store: StoreLocation,
    /// What to do.
    #[command(subcommand)]
    pub command: UsersCommand,
}

/// `issuer store …`
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

/// Runs `issuer store …`; returns what to print.
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

/// Runs `issuer users …`; returns what to print.
pub async fn users(args: UsersArgs, stdin: &mut impl std::io::BufRead) -> anyhow::Result<String> {
    let store = args.store.open().await?;
    match args.command {
        UsersCommand::Add { username, roles, email, display_name } => {
            let mut password = String::new();
            stdin.read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(password.chars().count() >= 12, "the password must have at least 12 characters");
            let username =
                crate::store::fold_username(&username).map_err(|why| anyhow::anyhow!("--username: {why}"))?;
            let password_hash = crate::hashing::hash_password(password)
                .ok_or_else(|| anyhow::anyhow!("argon2 refused the password"))?;
            let user = crate::store::User {
                id: uuid::Uuid::new_v4().to_string(),
                username,
                password_hash,
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

/// `issuer keys …`
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

/// `issuer token …`
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

/// Runs `issuer keys generate`; returns the kid.
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

/// Runs `issuer token mint`; returns the compact JWS.
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
