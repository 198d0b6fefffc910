//! The issuer's public HTTP endpoints (OAuth 2.0 shapes): `POST /v1/auth/token`,
//! `POST /v1/auth/revoke`, `GET /.well-known/jwks.json`,
//! `GET /.well-known/openid-configuration`. Errors become responses in `errors`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;

use axum::extract::ConnectInfo;

use crate::client_addr::ClientAddress;
use crate::errors::IssuerError;
use crate::grants::Issuer;

/// Largest form body accepted; a larger one is refused before it is parsed.
pub(crate) const MAX_FORM_BYTES: usize = 16 * 1024;

/// What the endpoints share.
#[derive(Clone)]
pub struct TokenApi {
    /// The grants.
    pub issuer: Arc<Issuer>,
    /// How client addresses are found.
    pub clients: Arc<ClientAddress>,
}

/// The router of the issuer's public endpoints.
pub fn router(api: TokenApi) -> axum::Router {
    axum::Router::new()
        .route("/v1/auth/token", post(token))
        .route("/v1/auth/revoke", post(revoke))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        // Bodies up to Envoy's buffer reach the handler, which refuses big ones with an
        // OAuth error; axum's own limit only stops what Envoy would never send.
        .layer(axum::extract::DefaultBodyLimit::max(4 * MAX_FORM_BYTES))
        .with_state(api)
}

/// Reads an `application/x-www-form-urlencoded` body: every parameter once, all UTF-8.
fn form(headers: &HeaderMap, body: &Bytes) -> Result<HashMap<String, String>, IssuerError> {
    if body.len() > MAX_FORM_BYTES {
        return Err(IssuerError::InvalidRequest(format!("body is larger than {MAX_FORM_BYTES} bytes")));
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(IssuerError::InvalidRequest("content type must be application/x-www-form-urlencoded".into()));
    }
    let text = std::str::from_utf8(body).map_err(|_| IssuerError::InvalidRequest("body is not UTF-8".into()))?;
    let mut params = HashMap::new();
    for (key, value) in form_urlencoded::parse(text.as_bytes()) {
        if value.contains('\u{FFFD}') || key.contains('\u{FFFD}') {
            return Err(IssuerError::InvalidRequest(format!("parameter `{key}` is not UTF-8 once decoded")));
        }
        if params.insert(key.to_string(), value.into_owned()).is_some() {
            return Err(IssuerError::InvalidRequest(format!("parameter `{key}` is repeated")));
        }
    }
    Ok(params)
}

fn required<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, IssuerError> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| IssuerError::InvalidRequest(format!("`{name}` is required")))
}

#[tracing::instrument(name = "issuer.token", level = "debug", skip_all)]
async fn token(
    State(api): State<TokenApi>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, IssuerError> {
    let ip = api.clients.of(peer, &headers);
    let issuer = &api.issuer;
    issuer.admit(ip)?;
    let params = form(&headers, &body)?;
    let response = match required(&params, "grant_type")? {
        "password" => {
            let username = required(&params, "username")?;
            let password = required(&params, "password")?;
            if username.len() > 256 || password.len() > 1024 {
                return Err(IssuerError::InvalidRequest("username or password is too long".into()));
            }
            issuer.password_grant(username, password, ip).await?
        }
        "refresh_token" => issuer.refresh_grant(required(&params, "refresh_token")?, ip).await?,
        _ => return Err(IssuerError::UnsupportedGrantType),
    };
    Ok(([(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")], Json(response)).into_response())
}

#[tracing::instrument(name = "issuer.revoke", level = "debug", skip_all)]
async fn revoke(
    State(api): State<TokenApi>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, IssuerError> {
    let ip = api.clients.of(peer, &headers);
    api.issuer.admit_revoke(ip)?;
    let params = form(&headers, &body)?;
    api.issuer.revoke(required(&params, "token")?, ip).await?;
    Ok(StatusCode::OK.into_response())
}

async fn jwks(State(api): State<TokenApi>) -> Response {
    ([(header::CACHE_CONTROL, "max-age=60")], Json(api.issuer.jwks())).into_response()
}

async fn discovery(State(api): State<TokenApi>) -> Response {
    let issuer = &api.issuer;
    let base = issuer.settings().issuer.trim_end_matches('/');
    Json(serde_json::json!({
        "issuer": issuer.settings().issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "token_endpoint": format!("{base}/v1/auth/token"),
        "revocation_endpoint": format!("{base}/v1/auth/revoke"),
        "grant_types_supported": ["password", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
    }))
    .into_response()
}
