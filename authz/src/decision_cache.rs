//! authz's decision cache. A bundle that declares a `decision_key` (what its decisions read:
//! the method, the route, whether there is an identity and some of its claims) has its
//! decisions shared by every request with the same key, in one bounded cache: a new token or
//! another id in the path reuses the decision. A bundle that only says `cache_decisions :=
//! true` has them kept per verified token, inside the token's own cache entry (one entry for a
//! token and its decisions), and for requests without a verified token in that bounded cache,
//! keyed by why there is none. Every decision is tagged with the bundle load that took it and
//! a deadline: after a reload or past the deadline it is never used.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use moka::sync::Cache;
use qiria_identity::{IdentityError, PrehashedKey, TokenHasher, Verified};
use qiria_policy::{KeyedClaim, PolicyBundle};
use qiria_runtime::clock::now_secs;

use crate::decision::SharedDecision;

/// What token verification gave, with the token's decision memo when it verified.
pub type VerifiedToken = Result<Arc<Verified<DecisionMemo>>, IdentityError>;

/// Reusable decisions, for bundles that declare them so.
pub struct DecisionCache {
    hasher: TokenHasher,
    ttl: Duration,
    shared: Cache<u128, SharedDecision, PrehashedKey>,
}

impl DecisionCache {
    /// A cache keeping up to `capacity` shared decisions (keyed ones, and those of requests
    /// without a verified token), each reusable for `ttl`; `None` when `capacity` is 0 (no
    /// decision is ever reused).
    pub fn new(capacity: u64, ttl: Duration) -> Option<Self> {
        (capacity > 0).then(|| Self {
            hasher: TokenHasher::random(),
            ttl,
            shared: Cache::builder().max_capacity(capacity).time_to_live(ttl).build_with_hasher(PrehashedKey),
        })
    }

    /// Where this request's decision may be kept, and under which key: everything a
    /// reusable decision depends on, hashed once. Under a declared decision key: the bundle
    /// load, the method, the route the path matches (else the path with its query), and the
    /// identity as far as the bundle said its decisions read it. Otherwise the method and the
    /// path with its query, kept with the verified token, or shared by why there is none.
    pub fn key(&self, bundle: &PolicyBundle, http: Option<&HttpRequest>, identity: &VerifiedToken) -> CacheKey {
        let (method, path) = http.map(|h| (h.method.as_bytes(), h.path.as_bytes())).unwrap_or_default();
        let Some(declared) = bundle.decision_key() else {
            return match identity {
                // 64 bits of the keyed hash: a wrong hit needs two of one token's requests to
                // collide in a PRF whose key nobody outside knows.
                Ok(_) => CacheKey::Token(self.hasher.hash_parts(&[method, path]) as u64),
                Err(error) => CacheKey::Shared(self.hasher.hash_parts(&[
                    &bundle.id().to_le_bytes(),
                    error.code().as_bytes(),
                    method,
                    path,
                ])),
            };
        };
        let bundle = bundle.id().to_le_bytes();
        let route = http.and_then(|h| declared.route(&h.method, &h.path)).map(|r| r.to_le_bytes());
        let (tag, line): (&[u8], &[u8]) = match &route {
            Some(route) => (b"route", route),
            None => (b"path", path),
        };
        let mut parts: [&[u8]; 8] = [&bundle, method, tag, line, b"", b"", b"", b""];
        match identity {
            Err(error) => (parts[4], parts[5]) = (b"error", error.code().as_bytes()),
            Ok(token) => {
                parts[4] = b"verified";
                // Each claim's value in its own slot (length-prefixed by the hasher); roles as
                // the verifier joined them (a role never holds a `,`).
                for (slot, claim) in parts[5..].iter_mut().zip(declared.claims()) {
                    *slot = match claim {
                        KeyedClaim::Subject => token.subject.as_bytes(),
                        KeyedClaim::Roles => token.roles.as_bytes(),
                    };
                }
            }
        }
        CacheKey::Shared(self.hasher.hash_parts(&parts))
    }

    /// The decision `bundle` took for this request before, if it may be reused.
    pub fn recall(&self, bundle: &PolicyBundle, identity: &VerifiedToken, key: CacheKey) -> Option<SharedDecision> {
        match key {
            CacheKey::Token(key) => identity.as_ref().ok()?.attached.recall(key, bundle.id(), now_secs()),
            CacheKey::Shared(key) => self.shared.get(&key),
        }
    }

