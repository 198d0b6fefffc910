//! Bearer-token verification: RS256/ES256 only, `exp`/`iss`/`aud` required, the key chosen by
//! `kid` from the current [`KeySet`] and bound to its own algorithm, no `crit` extension, and a
//! lifetime no longer than configured. Verified tokens are cached by a keyed hash of the token;
//! a cached token is never honoured past its `exp` or once its key has left the set.
//!
//! A cache entry can carry something the caller attaches to the token (authz keeps the
//! decisions it took for it there, so that a token and its decisions cost one entry): the
//! verifier stores it, never looks at it.
//!
//! The token cache is `quick_cache`, not moka: moka's bookkeeping costs ~330 bytes per entry
//! (measured), more than the entry itself, and 100,000 cached tokens must fit in 64 MiB.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use qiria_runtime::audit::{self, AuditEvent};
use qiria_runtime::clock::now_secs;
use qiria_runtime::config::Overrides;
use qiria_runtime::health::ComponentStatus;
use quick_cache::sync::Cache;
use quick_cache::UnitWeighter;
use serde::{Deserialize, Serialize};

use crate::error::IdentityError;
use crate::hash::{PrehashedKey, TokenHasher};
use crate::keys::{KeySet, VerifyKey};

/// The largest clock-skew leeway accepted: more would stretch every token's life.
pub const MAX_LEEWAY_SECS: u64 = 60;

/// What a token must be to be accepted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VerifierSettings {
    /// Accepted `iss` values; a token must carry one of them.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; a token must carry at least one of them.
    pub audiences: Vec<String>,
    /// Clock-skew leeway for `exp` and `nbf`, in seconds (at most 60).
    pub leeway_secs: u64,
    /// Required value of the `typ` claim (our issuer writes `access`); empty accepts any.
    pub required_typ: String,
    /// Longest lifetime accepted, `exp − iat` (or `exp − now` without `iat`), in seconds: a
    /// token that cannot be revoked must not be made to live for years.
    pub max_lifetime_secs: u64,
    /// How many verified tokens are kept in the cache.
    pub cache_capacity: u64,
}

impl Default for VerifierSettings {
    fn default() -> Self {
        Self {
            issuers: vec!["https://qiria.local".into()],
            audiences: vec!["qiria".into()],
            leeway_secs: 30,
            required_typ: "access".into(),
            max_lifetime_secs: 3600,
            cache_capacity: 100_000,
        }
    }
}

/// The `[jwt]` section of a service that verifies its callers' tokens (the issuer's admin
/// API, the worker-gateway): where the keys are and what a token must say.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Directory of public keys (PEM, JWK or JWKS), as a mounted secret.
    pub keys_dir: std::path::PathBuf,
    /// Accepted `iss` values.
    pub issuers: Vec<String>,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Clock-skew leeway in seconds (at most 60).
    pub leeway_secs: u64,
    /// Longest token lifetime accepted, in seconds.
    pub max_lifetime_secs: u64,
    /// How often the key directory is re-read in case a notification was missed (ms).
    pub poll_interval_ms: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        let v = VerifierSettings::default();
        Self {
            keys_dir: std::path::PathBuf::from(".stack/keys/public"),
            issuers: v.issuers,
            audiences: v.audiences,
            leeway_secs: v.leeway_secs,
            max_lifetime_secs: v.max_lifetime_secs,
            poll_interval_ms: 2_000,
        }
    }
}

impl JwtConfig {
    /// The verifier of access tokens these settings describe, caching `cache_capacity` tokens.
    pub fn verifier(&self, cache_capacity: u64) -> VerifierSettings {
        VerifierSettings {
            issuers: self.issuers.clone(),
            audiences: self.audiences.clone(),
            leeway_secs: self.leeway_secs,
            required_typ: "access".into(),
            max_lifetime_secs: self.max_lifetime_secs,
            cache_capacity,
        }
    }
}

/// The flags of a service that verifies tokens, over its `[jwt]` section.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VerifierArgs {
    /// Directory of verification keys (PEM / JWK / JWKS), e.g. a mounted secret.
    #[arg(long)]
    pub keys_dir: Option<std::path::PathBuf>,
    /// Accepted token issuer (repeat for several) [default: https://qiria.local].
    #[arg(long = "issuer")]
    pub issuers: Vec<String>,
    /// Accepted token audience (repeat for several) [default: qiria].
    #[arg(long = "audience")]
    pub audiences: Vec<String>,
    /// Clock-skew leeway for exp/nbf in seconds, at most 60 [default: 30].
    #[arg(long)]
    pub leeway_secs: Option<u64>,
}

