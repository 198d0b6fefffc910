//! Keeps a directory's consumer fresh: calls `on_change` when the directory changes
//! (inotify through `notify`, debounced) and on a poll interval in case a notification was
//! missed (a mount swapped under us, a directory created late). The consumer decides whether
//! anything really changed; this module only says "look again".

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tracing::warn;

/// Events arriving within this window are folded into one reload (editors write in steps).
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Starts a thread that calls `on_change` whenever `dir` may have changed. Reloads parse and
/// compile, so they run here, off the request threads.
pub fn watch_dir(
    name: &'static str,
    dir: PathBuf,
    poll: Duration,
    mut on_change: impl FnMut() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("watch-{name}")).spawn(move || {
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let watcher = notify::recommended_watcher(move |_event| {
            // A full channel already holds a pending "look again".
            let _ = tx.try_send(());
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::Recursive).map(|()| w));
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(error) => {
                warn!(dir = %dir.display(), %error, "cannot watch {name} directory; polling only");
                None
            }
        };
        loop {
            match rx.recv_timeout(poll) {
                Ok(()) => {
                    std::thread::sleep(DEBOUNCE);
                    while rx.try_recv().is_ok() {}
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(poll),
            }
            on_change();
        }
    })
}

/// Polls are at least this far apart, whatever a config says: a directory re-read in a tight
/// loop would only burn a core.
const MIN_POLL: Duration = Duration::from_millis(100);

/// [`watch_dir`] for a reload method of shared state: `reload(&state)` on each change, and
/// every `poll_ms` (at least 100 ms).
pub fn watch_state<S: Send + Sync + 'static>(
    state: &std::sync::Arc<S>,
    name: &'static str,
    dir: &std::path::Path,
    poll_ms: u64,
    reload: fn(&S),
) -> std::io::Result<()> {
    let state = state.clone();
    let poll = Duration::from_millis(poll_ms).max(MIN_POLL);
    watch_dir(name, dir.to_path_buf(), poll, move || reload(&state)).map(drop)
}
