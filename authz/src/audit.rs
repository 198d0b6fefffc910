//! Typed audit events: security-relevant changes of the service's own state (which policy
//! and which keys decide). They go to the `qiria::audit` tracing target, so a subscriber can
//! route them to the tamper-evident trail and the SIEM without parsing free text.

use tracing::{info, warn};

/// One audit event. Fields never hold secrets: keys appear by kid, policies by revision.
#[derive(Debug)]
pub enum AuditEvent<'a> {
    /// A policy bundle was activated.
    PolicyActivated {
        /// Its content hash.
        revision: &'a str,
        /// The revision it replaced, if any.
        previous: Option<&'a str>,
        /// How many files it holds.
        files: usize,
    },
    /// A policy bundle was refused; the previous one keeps serving.
    PolicyRejected {
        /// Why.
        error: &'a str,
    },
    /// A verification key set was activated.
    KeySetActivated {
        /// Content hash of the key files.
        fingerprint: &'a str,
        /// Key ids now accepted.
        kids: Vec<&'a str>,
    },
    /// A key directory could not be loaded; the previous key set keeps serving.
    KeySetRejected {
        /// Why.
        error: &'a str,
    },
}

/// Emits an audit event.
pub fn record(event: AuditEvent<'_>) {
    match event {
        AuditEvent::PolicyActivated { revision, previous, files } => {
            info!(target: "qiria::audit", event = "policy_activated", revision, previous, files)
        }
        AuditEvent::PolicyRejected { error } => warn!(target: "qiria::audit", event = "policy_rejected", error),
        AuditEvent::KeySetActivated { fingerprint, kids } => {
            info!(target: "qiria::audit", event = "keyset_activated", fingerprint, kids = ?kids)
        }
        AuditEvent::KeySetRejected { error } => warn!(target: "qiria::audit", event = "keyset_rejected", error),
    }
}
