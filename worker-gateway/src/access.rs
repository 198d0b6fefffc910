//! What a verified caller may see and do, beyond what a path-level policy can: a `User` sees
//! and cancels only their own jobs, an `Auditor` reads every job and submits nothing, an
//! `Admin` reads and cancels any. The scope goes into the store's queries (the owner check is
//! in the query, not applied to rows already read).

use crate::caller::Caller;
use crate::errors::GatewayError;

/// Which jobs a query may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every job.
    All,
    /// Jobs of this owner only.
    Owner(String),
}

/// May the caller submit work (flows, scripts)?
pub fn may_submit(caller: &Caller) -> Result<(), GatewayError> {
    if caller.has("User") || caller.has("Admin") {
        Ok(())
    } else {
        Err(GatewayError::Forbidden("only a User or an Admin submits jobs"))
    }
}

/// The jobs the caller may read.
pub fn read_scope(caller: &Caller) -> Result<Scope, GatewayError> {
    if caller.has("Admin") || caller.has("Auditor") {
        Ok(Scope::All)
    } else if caller.has("User") {
        Ok(Scope::Owner(caller.subject.clone()))
    } else {
        Err(GatewayError::Forbidden("no role that reads jobs"))
    }
}

/// The jobs the caller may cancel.
pub fn cancel_scope(caller: &Caller) -> Result<Scope, GatewayError> {
    if caller.has("Admin") {
        Ok(Scope::All)
    } else if caller.has("User") {
        Ok(Scope::Owner(caller.subject.clone()))
    } else {
        Err(GatewayError::Forbidden("only a User (their own jobs) or an Admin cancels"))
    }
}

/// May the caller erase another user's jobs?
pub fn may_erase(caller: &Caller) -> Result<(), GatewayError> {
    if caller.has("Admin") {
        Ok(())
    } else {
        Err(GatewayError::Forbidden("only an Admin erases a user's jobs"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(roles: &[&str]) -> Caller {
        Caller { subject: "s".into(), roles: roles.iter().map(|r| r.to_string()).collect() }
    }

    #[test]
    fn roles_map_onto_scopes() {
        assert_eq!(read_scope(&caller(&["User"])).unwrap(), Scope::Owner("s".into()));
        assert_eq!(read_scope(&caller(&["Auditor"])).unwrap(), Scope::All);
        assert!(may_submit(&caller(&["Auditor"])).is_err());
        assert!(cancel_scope(&caller(&["Auditor"])).is_err());
        assert_eq!(cancel_scope(&caller(&["Admin"])).unwrap(), Scope::All);
        assert!(read_scope(&caller(&[])).is_err());
        assert!(may_erase(&caller(&["User"])).is_err() && may_erase(&caller(&["Auditor"])).is_err());
        assert!(may_erase(&caller(&["Admin"])).is_ok());
    }
}
