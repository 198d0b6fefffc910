//! Signing keys and tokens for tests: RS256/ES256 key pairs written in the key directory
//! layout authz reads, and tokens minted with any claims or header (including broken ones).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

/// Issuer the test configurations accept.
pub const ISSUER: &str = "https://qiria.test";
/// Audience the test configurations accept.
pub const AUDIENCE: &str = "qiria";

/// A key pair with its kid.
pub struct SigningKey {
    /// Key id, written to the token header and used as the public key's file name.
    pub kid: String,
    /// RS256 or ES256.
    pub alg: Algorithm,
    /// PKCS#8 PEM.
    pub private_pem: String,
    /// SPKI PEM.
    pub public_pem: String,
}

impl SigningKey {
    /// A fresh RSA-2048 key.
    pub fn rsa(kid: &str) -> Self {
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("rsa keygen");
        Self {
            kid: kid.into(),
            alg: Algorithm::RS256,
            private_pem: key.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string(),
            public_pem: key.to_public_key().to_public_key_pem(LineEnding::LF).expect("pem"),
        }
    }

    /// A fresh P-256 key.
    pub fn ec(kid: &str) -> Self {
        let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
        Self {
            kid: kid.into(),
            alg: Algorithm::ES256,
            private_pem: key.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string(),
            public_pem: key.public_key().to_public_key_pem(LineEnding::LF).expect("pem"),
        }
    }

    /// Writes the public key as `<dir>/<kid>.pem`.
    pub fn write_public(&self, dir: &Path) {
        std::fs::write(dir.join(format!("{}.pem", self.kid)), &self.public_pem).expect("write public key");
    }

    /// Signs `claims` with this key and its kid.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with_header(&header, claims)
    }

    fn encoding_key(&self) -> EncodingKey {
        match self.alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(self.private_pem.as_bytes()),
            _ => EncodingKey::from_ec_pem(self.private_pem.as_bytes()),
        }
        .expect("encoding key")
    }

    /// Signs every claim set, the key parsed once and the work spread over the cores (a bench
    /// mints tens of thousands of RS256 tokens).
    pub fn sign_all(&self, all: &[serde_json::Value]) -> Vec<String> {
        let key = self.encoding_key();
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = all.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = all
                .chunks(chunk)
                .map(|claims| {
                    let (key, header) = (&key, &header);
                    scope.spawn(move || {
                        claims.iter().map(|c| jsonwebtoken::encode(header, c, key).expect("sign")).collect::<Vec<_>>()
                    })
                })
                .collect();
            workers.into_iter().flat_map(|w| w.join().expect("signing thread")).collect()
        })
    }

    /// Signs with an arbitrary header (another kid, no kid…).
    pub fn sign_with_header(&self, header: &Header, claims: &serde_json::Value) -> String {
        let key = self.encoding_key();
        jsonwebtoken::encode(header, claims, &key).expect("sign")
    }

    /// Signs with a header given as raw JSON, for members jsonwebtoken's `Header` lacks
    /// (`crit`); `kid` and `alg` are this key's unless the JSON sets them.
    pub fn sign_with_raw_header(&self, mut header: serde_json::Value, claims: &serde_json::Value) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let alg = if self.alg == Algorithm::RS256 { "RS256" } else { "ES256" };
        if let Some(h) = header.as_object_mut() {
            h.entry("alg").or_insert_with(|| alg.into());
            h.entry("kid").or_insert_with(|| self.kid.clone().into());
        }
        let message = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let key = self.encoding_key();
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, self.alg).expect("sign");
        format!("{message}.{signature}")
    }

    /// The classic confusion attack: HS256 with this key's *public* PEM as the HMAC secret.
    pub fn hs256_with_public_key(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(self.public_pem.as_bytes())).expect("sign")
    }
}

/// An HS256 token shaped as OPA-Envoy's tutorial ("Envoy primer") makes them: claims `role`,
/// `sub` base64url-encoded, `nbf` ten seconds ago, `exp` in `exp_in` seconds; signed with `secret`.
pub fn primer_token(role: &str, sub: &str, secret: &str, exp_in: i64) -> String {
    let now = now() as i64;
    let sub = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sub);
    let claims = serde_json::json!({"role": role, "sub": sub, "nbf": now - 10, "exp": now + exp_in});
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
        .expect("sign")
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Valid access-token claims for `sub` with `roles`, five minutes to live.
pub fn claims(sub: &str, roles: &[&str]) -> serde_json::Value {
    claims_living(sub, roles, 300)
}

/// The same, `lifetime` seconds to live, `exp` counted from the very `iat` it is written
/// with (reading the clock twice can straddle a second and make the token one too long-lived).
pub fn claims_living(sub: &str, roles: &[&str], lifetime: u64) -> serde_json::Value {
    let now = now();
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles, "typ": "access",
        "iat": now, "nbf": now, "exp": now + lifetime, "jti": format!("{sub}-{now}-{}", rand::random::<u32>()),
    })
}

/// `token` with its payload rewritten by `change` and its signature kept: a forgery.
pub fn tampered(token: &str, change: impl FnOnce(&mut serde_json::Value)) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    let decoded = parts.get(1).and_then(|p| b64.decode(p).ok()).unwrap_or_default();
    let mut payload: serde_json::Value = serde_json::from_slice(&decoded).unwrap_or_default();
    change(&mut payload);
    let (header, signature) = (parts.first().unwrap_or(&""), parts.get(2).unwrap_or(&""));
    format!("{header}.{}.{signature}", b64.encode(payload.to_string()))
}

/// An unsigned token (`alg: none`).
pub fn alg_none(claims: &serde_json::Value) -> String {
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(claims.to_string().as_bytes()))
}

/// 32 random bytes, base64: a master key in the layout `authz keys generate-master` writes.
pub fn random_key_base64() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}
