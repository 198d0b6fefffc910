//! Wires the service: loads keys and policies, keeps them fresh, and serves ext_authz and
//! gRPC health on one port, `/metrics` and `/health` on the admin port.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use serde::Serialize;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tracing::{error, info};

use crate::audit::{self, AuditEvent};
use crate::check::{Authorizer, CheckService};
use crate::config::Config;
use crate::issuer::{Issuer, IssuerSettings};
use crate::jwt::TokenVerifier;
use crate::keys::KeySet;
use crate::metrics::{reload_result, Metrics};
use crate::policy::{self, PolicyBundle};
use crate::sealing::MasterKeys;
use crate::signing::SigningKeys;
use crate::store::Store;
use crate::throttle::ThrottleSettings;
use crate::token_api;
use crate::watch::watch_dir;

/// The gRPC service name Envoy's health checks ask about.
const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// What `/health` reports about one reloadable component.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ComponentStatus {
    /// Revision (policy) or fingerprint (keys) of what serves now.
    pub active: Option<String>,
    /// When it was activated (seconds since the epoch).
    pub activated_at: Option<u64>,
    /// Number of files (policy) or keys.
    pub count: usize,
    /// The last refused reload, if it is still the latest news.
    pub last_error: Option<String>,
    /// Fingerprint of the directory content last looked at, to skip unchanged polls.
    #[serde(skip)]
    seen: Option<String>,
}

/// Health detail of the whole service.
#[derive(Debug, Default, Serialize)]
pub struct Health {
    /// The policy bundle.
    pub policy: ComponentStatus,
    /// The verification keys.
    pub keys: ComponentStatus,
    /// The issuer's signing key (when the issuer is on): `active` is its kid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing: Option<ComponentStatus>,
}

impl Health {
    fn serving(&self) -> bool {
        self.policy.active.is_some() && self.keys.active.is_some()
    }
}

