//! The calling thread's own CPU time, which tells a policy that ran long from a thread that
//! was not running (descheduled, CFS-throttled). Linux's `CLOCK_THREAD_CPUTIME_ID` through
//! libc: the vDSO does not serve thread clocks, so it is one syscall before each evaluation
//! (cached decisions make none) and one after an evaluation that hit the wall-clock limit.
//! (The `cpu-time` crate wraps the same call but is unmaintained since 2020.)
#![allow(unsafe_code, reason = "libc: clock_gettime(CLOCK_THREAD_CPUTIME_ID), the one call this module wraps")]

use std::time::Duration;

/// CPU time this thread has used since it started. Zero if the clock cannot be read: every
/// limit hit then looks like a stall, is retried until the deadline, and still denies.
pub(crate) fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, exclusively borrowed timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::thread_cpu_time;

    #[test]
    fn grows_with_work_not_with_sleep() {
        use std::time::{Duration, Instant};
        let start = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu_time().saturating_sub(start);
        assert!(slept < Duration::from_millis(20), "sleeping used {slept:?} of CPU");
        // Work until this thread has used 10 ms of CPU (a condition, not a wall-clock guess: a
        // busy machine lends the thread less of each millisecond).
        let (mut x, begin) = (0u64, Instant::now());
        while thread_cpu_time().saturating_sub(start).saturating_sub(slept) < Duration::from_millis(10) {
            assert!(begin.elapsed() < Duration::from_secs(20), "the thread's CPU clock does not advance");
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
        }
    }
}
