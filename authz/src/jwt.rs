//! Bearer-token verification: RS256/ES256 only, `exp`/`iss`/`aud` required, the key chosen by
//! `kid` from the current [`KeySet`] and bound to its own algorithm. Verified tokens are cached
//! by a keyed hash of the token, together with the decisions taken for them; a cached token is
//! never honoured past its `exp` or once its key has left the set.
//!
//! The token cache is `quick_cache`, not moka: moka's bookkeeping costs ~330 bytes per entry
//! (measured), more than the entry itself, and 100,000 cached tokens must fit in 64 MiB.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use quick_cache::sync::Cache;
use quick_cache::UnitWeighter;

use crate::config::JwtConfig;
use crate::decision::DecisionMemo;
use crate::keys::{KeySet, VerifyKey};

/// A verified token: who it names and what it grants. One lives in the cache per token, so
/// it is kept small (100,000 of them are a normal load).
#[derive(Debug)]
pub struct Identity {
    /// The `sub` claim.
    pub subject: Box<str>,
    /// The `roles` claim, comma-separated as sent upstream (empty when absent). Shared between
    /// tokens: a deployment has a handful of role sets.
    pub roles: Arc<str>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// Decisions already taken for this token.
    pub decisions: DecisionMemo,
    key: Arc<VerifyKey>,
}

/// Why a request carries no identity; surfaced to policies as `input.identity_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// No `Authorization: Bearer` header.
    #[error("missing")]
    Missing,
    /// Not three base64url JSON segments.
    #[error("malformed")]
    Malformed,
    /// `alg` is not RS256/ES256 (this includes `none` and every HS*), or not the key's.
    #[error("unsupported_alg")]
    UnsupportedAlgorithm,
    /// No `kid`, or a `kid` the key set does not hold.
    #[error("unknown_kid")]
    UnknownKid,
    /// The signature does not verify.
    #[error("bad_signature")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("not_yet_valid")]
    NotYetValid,
    /// `iss` is not an accepted issuer.
    #[error("wrong_issuer")]
    WrongIssuer,
    /// `aud` names none of the accepted audiences.
    #[error("wrong_audience")]
    WrongAudience,
    /// `typ` is not the required token type (e.g. a refresh token).
    #[error("wrong_type")]
    WrongType,
    /// A required claim (`exp`, `iss`, `aud`, `sub`) is absent or of the wrong type.
    #[error("missing_claim")]
    MissingClaim,
    /// No key set has been loaded yet.
    #[error("no_keys")]
    NoKeys,
}

impl IdentityError {
    /// The stable code policies and logs see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnsupportedAlgorithm => "unsupported_alg",
            Self::UnknownKid => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::WrongType => "wrong_type",
            Self::MissingClaim => "missing_claim",
            Self::NoKeys => "no_keys",
        }
    }
}

/// Verifies bearer tokens against the current key set, with a bounded cache.
pub struct TokenVerifier {
    keys: ArcSwap<Option<KeySet>>,
    cache: Cache<u128, Arc<Identity>, UnitWeighter, PrehashedKey>,
    role_sets: Mutex<HashSet<Arc<str>>>,
    hash_key: TokenHasher,
    rs256: Validation,
    es256: Validation,
    leeway: u64,
    required_typ: Option<String>,
}

