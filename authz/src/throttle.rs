//! Abuse resistance of the token endpoint: fixed-window rate limits per client address and per
//! username, and a lockout after repeated failed logins. State lives in bounded moka caches
//! whose entries expire with their window, so memory stays bounded whatever the traffic.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

/// Counts events per key within a fixed window (the entry's time to live).
struct Window {
    counts: Cache<String, Arc<AtomicU32>>,
    limit: u32,
}

impl Window {
    fn new(limit: u32, window: Duration) -> Self {
        Self { counts: Cache::builder().max_capacity(100_000).time_to_live(window).build(), limit }
    }

    /// Counts one event; false once the key is over its limit in this window.
    fn admit(&self, key: &str) -> bool {
        let count = self.counts.get_with_by_ref(key, || Arc::new(AtomicU32::new(0)));
        count.fetch_add(1, Ordering::Relaxed) < self.limit
    }

    fn count(&self, key: &str) -> u32 {
        self.counts.get(key).map(|c| c.load(Ordering::Relaxed)).unwrap_or(0)
    }

    fn clear(&self, key: &str) {
        self.counts.invalidate(key);
    }
}

/// Limits of the token endpoint.
#[derive(Debug, Clone)]
pub struct ThrottleSettings {
    /// Token requests per client address per minute.
    pub per_ip_per_minute: u32,
    /// Login attempts per username per minute.
    pub per_user_per_minute: u32,
    /// Failed logins that lock an account.
    pub lockout_failures: u32,
    /// How long a lockout lasts.
    pub lockout: Duration,
}

/// The token endpoint's limiter.
pub struct Throttle {
    per_ip: Window,
    per_user: Window,
    failures: Window,
    lockout_failures: u32,
}

/// Why a request is held back.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Proceed,
    /// Too many requests from this address or for this user: slow down.
    TooMany,
    /// The account is locked after failed logins (answered like a wrong password).
    Locked,
}

impl Throttle {
    /// A limiter with these limits.
    pub fn new(settings: &ThrottleSettings) -> Self {
        let minute = Duration::from_secs(60);
        Self {
            per_ip: Window::new(settings.per_ip_per_minute, minute),
            per_user: Window::new(settings.per_user_per_minute, minute),
            failures: Window::new(settings.lockout_failures, settings.lockout),
            lockout_failures: settings.lockout_failures,
        }
    }

    /// Any token request from `ip`.
    pub fn request(&self, ip: &str) -> Verdict {
        if self.per_ip.admit(ip) {
            Verdict::Proceed
        } else {
            Verdict::TooMany
        }
    }

    /// A login attempt for `username`.
    pub fn login(&self, username: &str) -> Verdict {
        let username = username.to_lowercase();
        if !self.per_user.admit(&username) {
            Verdict::TooMany
        } else if self.failures.count(&username) >= self.lockout_failures {
            Verdict::Locked
        } else {
            Verdict::Proceed
        }
    }

    /// Records the outcome of a login that was let through.
    pub fn outcome(&self, username: &str, succeeded: bool) {
        let username = username.to_lowercase();
        if succeeded {
            self.failures.clear(&username);
        } else {
            self.failures.admit(&username);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> Throttle {
        Throttle::new(&ThrottleSettings {
            per_ip_per_minute: 3,
            per_user_per_minute: 10,
            lockout_failures: 2,
            lockout: Duration::from_secs(60),
        })
    }

    #[test]
    fn per_ip_limit() {
        let t = throttle();
        assert_eq!((0..3).map(|_| t.request("1.2.3.4")).filter(|v| *v == Verdict::Proceed).count(), 3);
        assert_eq!(t.request("1.2.3.4"), Verdict::TooMany);
        assert_eq!(t.request("5.6.7.8"), Verdict::Proceed);
    }

    #[test]
    fn lockout_after_failures_and_success_resets() {
        let t = throttle();
        t.outcome("Ada", false);
        assert_eq!(t.login("ada"), Verdict::Proceed);
        t.outcome("ada", true);
        t.outcome("ada", false);
        assert_eq!(t.login("ada"), Verdict::Proceed, "a success cleared the earlier failure");
        t.outcome("ada", false);
        assert_eq!(t.login("ADA"), Verdict::Locked);
    }
}
