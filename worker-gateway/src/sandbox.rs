//! The gateway's connection to the scripting worker, made from mounted secret files and remade
//! when they change: mutual TLS with the gateway's own client certificate (the identity the
//! worker admits) and only the pinned CA trusted. A change that does not load keeps the last
//! good connection and is reported on `/health`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use qiria_runtime::health::ComponentStatus;
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::sandbox_pb::script_runner_client::ScriptRunnerClient;

/// The largest answer taken from the worker: its output and artifact caps, with room.
const MAX_ANSWER: usize = 64 << 20;

/// Where the worker is and the files to reach it with.
#[derive(Debug, Clone)]
pub struct WorkerTarget {
    /// `https://host:port`.
    pub url: String,
    /// `ca.crt`, `tls.crt`, `tls.key`.
    pub tls_dir: PathBuf,
    /// The name its certificate must carry (empty: the URL's host).
    pub server_name: String,
    /// TCP + TLS connect.
    pub connect_timeout: Duration,
}

/// The live connection and its reload state.
pub struct LiveWorker {
    target: WorkerTarget,
    current: ArcSwapOption<Channel>,
    loaded: Mutex<(Option<[u8; 32]>, ComponentStatus)>,
}

impl LiveWorker {
    /// Nothing loaded yet: call [`LiveWorker::reload`].
    pub fn new(target: WorkerTarget) -> Self {
        Self { target, current: ArcSwapOption::empty(), loaded: Mutex::default() }
    }

    /// A client on the connection serving now, if one ever loaded.
    pub fn client(&self) -> Option<ScriptRunnerClient<Channel>> {
        let channel = self.current.load_full()?;
        Some(ScriptRunnerClient::new(Channel::clone(&channel)).max_decoding_message_size(MAX_ANSWER))
    }

    /// What `/health` says of it.
    pub fn status(&self) -> ComponentStatus {
        self.lock().1.clone()
    }

    /// Reads the files again; a change that loads replaces the connection.
    pub fn reload(&self) {
        let mut loaded = self.lock();
        match self.connect() {
            Ok((fingerprint, _)) if loaded.0 == Some(fingerprint) => {}
            Ok((fingerprint, channel)) => {
                self.current.store(Some(Arc::new(channel)));
                let short = hex::encode(&fingerprint[..6]);
                tracing::info!(fingerprint = %short, "scripting worker connection loaded");
                *loaded = (Some(fingerprint), ComponentStatus::activated(short, 1));
            }
            Err(error) => {
                tracing::warn!(%error, "scripting worker TLS files refused; the last good connection (if any) serves");
                loaded.1.last_error = Some(error);
            }
        }
    }

    fn connect(&self) -> Result<([u8; 32], Channel), String> {
        let dir = &self.target.tls_dir;
        let file = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let (ca, cert, key) = (file("ca.crt")?, file("tls.crt")?, file("tls.key")?);
        let mut digest = Sha256::new();
        for part in [&ca, &cert, &key] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).identity(Identity::from_pem(cert, key));
        if !self.target.server_name.is_empty() {
            tls = tls.domain_name(self.target.server_name.clone());
        }
        let endpoint = Endpoint::from_shared(self.target.url.clone())
            .map_err(|e| format!("scripts.url: {e}"))?
            .tls_config(tls)
            .map_err(|e| format!("TLS client: {e}"))?
            .connect_timeout(self.target.connect_timeout)
            .tcp_nodelay(true);
        Ok((digest.finalize().into(), endpoint.connect_lazy()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<[u8; 32]>, ComponentStatus)> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }
}