impl TokenVerifier {
    /// A verifier with no keys yet: every token is refused with `no_keys` until [`Self::set_keys`].
    pub fn new(config: &JwtConfig) -> Self {
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = config.leeway_secs;
            v.validate_exp = true;
            v.validate_nbf = true;
            v.set_issuer(&config.issuers);
            v.set_audience(&config.audiences);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            v
        };
        let leeway = config.leeway_secs;
        // Expiry is checked on every hit, so the cache itself tracks no time. Expired tokens
        // are dropped when presented, or evicted (S3-FIFO: scans of one-off tokens do not
        // push out the tokens in steady use).
        let capacity = usize::try_from(config.cache_capacity).unwrap_or(usize::MAX);
        let cache = Cache::with(capacity, config.cache_capacity, UnitWeighter, PrehashedKey, Default::default());
        Self {
            keys: ArcSwap::from_pointee(None),
            cache,
            role_sets: Mutex::default(),
            hash_key: TokenHasher::random(),
            rs256: validation(Algorithm::RS256),
            es256: validation(Algorithm::ES256),
            leeway,
            required_typ: Some(config.required_typ.clone()).filter(|t| !t.is_empty()),
        }
    }

    /// Swaps in a new key set; cached tokens of keys that left stop being honoured at once.
    pub fn set_keys(&self, keys: KeySet) {
        self.keys.store(Arc::new(Some(keys)));
        // Entries are re-checked against the live set on every hit; dropping them all just
        // returns the memory now instead of at expiry.
        self.cache.clear();
    }

    /// Number of verified tokens in the cache.
    pub fn cached_tokens(&self) -> u64 {
        self.cache.len() as u64
    }

    /// Verifies the value of an `Authorization` header (or its absence).
    pub fn verify_header(&self, authorization: Option<&str>) -> Result<Arc<Identity>, IdentityError> {
        let token = authorization.and_then(bearer_token).ok_or(IdentityError::Missing)?;
        self.verify(token)
    }

    /// Verifies a compact JWS.
    pub fn verify(&self, token: &str) -> Result<Arc<Identity>, IdentityError> {
        let keys = self.keys.load();
        let keys = keys.as_ref().as_ref().ok_or(IdentityError::NoKeys)?;
        let cache_key = self.hash_key.hash(token.as_bytes());
        if let Some(identity) = self.cache.get(&cache_key) {
            let key_still_there = keys.get(&identity.key.kid).is_some_and(|k| Arc::ptr_eq(k, &identity.key));
            if key_still_there && identity.expires_at + self.leeway > now_secs() {
                return Ok(identity);
            }
            self.cache.remove(&cache_key);
        }
        let identity = Arc::new(self.verify_with(token, keys)?);
        self.cache.insert(cache_key, identity.clone());
        Ok(identity)
    }

    /// Whether the current key set holds the public key that signed `token`: its signature
    /// checks out under the key its `kid` names, claims unexamined (the issuer's publish check).
    pub fn accepts_signature_of(&self, token: &str) -> bool {
        let keys = self.keys.load();
        let (Some(keys), Ok(header)) = (keys.as_ref().as_ref(), jsonwebtoken::decode_header(token)) else {
            return false;
        };
        let Some(key) = header.kid.as_deref().and_then(|kid| keys.get(kid)) else { return false };
        let mut validation = Validation::new(key.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        key.alg == header.alg && jsonwebtoken::decode::<serde_json::Value>(token, &key.decoding, &validation).is_ok()
    }

    /// Verifies without looking in or filling the cache (benchmarks, tools).
    pub fn verify_uncached(&self, token: &str) -> Result<Identity, IdentityError> {
        let keys = self.keys.load();
        let keys = keys.as_ref().as_ref().ok_or(IdentityError::NoKeys)?;
        self.verify_with(token, keys)
    }

    fn verify_with(&self, token: &str, keys: &KeySet) -> Result<Identity, IdentityError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| classify_bad_header(token))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(IdentityError::UnsupportedAlgorithm);
        }
        let kid = header.kid.as_deref().ok_or(IdentityError::UnknownKid)?;
        let key = keys.get(kid).ok_or(IdentityError::UnknownKid)?;
        if key.alg != header.alg {
            return Err(IdentityError::UnsupportedAlgorithm);
        }
        let validation = if key.alg == Algorithm::RS256 { &self.rs256 } else { &self.es256 };
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key.decoding, validation)
            .map_err(|e| classify(e.kind()))?;
        let claims = data.claims;
        if let Some(required) = &self.required_typ {
            if claims.get("typ").and_then(|t| t.as_str()) != Some(required.as_str()) {
                return Err(IdentityError::WrongType);
            }
        }
        let subject = claims.get("sub").and_then(|s| s.as_str()).ok_or(IdentityError::MissingClaim)?.into();
        let roles = match claims.get("roles") {
            None => Vec::new(),
            Some(serde_json::Value::Array(roles)) => {
                roles.iter().map(|r| r.as_str().ok_or(IdentityError::MissingClaim)).collect::<Result<_, _>>()?
            }
            Some(_) => return Err(IdentityError::MissingClaim),
        };
        let expires_at = claims.get("exp").and_then(|e| e.as_u64()).ok_or(IdentityError::MissingClaim)?;
        let roles = self.role_set(&roles.join(","));
        Ok(Identity { subject, roles, expires_at, decisions: DecisionMemo::default(), key: key.clone() })
    }

    /// The shared copy of a role set. Only tokens that verified get here, and those come
    /// from our own logins; the bound still stops a flood of distinct sets from growing it.
    fn role_set(&self, roles: &str) -> Arc<str> {
        const MAX_SHARED: usize = 1024;
        let Ok(mut sets) = self.role_sets.lock() else { return roles.into() };
        if let Some(shared) = sets.get(roles) {
            return shared.clone();
        }
        let set: Arc<str> = roles.into();
        if sets.len() < MAX_SHARED {
            sets.insert(set.clone());
        }
        set
    }
}

