//! The one clock every service reads: seconds since the Unix epoch. A clock before the epoch
//! reads 0, so arithmetic on it never panics.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch (0 if the clock is before it).
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// [`now_secs`] as a signed number, as databases store it.
pub fn now_i64() -> i64 {
    i64::try_from(now_secs()).unwrap_or(i64::MAX)
}
