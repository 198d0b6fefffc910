//! Every way a call fails, and the one place each becomes a gRPC status. Messages name the
//! field and never carry the script.

use tonic::Status;

use crate::pool::PoolFull;
use crate::sandbox::SandboxError;

/// Set on a status when nothing of the run was made and the call may be made again (a
/// status of the transport, a connection cut mid-call, cannot say that).
pub(crate) const NOT_STARTED: &str = "qiria-run-not-started";

/// A call that did not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum WorkerError {
    /// The TLS layer gave no client certificate (cannot happen with client auth required;
    /// refused all the same).
    #[error("a client certificate is required")]
    NoClientCertificate,
    /// The certificate names no allowed identity.
    #[error("this identity may not run scripts")]
    CallerNotAllowed(String),
    /// A field is refused.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// No sandbox is free.
    #[error("{0}")]
    Busy(#[from] PoolFull),
    /// The sandbox could not be made or watched.
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
}

impl From<WorkerError> for Status {
    fn from(error: WorkerError) -> Self {
        let message = error.to_string();
        match error {
            WorkerError::NoClientCertificate => Status::unauthenticated(message),
            WorkerError::CallerNotAllowed(_) => Status::permission_denied(message),
            WorkerError::Invalid { .. } => Status::invalid_argument(message),
            WorkerError::Busy(_) => Status::resource_exhausted(message),
            WorkerError::Sandbox(SandboxError::NotStarted(_)) => {
                let mut status = Status::unavailable(message);
                status.metadata_mut().insert(NOT_STARTED, tonic::metadata::MetadataValue::from_static("true"));
                status
            }
            WorkerError::Sandbox(_) => Status::internal(message),
        }
    }
}
