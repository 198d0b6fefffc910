//! The double's HTTPS server: TLS that demands a client certificate from the configured CA,
//! Kestra's credential check, and the routes — Kestra's (create, get, search, kill in its 2.x
//! and 1.x paths, configs, `/ping`) with Micronaut's JSON error bodies, plus the test controls
//! under `/__double/`. Routing is by path segments, not a route table: Kestra's own quirks fall
//! out of it (a POST to `…/{id}/kill` is a create of flow `kill`, as #18759 reports).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::config::{Config, Credential, FlowSpec, TlsFiles};
use super::filters::{self, QueryError};
use super::model::{self, Execution, Fault, Label, LabelError, Part, Store, CORRELATION_ID};

/// What `configs` reports as Kestra's version.
pub const VERSION: &str = "2.0.3-double";

/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 512;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not sent its request head by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Kestra 1.x holds a `wait=true` create at most this long.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Largest search page served.
const MAX_PAGE_SIZE: usize = 10_000;

/// The server's state.
pub struct App {
    tenant: String,
    credential: Credential,
    index_delay: Duration,
    public_url: String,
    max_body: usize,
    flows: Vec<FlowSpec>,
    uuid: String,
    store: Mutex<Store>,
}

impl App {
    /// The state for `config`, answering on `local`.
    pub fn new(config: &Config, local: SocketAddr) -> Self {
        let public_url = config.public_url.clone().unwrap_or_else(|| format!("https://{local}"));
        let uuid = format!("{:032x}", rand::random::<u128>());
        Self {
            tenant: config.tenant.clone(),
            credential: config.credential.clone(),
            index_delay: Duration::from_millis(config.index_delay_ms),
            public_url: public_url.trim_end_matches('/').to_string(),
            max_body: config.max_body_bytes,
            flows: config.flows(),
            uuid: format!("{}-{}-{}-{}-{}", &uuid[..8], &uuid[8..12], &uuid[12..16], &uuid[16..20], &uuid[20..]),
            store: Mutex::new(Store::new(config.max_executions)),
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic elsewhere must not take every later request down with it.
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some((scheme, presented)) = value.split_once(' ') else {
            return false;
        };
        let expected = self.credential.authorization();
        let (expected_scheme, expected_value) = expected.split_once(' ').unwrap_or_default();
        scheme.eq_ignore_ascii_case(expected_scheme) && constant_time_eq(presented.trim(), expected_value)
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves `config` until the process ends.
pub async fn run(config: Config) -> Result<(), String> {
    let acceptor = acceptor(&config.tls)?;
    let listener = TcpListener::bind(&config.listen).await.map_err(|e| format!("listen on {}: {e}", config.listen))?;
    let local = listener.local_addr().map_err(|e| format!("listen address: {e}"))?;
    let app = Arc::new(App::new(&config, local));
    eprintln!(
        "kestra-double: Kestra {VERSION} API on https://{local}, tenant {}, {} credential, flows: {}",
        app.tenant,
        app.credential.kind(),
        app.flows.iter().map(|f| format!("{}/{}", f.namespace, f.id)).collect::<Vec<_>>().join(", ")
    );
    serve(listener, acceptor, app).await;
    Ok(())
}

/// The TLS side: the server's certificate, and only clients with a certificate from the
/// client CA get through the handshake.
pub fn acceptor(tls: &TlsFiles) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = |path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate", path.display()));
        }
        Ok(certs)
    };
    let chain = certs(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| format!("{}: {e}", tls.key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs(&tls.client_ca)? {
        roots.add(ca).map_err(|e| format!("{}: {e}", tls.client_ca.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("client CA: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("server certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections on `listener` forever; each failure stays with its connection.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, app: Arc<App>) {
    let router = router(app);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                eprintln!("kestra-double: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            eprintln!("kestra-double: {MAX_CONNECTIONS} connections open, closing the one from {peer}");
            continue;
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    eprintln!("kestra-double: TLS handshake with {peer} refused: {e}");
                    return;
                }
                Err(_) => {
                    eprintln!("kestra-double: TLS handshake with {peer} timed out");
                    return;
                }
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let service = TowerToHyperService::new(router);
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                eprintln!("kestra-double: connection from {peer}: {e}");
            }
        });
    }
}

/// The routes: `/ping` open, everything else through [`dispatch`].
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .fallback(dispatch)
        .layer(axum::middleware::from_fn(log))
        .with_state(app)
}

async fn log(request: Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    // The W3C trace context a caller sent (Kestra continues it when its tracing is on): the
    // tests read it here to follow a job's trace into Kestra.
    let traceparent = request.headers().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let started = Instant::now();
    let response = next.run(request).await;
    eprintln!(
        "kestra-double: {method} {path} -> {} ({} ms){}",
        response.status().as_u16(),
        started.elapsed().as_millis(),
        traceparent.map(|t| format!(" traceparent={t}")).unwrap_or_default()
    );
    response
}

/// Which kill path was called: 2.x answers the Execution, 1.x `202` with no body.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KillPath {
    Actions,
    Legacy,
}

