//! The floor: an ext_authz server that answers OK to every Check without looking at it.
//! `noop-authz PORT` (one worker thread, like authz pinned to one core in the benchmark).

use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse};
use envoy_types::ext_authz::v3::CheckResponseExt;
use tonic::{Request, Response, Status};

struct AlwaysOk;

#[tonic::async_trait]
impl Authorization for AlwaysOk {
    async fn check(&self, _request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse::with_status(Status::ok(""))))
    }
}

fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(9191);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(AlwaysOk))
            .serve_with_incoming(authz::server::incoming(listener))
            .await?;
        Ok(())
    })
}
