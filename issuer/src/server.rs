//! Wires the issuer: opens the store, loads (and watches) the signing keys, the verification
//! keys and the policy, and serves the token endpoints, the admin API and `/metrics` +
//! `/health` on three listeners.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use qiria_identity::{KeyReload, TokenVerifier};
use qiria_policy::LivePolicy;
use qiria_runtime::audit::{self, AuditEvent};
use qiria_runtime::health::ComponentStatus;
use qiria_runtime::shutdown::Shutdown;
use qiria_runtime::watch::watch_state;
use qiria_store::sealing::MasterKeys;
use serde::Serialize;
use tracing::{error, info};

use crate::admin_api::{self, AdminApi};
use crate::client_addr::ClientAddress;
use crate::config::Config;
use crate::grants::Issuer;
use crate::hashing::HashingPool;
use crate::signing::SigningKeys;
use crate::store::Store;
use crate::token_api::{self, TokenApi};

/// Health detail of the issuer.
#[derive(Debug, Default, Serialize)]
pub struct Health {
    /// The signing key: `active` is its kid.
    pub signing: ComponentStatus,
    /// The verification keys (admin callers' tokens, and the publish check of signing keys).
    pub keys: ComponentStatus,
    /// The policy that authorizes admin calls.
    pub policy: ComponentStatus,
    /// Password hashing threads and queue length.
    pub hashing: (usize, usize),
}

impl Health {
    fn serving(&self) -> bool {
        self.signing.active.is_some() && self.keys.active.is_some() && self.policy.active.is_some()
    }
}

/// The issuer's shared state.
struct Service {
    config: Config,
    verifier: Arc<TokenVerifier>,
    policy: Arc<LivePolicy>,
    signing: Arc<ArcSwapOption<SigningKeys>>,
    health: Mutex<Health>,
    /// One signing reload at a time: the signing watcher and the verification-key watcher
    /// both trigger one, and an outcome computed before a key was published must not be
    /// recorded after the one computed once it was.
    signing_turn: Mutex<()>,
    registry: Registry,
    /// For its saturation metrics.
    hashing: Arc<HashingPool>,
    keys_loaded: Gauge,
    /// 1 for each key id of the live verification key set.
    key_active: Family<Vec<(String, String)>, Gauge>,
}

impl Service {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reload_keys(&self) {
        let outcome = self.verifier.reload_keys(&self.config.jwt.keys_dir, &mut self.health().keys);
        if let KeyReload::Activated { kids, .. } = outcome {
            self.keys_loaded.set(i64::try_from(kids.len()).unwrap_or(i64::MAX));
            // Keys that left the set leave the metric too.
            self.key_active.clear();
            for kid in kids {
                self.key_active.get_or_create(&vec![("kid".to_string(), kid)]).set(1);
            }
            // A signing key held back until its public half was published may take over now.
            self.reload_signing();
        }
    }

    fn reload_policy(&self) {
        let outcome = self.policy.reload();
        outcome.record(&mut self.health().policy);
    }