/// SipHash-1-3 (128-bit) under a key drawn at startup: a PRF, so nobody who does not know
/// the key can make a token collide with another one's cache entry, at a fraction of
/// SHA-256's cost on the hot path.
#[derive(Clone)]
pub struct TokenHasher(siphasher::sip128::SipHasher13);

impl TokenHasher {
    /// A hasher with a fresh random key.
    pub fn random() -> Self {
        use rand::RngCore;
        let mut key = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self(siphasher::sip128::SipHasher13::new_with_key(&key))
    }

    /// The 128-bit hash of `parts`, each length-prefixed so that no two splits collide.
    pub fn hash_parts(&self, parts: &[&[u8]]) -> u128 {
        use siphasher::sip128::Hasher128;
        use std::hash::Hasher;
        let mut h = self.0;
        for part in parts {
            h.write_usize(part.len());
            h.write(part);
        }
        h.finish128().as_u128()
    }

    /// The 128-bit hash of `bytes`.
    pub fn hash(&self, bytes: &[u8]) -> u128 {
        self.hash_parts(&[bytes])
    }
}

/// Cache keys here are already keyed-hash outputs: hashing them again (the caches' default
/// is SipHash) is pure cost. This hasher passes their low 64 bits through.
#[derive(Clone, Copy, Default, Debug)]
pub struct PrehashedKey;

impl std::hash::BuildHasher for PrehashedKey {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

/// The [`PrehashedKey`] hasher: keeps the last integer written.
#[derive(Debug)]
pub struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-integer keys; fold them in so the hasher stays correct.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

/// The claims of a token, for `input.identity`. Only call it on a token that verified: the
/// cache keeps identities small by not holding the claims, which are read again from the
/// request's own token when a policy needs them.
pub fn verified_claims(token: &str) -> Option<regorus::Value> {
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    regorus::Value::from_json_str(std::str::from_utf8(&json).ok()?).ok()
}

/// Extracts the token from `Bearer <token>` (scheme case-insensitive, RFC 6750).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A header jsonwebtoken refused: an algorithm it does not know (`none`) or plain garbage.
fn classify_bad_header(token: &str) -> IdentityError {
    let alg = token
        .split('.')
        .next()
        .and_then(|h| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .and_then(|h| h.get("alg").cloned());
    match alg {
        Some(_) => IdentityError::UnsupportedAlgorithm,
        None => IdentityError::Malformed,
    }
}

fn classify(kind: &ErrorKind) -> IdentityError {
    match kind {
        ErrorKind::InvalidSignature => IdentityError::BadSignature,
        ErrorKind::ExpiredSignature => IdentityError::Expired,
        ErrorKind::ImmatureSignature => IdentityError::NotYetValid,
        ErrorKind::InvalidIssuer => IdentityError::WrongIssuer,
        ErrorKind::InvalidAudience => IdentityError::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => IdentityError::MissingClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => IdentityError::UnsupportedAlgorithm,
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => {
            IdentityError::BadSignature
        }
        _ => IdentityError::Malformed,
    }
}

/// Seconds since the epoch (0 if the clock is before it).
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_token() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn alg_none_header_is_unsupported_alg_and_garbage_is_malformed() {
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#)
        );
        assert_eq!(classify_bad_header(&none), IdentityError::UnsupportedAlgorithm);
        assert_eq!(classify_bad_header("not-a-token"), IdentityError::Malformed);
    }
}
