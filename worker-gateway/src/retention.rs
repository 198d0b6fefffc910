//! Retention: finished jobs, their transitions and their results (which may hold personal
//! data) are deleted once they have been finished for the configured period. A sweep deletes
//! in bounded batches, so a large backlog never holds the store for long.

use std::time::Duration;

use qiria_runtime::audit::{self, AuditEvent};
use qiria_runtime::clock::now_i64;
use qiria_runtime::shutdown::Shutdown;

use crate::jobs::JobStore;

/// Jobs deleted per statement batch.
const BATCH: u32 = 500;

/// Sweeps `store` every `every`, deleting jobs finished longer than `keep` ago, until `shutdown`.
pub async fn run(store: JobStore, keep: Duration, every: Duration, shutdown: Shutdown) {
    loop {
        sweep(&store, keep).await;
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

async fn sweep(store: &JobStore, keep: Duration) {
    let before = now_i64().saturating_sub(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX));
    let mut total = 0;
    loop {
        match store.purge_finished(before, BATCH).await {
            Ok(n) => {
                total += n;
                if n < u64::from(BATCH) {
                    break;
                }
            }
            Err(error) => {
                tracing::error!(%error, "retention sweep failed; tried again next sweep");
                break;
            }
        }
    }
    if total > 0 {
        audit::record(AuditEvent::JobsExpired { count: total });
    }
}
