//! The job API's REST form, on the same port as its gRPC form ([`routes`] serves both). Each
//! route is a call of the same `JobService` implementation (`service::Jobs`): its request is
//! built from the path, the query string (GET) or the JSON body (POST) with the `json` codec,
//! and the caller's `authorization` header becomes the call's metadata, so the service
//! verifies the token, scopes and validates exactly as over gRPC. This front decides nothing
//! and trusts nothing: it never reads `x-qiria-*` headers, and a field the path gives (the
//! flow, the job id) may be repeated in the body but not contradicted, since authz decided on
//! the path. Every failure is JSON, through `errors::RestError`.
//!
//! | Method and path                             | Call                           |
//! |---------------------------------------------|--------------------------------|
//! | `POST /v1/flows/{namespace}/{flow}/executions` | `TriggerFlow`               |
//! | `POST /v1/jobs/scripts`                     | `SubmitScript`                 |
//! | `GET /v1/jobs?page_size=&page_token=`       | `ListJobs`                     |
//! | `GET /v1/jobs/{id}`                         | `GetJob`                       |
//! | `POST /v1/jobs/{id}/cancel`                 | `CancelJob`                    |
//! | `GET /v1/jobs/{id}/events`                  | `WatchJob`, as NDJSON lines    |

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::errors::RestError;
use crate::json;
use crate::pb::job_service_server::{JobService, JobServiceServer};
use crate::pb::{
    CancelJobRequest, EraseUserJobsRequest, GetJobRequest, ListJobsRequest, SubmitScriptRequest, TriggerFlowRequest,
    WatchJobRequest,
};
use crate::service::Jobs;
use crate::validate::pointer;

/// The largest request body read (bytes). Above Envoy's own bound on what ext_authz buffers
/// (64 KiB, which refuses first through the mesh), so that it bounds only direct callers; a
/// script at its 64 KiB cap fits even with JSON's escapes.
pub const MAX_BODY: usize = 256 * 1024;

type Jobs_ = State<Arc<Jobs>>;
type Answer = Result<Response, RestError>;

