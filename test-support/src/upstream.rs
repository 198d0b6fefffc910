//! An upstream that answers every request with what it received (method, path, headers),
//! over HTTP/1.1 and h2c; gRPC requests get `grpc-status: 0`. Tests read it to see exactly
//! what Envoy let through.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};

/// A running echo upstream.
pub struct EchoUpstream {
    /// Its loopback port.
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

/// What the upstream received, as it reports it.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct Echo {
    /// Request method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header name → all values.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Body length.
    pub body_len: usize,
}

impl EchoUpstream {
    /// Starts it on a free port.
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// Starts it on `port` (0: any free one).
    pub async fn start_on(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        let app = axum::Router::new().fallback(echo);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, task }
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &headers {
        map.entry(name.as_str().to_string()).or_default().push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let grpc = headers.get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let echo = Echo { method: method.to_string(), path: uri.to_string(), headers: map, body_len: body.len() };
    let json = serde_json::to_string(&echo).unwrap_or_default();
    if grpc {
        ([("content-type", "application/grpc"), ("grpc-status", "0")], [("x-echo", json)]).into_response()
    } else {
        ([("content-type", "application/json"), ("x-echo-upstream", "1")], json).into_response()
    }
}
