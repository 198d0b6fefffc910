//! A Kestra contract double: an HTTPS server that follows Kestra's REST API as the gateway uses
//! it (create, get, search, kill; errors, tenant, credential, asynchronous search index), held
//! faithful by a test with Kestra's own generated client, kestrapy. This module owns the
//! handle tests start it with ([`KestraDouble`]): a throwaway PKI and config in the test's
//! directory, the `kestra-double` binary on a free port, and clients that present the
//! client certificate and pin the CA.
//!
//! Test controls, not Kestra's API, live under `/__double/` (same TLS and credential):
//! `GET /__double/executions` (every execution, index or not), `POST /__double/faults`
//! (faults for the next creates), `POST /__double/reset` (drop queued faults).

pub mod config;
pub mod filters;
pub mod model;
pub mod server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use self::config::{default_flows, Credential, FlowSpec, InputSpec, InputType, Outcome};
use crate::process::Process;
use crate::{binary, free_port};

/// Which credential the double demands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CredentialKind {
    /// OSS basic auth (`username` + `password`).
    #[default]
    Basic,
    /// An EE API token.
    Bearer,
}

/// How to start a double.
#[derive(Debug, Clone)]
pub struct KestraOptions {
    /// Basic or bearer.
    pub credential: CredentialKind,
    /// How long a new execution stays out of search results.
    pub index_delay_ms: u64,
    /// The flows; empty means [`default_flows`].
    pub flows: Vec<FlowSpec>,
    /// The tenant in the API paths.
    pub tenant: String,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Executions kept.
    pub max_executions: usize,
}

impl Default for KestraOptions {
    fn default() -> Self {
        Self {
            credential: CredentialKind::Basic,
            index_delay_ms: 1000,
            flows: Vec::new(),
            tenant: "main".to_string(),
            max_body_bytes: 1024 * 1024,
            max_executions: 10_000,
        }
    }
}

/// A double's files: its PKI, its config, and the credential it demands.
pub struct Setup {
    /// `kestra-double.json`.
    pub config: PathBuf,
    /// The CA of the server's and the client's certificates.
    pub ca_pem: PathBuf,
    /// A client certificate the double accepts.
    pub client_cert_pem: PathBuf,
    /// Its key.
    pub client_key_pem: PathBuf,
    /// The credential.
    pub credential: Credential,
}

impl Setup {
    /// Writes a fresh PKI (`ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key`)
    /// and `kestra-double.json` (listening on `listen`) into `dir`.
    pub fn write(dir: &Path, listen: &str, options: KestraOptions) -> Self {
        std::fs::create_dir_all(dir).expect("double dir");
        let pki = crate::tls::pki("spiffe://qiria.test/ns/qiria/sa/worker-gateway");
        let file = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("PKI file");
            path
        };
        let ca_pem = file("ca.pem", &pki.ca_pem);
        let server_pem = file("server.pem", &pki.server_cert_pem);
        let server_key = file("server.key", &pki.server_key_pem);
        let client_cert_pem = file("client.pem", &pki.client_cert_pem);
        let client_key_pem = file("client.key", &pki.client_key_pem);
        let credential = match options.credential {
            CredentialKind::Basic => Credential::Basic { username: USERNAME.to_string(), password: secret() },
            CredentialKind::Bearer => Credential::Bearer { token: secret() },
        };
        let config = config::Config {
            listen: listen.to_string(),
            tls: config::TlsFiles { cert: server_pem, key: server_key, client_ca: ca_pem.clone() },
            credential: credential.clone(),
            tenant: options.tenant,
            index_delay_ms: options.index_delay_ms,
            public_url: None,
            max_executions: options.max_executions,
            max_body_bytes: options.max_body_bytes,
            flows: options.flows,
        };
        let path = dir.join("kestra-double.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("config JSON")).expect("config file");
        Self { config: path, ca_pem, client_cert_pem, client_key_pem, credential }
    }

    /// Writes the client side as the gateway reads it: `tls_dir/{ca.crt, tls.crt, tls.key}`
    /// (a Kubernetes TLS secret's names) and `credential_dir/{username, password}` or `token`.
    pub fn write_client(&self, tls_dir: &Path, credential_dir: &Path) -> std::io::Result<()> {
        write_tls(&self.ca_pem, &self.client_cert_pem, &self.client_key_pem, tls_dir)?;
        write_credential(&self.credential, credential_dir)
    }
}

