//! Who is calling: the identities in the client certificate the TLS handshake verified against
//! the configured CA (URI SANs — SPIFFE ids, as Istio and SPIRE issue them — and DNS SANs),
//! checked against the allowed list. A certificate from the right CA is not enough: only the
//! gateway's identity runs scripts, whatever network the call came from.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::errors::WorkerError;

/// The allowed identity the peer's certificate holds.
pub(crate) fn allowed_identity<T>(request: &tonic::Request<T>, allowed: &[String]) -> Result<String, WorkerError> {
    let certs = request.peer_certs().ok_or(WorkerError::NoClientCertificate)?;
    let leaf = certs.first().ok_or(WorkerError::NoClientCertificate)?;
    let names = identities(leaf.as_ref());
    names.iter().find(|name| allowed.contains(name)).cloned().ok_or(WorkerError::CallerNotAllowed(names.join(",")))
}

/// The URI and DNS names of a DER certificate (none if it does not parse: refused).
fn identities(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_string()),
            GeneralName::DNSName(dns) => Some((*dns).to_string()),
            _ => None,
        })
        .collect()
}
