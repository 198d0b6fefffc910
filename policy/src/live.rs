//! The bundle that serves now, and its hot reload: a directory is re-read when it may have
//! changed, a bundle that loads (parses, prepares, passes its own tests) replaces the live one
//! atomically, and a bundle that does not is refused while the previous one keeps serving.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwapOption, Guard};
use qiria_runtime::audit::{self, AuditEvent};
use qiria_runtime::health::ComponentStatus;

use crate::bundle::{dir_fingerprint, BundleOptions, PolicyBundle};

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    /// The directory's content was the one already looked at.
    Unchanged,
    /// A new bundle serves.
    Activated {
        /// Its revision.
        revision: String,
        /// The revision it replaced.
        previous: Option<String>,
        /// How many files it holds.
        files: usize,
    },
    /// The content was refused; the previous bundle (if any) keeps serving.
    Rejected {
        /// Why.
        error: String,
    },
}

impl Reload {
    /// Audits what the reload did and writes it into the policy's `/health` status; `Some(ok)`
    /// when there was news (for the reload metric).
    pub fn record(&self, status: &mut ComponentStatus) -> Option<bool> {
        match self {
            Self::Unchanged => None,
            Self::Activated { revision, previous, files } => {
                audit::record(AuditEvent::PolicyActivated { revision, previous: previous.as_deref(), files: *files });
                *status = ComponentStatus::activated(revision.clone(), *files);
                Some(true)
            }
            Self::Rejected { error } => {
                audit::record(AuditEvent::PolicyRejected { error });
                status.last_error = Some(error.clone());
                Some(false)
            }
        }
    }
}

/// The live bundle of one policy directory.
pub struct LivePolicy {
    dir: PathBuf,
    options: BundleOptions,
    slot: ArcSwapOption<PolicyBundle>,
    /// Fingerprint of the content last looked at, so that unchanged polls cost no parse.
    seen: Mutex<Option<String>>,
}

impl LivePolicy {
    /// No bundle yet: [`Self::reload`] loads the first one.
    pub fn new(dir: PathBuf, options: BundleOptions) -> Self {
        Self { dir, options, slot: ArcSwapOption::empty(), seen: Mutex::new(None) }
    }

    /// The bundle serving now, as a guard (no reference-count traffic per request).
    pub fn current(&self) -> Guard<Option<Arc<PolicyBundle>>> {
        self.slot.load()
    }

    /// Re-reads the directory; see [`Reload`].
    pub fn reload(&self) -> Reload {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let fingerprint = match dir_fingerprint(&self.dir) {
            Ok(fp) => fp,
            Err(e) => return Reload::Rejected { error: e.to_string() },
        };
        if seen.as_deref() == Some(fingerprint.as_str()) {
            return Reload::Unchanged;
        }
        // The content looked at is remembered before loading: were it read again afterwards,
        // an edit landing in between would be marked seen without ever being loaded.
        *seen = Some(fingerprint);
        match PolicyBundle::load_dir(&self.dir, &self.options) {
            Ok(bundle) => {
                let previous = self.slot.load().as_ref().map(|b| b.revision().to_string());
                let (revision, files) = (bundle.revision().to_string(), bundle.files());
                self.slot.store(Some(Arc::new(bundle)));
                Reload::Activated { revision, previous, files }
            }
            Err(e) => Reload::Rejected { error: e.to_string() },
        }
    }
}