    /// Remembers what `bundle` decided for this request.
    pub fn remember(&self, bundle: &PolicyBundle, identity: &VerifiedToken, key: CacheKey, decision: &SharedDecision) {
        match (key, identity) {
            (CacheKey::Token(key), Ok(token)) => {
                let until = now_secs().saturating_add(self.ttl.as_secs());
                token.attached.remember(key, bundle.id(), until, decision.clone());
            }
            (CacheKey::Token(_), Err(_)) => {}
            (CacheKey::Shared(key), _) => self.shared.insert(key, decision.clone()),
        }
    }
}

/// Where a reusable decision lives: with its verified token, or in the shared cache.
#[derive(Debug, Clone, Copy)]
pub enum CacheKey {
    /// In the token's own cache entry, under this request key.
    Token(u64),
    /// In the shared cache, under this key (the bundle load is part of it).
    Shared(u128),
}

/// How many decisions one verified token remembers. Clients repeat a few calls; every slot
/// costs memory on every cached token, and 100,000 of them must fit in a small pod.
const MEMO_SLOTS: usize = 2;

/// The last decisions taken for one verified token, kept inside its cache entry so that a
/// cached token and its decisions cost one cache entry, not two. Each is tagged with the
/// bundle that took it and a deadline: after a reload or past the deadline it is never used.
#[derive(Debug, Default)]
pub struct DecisionMemo(Mutex<[Option<Remembered>; MEMO_SLOTS]>);

/// 32 bytes: the bundle id and the deadline are kept in 32 bits. A bundle id repeats only
/// after 2^32 reloads, which no cached token lives to see; seconds fit until 2106.
#[derive(Debug)]
struct Remembered {
    request: u64,
    decision: SharedDecision,
    bundle: u32,
    until: u32,
}

impl DecisionMemo {
    /// The decision taken for `request` (a keyed hash of what the decision depends on besides
    /// the token) by bundle `bundle`, if it is still fresh at `now` (seconds).
    pub fn recall(&self, request: u64, bundle: u64, now: u64) -> Option<SharedDecision> {
        let (bundle, now) = (bundle as u32, u32::try_from(now).ok()?);
        let slots = self.0.lock().ok()?;
        let hit = slots.iter().flatten().find(|r| r.request == request && r.bundle == bundle && now < r.until);
        hit.map(|r| r.decision.clone())
    }

    /// Remembers `decision` until `until` (seconds), in place of the least useful slot: an
    /// empty one, one of an older bundle, else the one closest to its deadline.
    pub fn remember(&self, request: u64, bundle: u64, until: u64, decision: SharedDecision) {
        // A poisoned lock only costs the memo: the decision was taken and is returned anyway.
        let (bundle, Ok(until)) = (bundle as u32, u32::try_from(until)) else { return };
        let Ok(mut slots) = self.0.lock() else { return };
        let worth = |slot: &Option<Remembered>| match slot {
            Some(r) if r.bundle == bundle => r.until,
            _ => 0,
        };
        if let Some(slot) = slots.iter_mut().min_by_key(|slot| worth(slot)) {
            *slot = Some(Remembered { request, decision, bundle, until });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Decision;

    #[test]
    fn memo_forgets_at_the_deadline_and_across_bundles() {
        let memo = DecisionMemo::default();
        let allow = SharedDecision::new(Decision { allowed: true, ..Decision::default() });
        memo.remember(7, 1, 100, allow.clone());
        assert_eq!(memo.recall(7, 1, 99).as_deref(), Some(&*allow));
        assert!(matches!(allow, SharedDecision::Plain(_)), "a plain allow is the static one");
        assert!(memo.recall(7, 1, 100).is_none(), "past its deadline");
        assert!(memo.recall(7, 2, 99).is_none(), "taken by another bundle");
        assert!(memo.recall(8, 1, 99).is_none(), "another request");
        assert_eq!(std::mem::size_of::<Remembered>(), 32, "every cached token carries these");
    }

    #[test]
    fn memo_replaces_older_bundles_first_then_the_nearest_deadline() {
        let memo = DecisionMemo::default();
        let d = |allowed| SharedDecision::new(Decision { allowed, http_status: Some(418), ..Decision::default() });
        memo.remember(1, 1, 500, d(true));
        memo.remember(2, 2, 100, d(true));
        // Slot of bundle 1 is worth nothing to bundle 2: it goes first.
        memo.remember(3, 2, 300, d(false));
        assert!(memo.recall(1, 1, 0).is_none());
        assert!(memo.recall(2, 2, 0).is_some() && memo.recall(3, 2, 0).is_some());
        // Both slots are bundle 2's now: the one due first (request 2) is replaced.
        memo.remember(4, 2, 400, d(true));
        assert!(memo.recall(2, 2, 0).is_none());
        assert!(memo.recall(3, 2, 0).is_some() && memo.recall(4, 2, 0).is_some());
    }
}
