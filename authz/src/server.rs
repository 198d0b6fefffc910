//! Wires the decision service: loads keys and policies, keeps them fresh, and serves ext_authz
//! and gRPC health on one port, `/metrics` and `/health` on the admin port.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use qiria_identity::{KeyReload, TokenVerifier};
use qiria_policy::LivePolicy;
use qiria_runtime::health::ComponentStatus;
use qiria_runtime::shutdown::Shutdown;
use qiria_runtime::watch::watch_dir;
use serde::Serialize;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tracing::{error, info, warn};

use crate::check::{Authorizer, CheckService};
use crate::config::Config;
use crate::decision_cache::DecisionMemo;
use crate::decision_log::DecisionLog;
use crate::metrics::{reload_result, Metrics};

/// The gRPC service name Envoy's health checks ask about.
const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// Health detail of the whole service.
#[derive(Debug, Default, Serialize)]
pub struct Health {
    /// The policy bundle.
    pub policy: ComponentStatus,
    /// The verification keys.
    pub keys: ComponentStatus,
}

impl Health {
    fn serving(&self) -> bool {
        self.policy.active.is_some() && self.keys.active.is_some()
    }
}

/// Shared state of a running service.
pub struct Service {
    config: Config,
    verifier: Arc<TokenVerifier<DecisionMemo>>,
    policy: Arc<LivePolicy>,
    metrics: Arc<Metrics>,
    health: Mutex<Health>,
    reporter: tonic_health::server::HealthReporter,
    runtime: tokio::runtime::Handle,
}

impl Service {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        // A panic elsewhere must not take health reporting down with it.
        self.health.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Re-reads the policy directory; a bad bundle is refused and the old one keeps serving.
    pub fn reload_policy(&self) {
        let outcome = self.policy.reload();
        let mut health = self.health();
        let Some(ok) = outcome.record(&mut health.policy) else { return };
        self.metrics.policy_reloads.get_or_create(&reload_result(if ok { "ok" } else { "rejected" })).inc();
        self.report(&health);
    }

    /// Re-reads the key directory. Files that cannot be used are reported and skipped; only an
    /// unreadable directory leaves the previous key set serving.
    pub fn reload_keys(&self) {
        let mut health = self.health();
        let result = match self.verifier.reload_keys(&self.config.jwt.keys_dir, &mut health.keys) {
            KeyReload::Unchanged => return,
            KeyReload::Activated { kids, partial } => {
                self.metrics.set_active_keys(&kids);
                if partial {
                    "partial"
                } else {
                    "ok"
                }
            }
            KeyReload::Rejected => "rejected",
        };
        self.metrics.key_reloads.get_or_create(&reload_result(result)).inc();
        self.report(&health);
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

impl qiria_runtime::admin::AdminState for Service {
    fn metrics(&self) -> String {
        self.metrics.cached_tokens.set(self.verifier.cached_tokens() as i64);
        self.metrics.encode()
    }

    fn health(&self) -> (bool, serde_json::Value) {
        let health = Service::health(self);
        (health.serving(), serde_json::to_value(&*health).unwrap_or_default())
    }
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let verifier = Arc::new(TokenVerifier::new(&config.jwt.verifier()));
    let policy =
        Arc::new(LivePolicy::new(config.policy.dir.clone(), config.bundle_options(metrics.evaluation.clone())));
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

    let log = if config.log.decisions {
        let counters = metrics.decision_log.clone();
        Some(DecisionLog::start(&config.decision_log, &config.policy.decision_rule, counters)?)
    } else {
        None
    };
    if config.policy.shadow {
        warn!("policy.shadow is on: denials are logged, not enforced");
    }
    let authorizer = Arc::new(Authorizer::new(verifier, policy, metrics, &config.answer_settings(), log));
    let grpc_listener = qiria_runtime::net::bind(config.server.grpc_addr, "server.grpc_addr").await?;
    let admin_listener = qiria_runtime::net::bind(config.server.admin_addr, "server.admin_addr").await?;
    info!(grpc = %grpc_listener.local_addr()?, admin = %admin_listener.local_addr()?, "authz listening");

    let admin = tokio::spawn(qiria_runtime::admin::serve(admin_listener, service.clone(), shutdown.clone()));

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
        .serve_with_incoming_shutdown(
            qiria_runtime::net::incoming_bounded(grpc_listener, config.server.max_connections),
            shutdown.wait(),
        );
    let result = grpc.await;
    if let Err(e) = &result {
        error!(error = %e, "gRPC server failed");
    }
    let _ = admin.await;
    Ok(result?)
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
