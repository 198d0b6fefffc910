//! Requests through Envoy, over HTTP/1.1 or as gRPC over h2c, and what came back.

use reqwest::header::HeaderMap;

use crate::upstream::Echo;

/// How to send a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Plain HTTP/1.1.
    Http1,
    /// A unary gRPC call (h2c, `application/grpc`, one empty message).
    Grpc,
}

/// What came back.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `grpc-status`, for gRPC calls.
    pub grpc_status: Option<String>,
    /// Response headers.
    pub headers: HeaderMap,
    /// What the upstream saw, when the request reached it.
    pub echo: Option<Echo>,
    /// Response body (for HTTP/1.1).
    pub body: String,
}

impl Reply {
    /// True when the upstream answered (the request was allowed through).
    pub fn reached_upstream(&self) -> bool {
        self.echo.is_some()
    }

    /// All values of a header the upstream received.
    pub fn upstream_header(&self, name: &str) -> Vec<String> {
        self.echo.as_ref().and_then(|e| e.headers.get(name).cloned()).unwrap_or_default()
    }

    /// What finds this request's line in authz's decision log: the `x-request-id` the upstream
    /// received with an allowed request, or the decision id a denial carried to the client.
    pub fn decision_key(&self) -> Option<String> {
        match &self.echo {
            Some(_) => self.upstream_header("x-request-id").pop(),
            None => self.headers.get("x-qiria-decision-id").and_then(|v| v.to_str().ok()).map(str::to_string),
        }
    }
}

/// Sends `method path` with optional bearer token and extra headers.
pub async fn send(
    base_url: &str,
    protocol: Protocol,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let client = crate::client(protocol == Protocol::Grpc);
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client.request(method, format!("{base_url}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if protocol == Protocol::Grpc {
        request = request.header("content-type", "application/grpc").header("te", "trailers").body(vec![0u8; 5]);
    }
    let response = request.send().await.expect("request through envoy");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let grpc_status = headers.get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = response.text().await.unwrap_or_default();
    let echo = match protocol {
        Protocol::Grpc => headers.get("x-echo").and_then(|v| serde_json::from_slice(v.as_bytes()).ok()),
        Protocol::Http1 => serde_json::from_str(&body).ok().filter(|_| headers.contains_key("x-echo-upstream")),
    };
    Reply { status, grpc_status, headers, echo, body }
}