/// Shared state of a running service.
pub struct Service {
    config: Config,
    verifier: Arc<TokenVerifier>,
    policy: Arc<ArcSwapOption<PolicyBundle>>,
    metrics: Arc<Metrics>,
    health: Mutex<Health>,
    reporter: tonic_health::server::HealthReporter,
    runtime: tokio::runtime::Handle,
    /// Run after every verification key reload: the issuer re-checks a signing key it held
    /// back until its public half was published.
    after_key_reload: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl Service {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        // A panic elsewhere must not take health reporting down with it.
        self.health.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Re-reads the policy directory; a bad bundle is refused and the old one keeps serving.
    pub fn reload_policy(&self) {
        let dir = &self.config.policy.dir;
        let fingerprint = policy::dir_fingerprint(dir).map_err(|e| e.to_string());
        if let Ok(fp) = &fingerprint {
            if self.health().policy.seen.as_deref() == Some(fp.as_str()) {
                return;
            }
        }
        // Remember the content looked at before loading: were it read again afterwards, an
        // edit landing in between would be marked seen without ever being loaded.
        let seen = fingerprint.as_ref().ok().cloned();
        let result = fingerprint
            .and_then(|_| PolicyBundle::load_dir(dir, &self.config.bundle_options()).map_err(|e| e.to_string()));
        let mut health = self.health();
        health.policy.seen = seen;
        match result {
            Ok(bundle) => {
                let previous = health.policy.active.clone();
                audit::record(AuditEvent::PolicyActivated {
                    revision: bundle.revision(),
                    previous: previous.as_deref(),
                    files: bundle.files(),
                });
                health.policy = ComponentStatus {
                    active: Some(bundle.revision().to_string()),
                    activated_at: Some(now_secs()),
                    count: bundle.files(),
                    last_error: None,
                    seen: health.policy.seen.take(),
                };
                self.policy.store(Some(Arc::new(bundle)));
                self.metrics.policy_reloads.get_or_create(&reload_result(true)).inc();
            }
            Err(error) => {
                audit::record(AuditEvent::PolicyRejected { error: &error });
                health.policy.last_error = Some(error);
                self.metrics.policy_reloads.get_or_create(&reload_result(false)).inc();
            }
        }
        self.report(&health);
    }

    /// Re-reads the key directory; an unreadable file leaves the previous key set serving.
    pub fn reload_keys(&self) {
        let dir = &self.config.jwt.keys_dir;
        let result = KeySet::load_dir(dir);
        let mut health = self.health();
        match result {
            Ok(keys) => {
                if health.keys.active.as_deref() == Some(keys.fingerprint()) {
                    if health.keys.last_error.take().is_some() {
                        info!(dir = %dir.display(), "key directory readable again; key set unchanged");
                    }
                    return;
                }
                audit::record(AuditEvent::KeySetActivated {
                    fingerprint: keys.fingerprint(),
                    kids: keys.kids().collect(),
                });
                health.keys = ComponentStatus {
                    active: Some(keys.fingerprint().to_string()),
                    activated_at: Some(now_secs()),
                    count: keys.len(),
                    last_error: None,
                    seen: None,
                };
                self.metrics.keys_loaded.set(keys.len() as i64);
                self.verifier.set_keys(keys);
                self.metrics.key_reloads.get_or_create(&reload_result(true)).inc();
            }
            Err(error) => {
                let error = error.to_string();
                if health.keys.last_error.as_deref() != Some(error.as_str()) {
                    audit::record(AuditEvent::KeySetRejected { error: &error });
                    self.metrics.key_reloads.get_or_create(&reload_result(false)).inc();
                    health.keys.last_error = Some(error);
                }
            }
        }
        self.report(&health);
        drop(health);
        if let Some(hook) = self.after_key_reload.get() {
            hook();
        }
    }

    /// Records the outcome of a signing-key reload: the kid now signing, or why the previous
    /// key keeps signing (logged and audited once per distinct reason).
    fn record_signing(&self, outcome: Result<(String, usize), String>) {
        let mut health = self.health();
        let status = health.signing.get_or_insert_with(ComponentStatus::default);
        match outcome {
            Ok((kid, keys)) => {
                if status.active.as_deref() != Some(kid.as_str()) {
                    audit::record(AuditEvent::SigningKeyActivated { kid: &kid, previous: status.active.as_deref() });
                    status.active = Some(kid);
                    status.activated_at = Some(now_secs());
                }
                status.count = keys;
                status.last_error = None;
            }
            Err(error) => {
                if status.last_error.as_deref() != Some(error.as_str()) {
                    audit::record(AuditEvent::SigningKeyRejected { error: &error });
                    status.last_error = Some(error);
                }
            }
        }
    }

    fn report(&self, health: &Health) {
        let status = if health.serving() { ServingStatus::Serving } else { ServingStatus::NotServing };
        let reporter = self.reporter.clone();
        let update = async move {
            reporter.set_service_status("", status).await;
            reporter.set_service_status(AUTHZ_SERVICE, status).await;
        };
        // Reloads run on watcher threads (outside the runtime) or at startup (inside it).
        if tokio::runtime::Handle::try_current().is_ok() {
            self.runtime.spawn(update);
        } else {
            self.runtime.block_on(update);
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Runs the service until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let verifier = Arc::new(TokenVerifier::new(&config.jwt));
    let policy = Arc::new(ArcSwapOption::empty());
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", ServingStatus::NotServing).await;
    reporter.set_service_status(AUTHZ_SERVICE, ServingStatus::NotServing).await;
    let service = Arc::new(Service {
        config: config.clone(),
        verifier: verifier.clone(),
        policy: policy.clone(),
        metrics: metrics.clone(),
        health: Mutex::new(Health::default()),
        reporter,
        runtime: tokio::runtime::Handle::current(),
        after_key_reload: OnceLock::new(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    service.reload_keys();
    service.reload_policy();
    spawn_watcher("keys", config.jwt.keys_dir.clone(), config.jwt.poll_interval_ms, &service, Service::reload_keys)?;
    spawn_watcher(
        "policy",
        config.policy.dir.clone(),
        config.policy.poll_interval_ms,
        &service,
        Service::reload_policy,
    )?;

    let issuer = if config.issuer.enabled {
        Some(start_issuer(&config, &service, stop_signal(stop_rx.clone())).await?)
    } else {
        None
    };
    let authorizer = Arc::new(Authorizer::new(verifier.clone(), policy, metrics.clone(), &config));
    let grpc_listener = TcpListener::bind(config.server.grpc_addr).await?;
    let admin_listener = TcpListener::bind(config.server.admin_addr).await?;
    info!(grpc = %grpc_listener.local_addr()?, admin = %admin_listener.local_addr()?, "authz listening");

    let admin = tokio::spawn(admin_server(admin_listener, service.clone(), stop_signal(stop_rx.clone())));

    let mut builder = Server::builder().tcp_nodelay(true).http2_keepalive_interval(Some(Duration::from_secs(30)));
    if let (Some(cert), Some(key)) = (&config.server.tls_cert, &config.server.tls_key) {
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &config.server.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        builder = builder.tls_config(tls)?;
    }
    let grpc = builder
        .add_service(health_service)
        .add_service(AuthorizationServer::new(CheckService(authorizer)))
        .serve_with_incoming_shutdown(incoming(grpc_listener), stop_signal(stop_rx));
    let result = grpc.await;
    if let Err(e) = &result {
        error!(error = %e, "gRPC server failed");
    }
    let _ = admin.await;
    if let Some(issuer) = issuer {
        let _ = issuer.await;
    }
    Ok(result?)
}

/// Opens the store, loads (and watches) the signing keys, and serves the token endpoints.
async fn start_issuer(
    config: &Config,
    service: &Arc<Service>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let settings = &config.issuer;
    let master_keys = MasterKeys::load_dir(&settings.master_keys_dir, settings.active_master_kid.as_deref())?;
    let store = Store::open(&settings.database_url, Arc::new(master_keys)).await?;
    let keys = Arc::new(ArcSwapOption::empty());
    let reload = Arc::new({
        let (keys, dir, active) = (keys.clone(), settings.signing_keys_dir.clone(), settings.active_kid.clone());
        let published_in = config.jwt.keys_dir.display().to_string();
        // Weak: the service keeps this closure as its key-reload hook.
        let service = Arc::downgrade(service);
        // The signing watcher and the key-reload hook run on different threads: one reload at
        // a time, so an outcome computed before a key was published cannot be recorded after
        // the one computed once it was.
        let one_at_a_time = Mutex::new(());
        move || {
            let Some(service) = service.upgrade() else { return };
            let _turn = one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
            // A key signs only once the verification keys accept its signatures: made active
            // before it is published, it would issue tokens that every request then refuses.
            let outcome =
                SigningKeys::load_dir(&dir, active.as_deref()).map_err(|e| e.to_string()).and_then(|loaded| {
                    let (kid, count) = (loaded.active_kid().to_string(), loaded.count());
                    if !loaded.probe().is_some_and(|probe| service.verifier.accepts_signature_of(&probe)) {
                        return Err(format!(
                            "signing key {kid} is not published among the verification keys ({published_in}); \
                         the previous key keeps signing until it is"
                        ));
                    }
                    keys.store(Some(Arc::new(loaded)));
                    Ok((kid, count))
                });
            service.record_signing(outcome);
        }
    });
    reload();
    if keys.load().is_none() {
        let why = service.health().signing.as_ref().and_then(|s| s.last_error.clone()).unwrap_or_default();
        anyhow::bail!("no usable signing key in {}: {why}", settings.signing_keys_dir.display());
    }
    let hook = reload.clone();
    let _ = service.after_key_reload.set(Box::new(move || hook()));
    watch_dir(
        "signing",
        settings.signing_keys_dir.clone(),
        Duration::from_millis(config.jwt.poll_interval_ms.max(100)),
        move || reload(),
    )?;
    let issuer = Issuer::new(
        store,
        keys,
        IssuerSettings {
            issuer: settings.issuer.clone().or_else(|| config.jwt.issuers.first().cloned()).unwrap_or_default(),
            audience: settings.audience.clone().or_else(|| config.jwt.audiences.first().cloned()).unwrap_or_default(),
            access_ttl: settings.access_ttl_secs as i64,
            refresh_ttl: settings.refresh_ttl_secs as i64,
        },
        &ThrottleSettings {
            per_ip_per_minute: settings.rate_per_ip_per_minute,
            per_user_per_minute: settings.rate_per_user_per_minute,
            lockout_failures: settings.lockout_failures,
            lockout: Duration::from_secs(settings.lockout_secs),
        },
    )?;
    let listener = TcpListener::bind(settings.addr).await?;
    info!(addr = %listener.local_addr()?, "token issuer listening");
    let issuer = Arc::new(issuer);
    let app = token_api::router(issuer.clone()).merge(token_api::admin_router(issuer));
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            error!(error = %e, "token issuer failed");
        }
    }))
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}

fn spawn_watcher(
    name: &'static str,
    dir: PathBuf,
    poll_ms: u64,
    service: &Arc<Service>,
    reload: fn(&Service),
) -> std::io::Result<()> {
    let service = service.clone();
    watch_dir(name, dir, Duration::from_millis(poll_ms.max(100)), move || reload(&service)).map(|_| ())
}

async fn stop_signal(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Accepted connections of `listener`, with Nagle's algorithm off: a Check is one small
/// request and one small response, and delayed ACKs would add up to 40 ms to each.
pub fn incoming(listener: TcpListener) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((accepted, listener))
    })
}

async fn admin_server(listener: TcpListener, service: Arc<Service>, stop: impl Future<Output = ()> + Send + 'static) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let metrics_service = service.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let service = metrics_service.clone();
                async move {
                    service.metrics.cached_tokens.set(service.verifier.cached_tokens() as i64);
                    ([("content-type", "text/plain; version=0.0.4")], service.metrics.encode())
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let service = service.clone();
                async move {
                    let health = service.health();
                    let code = if health.serving() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    (code, axum::Json(serde_json::to_value(&*health).unwrap_or_default()))
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        error!(error = %e, "admin server failed");
    }
}
