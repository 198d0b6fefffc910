//! What `/health` reports about one reloadable component (a policy bundle, a key set, a
//! signing key): what serves now, since when, and the last refused reload.

use serde::Serialize;

/// The state of one reloadable component.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ComponentStatus {
    /// Revision (policy), fingerprint (keys) or kid (signing) of what serves now.
    pub active: Option<String>,
    /// When it was activated (seconds since the epoch).
    pub activated_at: Option<u64>,
    /// Number of files (policy) or keys.
    pub count: usize,
    /// The last refused reload, or the files skipped by the last one, while still the news.
    pub last_error: Option<String>,
}

impl ComponentStatus {
    /// Records a successful activation of `active` holding `count` items, now.
    pub fn activated(active: impl Into<String>, count: usize) -> Self {
        Self { active: Some(active.into()), activated_at: Some(crate::clock::now_secs()), count, last_error: None }
    }
}
