//! Abuse resistance of the token and revoke endpoints: GCRA rate limits (the `governor`
//! crate) per client address — an IPv6 client by its /64, since one host holds the whole
//! prefix — and per username, and a lockout after repeated failed logins.
//!
//! The limiters are `qiria_runtime::rate`'s, whose keyed state is bounded: an attacker cycling
//! addresses or usernames cannot grow memory.
//!
//! The lockout is one lock-protected record per username: an attempt is admitted and counted
//! in flight in one step, so parallel guesses cannot pass the limit between a check and a
//! count; a lock lasts its configured time from the moment it locks.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use qiria_runtime::rate::KeyedRateLimiter;

/// Keys (addresses, usernames) a limiter remembers at most.
const MAX_KEYS: u64 = 100_000;

/// Limits of the token endpoint.
#[derive(Debug, Clone)]
pub struct ThrottleSettings {
    /// Token (and revoke) requests per client address per minute.
    pub per_ip_per_minute: u32,
    /// Login attempts per username per minute.
    pub per_user_per_minute: u32,
    /// Failed logins that lock an account.
    pub lockout_failures: u32,
    /// How long a lockout lasts.
    pub lockout: Duration,
}

/// One username's failed logins and lock.
#[derive(Debug, Default)]
struct LoginRecord {
    failures: u32,
    in_flight: u32,
    locked_until: Option<Instant>,
}

/// The token endpoint's limiter.
pub struct Throttle {
    per_ip: KeyedRateLimiter<IpAddr>,
    revoke_per_ip: KeyedRateLimiter<IpAddr>,
    per_user: KeyedRateLimiter<String>,
    logins: Cache<String, Arc<Mutex<LoginRecord>>>,
    lockout_failures: u32,
    lockout: Duration,
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

/// The rate-limit key of a client address: an IPv6 address by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// A login attempt admitted by [`Throttle::login`]; report how it went with
/// [`Throttle::outcome`]. Until then it counts against the lockout; dropped unreported (the
/// password was never checked), it stops counting.
#[derive(Debug)]
pub struct Attempt {
    record: Arc<Mutex<LoginRecord>>,
    reported: bool,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.reported {
            let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
            r.in_flight = r.in_flight.saturating_sub(1);
        }
    }
}

impl Throttle {
    /// A limiter with these limits.
    pub fn new(settings: &ThrottleSettings) -> Self {
        let lockout_failures = settings.lockout_failures.max(1);
        Self {
            per_ip: KeyedRateLimiter::per_minute(settings.per_ip_per_minute, MAX_KEYS),
            revoke_per_ip: KeyedRateLimiter::per_minute(settings.per_ip_per_minute, MAX_KEYS),
            per_user: KeyedRateLimiter::per_minute(settings.per_user_per_minute, MAX_KEYS),
            // A record outlives its lock; idle longer than a lockout, it has nothing to say.
            logins: Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_idle(settings.lockout.max(Duration::from_secs(60)))
                .build(),
            lockout_failures,
            lockout: settings.lockout,
        }
    }

    /// Any token request from `ip`.
    pub fn request(&self, ip: IpAddr) -> Verdict {
        if self.per_ip.admit(&address_key(ip)) {
            Verdict::Proceed
        } else {
            Verdict::TooMany
        }
    }

    /// A revocation request from `ip`.
    pub fn revoke(&self, ip: IpAddr) -> Verdict {
        if self.revoke_per_ip.admit(&address_key(ip)) {
            Verdict::Proceed
        } else {
            Verdict::TooMany
        }
    }

    /// A login attempt for `username` (already case-folded). Admitted attempts count against
    /// the lockout at once, before their password is even checked.
    pub fn login(&self, username: &str) -> Result<Attempt, Verdict> {
        if !self.per_user.admit(&username.to_string()) {
            return Err(Verdict::TooMany);
        }
        let record = self.logins.get_with(username.to_string(), Arc::default);
        {
            let mut r = record.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if let Some(until) = r.locked_until {
                if now < until {
                    return Err(Verdict::Locked);
                }
                // The lock ran out: a fresh start.
                *r = LoginRecord::default();
            }
            if r.failures.saturating_add(r.in_flight) >= self.lockout_failures {
                return Err(Verdict::Locked);
            }
            r.in_flight += 1;
        }
        Ok(Attempt { record, reported: false })
    }

    /// Records how an admitted attempt went; true when this failure locked the account.
    pub fn outcome(&self, mut attempt: Attempt, succeeded: bool) -> bool {
        attempt.reported = true;
        let mut r = attempt.record.lock().unwrap_or_else(|p| p.into_inner());
        r.in_flight = r.in_flight.saturating_sub(1);
        if succeeded {
            r.failures = 0;
            return false;
        }
        r.failures = r.failures.saturating_add(1);
        if r.failures >= self.lockout_failures && r.locked_until.is_none() {
            r.locked_until = Some(Instant::now() + self.lockout);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(per_ip: u32, lockout: Duration) -> Throttle {
        Throttle::new(&ThrottleSettings {
            per_ip_per_minute: per_ip,
            per_user_per_minute: 1000,
            lockout_failures: 2,
            lockout,
        })
    }

    #[test]
    fn per_ip_limit_admits_the_burst_then_refuses_and_keys_ipv6_by_its_64() {
        let t = throttle(3, Duration::from_secs(60));
        let ip: IpAddr = "1.2.3.4".parse().unwrap();
        assert_eq!((0..10).filter(|_| t.request(ip) == Verdict::Proceed).count(), 3, "GCRA: the burst, no more");
        assert_eq!(t.request("5.6.7.8".parse().unwrap()), Verdict::Proceed);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(t.request(a), Verdict::Proceed);
        }
        assert_eq!(t.request(b), Verdict::TooMany, "the same /64");
        assert_eq!(t.request(c), Verdict::Proceed, "another /64");
        assert_eq!(address_key("::ffff:1.2.3.4".parse().unwrap()), ip, "IPv4-mapped is the IPv4 address");
    }

    #[test]
    fn parallel_attempts_cannot_exceed_the_lockout_and_a_success_resets() {
        let t = throttle(1000, Duration::from_secs(60));
        let first = t.login("ada").unwrap();
        let second = t.login("ada").unwrap();
        assert_eq!(t.login("ada").unwrap_err(), Verdict::Locked, "two in flight use up the limit");
        drop(t.login("bob").unwrap());
        t.outcome(first, true);
        let third = t.login("ada").unwrap();
        t.outcome(second, false);
        assert!(t.outcome(third, false), "the second failure locks");
        assert_eq!(t.login("ada").unwrap_err(), Verdict::Locked);
        assert!(t.login("bob").is_ok());
    }

    #[test]
    fn a_lock_lasts_its_time_from_when_it_locked() {
        let t = throttle(1000, Duration::from_millis(200));
        for _ in 0..2 {
            let attempt = t.login("eve").unwrap();
            t.outcome(attempt, false);
        }
        assert_eq!(t.login("eve").unwrap_err(), Verdict::Locked);
        std::thread::sleep(Duration::from_millis(250));
        assert!(t.login("eve").is_ok(), "unlocked after its time");
    }
}