/// A running double.
pub struct KestraDouble {
    port: u16,
    tenant: String,
    credential: Credential,
    ca_pem: PathBuf,
    client_cert_pem: PathBuf,
    client_key_pem: PathBuf,
    client: reqwest::Client,
    process: Process,
}

/// The username a basic-auth double accepts (Kestra wants an email).
pub const USERNAME: &str = "gateway@qiria.test";

impl KestraDouble {
    /// Writes a PKI (`ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key`) and
    /// `kestra-double.json` into `dir`, starts the binary on a free port and waits until it
    /// answers `/ping` over mutual TLS. Panics with its output if it does not.
    pub async fn start(dir: &Path, options: KestraOptions) -> Self {
        let port = free_port();
        let tenant = options.tenant.clone();
        let setup = Setup::write(dir, &format!("127.0.0.1:{port}"), options);
        let args = vec!["--config".to_string(), setup.config.display().to_string()];
        let log = dir.join("kestra-double.log");
        let process =
            Process::spawn("kestra-double", &binary("kestra-double"), &args, &log).expect("start kestra-double");
        let client = mtls_client_builder(&setup.ca_pem, Some((&setup.client_cert_pem, &setup.client_key_pem)))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("mTLS client");
        let Setup { credential, ca_pem, client_cert_pem, client_key_pem, .. } = setup;
        let mut double = Self { port, tenant, credential, ca_pem, client_cert_pem, client_key_pem, client, process };
        double.wait_ready().await;
        double
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ping = format!("{}/ping", self.url());
        loop {
            if let Ok(response) = self.client.get(&ping).send().await {
                if response.status().is_success() && response.text().await.is_ok_and(|t| t == "pong") {
                    return;
                }
            }
            if !self.process.is_running() {
                self.process.fail("exited before answering /ping");
            }
            if Instant::now() > deadline {
                self.process.fail("did not answer /ping over mutual TLS");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// `https://127.0.0.1:<port>/api/v1/<tenant><path>`.
    pub fn api_url(&self, path: &str) -> String {
        format!("{}/api/v1/{}{}", self.url(), self.tenant, path)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The tenant in its paths.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The CA of both the server's and the client's certificate.
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// A client certificate the double accepts.
    pub fn client_cert_pem(&self) -> &Path {
        &self.client_cert_pem
    }

    /// Its key.
    pub fn client_key_pem(&self) -> &Path {
        &self.client_key_pem
    }

    /// The credential it demands.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// The `Authorization` header value it accepts.
    pub fn authorization(&self) -> String {
        self.credential.authorization()
    }

    /// Writes the credential as the gateway reads it: `username` and `password` files, or a
    /// `token` file, in `dir` (created, files `0600`).
    pub fn write_credential(&self, dir: &Path) -> std::io::Result<()> {
        write_credential(&self.credential, dir)
    }

    /// Writes the client's TLS files as a Kubernetes `kubernetes.io/tls` secret mounts them
    /// (`ca.crt`, `tls.crt`, `tls.key`) in `dir`: what the gateway's mTLS reads.
    pub fn write_tls_secret(&self, dir: &Path) -> std::io::Result<()> {
        write_tls(&self.ca_pem, &self.client_cert_pem, &self.client_key_pem, dir)
    }

    /// A client with the accepted client certificate and the CA pinned; it sends no
    /// credential by itself (see [`KestraDouble::request`]).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `method` to `url()` + `path`, with the credential.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.url()))
            .header(reqwest::header::AUTHORIZATION, self.authorization())
    }

    /// Every execution the double holds, search index or not (`GET /__double/executions`).
    pub async fn executions(&self) -> Vec<Value> {
        let response = self.request(reqwest::Method::GET, "/__double/executions").send().await.expect("executions");
        assert!(response.status().is_success(), "/__double/executions: {}", response.status());
        response.json().await.expect("executions JSON")
    }

    /// Queues `fault` (one object or a list) for the next creates (`POST /__double/faults`).
    pub async fn fault(&self, fault: Value) {
        let response =
            self.request(reqwest::Method::POST, "/__double/faults").json(&fault).send().await.expect("fault");
        let status = response.status();
        assert!(
            status.is_success(),
            "/__double/faults {fault}: {status} {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// Drops the queued faults.
    pub async fn reset(&self) {
        let response = self.request(reqwest::Method::POST, "/__double/reset").send().await.expect("reset");
        assert!(response.status().is_success(), "/__double/reset: {}", response.status());
    }

    /// Everything it logged.
    pub fn output(&self) -> String {
        self.process.output()
    }

    /// The gateway's `[kestra]` section for this double, its secrets written under `dir` (the
    /// TLS files from `tls_dir` when given); tight timings so tests run in seconds (the
    /// reconcile wait still exceeds the double's index delay, as it must exceed Kestra's).
    pub fn gateway_toml(&self, dir: &Path, tls_dir: Option<&Path>) -> String {
        let (default_tls, credential) = (dir.join("kestra-tls"), dir.join("kestra-credential"));
        self.write_tls_secret(&default_tls).expect("tls secret");
        self.write_credential(&credential).expect("credential");
        format!(
            "[kestra]\nurl = \"{}\"\ntls_dir = \"{}\"\ncredential_dir = \"{}\"\nconnect_timeout_ms = 1000\n\
             request_timeout_ms = 1000\npoll_interval_ms = 100\nreconcile_wait_ms = 2500\nmax_attempts = 3\n\
             secrets_poll_interval_ms = 200\n",
            self.url(),
            tls_dir.unwrap_or(&default_tls).display(),
            credential.display(),
        )
    }

    /// The `traceparent` of every request it got that carried one, in order (from its log).
    pub fn traceparents(&self) -> Vec<String> {
        self.output().lines().filter_map(|l| l.split(" traceparent=").nth(1)).map(|t| t.trim().to_owned()).collect()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

/// A second PKI the double knows nothing of: its client certificate must be refused.
pub struct ForeignPki {
    /// Its CA.
    pub ca_pem: PathBuf,
    /// A client certificate signed by that CA.
    pub client_cert_pem: PathBuf,
    /// Its key.
    pub client_key_pem: PathBuf,
}

impl ForeignPki {
    /// Makes one in `dir` (`foreign-ca.pem`, `foreign-client.pem`, `foreign-client.key`).
    pub fn write(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("foreign PKI dir");
        let pki = crate::tls::pki("spiffe://elsewhere.test/ns/x/sa/intruder");
        let file = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("foreign PKI file");
            path
        };
        Self {
            ca_pem: file("foreign-ca.pem", &pki.ca_pem),
            client_cert_pem: file("foreign-client.pem", &pki.client_cert_pem),
            client_key_pem: file("foreign-client.key", &pki.client_key_pem),
        }
    }
}

/// A rustls client trusting only `ca_pem` (never the system's roots), presenting
/// `identity` (certificate, key) if given; no redirects followed.
pub fn mtls_client_builder(ca_pem: &Path, identity: Option<(&Path, &Path)>) -> reqwest::ClientBuilder {
    let ca = std::fs::read(ca_pem).expect("CA PEM");
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA certificate"))
        .redirect(reqwest::redirect::Policy::none());
    if let Some((cert, key)) = identity {
        // reqwest's rustls identity is one PEM: certificate, then key.
        let mut pem = std::fs::read(cert).expect("client certificate");
        pem.push(b'\n');
        pem.extend(std::fs::read(key).expect("client key"));
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("client identity"));
    }
    builder
}

/// `ca.crt`, `tls.crt`, `tls.key` in `dir`, as a Kubernetes TLS secret mounts them.
fn write_tls(ca: &Path, cert: &Path, key: &Path, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::copy(ca, dir.join("ca.crt"))?;
    std::fs::copy(cert, dir.join("tls.crt"))?;
    write_secret(&dir.join("tls.key"), &std::fs::read_to_string(key)?)
}

fn write_credential(credential: &Credential, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    match credential {
        Credential::Basic { username, password } => {
            write_secret(&dir.join("username"), username)?;
            write_secret(&dir.join("password"), password)
        }
        Credential::Bearer { token } => write_secret(&dir.join("token"), token),
    }
}

fn secret() -> String {
    use rand::Rng as _;
    rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(32).map(char::from).collect()
}

fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}
