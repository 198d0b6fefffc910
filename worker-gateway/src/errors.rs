//! Every way a job call fails, and the one place each becomes a status: a gRPC status for
//! the binary form, and that status's HTTP status and JSON body for the REST form
//! ([`RestError`]), so the two forms never disagree on what a failure is. Messages name the
//! field (as a JSON pointer into the request) and never carry secrets or script bodies.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tonic::{Code, Status};

/// A refused or failed call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// No valid bearer token.
    #[error("a valid bearer token is required ({0})")]
    Unauthenticated(&'static str),
    /// The caller's roles do not allow this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A field is wrong; `field` is a JSON pointer such as `/namespace` or `/inputs/when`.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// Where.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// No such job, or not one the caller may see (the two are not told apart).
    #[error("no such job")]
    NotFound,
    /// The job cannot do that in its state (e.g. cancel a finished job).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A per-user bound was reached.
    #[error("{0}")]
    ResourceExhausted(&'static str),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
}

impl GatewayError {
    /// A bad field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), reason: reason.into() }
    }
}

impl From<GatewayError> for Status {
    fn from(error: GatewayError) -> Self {
        let code = match &error {
            GatewayError::Unauthenticated(_) => Code::Unauthenticated,
            GatewayError::Forbidden(_) => Code::PermissionDenied,
            GatewayError::InvalidArgument { .. } => Code::InvalidArgument,
            GatewayError::NotFound => Code::NotFound,
            GatewayError::FailedPrecondition(_) => Code::FailedPrecondition,
            GatewayError::ResourceExhausted(_) => Code::ResourceExhausted,
            GatewayError::Store(_) => {
                tracing::error!(error = %error, "job store failed");
                return Status::unavailable("the job store is unavailable; try again");
            }
        };
        Status::new(code, error.to_string())
    }
}

/// A refused REST call: a gRPC status, the service's own or the JSON decoder's (the REST form
/// is the same service), or a refusal only HTTP has.
#[derive(Debug)]
#[non_exhaustive]
pub enum RestError {
    /// What the service answered, or a request it cannot be given (`InvalidArgument`).
    Status {
        /// The gRPC code, which decides the HTTP status.
        code: Code,
        /// What went wrong.
        message: String,
        /// The JSON pointer of the field at fault, when there is one.
        field: Option<String>,
    },
    /// No route has this path.
    NoRoute,
    /// The route exists, not with this method.
    MethodNotAllowed,
    /// The body is larger than the bound (bytes).
    TooLarge(usize),
    /// A body that is not `application/json`.
    NotJson,
}

impl RestError {
    /// `INVALID_ARGUMENT` at `field` (a JSON pointer; `None` for the request as a whole).
    pub fn invalid(field: Option<String>, reason: impl std::fmt::Display) -> Self {
        let message = match &field {
            Some(at) => format!("{at}: {reason}"),
            None => reason.to_string(),
        };
        Self::Status { code: Code::InvalidArgument, message, field }
    }

    /// The HTTP status, the `error` name and the message.
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            Self::Status { code, message, .. } => (http_status(*code), code_name(*code), message.clone()),
            Self::NoRoute => (StatusCode::NOT_FOUND, "not_found", "no such route".into()),
            Self::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method".into())
            }
            Self::TooLarge(max) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body too large (at most {max} bytes)"),
            ),
            Self::NotJson => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "a request body must be application/json".into(),
            ),
        }
    }
}

impl From<Status> for RestError {
    fn from(status: Status) -> Self {
        // The service's messages start with the field's JSON pointer when one is at fault
        // (`/inputs/when: must not contain NUL`, see `GatewayError::InvalidArgument`); the
        // fields it names are validated ids, so the first ": " ends the pointer.
        let message = status.message().to_string();
        let field = match status.code() {
            Code::InvalidArgument if message.starts_with('/') => message.split_once(": ").map(|(at, _)| at.to_string()),
            _ => None,
        };
        Self::Status { code: status.code(), message, field }
    }
}

impl From<GatewayError> for RestError {
    fn from(error: GatewayError) -> Self {
        Status::from(error).into()
    }
}

impl RestError {
    /// The JSON body: `{"error":"invalid_argument","message":"…","field":"/inputs/when"}`,
    /// `field` only when one is at fault.
    pub fn body(&self) -> serde_json::Value {
        let (_, error, message) = self.parts();
        let mut body = serde_json::json!({ "error": error, "message": message });
        if let (Self::Status { field: Some(field), .. }, Some(object)) = (self, body.as_object_mut()) {
            object.insert("field".into(), field.clone().into());
        }
        body
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let status = self.parts().0;
        let mut response = (status, axum::Json(self.body())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // As authz answers at Envoy: the client learns which scheme to use.
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"qiria\""));
        }
        response
    }
}

/// The HTTP status of a gRPC code: the codes the service answers with have their own, any
/// other is the server's fault.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The code's name as the REST form's `error` says it (`invalid_argument`).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}
