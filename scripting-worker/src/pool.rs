//! The bounded pool: at most `sandboxes` runs at once and `queue` waiting, each waiting at
//! most `queue_wait`. Past either bound a run is refused at once (`RESOURCE_EXHAUSTED`), so a
//! flood of scripts queues nobody behind it for long and never grows memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a run got no sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PoolFull {
    /// Every sandbox is busy and the queue is full.
    #[error("every sandbox is busy and {0} runs are already waiting")]
    QueueFull(usize),
    /// It waited its whole `queue_wait` in the queue.
    #[error("no sandbox became free within {0:?}")]
    WaitedTooLong(Duration),
}

/// The pool.
pub(crate) struct Pool {
    sandboxes: Arc<Semaphore>,
    size: usize,
    waiting: AtomicUsize,
    queue: usize,
    queue_wait: Duration,
}

/// A sandbox slot, held for one run.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    pub(crate) fn new(sandboxes: usize, queue: usize, queue_wait: Duration) -> Self {
        Self {
            sandboxes: Arc::new(Semaphore::new(sandboxes)),
            size: sandboxes,
            waiting: AtomicUsize::new(0),
            queue,
            queue_wait,
        }
    }

    /// A free slot, after waiting in the queue if there is room in it.
    pub(crate) async fn slot(&self) -> Result<Slot, PoolFull> {
        if let Ok(permit) = self.sandboxes.clone().try_acquire_owned() {
            return Ok(Slot { _permit: permit });
        }
        // Counted before the wait, refused past the bound: the queue never exceeds `queue`.
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(PoolFull::QueueFull(self.queue));
        }
        let waited = tokio::time::timeout(self.queue_wait, self.sandboxes.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(Slot { _permit: permit }),
            // The semaphore is never closed; a closed one refuses like a full queue.
            Ok(Err(_)) => Err(PoolFull::QueueFull(self.queue)),
            Err(_) => Err(PoolFull::WaitedTooLong(self.queue_wait)),
        }
    }

    /// Sandboxes running now.
    pub(crate) fn busy(&self) -> usize {
        self.size - self.sandboxes.available_permits()
    }

    /// Runs waiting now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_past_the_queue_and_frees_a_slot_when_a_run_ends() {
        let pool = Arc::new(Pool::new(1, 1, Duration::from_secs(5)));
        let first = pool.slot().await.expect("a free sandbox");
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { pool.slot().await.map(|_| ()) }
        });
        assert!(qiria_test_support::wait_until(Duration::from_secs(5), || async { pool.waiting() == 1 }).await);
        assert_eq!(pool.slot().await.err(), Some(PoolFull::QueueFull(1)));
        drop(first);
        assert_eq!(waiter.await.expect("joined"), Ok(()));
        assert_eq!((pool.busy(), pool.waiting()), (0, 0));
    }

    #[tokio::test]
    async fn a_run_waits_at_most_the_queue_wait() {
        let pool = Pool::new(1, 4, Duration::from_millis(50));
        let _busy = pool.slot().await.expect("a free sandbox");
        assert_eq!(pool.slot().await.err(), Some(PoolFull::WaitedTooLong(Duration::from_millis(50))));
        assert_eq!(pool.waiting(), 0);
    }
}
