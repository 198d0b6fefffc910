//! Wires the gateway: the job store, the verification keys (watched), the job API and the
//! admin port.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use qiria_identity::TokenVerifier;
use qiria_runtime::health::ComponentStatus;
use qiria_runtime::shutdown::Shutdown;
use serde::Serialize;
use tonic::transport::Server;
use tracing::info;

use crate::config::Config;
use crate::jobs::JobStore;
use crate::pb::job_service_server::JobServiceServer;
use crate::service::Jobs;
use crate::watch::Watchers;

/// Health detail of the gateway.
#[derive(Debug, Default, Serialize)]
struct Health {
    keys: ComponentStatus,
}

struct Service {
    config: Config,
    verifier: Arc<TokenVerifier>,
    health: Mutex<Health>,
}

impl Service {
    fn reload_keys(&self) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        self.verifier.reload_keys(&self.config.jwt.keys_dir, &mut health.keys);
    }
}

impl qiria_runtime::admin::AdminState for Service {
    fn metrics(&self) -> String {
        format!(
            "# TYPE qiria_gateway_cached_tokens gauge\nqiria_gateway_cached_tokens {}\n",
            self.verifier.cached_tokens()
        )
    }

    fn health(&self) -> (bool, serde_json::Value) {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        (health.keys.active.is_some(), serde_json::to_value(&*health).unwrap_or_default())
    }
}

/// Runs the gateway until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let store = JobStore::open(&config.store.database_url).await?;
    let service = Arc::new(Service {
        verifier: Arc::new(TokenVerifier::new(&config.verifier())),
        health: Mutex::default(),
        config: config.clone(),
    });
    service.reload_keys();
    let watched = service.clone();
    qiria_runtime::watch::watch_dir(
        "keys",
        config.jwt.keys_dir.clone(),
        Duration::from_millis(config.jwt.poll_interval_ms.max(100)),
        move || watched.reload_keys(),
    )?;
    let jobs = Jobs {
        verifier: service.verifier.clone(),
        store,
        watchers: Watchers::new(config.users.watch_streams),
        limits: config.limits.clone(),
    };
    let grpc_listener = qiria_runtime::net::bind(config.server.grpc_addr, "server.grpc_addr").await?;
    let admin_listener = qiria_runtime::net::bind(config.server.admin_addr, "server.admin_addr").await?;
    info!(grpc = %grpc_listener.local_addr()?, admin = %admin_listener.local_addr()?, "worker-gateway listening");
    let admin = tokio::spawn(qiria_runtime::admin::serve(admin_listener, service, shutdown.clone()));
    let grpc = Server::builder()
        .add_service(JobServiceServer::new(jobs))
        .serve_with_incoming_shutdown(qiria_runtime::net::incoming(grpc_listener), shutdown.wait())
        .await;
    let _ = admin.await;
    Ok(grpc?)
}
