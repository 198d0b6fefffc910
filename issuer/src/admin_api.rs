//! The issuer's admin API on users, on its own listener. Zero trust: Envoy's decision is the
//! first gate, not the only one. Every call is authenticated here (the bearer token, verified
//! with the identity library against the verification keys) and authorized here (the same Rego
//! policy as authz, on the same input-document shape, evaluated in-process); a refusal is
//! audited. Only then does a handler run.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use qiria_identity::{bearer_token, TokenVerifier};
use qiria_policy::{allows, LivePolicy};
use qiria_runtime::audit::{self, AuditEvent};

use crate::client_addr::ClientAddress;
use crate::errors::IssuerError;
use crate::grants::Issuer;
use crate::store::{fold_username, StoreError, User};
use crate::token_api::MAX_FORM_BYTES;

/// What the admin API needs.
#[derive(Clone)]
pub struct AdminApi {
    /// Users live in the issuer's store.
    pub issuer: Arc<Issuer>,
    /// Verifies callers' bearer tokens.
    pub verifier: Arc<TokenVerifier>,
    /// Decides who may call what.
    pub policy: Arc<LivePolicy>,
    /// How client addresses are found (for the audit trail).
    pub clients: Arc<ClientAddress>,
}

/// The verified caller of an admin call.
#[derive(Clone, Debug)]
struct Caller(String);

/// The admin router: every route behind [`authorize`].
pub fn router(api: AdminApi) -> axum::Router {
    axum::Router::new()
        .route("/v1/admin/users", get(list_users).post(create_user))
        .route("/v1/admin/users/{username}/roles", axum::routing::put(set_roles))
        .route("/v1/admin/users/{username}", axum::routing::delete(disable_user))
        .layer(axum::middleware::from_fn_with_state(api.clone(), authorize))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(api.issuer)
}

/// Authenticates and authorizes one call; the body is read (bounded) so the policy sees it.
async fn authorize(
    State(api): State<AdminApi>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let client_ip = api.clients.of(peer, &parts.headers).to_string();
    let operation = format!("{} {}", parts.method, parts.uri.path());
    let Ok(body) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return IssuerError::InvalidRequest(format!("body is larger than {MAX_FORM_BYTES} bytes")).into_response();
    };
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let refuse = |actor: Option<&str>, error: IssuerError| {
        let reason = if matches!(error, IssuerError::Unauthenticated(_)) { "unauthenticated" } else { "forbidden" };
        audit::record(AuditEvent::AdminRefused { actor, operation: &operation, reason, client_ip: &client_ip });
        error.into_response()
    };
    let identity = match api.verifier.verify_header(authorization) {
        Ok(identity) => identity,
        Err(error) => return refuse(None, IssuerError::Unauthenticated(error)),
    };
    let request_id = parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let allowed = match qiria_policy::input::from_http(&parts, &body, peer, &request_id) {
        Ok(mut input) => {
            if let Some(token) = authorization.and_then(bearer_token) {
                input.set_identity_from_token(token);
            }
            api.policy
                .current()
                .as_ref()
                .is_some_and(|bundle| bundle.evaluate(input.into_value()).is_ok_and(|v| allows(&v)))
        }
        Err(_) => false,
    };
    if !allowed {
        return refuse(Some(&identity.subject), IssuerError::Forbidden);
    }
    // An admin action that the SIEM may never see is not made (`log.siem.when_full = "block"`).
    if parts.method != axum::http::Method::GET {
        if let Err(full) = qiria_runtime::siem::admit_admin_action() {
            return IssuerError::from(full).into_response();
        }
    }
    let mut request = Request::from_parts(parts, Body::from(body));
    request.extensions_mut().insert(Caller(identity.subject.to_string()));
    next.run(request).await
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
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, IssuerError> {
    let new: NewUser = json_body(&headers, &body)?;
    let username =
        fold_username(&new.username).map_err(|why| IssuerError::InvalidRequest(format!("`username`: {why}")))?;
    if new.password.chars().count() < 12 || new.password.len() > 1024 {
        return Err(IssuerError::InvalidRequest("`password`: 12 to 1024 characters".into()));
    }
    check_roles(&new.roles)?;
    let hash = issuer
        .hashing()
        .hash(&new.password)
        .await?
        .ok_or_else(|| IssuerError::Internal("argon2 refused the password".into()))?;
    let user = User {
        id: uuid::Uuid::new_v4().to_string(),
        username,
        password_hash: hash,
        roles: new.roles,
        disabled: false,
        email: new.email,
        display_name: new.display_name,
    };
    match issuer.store().add_user(&user).await {
        Ok(()) => {
            audit::record(AuditEvent::AdminAction { actor: &caller.0, action: "user_created", target: &user.username });
            Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": user.id }))).into_response())
        }
        Err(StoreError::Duplicate(name)) => {
            Err(IssuerError::InvalidRequest(format!("`username`: `{name}` already exists")))
        }
        Err(e) => Err(e.into()),
    }
}

async fn set_roles(
    State(issuer): State<Arc<Issuer>>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(username): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, IssuerError> {
    let roles: Roles = json_body(&headers, &body)?;
    check_roles(&roles.roles)?;
    match issuer.store().set_roles(&username, &roles.roles).await {
        Ok(()) => {
            audit::record(AuditEvent::AdminAction { actor: &caller.0, action: "roles_set", target: &username });
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(StoreError::NoSuchUser(_)) => Err(IssuerError::NotFound),
        Err(e) => Err(e.into()),
    }
}

async fn disable_user(
    State(issuer): State<Arc<Issuer>>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(username): axum::extract::Path<String>,
) -> Result<Response, IssuerError> {
    match issuer.store().disable(&username).await {
        Ok(()) => {
            audit::record(AuditEvent::AdminAction { actor: &caller.0, action: "user_disabled", target: &username });
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(StoreError::NoSuchUser(_)) => Err(IssuerError::NotFound),
        Err(e) => Err(e.into()),
    }
}
