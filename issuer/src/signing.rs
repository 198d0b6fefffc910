//! The issuer's signing keys, from a directory laid out like a mounted Kubernetes secret:
//! one PKCS#8 PEM private key per file (`<kid>.pem`), the active one named by configuration
//! or by an `active` file holding its kid. Every key in the directory is published in the
//! JWKS, so tokens signed by a key being rotated out keep verifying until it is removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use p256::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;

use qiria_runtime::secret_dir;

/// One private key.
pub struct SigningKey {
    /// Key id (the file stem), written into every token's header.
    pub kid: String,
    /// RS256 or ES256.
    pub alg: Algorithm,
    /// For jsonwebtoken.
    pub encoding: EncodingKey,
    /// The public half as a JWK.
    pub jwk: serde_json::Value,
}

/// All signing keys of the directory, and which one signs.
pub struct SigningKeys {
    active: String,
    keys: BTreeMap<String, SigningKey>,
}

/// Why the signing directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// Unreadable directory or file.
    #[error("reading {path}: {source}")]
    Io {
        /// What.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a PKCS#8 RSA or P-256 private key.
    #[error("{0}: not a PKCS#8 RSA or P-256 private key")]
    NotAKey(PathBuf),
    /// No key, or the active kid is not among them.
    #[error("no active signing key: {0}")]
    NoActiveKey(String),
}

impl SigningKeys {
    /// Loads every `*.pem` of `dir`; `active` (or the `active` file) names the signing key.
    pub fn load_dir(dir: &Path, active: Option<&str>) -> Result<Self, SigningError> {
        let files =
            secret_dir::read(dir, |ext| ext == "pem").map_err(|(path, source)| SigningError::Io { path, source })?;
        let mut keys = BTreeMap::new();
        for file in files {
            let pem = std::str::from_utf8(&file.bytes).map_err(|_| SigningError::NotAKey(file.path.clone()))?;
            let key = parse(&file.kid, pem).ok_or_else(|| SigningError::NotAKey(file.path.clone()))?;
            keys.insert(file.kid, key);
        }
        let kids = keys.keys().cloned().collect();
        let active = secret_dir::active(dir, active, &kids).map_err(SigningError::NoActiveKey)?;
        Ok(Self { active, keys })
    }

    /// The key that signs new tokens.
    pub fn active(&self) -> Option<&SigningKey> {
        self.keys.get(&self.active)
    }

    /// How many keys the directory holds (all published in the JWKS).
    pub fn count(&self) -> usize {
        self.keys.len()
    }

    /// The kid of the key that signs new tokens.
    pub fn active_kid(&self) -> &str {
        &self.active
    }

    /// A token without claims signed by the active key: whether the verification keys accept
    /// it shows whether the key's public half was published before the key is made to sign.
    pub fn probe(&self) -> Option<String> {
        let key = self.active()?;
        let mut header = jsonwebtoken::Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &serde_json::json!({}), &key.encoding).ok()
    }

    /// Every public key, as a JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.keys.values().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }
}

fn parse(kid: &str, pem: &str) -> Option<SigningKey> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    if let Ok(key) = rsa::RsaPrivateKey::from_pkcs8_pem(pem) {
        let jwk = serde_json::json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be()),
        });
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).ok()?;
        return Some(SigningKey { kid: kid.into(), alg: Algorithm::RS256, encoding, jwk });
    }
    let key = p256::SecretKey::from_pkcs8_pem(pem).ok()?;
    let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key.public_key(), false);
    let jwk = serde_json::json!({
        "kty": "EC", "use": "sig", "alg": "ES256", "kid": kid, "crv": "P-256",
        "x": b64(point.x()?), "y": b64(point.y()?),
    });
    let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).ok()?;
    Some(SigningKey { kid: kid.into(), alg: Algorithm::ES256, encoding, jwk })
}
