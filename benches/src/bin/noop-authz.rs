//! The floor: an ext_authz server that answers OK to every Check without looking at it.
//! `noop-authz PORT [--answer-like-authz[=headers|metadata]]` (one worker thread, like authz
//! pinned to one core in the benchmark). With `--answer-like-authz` the OK is authz's own
//! allow (built by `authz::check::plain_allow`), so that Envoy does the same work applying it:
//! the floor of authz's own cost. `=headers` or `=metadata` carries only that part, to see
//! which one costs Envoy.

use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse};
use envoy_types::ext_authz::v3::CheckResponseExt;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::OkHttpResponse;
use tonic::{Request, Response, Status};

struct AlwaysOk(CheckResponse);

#[tonic::async_trait]
impl Authorization for AlwaysOk {
    async fn check(&self, _request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.0.clone()))
    }
}

/// authz's own answer to an allowed request of the benchmark, or only its headers or only its
/// metadata.
fn like_authz(headers: bool, metadata: bool) -> CheckResponse {
    let mut response = authz::check::plain_allow("alice", "User", "6c0f3e0a-52f4-4c3e-9a0e-1b7b2f4d5e6f");
    if !headers {
        response.http_response = Some(HttpResponse::OkResponse(OkHttpResponse::default()));
    }
    if !metadata {
        response.dynamic_metadata = None;
    }
    response
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(9191);
    let answer = match args.next().as_deref() {
        Some("--answer-like-authz") => like_authz(true, true),
        Some("--answer-like-authz=headers") => like_authz(true, false),
        Some("--answer-like-authz=metadata") => like_authz(false, true),
        Some(other) => anyhow::bail!("unknown argument {other}"),
        None => CheckResponse::with_status(Status::ok("")),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(AlwaysOk(answer)))
            .serve_with_incoming(qiria_runtime::net::incoming(listener))
            .await?;
        Ok(())
    })
}
