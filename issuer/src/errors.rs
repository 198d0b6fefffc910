//! Every way an issuer request fails, and the one place each becomes an HTTP response: an
//! OAuth 2.0 error body (RFC 6749 §5.2) for the token endpoints, the same shape for the admin
//! API, `no-store` always.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use qiria_identity::IdentityError;

use crate::hashing::Busy;
use crate::store::StoreError;

/// A refused request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerError {
    /// A parameter is missing, repeated or malformed; names it.
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    /// Wrong credentials, unknown/expired/revoked/reused refresh token, disabled user. One
    /// error for all of them, so a caller cannot tell which.
    #[error("invalid_grant")]
    InvalidGrant,
    /// A `grant_type` we do not offer.
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    /// Too many requests from this client or for this user.
    #[error("slow_down")]
    TooManyRequests,
    /// Password hashing is saturated: try again in a moment.
    #[error("temporarily_unavailable")]
    Busy,
    /// The admin API was called without a valid bearer token.
    #[error("unauthenticated ({0})")]
    Unauthenticated(IdentityError),
    /// The admin API's policy refused the caller.
    #[error("forbidden")]
    Forbidden,
    /// No such user.
    #[error("not_found")]
    NotFound,
    /// No signing key loaded.
    #[error("no signing key")]
    NoSigningKey,
    /// The SIEM is behind on the audit trail: admin actions wait (`log.siem.when_full`).
    #[error("{0}")]
    AuditSpoolFull(#[from] qiria_runtime::siem::SpoolFull),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Anything else on our side.
    #[error("{0}")]
    Internal(String),
}

impl From<Busy> for IssuerError {
    fn from(_: Busy) -> Self {
        Self::Busy
    }
}

impl IntoResponse for IssuerError {
    fn into_response(self) -> Response {
        let (status, error, description) = match &self {
            Self::InvalidRequest(why) => (StatusCode::BAD_REQUEST, "invalid_request", why.clone()),
            Self::InvalidGrant => {
                (StatusCode::BAD_REQUEST, "invalid_grant", "the credentials or refresh token are not valid".into())
            }
            Self::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be `password` or `refresh_token`".into(),
            ),
            Self::TooManyRequests => {
                (StatusCode::TOO_MANY_REQUESTS, "slow_down", "too many requests; retry in a minute".into())
            }
            Self::Busy => {
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "busy; retry in a second".into())
            }
            Self::Unauthenticated(why) => {
                (StatusCode::UNAUTHORIZED, "invalid_token", format!("a valid bearer token is required ({why})"))
            }
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "the policy does not allow this call".into()),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found", "no such user".into()),
            Self::AuditSpoolFull(full) => {
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", full.to_string())
            }
            Self::NoSigningKey | Self::Store(_) | Self::Internal(_) => {
                tracing::error!(error = %self, "issuer request failed");
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "try again later".into())
            }
        };
        let body = Json(serde_json::json!({ "error": error, "error_description": description }));
        let mut response = (status, [(header::CACHE_CONTROL, "no-store")], body).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::TooManyRequests => {
                headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
            }
            Self::Busy => {
                headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            Self::AuditSpoolFull(_) => {
                headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("30"));
            }
            Self::Unauthenticated(IdentityError::Missing) => {
                headers.insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"qiria\""));
            }
            Self::Unauthenticated(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"qiria\", error=\"invalid_token\""),
                );
            }
            _ => {}
        }
        response
    }
}
