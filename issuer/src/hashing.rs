//! Password hashing (argon2id) on a bounded pool: a few worker threads (about one per core)
//! behind a short queue. A request that finds the queue full is refused at once, and one that
//! waited longer than its bound is refused then (its job is skipped, not hashed): a flood of
//! logins must not pile up memory (19 MiB per hash in flight) or threads, leave callers hanging,
//! nor slow down anything else on the node. The workers run at a lower CPU priority, so that on
//! a shared node the decision path (authz, Envoy) is served first.
#![allow(unsafe_code, reason = "libc: mallopt (allocator tuning) and setpriority (this thread's nice level)")]

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use zeroize::Zeroizing;

/// Hashing is saturated: answer `503` with `Retry-After` now.
#[derive(Debug, thiserror::Error)]
#[error("password hashing is saturated")]
pub struct Busy;

enum Job {
    Verify { hash: String, password: Zeroizing<String>, reply: tokio::sync::oneshot::Sender<bool> },
    Hash { password: Zeroizing<String>, reply: tokio::sync::oneshot::Sender<Option<String>> },
}

/// The pool.
pub struct HashingPool {
    jobs: SyncSender<Job>,
    workers: usize,
    queue: usize,
    max_wait: Duration,
    /// Hashes asked for and not answered yet (queued or being computed).
    in_flight: std::sync::atomic::AtomicU64,
    /// Calls refused: the queue was full or the answer came too late.
    refused: std::sync::atomic::AtomicU64,
}

impl HashingPool {
    /// `workers` threads (0: one per core) with room for `queue_per_worker` waiting jobs each;
    /// a caller waits at most `max_wait` for its answer.
    pub fn new(workers: usize, queue_per_worker: usize, max_wait: Duration) -> std::io::Result<Self> {
        let workers =
            if workers == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { workers };
        return_hash_memory_to_the_system();
        let queue = workers * queue_per_worker.max(1);
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("argon2-{i}")).spawn(move || work(&rx))?;
        }
        Ok(Self { jobs, workers, queue, max_wait, in_flight: 0.into(), refused: 0.into() })
    }

    /// Worker threads and queue length, for `/health`.
    pub fn size(&self) -> (usize, usize) {
        (self.workers, self.queue)
    }

    /// Its saturation for `/metrics`: hashes in flight, calls refused.
    pub fn render_metrics(&self, out: &mut String) {
        use std::sync::atomic::Ordering::Relaxed;
        out.push_str(&format!(
            "# HELP qiria_issuer_hashing_in_flight Password hashes asked for and not answered yet\n\
             # TYPE qiria_issuer_hashing_in_flight gauge\nqiria_issuer_hashing_in_flight {}\n\
             # HELP qiria_issuer_hashing_refused Logins refused because password hashing was saturated\n\
             # TYPE qiria_issuer_hashing_refused counter\nqiria_issuer_hashing_refused_total {}\n",
            self.in_flight.load(Relaxed),
            self.refused.load(Relaxed)
        ));
    }

    /// Whether `password` matches the PHC string `hash`.
    pub async fn verify(&self, hash: String, password: &str) -> Result<bool, Busy> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(Job::Verify { hash, password: Zeroizing::new(password.to_string()), reply })?;
        self.answer(answer).await
    }

    /// A new argon2id PHC string for `password` (`None` if argon2 refused it).
    pub async fn hash(&self, password: &str) -> Result<Option<String>, Busy> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(Job::Hash { password: Zeroizing::new(password.to_string()), reply })?;
        self.answer(answer).await
    }

    /// The job's answer, or `Busy` past the bound (dropping `answer` tells the worker to skip it).
    async fn answer<T>(&self, answer: tokio::sync::oneshot::Receiver<T>) -> Result<T, Busy> {
        use std::sync::atomic::Ordering::Relaxed;
        let answered = tokio::time::timeout(self.max_wait, answer).await;
        self.in_flight.fetch_sub(1, Relaxed);
        match answered {
            Ok(Ok(value)) => Ok(value),
            _ => {
                self.refused.fetch_add(1, Relaxed);
                Err(Busy)
            }
        }
    }

    fn submit(&self, job: Job) -> Result<(), Busy> {
        use std::sync::atomic::Ordering::Relaxed;
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.in_flight.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.refused.fetch_add(1, Relaxed);
                Err(Busy)
            }
        }
    }
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    lower_priority();
    loop {
        // The lock is held only while waiting for the next job, never while hashing.
        let job = match jobs.lock().map(|rx| rx.recv()) {
            Ok(Ok(job)) => job,
            _ => return,
        };
        // A caller that gave up waiting is answered already: its hash is not computed.
        match job {
            Job::Verify { hash, password, reply } if !reply.is_closed() => {
                let _ = reply.send(verify_password(&hash, &password));
            }
            Job::Hash { password, reply } if !reply.is_closed() => {
                let _ = reply.send(hash_password(&password));
            }
            _ => {}
        }
    }
}

/// Each hash allocates its 19 MiB afresh. glibc's adaptive threshold would move such blocks
/// from mmap into the threads' heaps after the first free and then keep up to ~40 MiB free per
/// heap (measured: 260 MiB resident after a login flood). A fixed threshold keeps every block
/// of 1 MiB or more mmapped, so its memory goes back to the system when the hash is done
/// (a few hundred microseconds of page faults per 20-40 ms hash).
fn return_hash_memory_to_the_system() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning; called before the workers start hashing.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Nice 10 for this thread (Linux sets priority per thread): hashing yields to requests.
fn lower_priority() {
    // SAFETY: setpriority with who = 0 changes only the calling thread; no memory is touched.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
}

/// argon2id with the crate's defaults (OWASP's recommended parameters), as a PHC string.
pub fn hash_password(password: &str) -> Option<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).ok()
}

fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verifies_and_refuses_beyond_its_queue_at_once() {
        let pool = Arc::new(HashingPool::new(1, 1, Duration::from_secs(5)).unwrap());
        let hash = pool.hash("correct horse").await.unwrap().unwrap();
        assert!(pool.verify(hash.clone(), "correct horse").await.unwrap());
        assert!(!pool.verify(hash.clone(), "wrong").await.unwrap());
        // One worker, one queue slot: of many jobs sent at once, some are refused, without waiting.
        let started = std::time::Instant::now();
        let results = futures_util::future::join_all((0..8).map(|_| pool.verify(hash.clone(), "x"))).await;
        let busy = results.iter().filter(|r| r.is_err()).count();
        assert!((4..=7).contains(&busy), "{busy} of 8 refused");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_caller_waits_no_longer_than_its_bound() {
        // A bound far below one hash: the answer is `Busy`, in about the bound.
        let pool = HashingPool::new(1, 4, Duration::from_millis(1)).unwrap();
        let hash = hash_password("correct horse").unwrap();
        let started = std::time::Instant::now();
        assert!(pool.verify(hash, "correct horse").await.is_err());
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}
