//! Typed audit events of every service: security-relevant changes of a service's own state
//! (which policy and which keys decide, which key signs) and of the issuer (logins, refreshes,
//! reuse, revocation, admin actions). The sink is the `qiria::audit` tracing target, so a
//! subscriber can route them to the tamper-evident trail and the SIEM without parsing free
//! text.

use tracing::{info, warn};

/// One audit event. Fields never hold secrets: keys appear by kid, policies by revision.
#[derive(Debug)]
#[non_exhaustive]
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
    /// The issuer started signing new tokens with this key.
    SigningKeyActivated {
        /// Its key id.
        kid: &'a str,
        /// The key it replaced, if any.
        previous: Option<&'a str>,
    },
    /// The signing directory could not be used, or names an active key the verification keys
    /// do not accept yet; the previous signing key keeps signing.
    SigningKeyRejected {
        /// Why.
        error: &'a str,
    },
    /// A password login succeeded.
    LoginSucceeded {
        /// User id.
        user: &'a str,
        /// Client address as Envoy saw it.
        client_ip: &'a str,
    },
    /// A password login failed (unknown user, wrong password or disabled: not said which).
    LoginFailed {
        /// The username tried.
        username: &'a str,
        /// Client address.
        client_ip: &'a str,
        /// The account was locked after repeated failures.
        locked: bool,
    },
    /// Failed logins locked an account (for the configured lockout time).
    AccountLocked {
        /// The username.
        username: &'a str,
        /// Client address of the failure that locked it.
        client_ip: &'a str,
    },
    /// A token request was refused by a rate limit.
    RateLimited {
        /// Client address.
        client_ip: &'a str,
    },
    /// A refresh token was exchanged for a new pair.
    TokenRefreshed {
        /// User id.
        user: &'a str,
        /// Client address.
        client_ip: &'a str,
    },
    /// An already-rotated refresh token came back: its family was revoked.
    RefreshReuse {
        /// User id.
        user: &'a str,
        /// The family revoked.
        family: &'a str,
        /// How many tokens that revoked.
        revoked: u64,
        /// Client address.
        client_ip: &'a str,
    },
    /// A refresh token family was revoked on request (RFC 7009).
    TokenRevoked {
        /// User id.
        user: &'a str,
        /// How many tokens that revoked.
        revoked: u64,
        /// Client address.
        client_ip: &'a str,
    },
    /// authz denied a request (or would have: shadow mode).
    AccessDenied {
        /// The decision id (the decision log's event, Envoy's access log).
        decision_id: &'a str,
        /// The verified subject, if the token was valid.
        subject: Option<&'a str>,
        /// HTTP method and path (no query string).
        method: &'a str,
        path: &'a str,
        /// The status sent (or that would have been).
        status: u16,
        /// Why: the identity error, `forbidden`, or the evaluation error's code.
        reason: &'a str,
        /// Shadow mode: logged, not enforced.
        shadow: bool,
    },
    /// A job was accepted by the worker-gateway.
    JobSubmitted {
        /// The job id.
        job: &'a str,
        /// Its owner (verified subject).
        owner: &'a str,
        /// `flow` or `script`.
        kind: &'a str,
    },
    /// A job was cancelled.
    JobCancelled {
        /// The job id.
        job: &'a str,
        /// Its owner.
        owner: &'a str,
        /// Who cancelled it.
        by: &'a str,
    },
    /// The worker-gateway asked Kestra for an execution of a job's flow (one attempt).
    JobTriggered {
        /// The job id.
        job: &'a str,
        /// Its owner.
        owner: &'a str,
        /// `namespace/flow`.
        flow: &'a str,
        /// Which attempt (1 first).
        attempt: i64,
    },
    /// A job changed state.
    JobStateChanged {
        /// The job id.
        job: &'a str,
        /// Its owner.
        owner: &'a str,
        /// The new state, e.g. `RUNNING`.
        state: &'a str,
        /// The Kestra execution, if it has one.
        execution: &'a str,
    },
    /// Finished jobs past their retention were deleted.
    JobsExpired {
        /// How many.
        count: u64,
    },
    /// An Admin erased a user's finished jobs (their inputs and results are personal data).
    JobsErased {
        /// Whose.
        owner: &'a str,
        /// Who asked.
        by: &'a str,
        /// How many were deleted.
        count: u64,
        /// How many were still live (a cancel was asked for; erase again once they end).
        live: u64,
    },
    /// The scripting worker ran a script (its body is never recorded; its hash is).
    ScriptRan {
        /// The gateway's job id.
        job: &'a str,
        /// The sandbox run's own id.
        run: &'a str,
        /// The verified identity that asked (the gateway's certificate).
        caller: &'a str,
        /// Hex SHA-256 of the script.
        script_sha256: &'a str,
        /// Its exit code (-1: none).
        exit_code: i32,
        /// Limits that fired, comma-separated (empty: none).
        limits_hit: &'a str,
    },
    /// The scripting worker refused a caller (no allowed identity in its certificate).
    ScriptRefused {
        /// What the certificate named (its SANs), or empty.
        caller: &'a str,
        /// Why.
        reason: &'a str,
    },
    /// An admin API call was carried out.
    AdminAction {
        /// The verified subject who asked.
        actor: &'a str,
        /// What was done, e.g. `user_created`.
        action: &'a str,
        /// On whom (a username).
        target: &'a str,
    },
    /// An admin API call was refused (no valid token, or the policy denied it).
    AdminRefused {
        /// The verified subject, when there was one.
        actor: Option<&'a str>,
        /// Method and path asked for.
        operation: &'a str,
        /// `unauthenticated` or `forbidden`.
        reason: &'a str,
        /// Client address.
        client_ip: &'a str,
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
        AuditEvent::SigningKeyActivated { kid, previous } => {
            info!(target: "qiria::audit", event = "signing_key_activated", kid, previous)
        }
        AuditEvent::SigningKeyRejected { error } => {
            warn!(target: "qiria::audit", event = "signing_key_rejected", error)
        }
        AuditEvent::LoginSucceeded { user, client_ip } => {
            info!(target: "qiria::audit", event = "login_succeeded", user, client_ip)
        }
        AuditEvent::LoginFailed { username, client_ip, locked } => {
            warn!(target: "qiria::audit", event = "login_failed", username, client_ip, locked)
        }
        AuditEvent::AccountLocked { username, client_ip } => {
            warn!(target: "qiria::audit", event = "account_locked", username, client_ip)
        }
        AuditEvent::RateLimited { client_ip } => warn!(target: "qiria::audit", event = "rate_limited", client_ip),
        AuditEvent::TokenRefreshed { user, client_ip } => {
            info!(target: "qiria::audit", event = "token_refreshed", user, client_ip)
        }
        AuditEvent::RefreshReuse { user, family, revoked, client_ip } => {
            warn!(target: "qiria::audit", event = "refresh_token_reuse", user, family, revoked, client_ip)
        }
        AuditEvent::TokenRevoked { user, revoked, client_ip } => {
            info!(target: "qiria::audit", event = "token_revoked", user, revoked, client_ip)
        }
        AuditEvent::JobSubmitted { job, owner, kind } => {
            info!(target: "qiria::audit", event = "job_submitted", job, owner, kind)
        }
        AuditEvent::JobCancelled { job, owner, by } => {
            info!(target: "qiria::audit", event = "job_cancelled", job, owner, by)
        }
        AuditEvent::JobTriggered { job, owner, flow, attempt } => {
            info!(target: "qiria::audit", event = "job_triggered", job, owner, flow, attempt)
        }
        AuditEvent::JobStateChanged { job, owner, state, execution } => {
            info!(target: "qiria::audit", event = "job_state_changed", job, owner, state, execution)
        }
        AuditEvent::JobsExpired { count } => info!(target: "qiria::audit", event = "jobs_expired", count),
        AuditEvent::JobsErased { owner, by, count, live } => {
            info!(target: "qiria::audit", event = "jobs_erased", owner, by, count, live)
        }
        AuditEvent::ScriptRan { job, run, caller, script_sha256, exit_code, limits_hit } => {
            info!(target: "qiria::audit", event = "script_ran", job, run, caller, script_sha256, exit_code, limits_hit)
        }
        AuditEvent::ScriptRefused { caller, reason } => {
            warn!(target: "qiria::audit", event = "script_refused", caller, reason)
        }
        AuditEvent::AdminAction { actor, action, target } => {
            info!(target: "qiria::audit", event = "admin_action", actor, action, target)
        }
        AuditEvent::AdminRefused { actor, operation, reason, client_ip } => {
            warn!(target: "qiria::audit", event = "admin_refused", actor, operation, reason, client_ip)
        }
        AuditEvent::AccessDenied { decision_id, subject, method, path, status, reason, shadow } => {
            info!(target: "qiria::audit", event = "access_denied", decision_id, subject, method, path, status, reason, shadow)
        }
    }
}
