//! Per-key GCRA rate limits (the `governor` crate) whose state is bounded: governor's own
//! keyed store is an unbounded map, so here every key's state lives in a bounded moka cache
//! (governor's `StateStore` over its `InMemoryState`), and an attacker cycling keys (addresses,
//! usernames, subjects) cannot grow memory. An evicted or idle key starts afresh, which is
//! where its bucket would have refilled to anyway.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::MonotonicClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use moka::sync::Cache;

/// governor state per key, in a bounded cache.
struct BoundedStore<K: Hash + Eq + Clone + Send + Sync + 'static> {
    states: Cache<K, Arc<InMemoryState>>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let state = self.states.get_with(key.clone(), || Arc::new(InMemoryState::default()));
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

/// A per-key GCRA limiter of `per_minute` events, bursts of up to the same number, remembering
/// at most `max_keys` keys.
pub struct KeyedRateLimiter<K: Hash + Eq + Clone + Send + Sync + 'static>(
    RateLimiter<
        K,
        BoundedStore<K>,
        MonotonicClock,
        NoOpMiddleware<<MonotonicClock as governor::clock::Clock>::Instant>,
    >,
);

impl<K: Hash + Eq + Clone + Send + Sync + 'static> KeyedRateLimiter<K> {
    /// `per_minute` events per key.
    pub fn per_minute(per_minute: u32, max_keys: u64) -> Self {
        let n = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(n);
        // Idle for a minute, a key's bucket is full again: forgetting it then changes nothing.
        let states = Cache::builder().max_capacity(max_keys).time_to_idle(Duration::from_secs(60)).build();
        Self(RateLimiter::new(quota, BoundedStore { states }, MonotonicClock))
    }

    /// Whether `key` may have one more event now (counted if so).
    pub fn admit(&self, key: &K) -> bool {
        self.0.check_key(key).is_ok()
    }
}
