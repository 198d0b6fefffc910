//! Wires the gateway: the job store, the verification keys and the policy (both watched), the
//! Kestra connection (watched) and the driver, the job API (gRPC and REST on one port) and the
//! admin port.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::serve::ListenerExt;
use qiria_identity::TokenVerifier;
use qiria_policy::LivePolicy;
use qiria_runtime::health::ComponentStatus;
use qiria_runtime::rate::KeyedRateLimiter;
use qiria_runtime::shutdown::Shutdown;
use qiria_runtime::watch::watch_state;
use serde::Serialize;
use tracing::info;

use crate::config::{Config, KestraConfig, ScriptsConfig};
use crate::driver::{Driver, DriverSettings};
use crate::jobs::JobStore;
use crate::kestra::connection::{ConnectionFiles, LiveConnection};
use crate::kestra::{KestraClient, KestraTarget};
use crate::sandbox::{LiveWorker, WorkerTarget};
use crate::scripts::{ScriptDriver, ScriptSettings};
use crate::service::Jobs;
use crate::watch::Watchers;

/// Health detail of the gateway.
#[derive(Debug, Default, Serialize)]
struct Health {
    keys: ComponentStatus,
    policy: ComponentStatus,
    kestra: Option<ComponentStatus>,
    scripting_worker: Option<ComponentStatus>,
}

struct Service {
    config: Config,
    verifier: Arc<TokenVerifier>,
    policy: Arc<LivePolicy>,
    kestra: Option<Arc<LiveConnection>>,
    worker: Option<Arc<LiveWorker>>,
    health: Mutex<Health>,
}

impl Service {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reload_keys(&self) {
        self.verifier.reload_keys(&self.config.jwt.keys_dir, &mut self.health().keys);
    }

    fn reload_policy(&self) {
        self.policy.reload().record(&mut self.health().policy);
    }

    fn reload_worker(&self) {
        if let Some(worker) = &self.worker {
            worker.reload();
        }
    }

    fn reload_kestra(&self) {
        if let Some(kestra) = &self.kestra {
            kestra.reload();
        }
    }
}

impl qiria_runtime::admin::AdminState for Service {
    fn metrics(&self) -> String {
        let mut out = format!(
            "# TYPE qiria_gateway_cached_tokens gauge\nqiria_gateway_cached_tokens {}\n",
            self.verifier.cached_tokens()
        );
        crate::kestra::render_calls(&mut out);
        qiria_runtime::metrics::render_shared(&mut out);
        out
    }

    fn health(&self) -> (bool, serde_json::Value) {
        let mut health = self.health();
        health.kestra = self.kestra.as_ref().map(|k| k.status());
        health.scripting_worker = self.worker.as_ref().map(|w| w.status());
        let kestra_ok = health.kestra.as_ref().is_none_or(|k| k.active.is_some());
        let worker_ok = health.scripting_worker.as_ref().is_none_or(|w| w.active.is_some());
        let serving = health.keys.active.is_some() && health.policy.active.is_some() && kestra_ok && worker_ok;
        (serving, serde_json::to_value(&*health).unwrap_or_default())
    }
}

