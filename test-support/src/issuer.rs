//! The real `issuer` binary as a process: its store (SQLite or PostgreSQL), signing and
//! master keys in their secret layouts, on free loopback ports.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::process::Process;
use crate::tokens::{SigningKey, AUDIENCE, ISSUER};
use crate::{binary, free_port};

/// The password every test user gets.
pub const PASSWORD: &str = "correct horse battery staple";

/// A running issuer.
pub struct Issuer {
    /// Token endpoints.
    pub token_port: u16,
    /// Admin API.
    pub admin_api_port: u16,
    /// `/metrics`, `/health`.
    pub admin_port: u16,
    /// The database.
    pub database_url: String,
    /// Master keys (`master-1.key`).
    pub master_keys_dir: PathBuf,
    /// Signing keys (`<kid>.pem`).
    pub signing_dir: PathBuf,
    log: PathBuf,
    process: Process,
}

/// Where an issuer keeps its files, and what it verifies and decides with.
pub struct IssuerFiles<'a> {
    /// A private directory for its keys, database and log.
    pub dir: &'a Path,
    /// The first signing key (its public half must be in `keys_dir`).
    pub key: &'a SigningKey,
    /// Verification keys.
    pub keys_dir: &'a Path,
    /// Policy directory.
    pub policy_dir: &'a Path,
    /// `None`: a fresh SQLite file in `dir`.
    pub database_url: Option<&'a str>,
}

impl Issuer {
    /// Starts `issuer serve` with `config_toml` as its config file (e.g. `[limits]` settings)
    /// and waits until `/health` says it serves.
    pub async fn start(files: &IssuerFiles<'_>, config_toml: &str, extra: &[&str]) -> Self {
        let dir = files.dir;
        let signing_dir = dir.join("signing");
        std::fs::create_dir_all(&signing_dir).expect("signing dir");
        std::fs::write(signing_dir.join(format!("{}.pem", files.key.kid)), &files.key.private_pem)
            .expect("signing key");
        let master_keys_dir = dir.join("master-keys");
        std::fs::create_dir_all(&master_keys_dir).expect("master key dir");
        let master = master_keys_dir.join("master-1.key");
        if !master.exists() {
            std::fs::write(&master, crate::tokens::random_key_base64()).expect("master key");
        }
        let sqlite = format!("sqlite://{}", dir.join("qiria.db").display());
        let database_url = files.database_url.unwrap_or(&sqlite).to_string();
        let config = dir.join("issuer.toml");
        std::fs::write(&config, config_toml).expect("issuer config");
        let (token_port, admin_api_port, admin_port) = (free_port(), free_port(), free_port());
        let mut args: Vec<String> = [
            "serve",
            "--config",
            &config.display().to_string(),
            "--token-addr",
            &format!("127.0.0.1:{token_port}"),
            "--admin-api-addr",
            &format!("127.0.0.1:{admin_api_port}"),
            "--admin-addr",
            &format!("127.0.0.1:{admin_port}"),
            "--signing-keys-dir",
            &signing_dir.display().to_string(),
            "--keys-dir",
            &files.keys_dir.display().to_string(),
            "--policy-dir",
            &files.policy_dir.display().to_string(),
            "--issuer",
            ISSUER,
            "--audience",
            AUDIENCE,
            "--database-url",
            &database_url,
            "--master-keys-dir",
            &master_keys_dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.join("issuer.log");
        let process = Process::spawn("issuer", &binary("issuer"), &args, &log).expect("start issuer");
        let issuer =
            Self { token_port, admin_api_port, admin_port, database_url, master_keys_dir, signing_dir, log, process };
        crate::wait_healthy(&issuer.process, admin_port).await;
        issuer
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin_port);
        match reqwest::get(url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The `/health` document.
    pub async fn health(&self) -> serde_json::Value {
        crate::health(self.admin_port).await
    }

    /// `http://127.0.0.1:<token port><path>`: straight to the token endpoints, no Envoy.
    pub fn token_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.token_port, path)
    }

    /// `http://127.0.0.1:<admin API port><path>`: straight to the admin API, no Envoy.
    pub fn admin_api_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_api_port, path)
    }

    /// Everything the issuer logged.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Runs `issuer users …` on this issuer's store, [`PASSWORD`] on stdin; its output.
    pub fn users(&self, args: &[&str]) -> String {
        let mut child = Command::new(binary("issuer"))
            .args(["users", "--database-url", &self.database_url, "--master-keys-dir"])
            .arg(&self.master_keys_dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("issuer users");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(format!("{PASSWORD}\n").as_bytes()).expect("password on stdin");
        }
        let out = child.wait_with_output().expect("issuer users");
        assert!(out.status.success(), "issuer users {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Adds `username` with `roles` (comma-separated) and [`PASSWORD`]; the user id.
    pub fn add_user(&self, username: &str, roles: &str) -> String {
        self.users(&["add", "--username", username, "--roles", roles, "--email", &format!("{username}@example.org")])
    }
}