    /// A key signs only once the verification keys accept its signatures: made active before
    /// it is published, it would issue tokens that every request then refuses.
    fn reload_signing(&self) {
        let _turn = self.signing_turn.lock().unwrap_or_else(|p| p.into_inner());
        let tokens = &self.config.tokens;
        let outcome = SigningKeys::load_dir(&tokens.signing_keys_dir, tokens.active_kid.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|loaded| {
                let (kid, count) = (loaded.active_kid().to_string(), loaded.count());
                if !loaded.probe().is_some_and(|probe| self.verifier.accepts_signature_of(&probe)) {
                    return Err(format!(
                        "signing key {kid} is not published among the verification keys ({}); \
                         the previous key keeps signing until it is",
                        self.config.jwt.keys_dir.display()
                    ));
                }
                self.signing.store(Some(Arc::new(loaded)));
                Ok((kid, count))
            });
        let mut health = self.health();
        let status = &mut health.signing;
        match outcome {
            Ok((kid, keys)) => {
                if status.active.as_deref() != Some(kid.as_str()) {
                    audit::record(AuditEvent::SigningKeyActivated { kid: &kid, previous: status.active.as_deref() });
                    *status = ComponentStatus::activated(kid, keys);
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
}

impl qiria_runtime::admin::AdminState for Service {
    fn metrics(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        if out.ends_with("# EOF\n") {
            out.truncate(out.len() - "# EOF\n".len());
        }
        self.hashing.render_metrics(&mut out);
        qiria_runtime::metrics::render_shared(&mut out);
        out.push_str("# EOF\n");
        out
    }

    fn health(&self) -> (bool, serde_json::Value) {
        let health = Service::health(self);
        (health.serving(), serde_json::to_value(&*health).unwrap_or_default())
    }
}

/// Runs the issuer until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let store_config = &config.store;
    let master_keys = MasterKeys::load_dir(&store_config.master_keys_dir, store_config.active_master_kid.as_deref())?;
    let store = Store::open(&store_config.database_url, Arc::new(master_keys)).await?;
    let limits = &config.limits;
    let hashing = Arc::new(HashingPool::new(
        limits.hashing_workers,
        limits.hashing_queue_per_worker,
        Duration::from_millis(limits.hashing_max_wait_ms),
    )?);
    let mut registry = Registry::with_prefix("qiria_issuer");
    let keys_loaded = Gauge::default();
    registry.register("keys_loaded", "Keys in the live verification key set", keys_loaded.clone());
    let key_active = Family::<Vec<(String, String)>, Gauge>::default();
    registry.register("key_active", "Key ids of the live verification key set (1 each)", key_active.clone());
    let service = Arc::new(Service {
        verifier: Arc::new(TokenVerifier::new(&config.verifier())),
        policy: Arc::new(LivePolicy::new(config.policy.dir.clone(), config.policy.bundle_options())),
        signing: Arc::new(ArcSwapOption::empty()),
        health: Mutex::new(Health { hashing: hashing.size(), ..Health::default() }),
        signing_turn: Mutex::new(()),
        registry,
        keys_loaded,
        key_active,
        hashing: hashing.clone(),
        config: config.clone(),
    });
    service.reload_keys();
    service.reload_policy();
    service.reload_signing();
    if service.signing.load().is_none() {
        let why = service.health().signing.last_error.clone().unwrap_or_default();
        anyhow::bail!("no usable signing key in {}: {why}", config.tokens.signing_keys_dir.display());
    }
    watch_state(&service, "keys", &config.jwt.keys_dir, config.jwt.poll_interval_ms, Service::reload_keys)?;
    watch_state(
        &service,
        "signing",
        &config.tokens.signing_keys_dir,
        config.jwt.poll_interval_ms,
        Service::reload_signing,
    )?;
    watch_state(&service, "policy", &config.policy.dir, config.policy.poll_interval_ms, Service::reload_policy)?;

    let issuer =
        Arc::new(Issuer::new(store, service.signing.clone(), config.issuer_settings(), &config.throttle(), hashing)?);
    let clients = Arc::new(
        ClientAddress::new(&config.server.trusted_proxies, config.server.xff_num_trusted_hops)
            .map_err(anyhow::Error::msg)?,
    );
    let token_listener = qiria_runtime::net::bind(config.server.token_addr, "server.token_addr").await?;
    let admin_api_listener = qiria_runtime::net::bind(config.server.admin_api_addr, "server.admin_api_addr").await?;
    let admin_listener = qiria_runtime::net::bind(config.server.admin_addr, "server.admin_addr").await?;
    info!(
        tokens = %token_listener.local_addr()?,
        admin_api = %admin_api_listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        "issuer listening"
    );
    let tokens = token_api::router(TokenApi { issuer: issuer.clone(), clients: clients.clone() });
    let admin_api = admin_api::router(AdminApi {
        issuer,
        verifier: service.verifier.clone(),
        policy: service.policy.clone(),
        clients,
    });
    let serve = |listener, app: axum::Router, name: &'static str| {
        let stop = shutdown.wait();
        tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
                error!(error = %e, "{name} failed");
            }
        })
    };
    let servers = [serve(token_listener, tokens, "token endpoints"), serve(admin_api_listener, admin_api, "admin API")];
    qiria_runtime::admin::serve(admin_listener, service, shutdown).await;
    for server in servers {
        let _ = server.await;
    }
    Ok(())
}
