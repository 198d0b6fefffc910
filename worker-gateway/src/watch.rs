//! Open `WatchJob` streams: every state change of a job is published once, in process, to
//! the streams watching it; each user may hold a bounded number of streams open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::pb::Job;

/// Changes published to watchers, and who holds how many streams.
pub struct Watchers {
    changes: broadcast::Sender<Job>,
    open: Mutex<HashMap<String, usize>>,
    per_user: usize,
}

/// One open stream; dropping it frees the user's slot.
pub struct Slot {
    watchers: Arc<Watchers>,
    user: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.watchers.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

impl Watchers {
    /// At most `per_user` streams open per user; a slow stream misses changes beyond the
    /// channel's 1,024 and then sees the job's latest state again.
    pub fn new(per_user: usize) -> Arc<Self> {
        let (changes, _) = broadcast::channel(1024);
        Arc::new(Self { changes, open: Mutex::default(), per_user })
    }

    /// Tells every stream watching `job` of its new state.
    pub fn publish(&self, job: &Job) {
        let _ = self.changes.send(job.clone());
    }

    /// A slot for `user`, unless they hold their maximum already.
    pub fn open(self: &Arc<Self>, user: &str) -> Option<(Slot, broadcast::Receiver<Job>)> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(user.to_string()).or_default();
        if *n >= self.per_user {
            return None;
        }
        *n += 1;
        Some((Slot { watchers: self.clone(), user: user.to_string() }, self.changes.subscribe()))
    }
}
