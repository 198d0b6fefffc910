//! Who calls: the bearer token of the call's own metadata, verified here with the shared
//! verification library. `x-qiria-*` headers are never read: a request that reaches the
//! gateway without a valid token (straight to its port, or with forged headers) is refused.

use qiria_identity::TokenVerifier;
use tonic::metadata::MetadataMap;

use crate::errors::GatewayError;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`.
    pub subject: String,
    /// The token's roles.
    pub roles: Vec<String>,
}

impl Caller {
    /// Whether the caller holds `role`.
    pub fn has(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Verifies the call's `authorization` metadata.
pub fn authenticate(verifier: &TokenVerifier, metadata: &MetadataMap) -> Result<Caller, GatewayError> {
    authenticate_header(verifier, metadata.get("authorization").and_then(|v| v.to_str().ok()))
}

/// Verifies an `authorization` header value (gRPC metadata or an HTTP header alike).
pub fn authenticate_header(verifier: &TokenVerifier, header: Option<&str>) -> Result<Caller, GatewayError> {
    let verified = verifier.verify_header(header).map_err(|e| GatewayError::Unauthenticated(e.code()))?;
    Ok(Caller { subject: verified.subject.to_string(), roles: verified.role_names().map(str::to_string).collect() })
}