impl VerifierArgs {
    /// Adds the flags that were given to `overrides` (keys under `jwt.`).
    pub fn apply(&self, overrides: Overrides) -> Overrides {
        let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        overrides
            .set("jwt.keys_dir", self.keys_dir.as_ref().map(|p| p.display().to_string()))
            .set("jwt.issuers", list(&self.issuers))
            .set("jwt.audiences", list(&self.audiences))
            .set("jwt.leeway_secs", self.leeway_secs)
    }
}

impl VerifierSettings {
    /// The first setting out of range, as (field, reason).
    pub fn invalid(&self) -> Option<(&'static str, &'static str)> {
        if self.leeway_secs > MAX_LEEWAY_SECS {
            Some(("leeway_secs", "must be at most 60"))
        } else if self.issuers.is_empty() {
            Some(("issuers", "must name at least one issuer"))
        } else if self.audiences.is_empty() {
            Some(("audiences", "must name at least one audience"))
        } else if self.cache_capacity == 0 {
            Some(("cache_capacity", "must be at least 1"))
        } else if self.max_lifetime_secs == 0 {
            Some(("max_lifetime_secs", "must be at least 1"))
        } else {
            None
        }
    }
}

/// What [`TokenVerifier::reload_keys`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyReload {
    /// Nothing new.
    Unchanged,
    /// A new key set verifies; `partial` when some files were skipped.
    Activated {
        /// The set's key ids (what `/metrics` shows as `key_active{kid}`).
        kids: Vec<String>,
        /// Some files were reported and skipped.
        partial: bool,
    },
    /// The directory could not be read; the previous set keeps verifying.
    Rejected,
}

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
    key: Arc<VerifyKey>,
}

impl Identity {
    /// The role names.
    pub fn role_names(&self) -> impl Iterator<Item = &str> {
        self.roles.split(',').filter(|r| !r.is_empty())
    }
}

/// A cache entry: the identity, and what the caller attached to this token.
#[derive(Debug)]
pub struct Verified<A> {
    /// Who the token names.
    pub identity: Identity,
    /// The caller's per-token state (created empty on first verification).
    pub attached: A,
}

impl<A> std::ops::Deref for Verified<A> {
    type Target = Identity;
    fn deref(&self) -> &Identity {
        &self.identity
    }
}

/// Verifies bearer tokens against the current key set, with a bounded cache.
pub struct TokenVerifier<A = ()> {
    keys: ArcSwap<Option<KeySet>>,
    cache: Cache<u128, Arc<Verified<A>>, UnitWeighter, PrehashedKey>,
    role_sets: Mutex<HashSet<Arc<str>>>,
    hash_key: TokenHasher,
    rs256: Validation,
    es256: Validation,
    leeway: u64,
    max_lifetime: u64,
    required_typ: Option<String>,
}

