//! The verification key set: every public key in a directory laid out like a mounted
//! Kubernetes secret (one file per key; hidden `..data` entries are skipped; symlinks are
//! followed). A key is bound to exactly one algorithm, taken from the key itself, so a token
//! can never choose how its own signature is checked.
//!
//! A file that cannot be read or is not a usable key is reported and skipped: the other keys
//! load, so a key removed from the directory stops verifying even while a neighbour is bad.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};

use qiria_runtime::secret_dir;

/// One public key, usable for exactly one algorithm.
pub struct VerifyKey {
    /// Key id, matched against the token header's `kid`.
    pub kid: String,
    /// RS256 or ES256; a token naming any other algorithm is refused for this key.
    pub alg: Algorithm,
    /// The key material in jsonwebtoken's form.
    pub decoding: DecodingKey,
    /// The file it came from, for reports.
    pub source: PathBuf,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("source", &self.source)
            .finish()
    }
}

/// All keys loaded from one directory, by kid, with a fingerprint of the whole set.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: BTreeMap<String, Arc<VerifyKey>>,
    fingerprint: String,
    skipped: Vec<KeyError>,
}

/// Why a key directory, or one file of it, could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The directory or one of its files could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// What could not be read.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not a usable RS256/ES256 public key.
    #[error("{path}: {reason}")]
    Invalid {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Two files claim the same kid.
    #[error("kid `{kid}` appears in both {first} and {second}")]
    DuplicateKid {
        /// The repeated key id.
        kid: String,
        /// Where it was seen first.
        first: PathBuf,
        /// Where it was seen again.
        second: PathBuf,
    },
}

impl KeySet {
    /// Reads every key file in `dir`. Only an unreadable directory fails the load; a file that
    /// cannot be read, is not a key, or repeats a kid is skipped and listed in [`Self::skipped`].
    pub fn load_dir(dir: &Path) -> Result<Self, KeyError> {
        let mut keys: BTreeMap<String, Arc<VerifyKey>> = BTreeMap::new();
        let mut hasher = Sha256::new();
        let (files, unreadable) =
            secret_dir::read_each(dir, |ext| matches!(ext, "pem" | "pub" | "jwk" | "json" | "jwks"))
                .map_err(|(path, source)| KeyError::Io { path, source })?;
        let mut skipped: Vec<KeyError> =
            unreadable.into_iter().map(|(path, source)| KeyError::Io { path, source }).collect();
        for file in files {
            let path = file.path;
            hasher.update(path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
            hasher.update([0]);
            hasher.update(&*file.bytes);
            let parsed = match parse_key_file(&path, &file.bytes) {
                Ok(parsed) => parsed,
                Err(e) => {
                    skipped.push(e);
                    continue;
                }
            };
            for key in parsed {
                if let Some(existing) = keys.get(&key.kid) {
                    skipped.push(KeyError::DuplicateKid {
                        kid: key.kid.clone(),
                        first: existing.source.clone(),
                        second: path.clone(),
                    });
                    continue;
                }
                keys.insert(key.kid.clone(), Arc::new(key));
            }
        }
        // Skipped files count in the fingerprint too: a set that loses or regains one is news.
        for problem in &skipped {
            hasher.update(problem.to_string().as_bytes());
            hasher.update([0]);
        }
        Ok(Self { keys, fingerprint: hex::encode(&hasher.finalize()[..8]), skipped })
    }

    /// Files of the directory that were reported and left out.
    pub fn skipped(&self) -> &[KeyError] {
        &self.skipped
    }

    /// The key with this kid, if the set has it.
    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyKey>> {
        self.keys.get(kid)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the directory held no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Key ids, sorted.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// A short content hash of the directory's key files.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Key files of a directory: visible regular files (or links to them) with a key extension.
fn extension(path: &Path) -> &str {
    path.extension().and_then(|e| e.to_str()).unwrap_or("")
}

fn parse_key_file(path: &Path, bytes: &[u8]) -> Result<Vec<VerifyKey>, KeyError> {
    let invalid = |reason: String| KeyError::Invalid { path: path.to_path_buf(), reason };
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
    match extension(path) {
        "pem" | "pub" => {
            let (decoding, alg) = if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
                (key, Algorithm::RS256)
            } else if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
                (key, Algorithm::ES256)
            } else {
                return Err(invalid("not an RSA or EC public key in PEM form".into()));
            };
            Ok(vec![VerifyKey { kid: stem, alg, decoding, source: path.to_path_buf() }])
        }
        _ => {
            let value: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
            let jwks: Vec<Jwk> = if value.get("keys").is_some() {
                serde_json::from_value::<JwkSet>(value).map_err(|e| invalid(format!("not a JWKS: {e}")))?.keys
            } else {
                vec![serde_json::from_value(value).map_err(|e| invalid(format!("not a JWK: {e}")))?]
            };
            let single = jwks.len() == 1;
            jwks.iter()
                .map(|jwk| {
                    let kid = match (&jwk.common.key_id, single) {
                        (Some(kid), _) => kid.clone(),
                        (None, true) => stem.clone(),
                        (None, false) => return Err(invalid("a JWKS with several keys needs a kid on each".into())),
                    };
                    let alg = jwk_algorithm(jwk).map_err(|r| invalid(format!("kid `{kid}`: {r}")))?;
                    let decoding = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("kid `{kid}`: {e}")))?;
                    Ok(VerifyKey { kid, alg, decoding, source: path.to_path_buf() })
                })
                .collect()
        }
    }
}

/// The one algorithm a JWK may verify: RS256 for RSA, ES256 for P-256; never symmetric.
fn jwk_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("key is for encryption (`use: enc`), not signatures".into());
    }
    let from_key = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::EllipticCurve(ec) => {
            return Err(format!("curve {:?} is not supported (ES256 needs P-256)", ec.curve))
        }
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are never accepted".into()),
        AlgorithmParameters::OctetKeyPair(_) => return Err("EdDSA keys are not supported".into()),
    };
    match jwk.common.key_algorithm {
        None => Ok(from_key),
        Some(KeyAlgorithm::RS256) if from_key == Algorithm::RS256 => Ok(from_key),
        Some(KeyAlgorithm::ES256) if from_key == Algorithm::ES256 => Ok(from_key),
        Some(other) => Err(format!("`alg: {other:?}` is not allowed for this key (only RS256 / ES256)")),
    }
}