/// The job API on one port: gRPC (`/qiria.jobs.v1.JobService/…`, h2) and REST (HTTP/1.1 or
/// h2), both answered by `jobs`.
pub fn routes(jobs: Arc<Jobs>) -> Router {
    let grpc = tonic::service::Routes::new(JobServiceServer::from_arc(jobs.clone())).into_axum_router();
    let rest = Router::new()
        .route("/v1/flows/{namespace}/{flow}/executions", post(trigger_flow))
        .route("/v1/jobs/scripts", post(submit_script))
        .route("/v1/jobs/erase", post(erase_user_jobs))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/events", get(watch_job))
        .method_not_allowed_fallback(|| async { RestError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(jobs);
    // tonic's fallback answers every path with gRPC's UNIMPLEMENTED; this one only gRPC calls.
    grpc.merge(rest).fallback(no_route)
}

async fn trigger_flow(
    State(jobs): Jobs_,
    path: Result<Path<(String, String)>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let Path((namespace, flow)) = path.map_err(bad_path)?;
    no_query(&uri)?;
    let mut message: TriggerFlowRequest = from_body(&jobs, &headers, body)?;
    from_path(&mut message.namespace, namespace, "/namespace")?;
    from_path(&mut message.flow_id, flow, "/flow_id")?;
    message.idempotency_key = idempotency_key(&headers, message.idempotency_key)?;
    respond(&jobs.trigger_flow(call(&headers, message)).await?.into_inner())
}

async fn submit_script(
    State(jobs): Jobs_,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    no_query(&uri)?;
    let mut message: SubmitScriptRequest = from_body(&jobs, &headers, body)?;
    message.idempotency_key = idempotency_key(&headers, message.idempotency_key)?;
    respond(&jobs.submit_script(call(&headers, message)).await?.into_inner())
}

async fn erase_user_jobs(
    State(jobs): Jobs_,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    no_query(&uri)?;
    let message: EraseUserJobsRequest = from_body(&jobs, &headers, body)?;
    respond(&jobs.erase_user_jobs(call(&headers, message)).await?.into_inner())
}

async fn list_jobs(State(jobs): Jobs_, uri: Uri, headers: HeaderMap) -> Answer {
    let message: ListJobsRequest = from_query(&uri)?;
    respond(&jobs.list_jobs(call(&headers, message)).await?.into_inner())
}

async fn get_job(
    State(jobs): Jobs_,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Answer {
    let message = job_call(path, &uri, |m: &mut GetJobRequest| &mut m.id)?;
    respond(&jobs.get_job(call(&headers, message)).await?.into_inner())
}

async fn cancel_job(
    State(jobs): Jobs_,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let Path(id) = path.map_err(bad_path)?;
    no_query(&uri)?;
    let mut message: CancelJobRequest = from_body(&jobs, &headers, body)?;
    from_path(&mut message.id, id, "/id")?;
    respond(&jobs.cancel_job(call(&headers, message)).await?.into_inner())
}

/// `WatchJob` as NDJSON: one `{"job":{…}}` line per event, ending when the job ends. A
/// failure before the first event is an ordinary JSON error; one after it (the status is
/// sent already) is a last line in the error shape (`{"error":…}`).
async fn watch_job(
    State(jobs): Jobs_,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Answer {
    let message = job_call(path, &uri, |m: &mut WatchJobRequest| &mut m.id)?;
    let events = jobs.watch_job(call(&headers, message)).await?.into_inner();
    let lines = events.map(|event| {
        let value = match event.map_err(RestError::from).and_then(|e| json::encode(&e).map_err(RestError::from)) {
            Ok(value) => value,
            Err(error) => error.body(),
        };
        let mut line = serde_json::to_vec(&value).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    // no-store: a proxy must not hold the stream back to cache it.
    let head = [(header::CONTENT_TYPE, "application/x-ndjson"), (header::CACHE_CONTROL, "no-store")];
    Ok((head, Body::from_stream(lines)).into_response())
}

/// What no route has: a gRPC call to a service this port does not serve gets gRPC's
/// `UNIMPLEMENTED` (as from tonic), anything else a JSON 404.
async fn no_route(headers: HeaderMap) -> Response {
    let grpc = headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let (parts, ()) = Status::unimplemented("").into_http::<()>().into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    RestError::NoRoute.into_response()
}

/// The call the service receives: `message`, and the caller's `authorization` header as its
/// metadata (the one header the service reads; the token is verified there).
fn call<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut metadata = HeaderMap::new();
    for value in headers.get_all(header::AUTHORIZATION) {
        metadata.append(header::AUTHORIZATION, value.clone());
    }
    // The trace Envoy's request belongs to.
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = headers.get(name) {
            metadata.insert(name, value.clone());
        }
    }
    tonic::Request::from_parts(MetadataMap::from_headers(metadata), tonic::Extensions::default(), message)
}

fn respond<T: prost::Message + prost::Name>(message: &T) -> Answer {
    Ok(axum::Json(json::encode(message)?).into_response())
}

/// A POST's message from its body: none is the message's defaults (every field of these is
/// optional or given by the path), one must be `application/json` and at most [`MAX_BODY`].
/// The body as the call's message. The caller's token is checked first: a request without
/// one learns nothing about what its body would have been told (zero trust: straight to the
/// port, authentication still comes before anything else).
fn from_body<T: prost::Message + prost::Name + Default>(
    jobs: &Jobs,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, RestError> {
    jobs.require_token(headers)?;
    let bytes = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => RestError::TooLarge(MAX_BODY),
        _ => RestError::invalid(None, rejection.body_text()),
    })?;
    if bytes.is_empty() {
        return Ok(T::default());
    }
    if !is_json(headers) {
        return Err(RestError::NotJson);
    }
    let value =
        serde_json::from_slice(&bytes).map_err(|e| RestError::invalid(None, format!("the body is not JSON: {e}")))?;
    json::decode(value)
}

/// A GET's message from its query string, read like a JSON object of strings (the JSON
/// mapping reads numbers from strings). An empty value is the field's default (`page_token=`).
fn from_query<T: prost::Message + prost::Name + Default>(uri: &Uri) -> Result<T, RestError> {
    let mut fields = serde_json::Map::new();
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        if value.is_empty() {
            continue;
        }
        if fields.insert(key.to_string(), value.into_owned().into()).is_some() {
            return Err(RestError::invalid(Some(format!("/{}", pointer(&key))), "given more than once"));
        }
    }
    json::decode(serde_json::Value::Object(fields))
}

/// A POST takes its message from the body only: a query string would be a second place for
/// the same fields.
/// The message of a read of one job: `{id}` from the path, anything else from the query.
fn job_call<T: prost::Message + prost::Name + Default>(
    path: Result<Path<String>, PathRejection>,
    uri: &Uri,
    id: impl FnOnce(&mut T) -> &mut String,
) -> Result<T, RestError> {
    let Path(from) = path.map_err(bad_path)?;
    let mut message: T = from_query(uri)?;
    from_path(id(&mut message), from, "/id")?;
    Ok(message)
}

fn no_query(uri: &Uri) -> Result<(), RestError> {
    match uri.query() {
        None | Some("") => Ok(()),
        Some(_) => Err(RestError::invalid(None, "this route takes no query parameters; fields go in the body")),
    }
}

/// A field the path gives: the request may repeat it, not contradict it (authz decided on the
/// path, and the service must act on what was decided).
fn from_path(field: &mut String, path: String, at: &str) -> Result<(), RestError> {
    if !field.is_empty() && *field != path {
        return Err(RestError::invalid(Some(at.to_string()), "differs from the path"));
    }
    *field = path;
    Ok(())
}

/// The idempotency key from the `Idempotency-Key` header or the body's field; both may be
/// given only if they agree. The service validates the key, as it does over gRPC.
fn idempotency_key(headers: &HeaderMap, in_body: String) -> Result<String, RestError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(in_body);
    };
    if values.next().is_some() {
        return Err(RestError::invalid(None, "Idempotency-Key: given more than once"));
    }
    let header = value
        .to_str()
        .map_err(|_| RestError::invalid(None, "Idempotency-Key: at most 128 printable ASCII characters, no spaces"))?;
    if !in_body.is_empty() && in_body != header {
        return Err(RestError::invalid(Some("/idempotency_key".into()), "differs from the Idempotency-Key header"));
    }
    Ok(header.to_string())
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    let value = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    value.split(';').next().is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn bad_path(rejection: PathRejection) -> RestError {
    RestError::invalid(None, rejection.body_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_field_may_be_repeated_not_contradicted() {
        let mut given = String::new();
        from_path(&mut given, "a".into(), "/id").unwrap();
        assert_eq!(given, "a");
        from_path(&mut given, "a".into(), "/id").unwrap();
        let mut other = "b".to_string();
        assert!(from_path(&mut other, "a".into(), "/id").is_err());
    }

    #[test]
    fn idempotency_key_from_header_or_body_never_two_different_ones() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&headers, "k".into()).unwrap(), "k");
        headers.insert("idempotency-key", "h".parse().unwrap());
        assert_eq!(idempotency_key(&headers, String::new()).unwrap(), "h");
        assert_eq!(idempotency_key(&headers, "h".into()).unwrap(), "h");
        assert!(idempotency_key(&headers, "k".into()).is_err());
        headers.append("idempotency-key", "h".parse().unwrap());
        assert!(idempotency_key(&headers, String::new()).is_err());
    }

    #[test]
    fn json_content_types() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            is_json(&headers)
        };
        assert!(with("application/json") && with("Application/JSON; charset=utf-8"));
        assert!(!with("text/plain") && !with("application/jsonx") && !is_json(&HeaderMap::new()));
    }

    #[test]
    fn query_strings_read_as_the_message() {
        let page: ListJobsRequest = from_query(&"/v1/jobs?page_size=5&page_token=".parse().unwrap()).unwrap();
        assert_eq!((page.page_size, page.page_token.as_str()), (5, ""));
        assert!(from_query::<ListJobsRequest>(&"/v1/jobs?page_size=1&page_size=2".parse().unwrap()).is_err());
        let unknown = from_query::<ListJobsRequest>(&"/v1/jobs?sort=x".parse().unwrap()).unwrap_err();
        assert!(matches!(unknown, RestError::Status { field: Some(f), .. } if f == "/sort"));
    }
}
