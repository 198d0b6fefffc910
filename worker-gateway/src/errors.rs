//! Every way a job call fails, and the one place each becomes a gRPC status. Messages name
//! the field (as a JSON pointer into the request) and never carry secrets or script bodies.

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
