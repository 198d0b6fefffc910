//! A small number per thread, dealt round-robin on first use: what per-core data (metric
//! stripes, policy engines) is indexed by, so that the runtime's workers, started one per
//! core, each land on their own.

use std::sync::atomic::{AtomicUsize, Ordering};

/// This thread's number: 0 for the first thread that asks, 1 for the next, and so on.
/// Callers take it modulo the number of slots they keep.
pub fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|s| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_within_a_thread_and_distinct_across_threads() {
        let here = thread_slot();
        assert_eq!(thread_slot(), here);
        let there = std::thread::spawn(thread_slot).join().unwrap();
        assert_ne!(there, here);
    }
}