async fn dispatch(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let api = matches!(segments.as_slice(), ["api", "v1", ..]);
    let control = segments.first() == Some(&"__double");
    if !api && !control {
        return error(StatusCode::NOT_FOUND, "Not Found", &path);
    }
    if !app.authorized(&parts.headers) {
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, r#"Basic realm="Kestra""#)]).into_response();
    }
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > app.max_body) {
        return too_large(app.max_body, &path);
    }
    let Ok(body) = axum::body::to_bytes(body, app.max_body).await else {
        return too_large(app.max_body, &path);
    };
    let query = query_pairs(&parts.uri);
    let method = parts.method.as_str();
    if control {
        return app.control(method, &segments[1..], &body, &path);
    }
    match (method, &segments[2..]) {
        ("GET", ["configs"]) => app.configs(),
        (_, [tenant, ..]) if *tenant != app.tenant => {
            error(StatusCode::NOT_FOUND, format!("Not Found: tenant `{tenant}` does not exist"), &path)
        }
        ("GET", [_, "configs"]) => app.configs(),
        ("GET", [_, "executions", "search"]) => app.search(&query, &path),
        ("GET", [_, "executions", id]) => app.get(id, &path),
        ("POST", [_, "executions", "trigger", namespace, flow]) | ("POST", [_, "executions", namespace, flow]) => {
            app.create(&parts.headers, body, &query, namespace, flow, &path).await
        }
        ("DELETE", [_, "executions", id, "kill"]) => app.kill(id, &query, KillPath::Legacy, &path),
        ("DELETE", [_, "executions", id, "actions", "kill"]) => app.kill(id, &query, KillPath::Actions, &path),
        _ => error(StatusCode::NOT_FOUND, "Not Found", &path),
    }
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect()
}

/// Micronaut's HAL `JsonError`, as Kestra 0.x–1.x answers every error.
fn error(status: StatusCode, message: impl Into<String>, path: &str) -> Response {
    json_error(status, message.into(), path, json!({}))
}

fn json_error(status: StatusCode, message: String, path: &str, embedded: Value) -> Response {
    let body = json!({
        "message": message,
        "_links": {"self": {"href": path, "templated": false}},
        "_embedded": embedded,
    });
    (status, Json(body)).into_response()
}

/// An error answer not yet tied to its request path (small, unlike a `Response`).
struct Refusal {
    status: StatusCode,
    message: String,
    embedded: Value,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), embedded: json!({}) }
    }

    fn respond(self, path: &str) -> Response {
        json_error(self.status, self.message, path, self.embedded)
    }
}

fn too_large(limit: usize, path: &str) -> Response {
    let message = format!("Request Entity Too Large: the request body exceeds {limit} bytes");
    error(StatusCode::PAYLOAD_TOO_LARGE, message, path)
}

fn bad_argument(name: &str, value: &str, path: &str) -> Response {
    conversion_failed(name, value).respond(path)
}