impl<A: Default> TokenVerifier<A> {
    /// A verifier with no keys yet: every token is refused with `no_keys` until [`Self::set_keys`].
    pub fn new(settings: &VerifierSettings) -> Self {
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = settings.leeway_secs;
            v.validate_exp = true;
            v.validate_nbf = true;
            v.set_issuer(&settings.issuers);
            v.set_audience(&settings.audiences);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            v
        };
        // Expiry is checked on every hit, so the cache itself tracks no time. Expired tokens
        // are dropped when presented, or evicted (S3-FIFO: scans of one-off tokens do not
        // push out the tokens in steady use).
        let capacity = usize::try_from(settings.cache_capacity).unwrap_or(usize::MAX);
        let cache = Cache::with(capacity, settings.cache_capacity, UnitWeighter, PrehashedKey, Default::default());
        Self {
            keys: ArcSwap::from_pointee(None),
            cache,
            role_sets: Mutex::default(),
            hash_key: TokenHasher::random(),
            rs256: validation(Algorithm::RS256),
            es256: validation(Algorithm::ES256),
            leeway: settings.leeway_secs,
            max_lifetime: settings.max_lifetime_secs,
            required_typ: Some(settings.required_typ.clone()).filter(|t| !t.is_empty()),
        }
    }

    /// Swaps in a new key set; cached tokens of keys that left stop being honoured at once.
    pub fn set_keys(&self, keys: KeySet) {
        self.keys.store(Arc::new(Some(keys)));
        // Entries are re-checked against the live set on every hit; dropping them all just
        // returns the memory now instead of at expiry.
        self.cache.clear();
    }

    /// Re-reads the key directory `dir` and swaps in what it holds, audited and written into
    /// the keys' `/health` status. Files that cannot be used are reported and skipped; only an
    /// unreadable directory leaves the previous key set verifying.
    pub fn reload_keys(&self, dir: &std::path::Path, status: &mut ComponentStatus) -> KeyReload {
        let keys = match KeySet::load_dir(dir) {
            Ok(keys) => keys,
            Err(error) => {
                let error = error.to_string();
                if status.last_error.as_deref() == Some(error.as_str()) {
                    return KeyReload::Unchanged;
                }
                audit::record(AuditEvent::KeySetRejected { error: &error });
                status.last_error = Some(error);
                return KeyReload::Rejected;
            }
        };
        let skipped = (!keys.skipped().is_empty())
            .then(|| keys.skipped().iter().map(ToString::to_string).collect::<Vec<_>>().join("; "));
        if status.active.as_deref() == Some(keys.fingerprint()) {
            // The same files as before; a directory that was unreadable is readable again.
            if skipped.is_none() {
                status.last_error = None;
            }
            return KeyReload::Unchanged;
        }
        audit::record(AuditEvent::KeySetActivated { fingerprint: keys.fingerprint(), kids: keys.kids().collect() });
        if let Some(skipped) = &skipped {
            audit::record(AuditEvent::KeySetRejected { error: skipped });
        }
        let outcome =
            KeyReload::Activated { kids: keys.kids().map(str::to_string).collect(), partial: skipped.is_some() };
        *status = ComponentStatus { last_error: skipped, ..ComponentStatus::activated(keys.fingerprint(), keys.len()) };
        self.set_keys(keys);
        outcome
    }

    /// Number of verified tokens in the cache.
    pub fn cached_tokens(&self) -> u64 {
        self.cache.len() as u64
    }

    /// Verifies the value of an `Authorization` header (or its absence).
    pub fn verify_header(&self, authorization: Option<&str>) -> Result<Arc<Verified<A>>, IdentityError> {
        let token = authorization.and_then(bearer_token).ok_or(IdentityError::Missing)?;
        self.verify(token)
    }

    /// Verifies a compact JWS.
    pub fn verify(&self, token: &str) -> Result<Arc<Verified<A>>, IdentityError> {
        let keys = self.keys.load();
        let keys = keys.as_ref().as_ref().ok_or(IdentityError::NoKeys)?;
        let cache_key = self.hash_key.hash(token.as_bytes());
        if let Some(entry) = self.cache.get(&cache_key) {
            let key_still_there = keys.get(&entry.key.kid).is_some_and(|k| Arc::ptr_eq(k, &entry.key));
            if key_still_there && entry.expires_at.saturating_add(self.leeway) > now_secs() {
                return Ok(entry);
            }
            self.cache.remove(&cache_key);
        }
        let identity = self.verify_with(token, keys)?;
        let entry = Arc::new(Verified { identity, attached: A::default() });
        self.cache.insert(cache_key, entry.clone());
        Ok(entry)
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
        // jsonwebtoken does not read `crit`; we implement no extension, so any is refused.
        if header_has_crit(token) {
            return Err(IdentityError::UnsupportedCritical);
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
                // A role with a `,` would read as two where roles travel joined (the roles
                // header, decision keys), an empty one as none: such a claim is not one we accept.
                roles
                    .iter()
                    .map(|r| {
                        r.as_str().filter(|r| !r.is_empty() && !r.contains(',')).ok_or(IdentityError::MissingClaim)
                    })
                    .collect::<Result<_, _>>()?
            }
            Some(_) => return Err(IdentityError::MissingClaim),
        };
        let expires_at = claims.get("exp").and_then(|e| e.as_u64()).ok_or(IdentityError::MissingClaim)?;
        let issued_at = match claims.get("iat") {
            None => now_secs(),
            Some(iat) => iat.as_u64().ok_or(IdentityError::MissingClaim)?,
        };
        if expires_at.saturating_sub(issued_at) > self.max_lifetime {
            return Err(IdentityError::LifetimeTooLong);
        }
        let roles = self.role_set(&roles.join(","));
        Ok(Identity { subject, roles, expires_at, key: key.clone() })
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

/// Extracts the token from `Bearer <token>` (scheme case-insensitive, RFC 6750).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether the token's header carries a `crit` member (of any value: an empty or malformed
/// one is invalid too, RFC 7515 §4.1.11).
fn header_has_crit(token: &str) -> bool {
    let header = token.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&h).ok())
        .is_none_or(|h| h.contains_key("crit"))
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
