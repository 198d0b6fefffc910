//! Bearer-token verification for every Qiria service that must know who calls it: the key
//! set from a mounted secret (`keys`), RS256/ES256 verification with its bounded cache of
//! verified tokens (`verify`), the typed reasons a token is refused (`error`), and the keyed
//! hashing caches file entries under (`hash`).
//!
//! It holds public keys only, and knows nothing of policies, Envoy or databases.
// Code that ships: no unwrap()/expect()/panic!() outside tests (a panic on a request path
// takes the request, or the task serving it, down with it). Errors are returned or handled.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod error;
mod hash;
mod keys;
mod verify;

pub use error::IdentityError;
pub use hash::{PassThrough, PrehashedKey, TokenHasher};
pub use keys::{KeyError, KeySet, VerifyKey};
pub use verify::{
    bearer_token, Identity, JwtConfig, KeyReload, TokenVerifier, Verified, VerifierArgs, VerifierSettings,
    MAX_LEEWAY_SECS,
};