/// Runs the gateway until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let store = JobStore::open(&config.store.database_url).await?;
    let kestra = (!config.kestra.url.is_empty()).then(|| Arc::new(LiveConnection::new(files(&config.kestra))));
    let worker = (!config.scripts.url.is_empty()).then(|| Arc::new(LiveWorker::new(target(&config.scripts))));
    let service = Arc::new(Service {
        verifier: Arc::new(TokenVerifier::new(&config.verifier())),
        policy: Arc::new(LivePolicy::new(config.policy.dir.clone(), config.policy.bundle_options())),
        kestra: kestra.clone(),
        worker: worker.clone(),
        health: Mutex::default(),
        config: config.clone(),
    });
    service.reload_keys();
    service.reload_policy();
    service.reload_kestra();
    service.reload_worker();
    watch_state(&service, "keys", &config.jwt.keys_dir, config.jwt.poll_interval_ms, Service::reload_keys)?;
    watch_state(&service, "policy", &config.policy.dir, config.policy.poll_interval_ms, Service::reload_policy)?;
    let watchers = Watchers::new(config.users.watch_streams);
    let driver = match kestra {
        Some(connection) => {
            let k = &config.kestra;
            let secrets = k.secrets_poll_interval_ms;
            watch_state(&service, "kestra-tls", &k.tls_dir, secrets, Service::reload_kestra)?;
            watch_state(&service, "kestra-credential", &k.credential_dir, secrets, Service::reload_kestra)?;
            let url = reqwest::Url::parse(&k.url)?;
            let client = Arc::new(KestraClient::new(KestraTarget { url, tenant: k.tenant.clone() }, connection));
            let driver = Arc::new(Driver::new(store.clone(), client, watchers.clone(), settings(k)));
            tokio::spawn(driver.clone().run(shutdown.clone()));
            Some(driver)
        }
        None => None,
    };
    let scripts = match worker {
        Some(worker) => {
            let sc = &config.scripts;
            watch_state(
                &service,
                "scripting-worker-tls",
                &sc.tls_dir,
                sc.secrets_poll_interval_ms,
                Service::reload_worker,
            )?;
            let driver = Arc::new(ScriptDriver::new(store.clone(), worker, watchers.clone(), script_settings(sc)));
            tokio::spawn(driver.clone().run(shutdown.clone()));
            Some(driver)
        }
        None => None,
    };
    let r = &config.retention;
    let (keep, every) = (Duration::from_secs(r.keep_finished_secs), Duration::from_secs(r.sweep_interval_secs));
    tokio::spawn(crate::retention::run(store.clone(), keep, every, shutdown.clone()));
    let jobs = Arc::new(Jobs {
        verifier: service.verifier.clone(),
        store,
        watchers,
        limits: config.limits.clone(),
        policy: service.policy.clone(),
        driver,
        scripts,
        rate: KeyedRateLimiter::per_minute(config.users.requests_per_minute, 100_000),
        live_jobs: config.users.live_jobs,
    });
    let api_listener = qiria_runtime::net::bind(config.server.grpc_addr, "server.grpc_addr").await?;
    let admin_listener = qiria_runtime::net::bind(config.server.admin_addr, "server.admin_addr").await?;
    info!(api = %api_listener.local_addr()?, admin = %admin_listener.local_addr()?, "worker-gateway listening");
    let admin = tokio::spawn(qiria_runtime::admin::serve(admin_listener, service, shutdown.clone()));
    // axum serves HTTP/1.1 and h2 (prior knowledge, as gRPC clients and Envoy's h2 cluster
    // speak it) on the one port. Nagle off, as `qiria_runtime::net::incoming` does: calls are
    // small requests and small answers.
    let listener = api_listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let api = axum::serve(listener, crate::rest::routes(jobs)).with_graceful_shutdown(shutdown.wait()).await;
    let _ = admin.await;
    Ok(api?)
}

fn files(k: &KestraConfig) -> ConnectionFiles {
    ConnectionFiles {
        tls_dir: k.tls_dir.clone(),
        credential_dir: k.credential_dir.clone(),
        connect_timeout: Duration::from_millis(k.connect_timeout_ms),
        request_timeout: Duration::from_millis(k.request_timeout_ms),
    }
}

fn settings(k: &KestraConfig) -> DriverSettings {
    DriverSettings {
        poll: Duration::from_millis(k.poll_interval_ms),
        reconcile_wait: Duration::from_millis(k.reconcile_wait_ms),
        max_attempts: i64::from(k.max_attempts),
        max_in_flight: k.max_in_flight,
        batch: 256,
    }
}

fn target(s: &ScriptsConfig) -> WorkerTarget {
    WorkerTarget {
        url: s.url.clone(),
        tls_dir: s.tls_dir.clone(),
        server_name: s.server_name.clone(),
        connect_timeout: Duration::from_millis(s.connect_timeout_ms),
    }
}

fn script_settings(s: &ScriptsConfig) -> ScriptSettings {
    ScriptSettings {
        poll: Duration::from_millis(s.poll_interval_ms),
        run_timeout: Duration::from_millis(s.run_timeout_ms),
        max_in_flight: s.max_in_flight,
        max_attempts: i64::from(s.max_attempts),
    }
}
