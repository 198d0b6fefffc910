//! What `io.jwt.decode_verify` has already done, so that a policy verifying the bearer token
//! in Rego (the OPA-Envoy primer's shape) costs one signature check per token and key, not one
//! per request — as authz's Rust verifier caches its own work. Two bounded caches, shared by
//! every engine of the process:
//! - key sets parsed from a `cert` constraint (a JWKS in policy data is re-marshalled on every
//!   evaluation; its keys need parsing once), by a digest of the text;
//! - signatures that verified, by a digest of the key constraint, the header's `alg` and `kid`,
//!   the signing input and the signature. Only successes are kept: a flood of bad signatures
//!   adds nothing, and a token's claims (expiry, audience…) are checked on every call.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Result;
use moka::sync::Cache;
use sha2::{Digest, Sha256};

use super::jwk::VerificationKey;

/// Signatures remembered at most; past that the least used go.
const MAX_SIGNATURES: u64 = 100_000;
/// Key sets remembered at most (a bundle holds a handful).
const MAX_KEY_SETS: u64 = 256;
/// How long a verified signature is remembered: long past any access token's lifetime is
/// pointless, since its `exp` fails it anyway.
const SIGNATURE_TTL: Duration = Duration::from_secs(3600);

thread_local! {
    /// Signature checks this thread actually ran (tests read it: one thread, no races).
    static CHECKS: Cell<u64> = const { Cell::new(0) };
}

fn signatures() -> &'static Cache<[u8; 32], ()> {
    static CACHE: OnceLock<Cache<[u8; 32], ()>> = OnceLock::new();
    CACHE.get_or_init(|| Cache::builder().max_capacity(MAX_SIGNATURES).time_to_live(SIGNATURE_TTL).build())
}

fn key_sets() -> &'static Cache<[u8; 32], Arc<Vec<VerificationKey>>> {
    static CACHE: OnceLock<Cache<[u8; 32], Arc<Vec<VerificationKey>>>> = OnceLock::new();
    CACHE.get_or_init(|| Cache::builder().max_capacity(MAX_KEY_SETS).build())
}

/// A digest of `parts`, each length-prefixed (so no two different lists digest alike).
pub(super) fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Whether the signature `key` stands for verifies: remembered if it did before, else
/// `verify()` runs (and a success is remembered).
pub(super) fn verifies_once(key: [u8; 32], verify: impl FnOnce() -> bool) -> bool {
    if signatures().contains_key(&key) {
        return true;
    }
    CHECKS.with(|c| c.set(c.get() + 1));
    let verified = verify();
    if verified {
        signatures().insert(key, ());
    }
    verified
}

/// The keys of a `cert` constraint, parsed once per distinct text.
pub(super) fn key_set(
    cert: &str,
    parse: impl FnOnce(&str) -> Result<Vec<VerificationKey>>,
) -> Result<Arc<Vec<VerificationKey>>> {
    let key = digest(&[b"cert", cert.as_bytes()]);
    if let Some(keys) = key_sets().get(&key) {
        return Ok(keys);
    }
    let keys = Arc::new(parse(cert)?);
    key_sets().insert(key, keys.clone());
    Ok(keys)
}

/// Signature checks this thread has run.
#[cfg(test)]
pub(super) fn checks() -> u64 {
    CHECKS.with(Cell::get)
}
