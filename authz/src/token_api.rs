//! The issuer's HTTP endpoints (OAuth 2.0 shapes): `POST /v1/auth/token`,
//! `POST /v1/auth/revoke`, `GET /.well-known/jwks.json`,
//! `GET /.well-known/openid-configuration`. [`IssuerError`] becomes an HTTP response here and
//! nowhere else.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;

use crate::issuer::{Issuer, IssuerError};

/// Largest form body accepted; a larger one is refused before it is parsed.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// The router of the issuer's endpoints.
pub fn router(issuer: Arc<Issuer>) -> axum::Router {
    axum::Router::new()
        .route("/v1/auth/token", post(token))
        .route("/v1/auth/revoke", post(revoke))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        // Bodies up to Envoy's buffer reach the handler, which refuses big ones with an
        // OAuth error; axum's own limit only stops what Envoy would never send.
        .layer(axum::extract::DefaultBodyLimit::max(4 * MAX_FORM_BYTES))
        .with_state(issuer)
}

impl IntoResponse for IssuerError {
    fn into_response(self) -> Response {
        let (status, error, description) = match &self {
            IssuerError::InvalidRequest(why) => (StatusCode::BAD_REQUEST, "invalid_request", why.clone()),
            IssuerError::InvalidGrant => {
                (StatusCode::BAD_REQUEST, "invalid_grant", "the credentials or refresh token are not valid".into())
            }
            IssuerError::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be `password` or `refresh_token`".into(),
            ),
            IssuerError::TooManyRequests => {
                (StatusCode::TOO_MANY_REQUESTS, "slow_down", "too many requests; retry in a minute".into())
            }
            IssuerError::NoSigningKey | IssuerError::Store(_) | IssuerError::Internal(_) => {
                tracing::error!(error = %self, "token endpoint failed");
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "try again later".into())
            }
        };
        let body = Json(serde_json::json!({ "error": error, "error_description": description }));
        let mut response = (status, [(header::CACHE_CONTROL, "no-store")], body).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
        }
        response
    }
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

