//! The admin server every service runs on its own port: `/metrics` (Prometheus text) and
//! `/health` (200 with a JSON detail when serving, 503 otherwise). What they say comes from
//! the service through [`AdminState`].

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::error;

use crate::shutdown::Shutdown;

/// What a service shows on its admin port.
pub trait AdminState: Send + Sync + 'static {
    /// The metrics in Prometheus text format.
    fn metrics(&self) -> String;
    /// Whether the service serves, and the detail.
    fn health(&self) -> (bool, serde_json::Value);
}

/// Serves `/metrics` and `/health` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<dyn AdminState>, shutdown: Shutdown) {
    let metrics_state = state.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let state = metrics_state.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], state.metrics()) }
            }),
        )
        .route(
            "/health",
            get(move || {
                let state = state.clone();
                async move {
                    let (serving, detail) = state.health();
                    let code = if serving { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    (code, axum::Json(detail))
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.wait()).await {
        error!(error = %e, "admin server failed");
    }
}
