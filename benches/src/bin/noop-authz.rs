//! The floor: an ext_authz server that answers OK to every Check without looking at it.
//! `noop-authz PORT [--answer-like-authz[=headers|metadata]]` (one worker thread, like authz
//! pinned to one core in the benchmark). With `--answer-like-authz` the OK carries what
//! authz's allow carries (two headers to set, two to remove, two dynamic-metadata fields),
//! so that Envoy does the same work applying it: the floor of authz's own cost. `=headers`
//! or `=metadata` carries only that part, to see which one costs Envoy.

use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse};
use envoy_types::ext_authz::v3::CheckResponseExt;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::OkHttpResponse;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use tonic::{Request, Response, Status};

struct AlwaysOk(CheckResponse);

#[tonic::async_trait]
impl Authorization for AlwaysOk {
    async fn check(&self, _request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.0.clone()))
    }
}

/// The shape of authz's answer to an allowed request of the benchmark (or part of it).
fn like_authz(headers: bool, metadata: bool) -> CheckResponse {
    let header = |key: &str, value: &str| HeaderValueOption {
        header: Some(HeaderValue { key: key.into(), value: value.into(), raw_value: Vec::new() }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    };
    let id = "6c0f3e0a-52f4-4c3e-9a0e-1b7b2f4d5e6f";
    let mut response = CheckResponse::with_status(Status::ok(""));
    if !headers {
        response.http_response = Some(HttpResponse::OkResponse(OkHttpResponse::default()));
    } else {
        response.http_response = Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![header("x-qiria-subject", "alice"), header("x-qiria-roles", "User")],
            headers_to_remove: vec!["authorization".into(), "x-qiria-decision-id".into()],
            ..Default::default()
        }));
    }
    let string = |s: &str| Value { kind: Some(Kind::StringValue(s.into())) };
    let fields = [("decision_id".to_string(), string(id)), ("bundle_revision".to_string(), string("0123456789abcdef"))];
    if metadata {
        response.dynamic_metadata = Some(Struct { fields: fields.into_iter().collect() });
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
            .serve_with_incoming(authz::server::incoming(listener))
            .await?;
        Ok(())
    })
}