/// The client address Envoy appended to `x-forwarded-for` (its last entry), for audit.
fn client_ip(headers: &HeaderMap) -> String {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

#[tracing::instrument(name = "issuer.token", level = "debug", skip_all)]
async fn token(State(issuer): State<Arc<Issuer>>, headers: HeaderMap, body: Bytes) -> Result<Response, IssuerError> {
    let ip = client_ip(&headers);
    issuer.admit(&ip)?;
    let params = form(&headers, &body)?;
    let response = match required(&params, "grant_type")? {
        "password" => {
            let username = required(&params, "username")?;
            let password = required(&params, "password")?;
            if username.len() > 256 || password.len() > 1024 {
                return Err(IssuerError::InvalidRequest("username or password is too long".into()));
            }
            issuer.password_grant(username, password, &ip).await?
        }
        "refresh_token" => issuer.refresh_grant(required(&params, "refresh_token")?, &ip).await?,
        _ => return Err(IssuerError::UnsupportedGrantType),
    };
    Ok(([(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")], Json(response)).into_response())
}

#[tracing::instrument(name = "issuer.revoke", level = "debug", skip_all)]
async fn revoke(State(issuer): State<Arc<Issuer>>, headers: HeaderMap, body: Bytes) -> Result<Response, IssuerError> {
    let params = form(&headers, &body)?;
    issuer.revoke(required(&params, "token")?, &client_ip(&headers)).await?;
    Ok(StatusCode::OK.into_response())
}

async fn jwks(State(issuer): State<Arc<Issuer>>) -> Response {
    ([(header::CACHE_CONTROL, "max-age=60")], Json(issuer.jwks())).into_response()
}

async fn discovery(State(issuer): State<Arc<Issuer>>) -> Response {
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

/// The admin API on users. Who may call it is decided by the Rego policy at Envoy
/// (`users:manage`), never here: this port must only be reachable through Envoy.
pub fn admin_router(issuer: Arc<Issuer>) -> axum::Router {
    axum::Router::new()
        .route("/v1/admin/users", get(list_users).post(create_user))
        .route("/v1/admin/users/{username}/roles", axum::routing::put(set_roles))
        .route("/v1/admin/users/{username}", axum::routing::delete(disable_user))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(issuer)
}

/// A user as the admin API shows it (never the password hash).
#[derive(serde::Serialize)]
struct UserView {
    id: String,
    username: String,
    roles: Vec<String>,
    disabled: bool,
    email: Option<String>,
    display_name: Option<String>,
}

/// `POST /v1/admin/users`
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    roles: Vec<String>,
    email: Option<String>,
    display_name: Option<String>,
}

/// `PUT /v1/admin/users/{username}/roles`
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Roles {
    roles: Vec<String>,
}

/// Reads a JSON body; a bad one is an `invalid_request` that says what is wrong.
fn json_body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, IssuerError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json") {
        return Err(IssuerError::InvalidRequest("content type must be application/json".into()));
    }
    serde_json::from_slice(body).map_err(|e| IssuerError::InvalidRequest(format!("body: {e}")))
}

/// Role names go into headers and tokens: short, plain names only.
fn check_roles(roles: &[String]) -> Result<(), IssuerError> {
    let plain = |r: &String| {
        !r.is_empty() && r.len() <= 64 && r.chars().all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c))
    };
    if roles.iter().all(plain) {
        Ok(())
    } else {
        Err(IssuerError::InvalidRequest("`roles`: names of letters, digits, '-', '_', ':' or '.'".into()))
    }
}

async fn list_users(State(issuer): State<Arc<Issuer>>) -> Result<Response, IssuerError> {
    let users = issuer.store().users().await?;
    let view: Vec<UserView> = users
        .into_iter()
        .map(|u| UserView {
            id: u.id,
            username: u.username,
            roles: u.roles,
            disabled: u.disabled,
            email: u.email,
            display_name: u.display_name,
        })
        .collect();
    Ok(Json(view).into_response())
}

async fn create_user(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, IssuerError> {
    let new: NewUser = json_body(&headers, &body)?;
    if new.username.is_empty() || new.username.len() > 256 {
        return Err(IssuerError::InvalidRequest("`username`: 1 to 256 characters".into()));
    }
    if new.password.chars().count() < 12 || new.password.len() > 1024 {
        return Err(IssuerError::InvalidRequest("`password`: at least 12 characters".into()));
    }
    check_roles(&new.roles)?;
    let password = new.password;
    let hash = tokio::task::spawn_blocking(move || crate::issuer::hash_password(&password))
        .await
        .map_err(|e| IssuerError::Internal(e.to_string()))??;
    let user = crate::store::User {
        id: uuid::Uuid::new_v4().to_string(),
        username: new.username,
        password_hash: hash,
        roles: new.roles,
        disabled: false,
        email: new.email,
        display_name: new.display_name,
    };
    match issuer.store().add_user(&user).await {
        Ok(()) => Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": user.id }))).into_response()),
        Err(crate::store::StoreError::Duplicate(name)) => {
            Err(IssuerError::InvalidRequest(format!("`username`: `{name}` already exists")))
        }
        Err(e) => Err(e.into()),
    }
}

async fn set_roles(
    State(issuer): State<Arc<Issuer>>,
    axum::extract::Path(username): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, IssuerError> {
    let roles: Roles = json_body(&headers, &body)?;
    check_roles(&roles.roles)?;
    match issuer.store().set_roles(&username, &roles.roles).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(crate::store::StoreError::NoSuchUser(_)) => Ok(StatusCode::NOT_FOUND.into_response()),
        Err(e) => Err(e.into()),
    }
}

async fn disable_user(
    State(issuer): State<Arc<Issuer>>,
    axum::extract::Path(username): axum::extract::Path<String>,
) -> Result<Response, IssuerError> {
    match issuer.store().disable(&username).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(crate::store::StoreError::NoSuchUser(_)) => Ok(StatusCode::NOT_FOUND.into_response()),
        Err(e) => Err(e.into()),
    }
}