fn conversion_failed(name: &str, value: &str) -> Refusal {
    Refusal::new(
        StatusCode::BAD_REQUEST,
        format!("Bad Request: Failed to convert argument [{name}] for value [{value}]"),
    )
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// A create's query, checked before its body is read.
struct CreateQuery {
    labels: Vec<Label>,
    wait: bool,
}

impl App {
    fn configs(&self) -> Response {
        let basic = matches!(self.credential, Credential::Basic { .. });
        Json(json!({
            "uuid": self.uuid,
            "version": VERSION,
            "commitId": "kestra-double",
            // API tokens are an Enterprise feature; basic auth is what OSS has.
            "edition": if basic { "OSS" } else { "EE" },
            "isBasicAuthEnabled": basic,
            "isBasicAuthInitialized": basic,
            "url": self.public_url,
        }))
        .into_response()
    }

    fn get(&self, id: &str, path: &str) -> Response {
        let now = SystemTime::now();
        match self.store().get(id) {
            Some(execution) => Json(execution.to_json(&self.tenant, now, None)).into_response(),
            None => error(StatusCode::NOT_FOUND, "Not Found", path),
        }
    }

    async fn create(
        &self,
        headers: &HeaderMap,
        body: Bytes,
        query: &[(String, String)],
        namespace: &str,
        flow_id: &str,
        path: &str,
    ) -> Response {
        let fault = self.store().next_fault();
        if let Some(Fault { status: Some(status), after_create: false, delay_ms }) = &fault {
            if let Some(ms) = delay_ms {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
            }
            return fault_response(*status, path);
        }
        let created = match self.create_checked(headers, body, query, namespace, flow_id).await {
            Ok(created) => created,
            Err(refusal) => return refusal.respond(path),
        };
        let (id, mut answer, wait) = created;
        if wait {
            answer = self.wait_for_end(&id, answer).await;
        }
        if let Some(fault) = fault {
            if let Some(ms) = fault.delay_ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if let Some(status) = fault.status {
                return fault_response(status, path);
            }
        }
        Json(answer).into_response()
    }

    async fn create_checked(
        &self,
        headers: &HeaderMap,
        body: Bytes,
        query: &[(String, String)],
        namespace: &str,
        flow_id: &str,
    ) -> Result<(String, Value, bool), Refusal> {
        let (flow, query) = self.check_create(query, namespace, flow_id)?;
        let parts = read_parts(headers, body).await?;
        let id = model::new_id();
        let inputs = model::read_inputs(flow, &parts, &id).map_err(|errors| {
            let message = errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join(", ");
            let errors: Vec<Value> = errors.iter().map(|e| json!({"message": e.message, "path": e.path})).collect();
            Refusal {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: format!("Invalid entity: {message}"),
                embedded: json!({"errors": errors}),
            }
        })?;
        // Flow labels first (a request label of the same key replaces one), then the
        // request's, then the correlation id unless the caller chose it.
        let mut labels: Vec<Label> = flow
            .labels
            .iter()
            .filter(|l| !query.labels.iter().any(|r| r.key == l.key))
            .map(|l| Label::new(&l.key, &l.value))
            .collect();
        labels.extend(query.labels.iter().cloned());
        if !labels.iter().any(|l| l.key == CORRELATION_ID) {
            labels.push(Label::new(CORRELATION_ID, &id));
        }
        let now = SystemTime::now();
        let execution = Execution::new(id.clone(), flow, labels, inputs, now);
        let url = format!("{}/ui/{}/executions/{}/{}/{}", self.public_url, self.tenant, flow.namespace, flow.id, id);
        let answer = execution.to_json(&self.tenant, now, Some(url));
        self.store().insert(execution, now);
        Ok((id, answer, query.wait))
    }

    /// The flow and query of a create, in the order Kestra refuses them.
    fn check_create(
        &self,
        query: &[(String, String)],
        namespace: &str,
        flow_id: &str,
    ) -> Result<(&FlowSpec, CreateQuery), Refusal> {
        let mut raw_labels = Vec::new();
        let (mut wait, mut revision) = (false, None);
        for (name, value) in query {
            match name.as_str() {
                "labels" => raw_labels.push(value.as_str()),
                "wait" => wait = parse_bool(value).ok_or_else(|| conversion_failed(name, value))?,
                "revision" => revision = Some(value.parse::<i64>().map_err(|_| conversion_failed(name, value))?),
                // Not modelled: an execution that starts later would need a scheduler here.
                "scheduleDate" => {
                    return Err(Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "Bad Request: scheduleDate is not supported by the Kestra double",
                    ))
                }
                _ => {}
            }
        }
        let flow = self
            .flows
            .iter()
            .find(|f| f.namespace == namespace && f.id == flow_id && revision.is_none_or(|r| r == f.revision))
            .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "Not Found: Requested Flow is not found."))?;
        if flow.forbidden {
            let message = format!(
                "Forbidden: the credential lacks permission EXECUTION:CREATE on namespace `{}`",
                flow.namespace
            );
            return Err(Refusal::new(StatusCode::FORBIDDEN, message));
        }
        if flow.disabled {
            return Err(Refusal::new(StatusCode::CONFLICT, "Illegal state: Requested Flow is disabled."));
        }
        let mut labels: Vec<Label> = Vec::new();
        for raw in raw_labels {
            let label = model::parse_label(raw).map_err(|e| match e {
                LabelError::Syntax => Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid queryString parameter"),
                LabelError::System(label) => Refusal::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "Illegal argument: System labels can only be set by Kestra itself, offending label: {}={}",
                        label.key, label.value
                    ),
                ),
            })?;
            // Kestra collects the labels into a map: a repeated key is Java's toMap failure.
            if let Some(first) = labels.iter().find(|l| l.key == label.key) {
                let message = format!(
                    "Illegal state: Duplicate key {} (attempted merging values {} and {})",
                    label.key, first.value, label.value
                );
                return Err(Refusal::new(StatusCode::CONFLICT, message));
            }
            labels.push(label);
        }
        Ok((flow, CreateQuery { labels, wait }))
    }

    /// Holds a `wait=true` create until its execution ends (re-reading it: a kill may come).
    async fn wait_for_end(&self, id: &str, mut answer: Value) -> Value {
        let started = Instant::now();
        while started.elapsed() < MAX_WAIT {
            let now = SystemTime::now();
            let end = {
                let store = self.store();
                let Some(execution) = store.get(id) else { return answer };
                if execution.current(now).is_terminated() {
                    let url = answer.get("url").cloned();
                    answer = execution.to_json(&self.tenant, now, url.and_then(|u| u.as_str().map(str::to_string)));
                    return answer;
                }
                execution.planned_end()
            };
            let pause = end.duration_since(now).unwrap_or_default().min(Duration::from_millis(200));
            tokio::time::sleep(pause.max(Duration::from_millis(5))).await;
        }
        answer
    }

    fn kill(&self, id: &str, query: &[(String, String)], kill_path: KillPath, path: &str) -> Response {
        let mut cascade = true;
        for (name, value) in query.iter().filter(|(name, _)| name == "isOnKillCascade") {
            cascade = match parse_bool(value) {
                Some(cascade) => cascade,
                None => return bad_argument(name, value, path),
            };
        }
        let now = SystemTime::now();
        let mut store = self.store();
        let Some(execution) = store.get_mut(id) else {
            return error(StatusCode::NOT_FOUND, "Not Found", path);
        };
        // A finished execution is refused only without the cascade; with it (the default)
        // Kestra queues the kill anyway and nothing changes.
        if execution.kill(now).is_err() && !cascade {
            return error(StatusCode::CONFLICT, "Illegal state: Execution is already finished, can't kill it", path);
        }
        match kill_path {
            KillPath::Legacy => StatusCode::ACCEPTED.into_response(),
            KillPath::Actions => {
                (StatusCode::ACCEPTED, Json(execution.to_json(&self.tenant, now, None))).into_response()
            }
        }
    }

    fn search(&self, query: &[(String, String)], path: &str) -> Response {
        let mut page = 1usize;
        let mut size = 10usize;
        let mut sort: Vec<(String, bool)> = Vec::new();
        for (name, value) in query {
            match name.as_str() {
                "page" => match value.parse::<usize>() {
                    Ok(n) if n >= 1 => page = n,
                    _ => return bad_argument(name, value, path),
                },
                "size" => match value.parse::<usize>() {
                    Ok(n) if n >= 1 => size = n.min(MAX_PAGE_SIZE),
                    _ => return bad_argument(name, value, path),
                },
                "sort" => {
                    let (field, direction) = value.split_once(':').unwrap_or((value, "asc"));
                    let known = ["id", "namespace", "flowId", "state.current", "state.startDate", "state.endDate"];
                    if !known.contains(&field) || !["asc", "desc"].contains(&direction) {
                        return error(StatusCode::BAD_REQUEST, format!("Bad Request: cannot sort by `{value}`"), path);
                    }
                    sort.push((field.to_string(), direction == "desc"));
                }
                _ => {}
            }
        }
        let filter = match filters::parse(query) {
            Ok(filter) => filter,
            Err(QueryError::Filters(why)) => {
                return error(StatusCode::BAD_REQUEST, format!("Invalid query filters: {why}"), path)
            }
            Err(QueryError::BadRequest(why)) => {
                return error(StatusCode::BAD_REQUEST, format!("Bad Request: {why}"), path)
            }
            Err(QueryError::Label(_)) => {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid queryString parameter", path)
            }
        };
        let now = SystemTime::now();
        let store = self.store();
        // Newest first unless a sort is asked for.
        let mut found: Vec<&Execution> =
            store.all().filter(|e| e.indexed(now, self.index_delay) && filter.matches(e, now)).collect();
        found.reverse();
        if !sort.is_empty() {
            found.sort_by(|a, b| {
                for (field, descending) in &sort {
                    let key = |e: &Execution| -> String {
                        let history = e.history(now);
                        let date = |at: SystemTime| model::instant(at);
                        match field.as_str() {
                            "id" => e.id.clone(),
                            "namespace" => e.namespace.clone(),
                            "flowId" => e.flow_id.clone(),
                            "state.current" => e.current(now).as_str().to_string(),
                            "state.startDate" => date(e.created),
                            _ => history
                                .last()
                                .filter(|_| e.current(now).is_terminated())
                                .map(|(_, at)| date(*at))
                                .unwrap_or_default(),
                        }
                    };
                    let order = key(a).cmp(&key(b));
                    let order = if *descending { order.reverse() } else { order };
                    if order.is_ne() {
                        return order;
                    }
                }
                std::cmp::Ordering::Equal
            });
        }
        let total = found.len();
        let results: Vec<Value> = found
            .into_iter()
            .skip((page - 1).saturating_mul(size))
            .take(size)
            .map(|e| e.to_json(&self.tenant, now, None))
            .collect();
        Json(json!({"results": results, "total": total})).into_response()
    }

    /// `/__double/…`: what a test asks the double itself, never Kestra's API.
    fn control(&self, method: &str, segments: &[&str], body: &Bytes, path: &str) -> Response {
        match (method, segments) {
            ("GET", ["executions"]) => {
                let now = SystemTime::now();
                let all: Vec<Value> = self.store().all().map(|e| e.to_json(&self.tenant, now, None)).collect();
                Json(Value::Array(all)).into_response()
            }
            ("POST", ["faults"]) => {
                let faults: Vec<Fault> = match serde_json::from_slice::<Value>(body) {
                    Ok(Value::Array(items)) => {
                        match items.into_iter().map(serde_json::from_value).collect::<Result<Vec<Fault>, _>>() {
                            Ok(faults) => faults,
                            Err(e) => return error(StatusCode::BAD_REQUEST, format!("Bad Request: fault: {e}"), path),
                        }
                    }
                    Ok(single @ Value::Object(_)) => match serde_json::from_value(single) {
                        Ok(fault) => vec![fault],
                        Err(e) => return error(StatusCode::BAD_REQUEST, format!("Bad Request: fault: {e}"), path),
                    },
                    _ => {
                        return error(StatusCode::BAD_REQUEST, "Bad Request: expected a fault or a list of them", path)
                    }
                };
                let valid = |f: &Fault| {
                    f.status.is_none_or(|s| (400..=599).contains(&s))
                        && (f.status.is_some() || f.delay_ms.is_some())
                        && (!f.after_create || f.status.is_some())
                        && f.delay_ms.is_none_or(|ms| ms <= 600_000)
                };
                if let Some(bad) = faults.iter().find(|f| !valid(f)) {
                    let message = format!(
                        "Bad Request: {bad:?}: give a status 400–599 (after_create only with a status) \
                         and/or delay_ms up to 600000"
                    );
                    return error(StatusCode::BAD_REQUEST, message, path);
                }
                let count = faults.len();
                if !self.store().queue_faults(faults) {
                    return error(StatusCode::BAD_REQUEST, "Bad Request: too many faults queued", path);
                }
                Json(json!({"queued": count})).into_response()
            }
            ("POST", ["reset"]) => {
                self.store().clear_faults();
                Json(json!({})).into_response()
            }
            _ => error(StatusCode::NOT_FOUND, "Not Found", path),
        }
    }
}

fn fault_response(status: u16, path: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match status {
        StatusCode::INTERNAL_SERVER_ERROR => "Internal server error".to_string(),
        other => other.canonical_reason().unwrap_or("Error").to_string(),
    };
    error(status, message, path)
}

/// A create's inputs: multipart parts, or none for an empty body.
async fn read_parts(headers: &HeaderMap, body: Bytes) -> Result<Vec<Part>, Refusal> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if media != "multipart/form-data" {
        let message = format!(
            "Unsupported Media Type: Content Type [{content_type}] not allowed. Allowed types: [multipart/form-data]"
        );
        return Err(Refusal::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message));
    }
    let malformed =
        |e: multer::Error| Refusal::new(StatusCode::BAD_REQUEST, format!("Bad Request: malformed multipart body: {e}"));
    let boundary = multer::parse_boundary(content_type).map_err(malformed)?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().map(str::to_string);
        let data = field.bytes().await.map_err(malformed)?.to_vec();
        parts.push(Part { name, filename, data });
    }
    Ok(parts)
}
