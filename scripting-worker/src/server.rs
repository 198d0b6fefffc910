//! Wires the worker: the sandbox backend (its root filesystem built and an earlier worker's
//! leftovers swept before the first call), the pool, the `ScriptRunner` service over mutual
//! TLS (a client certificate from the configured CA is required; the service then checks the
//! identity in it), and the admin port.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use qiria_runtime::shutdown::Shutdown;
use serde::Serialize;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{error, info};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pb::script_runner_server::ScriptRunnerServer;
use crate::pool::Pool;
use crate::sandbox::host::HostSandbox;
use crate::sandbox::kubernetes::KubernetesBackend;
use crate::sandbox::Backend;
use crate::service::Runner;

#[derive(Debug, Serialize)]
struct Health {
    backend: &'static str,
    /// What start-up removed that an earlier worker left (on this host's backends).
    #[serde(skip_serializing_if = "Option::is_none")]
    swept: Option<Swept>,
}

#[derive(Debug, Serialize)]
struct Swept {
    containers: usize,
    cgroups: usize,
    bundles: usize,
}

struct Admin {
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
    health: serde_json::Value,
}

impl qiria_runtime::admin::AdminState for Admin {
    fn metrics(&self) -> String {
        self.metrics.render(self.pool.busy(), self.pool.waiting())
    }

    fn health(&self) -> (bool, serde_json::Value) {
        (true, self.health.clone())
    }
}

/// Runs the worker until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    if config.sandbox.backend == "kubernetes" {
        // The cluster sweeps what a killed worker left: each Job has a TTL.
        let backend = Arc::new(KubernetesBackend::open(config.kubernetes.clone())?);
        info!(api_server = %config.kubernetes.api_server, namespace = %config.kubernetes.namespace, "sandbox runs are Kubernetes Jobs");
        let health = serde_json::to_value(Health { backend: "kubernetes", swept: None })?;
        return serve(config, backend, health, shutdown).await;
    }
    let sandbox = config.sandbox.clone();
    let egress = crate::egress::EgressPolicy::from_config(&config.egress).map_err(anyhow::Error::msg)?;
    let (backend, swept) = tokio::task::spawn_blocking(move || HostSandbox::open(&sandbox, egress)).await??;
    info!(
        containers = swept.containers,
        cgroups = swept.cgroups,
        bundles = swept.bundles,
        "sandbox ready; leftovers of an earlier worker removed"
    );
    let health = serde_json::to_value(Health {
        backend: if config.sandbox.backend == "bubblewrap" { "bubblewrap" } else { "runsc" },
        swept: Some(Swept { containers: swept.containers, cgroups: swept.cgroups, bundles: swept.bundles }),
    })?;
    serve(config, Arc::new(backend), health, shutdown).await
}

/// Serves `ScriptRunner` on `backend` and the admin port until `shutdown`.
async fn serve<B: Backend + Clone>(
    config: Config,
    backend: B,
    health: serde_json::Value,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let tls = tls(&config.tls.dir)?;
    let p = &config.pool;
    let pool = Arc::new(Pool::new(p.sandboxes, p.queue, Duration::from_millis(p.queue_wait_ms)));
    let metrics = Arc::new(Metrics::new());
    let runner = Runner {
        backend,
        pool: pool.clone(),
        limits: config.limits.clone(),
        allowed_clients: config.tls.allowed_clients.clone(),
        metrics: metrics.clone(),
    };
    let l = &config.limits;
    // The largest answer: both streams at their cap (each invalid UTF-8 byte becomes three),
    // every artifact, and room for the rest.
    let answer = l.output_bytes * 6 + usize::try_from(l.artifact_bytes).unwrap_or(usize::MAX) + (64 << 10);
    let service = ScriptRunnerServer::new(runner)
        .max_decoding_message_size(l.script_bytes + (4 << 10))
        .max_encoding_message_size(answer);

    let grpc_listener = qiria_runtime::net::bind(config.server.grpc_addr, "server.grpc_addr").await?;
    let admin_listener = qiria_runtime::net::bind(config.server.admin_addr, "server.admin_addr").await?;
    info!(grpc = %grpc_listener.local_addr()?, admin = %admin_listener.local_addr()?, "scripting-worker listening");
    let admin = Arc::new(Admin { pool, metrics, health });
    let admin = tokio::spawn(qiria_runtime::admin::serve(admin_listener, admin, shutdown.clone()));
    let result = Server::builder()
        .tls_config(tls)?
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(service)
        .serve_with_incoming_shutdown(
            qiria_runtime::net::incoming_bounded(grpc_listener, config.server.max_connections),
            shutdown.wait(),
        )
        .await;
    if let Err(e) = &result {
        error!(error = %e, "gRPC server failed");
    }
    let _ = admin.await;
    Ok(result?)
}

/// The server's identity and the CA its callers' certificates must chain to.
fn tls(dir: &Path) -> anyhow::Result<ServerTlsConfig> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| anyhow::anyhow!("tls.dir: reading {}: {e}", path.display()))
    };
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(read("tls.crt")?, read("tls.key")?))
        .client_ca_root(Certificate::from_pem(read("ca.crt")?))
        .client_auth_optional(false))
}
