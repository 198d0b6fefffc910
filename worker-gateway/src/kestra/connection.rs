//! The gateway's connection to Kestra, made from mounted secret files and remade when they
//! change: mutual TLS (a client certificate, and only the pinned CA is trusted — never the
//! system's roots) plus Kestra's API credential (a bearer token, or basic auth). A change that
//! does not load keeps the last good connection serving and is reported on `/health`.
//!
//! Files, under Kubernetes' names for a `kubernetes.io/tls` secret: `tls_dir/{ca.crt, tls.crt,
//! tls.key}`; `credential_dir/token`, or `credential_dir/{username, password}`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use qiria_runtime::health::ComponentStatus;
use reqwest::header::HeaderValue;
use sha2::{Digest, Sha256};

/// A usable connection: the HTTP client and the `Authorization` value it sends.
pub struct Connection {
    /// mTLS client with the pinned CA.
    pub http: reqwest::Client,
    /// `Bearer …` or `Basic …`, marked sensitive (never printed by `Debug`).
    pub authorization: HeaderValue,
}

/// Where the files are and how patient the client is.
#[derive(Debug, Clone)]
pub struct ConnectionFiles {
    /// `ca.crt`, `tls.crt`, `tls.key`.
    pub tls_dir: PathBuf,
    /// `token`, or `username` + `password`.
    pub credential_dir: PathBuf,
    /// TCP + TLS connect.
    pub connect_timeout: Duration,
    /// A whole request.
    pub request_timeout: Duration,
}

/// The live connection and its reload state.
pub struct LiveConnection {
    files: ConnectionFiles,
    current: ArcSwapOption<Connection>,
    loaded: Mutex<(Option<[u8; 32]>, ComponentStatus)>,
}

impl LiveConnection {
    /// Nothing loaded yet: call [`LiveConnection::reload`].
    pub fn new(files: ConnectionFiles) -> Self {
        Self { files, current: ArcSwapOption::empty(), loaded: Mutex::default() }
    }

    /// The connection serving now, if one ever loaded.
    pub fn current(&self) -> Option<Arc<Connection>> {
        self.current.load_full()
    }

    /// What `/health` says of it.
    pub fn status(&self) -> ComponentStatus {
        self.lock().1.clone()
    }

    /// Reads the files again; a change that loads replaces the connection, one that does not
    /// keeps the last good one.
    pub fn reload(&self) {
        let mut loaded = self.lock();
        match read(&self.files) {
            Ok(files) if loaded.0 == Some(files.fingerprint) => {}
            Ok(files) => match connect(&self.files, &files) {
                Ok(connection) => {
                    self.current.store(Some(Arc::new(connection)));
                    let short = hex::encode(&files.fingerprint[..6]);
                    tracing::info!(fingerprint = %short, kind = files.kind, "Kestra connection loaded");
                    *loaded = (Some(files.fingerprint), ComponentStatus::activated(short, 1));
                }
                Err(error) => refuse(&mut loaded.1, error),
            },
            Err(error) => refuse(&mut loaded.1, error),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<[u8; 32]>, ComponentStatus)> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn refuse(status: &mut ComponentStatus, error: String) {
    tracing::warn!(%error, "Kestra connection files refused; the last good connection (if any) keeps serving");
    status.last_error = Some(error);
}

/// The files' contents. Never logged: the fingerprint stands for them.
struct Files {
    ca: Vec<u8>,
    identity: Vec<u8>,
    authorization: String,
    kind: &'static str,
    fingerprint: [u8; 32],
}

fn read(files: &ConnectionFiles) -> Result<Files, String> {
    let file = |dir: &Path, name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let ca = file(&files.tls_dir, "ca.crt")?;
    let mut identity = file(&files.tls_dir, "tls.crt")?;
    identity.push(b'\n');
    identity.extend(file(&files.tls_dir, "tls.key")?);
    let text = |name: &str| -> Result<String, String> {
        let bytes = file(&files.credential_dir, name)?;
        let text = String::from_utf8(bytes).map_err(|_| format!("{name}: not UTF-8"))?;
        let text = text.trim_end_matches(['\r', '\n']).to_string();
        if text.is_empty() || text.chars().any(char::is_control) {
            return Err(format!("{name}: empty or holds control characters"));
        }
        Ok(text)
    };
    let (authorization, kind) = if files.credential_dir.join("token").exists() {
        (format!("Bearer {}", text("token")?), "bearer")
    } else {
        use base64::Engine as _;
        let basic = format!("{}:{}", text("username")?, text("password")?);
        (format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(basic)), "basic")
    };
    let mut digest = Sha256::new();
    for part in [&ca[..], &identity[..], authorization.as_bytes()] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    Ok(Files { ca, identity, authorization, kind, fingerprint: digest.finalize().into() })
}

fn connect(settings: &ConnectionFiles, files: &Files) -> Result<Connection, String> {
    let ca = reqwest::Certificate::from_pem(&files.ca).map_err(|e| format!("ca.crt: {e}"))?;
    let identity = reqwest::Identity::from_pem(&files.identity).map_err(|e| format!("tls.crt/tls.key: {e}"))?;
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(identity)
        .https_only(true)
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.request_timeout)
        .pool_max_idle_per_host(8)
        // Kestra's answers are followed, never its redirects: a redirect could carry the
        // credential somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("TLS client: {e}"))?;
    let mut authorization =
        HeaderValue::from_str(&files.authorization).map_err(|_| "credential: not a valid header value".to_string())?;
    authorization.set_sensitive(true);
    Ok(Connection { http, authorization })
}
