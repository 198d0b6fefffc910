//! Key material for `io.jwt.*`: the keys a token may be verified with (OPA's `cert`: a PEM
//! certificate, a PEM public key, or a JWK or JWK set) and the key `encode_sign` signs with (a
//! private JWK), turned into `jsonwebtoken` keys so that *ring* does all the cryptography.
//!
//! Every key carries its type, and a key only ever serves algorithms of its own type: otherwise
//! a token saying `HS256` would be checked with a public key's bytes as the HMAC secret.

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::Deserialize;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384, OID_SIG_ED25519};
use x509_parser::pem::parse_x509_pem;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// The algorithms OPA knows (`tokenAlgorithms`); a JWK whose `alg` is another is skipped.
pub(super) const OPA_ALGORITHMS: [&str; 13] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "EdDSA",
];

/// What a key is, which decides the algorithms it may serve (RFC 7518 §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyType {
    Secret,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    /// A key OPA accepts but *ring* cannot use (P-521, ...): it never verifies anything.
    Unsupported,
}

/// The algorithm *ring* runs for a JWS `alg`, and the key type it needs; `None` for algorithms
/// not implemented (ES512: `jsonwebtoken` 9 has no P-521) or unknown.
pub(super) fn jws_algorithm(alg: &str) -> Option<(Algorithm, KeyType)> {
    Some(match alg {
        "HS256" => (Algorithm::HS256, KeyType::Secret),
        "HS384" => (Algorithm::HS384, KeyType::Secret),
        "HS512" => (Algorithm::HS512, KeyType::Secret),
        "RS256" => (Algorithm::RS256, KeyType::Rsa),
        "RS384" => (Algorithm::RS384, KeyType::Rsa),
        "RS512" => (Algorithm::RS512, KeyType::Rsa),
        "PS256" => (Algorithm::PS256, KeyType::Rsa),
        "PS384" => (Algorithm::PS384, KeyType::Rsa),
        "PS512" => (Algorithm::PS512, KeyType::Rsa),
        "ES256" => (Algorithm::ES256, KeyType::EcP256),
        "ES384" => (Algorithm::ES384, KeyType::EcP384),
        "EdDSA" => (Algorithm::EdDSA, KeyType::Ed25519),
        _ => return None,
    })
}

/// OPA's base64url decoding: padding optional (added back as RFC 7515 appendix C says),
/// non-zero trailing bits tolerated (as Go's decoder does).
pub(super) fn base64url_decode(s: &str) -> Result<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );
    let mut padded = s.to_string();
    if !s.ends_with('=') {
        match s.len() % 4 {
            0 => {}
            2 => padded.push_str("=="),
            3 => padded.push('='),
            _ => bail!("illegal base64url string: {s}"),
        }
    }
    LENIENT.decode(padded).map_err(|e| anyhow!("illegal base64 data: {e}"))
}

/// A key a signature may be checked with.
pub(super) struct VerificationKey {
    key_type: KeyType,
    key: Option<DecodingKey>,
    /// The JWK's `alg`, empty when it has none (always for PEM).
    pub alg: String,
    /// The JWK's `kid`, empty when it has none (always for PEM).
    pub kid: String,
}

impl VerificationKey {
    /// A shared HMAC secret.
    pub(super) fn secret(secret: &[u8]) -> Self {
        Self::new(KeyType::Secret, DecodingKey::from_secret(secret))
    }

    fn new(key_type: KeyType, key: DecodingKey) -> Self {
        Self { key_type, key: Some(key), alg: String::new(), kid: String::new() }
    }

    fn unsupported() -> Self {
        Self { key_type: KeyType::Unsupported, key: None, alg: String::new(), kid: String::new() }
    }

    /// Whether `signature` is a valid `alg` signature of `message` under this key; never for a
    /// key of another type than `alg` needs.
    pub(super) fn verifies(&self, alg: &str, message: &[u8], signature: &[u8]) -> bool {
        let Some((algorithm, key_type)) = jws_algorithm(alg) else { return false };
        let Some(key) = self.key.as_ref().filter(|_| self.key_type == key_type) else { return false };
        jsonwebtoken::crypto::verify(&URL_SAFE_NO_PAD.encode(signature), message, key, algorithm).unwrap_or(false)
    }
}

/// The keys of OPA's `cert` argument: one PEM block (a certificate or a public key, nothing
/// after it), or else a JWK or JWK set.
pub(super) fn verification_keys(certificate: &str) -> Result<Vec<VerificationKey>> {
    match parse_x509_pem(certificate.as_bytes()) {
        Ok((rest, pem)) => {
            if !rest.is_empty() {
                bail!("extra data after a PEM certificate block");
            }
            Ok(vec![key_from_pem(&pem.label, &pem.contents)?])
        }
        Err(_) => keys_from_jwk(certificate),
    }
}

fn key_from_pem(label: &str, der: &[u8]) -> Result<VerificationKey> {
    match label {
        "CERTIFICATE" => {
            let (rest, cert) =
                X509Certificate::from_der(der).map_err(|e| anyhow!("failed to parse a PEM certificate: {e}"))?;
            if !rest.is_empty() {
                bail!("failed to parse a PEM certificate: trailing data");
            }
            key_from_spki(cert.public_key())
        }
        "PUBLIC KEY" => {
            let (rest, spki) =
                SubjectPublicKeyInfo::from_der(der).map_err(|e| anyhow!("failed to parse a PEM public key: {e}"))?;
            if !rest.is_empty() {
                bail!("failed to parse a PEM public key: trailing data");
            }
            key_from_spki(&spki)
        }
        _ => bail!("failed to extract a Key from the PEM certificate"),
    }
}

/// The key of a certificate or a PEM public key.
pub(super) fn key_from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<VerificationKey> {
    let raw: &[u8] = &spki.subject_public_key.data;
    match spki.parsed().map_err(|e| anyhow!("failed to parse the public key: {e}"))? {
        // *ring* reads the PKCS #1 `RSAPublicKey` the SPKI wraps.
        PublicKey::RSA(_) => Ok(VerificationKey::new(KeyType::Rsa, DecodingKey::from_rsa_der(raw))),
        PublicKey::EC(point) => {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            Ok(match curve {
                Some(oid) if oid == OID_EC_P256 => VerificationKey::new(KeyType::EcP256, ec_key(point.data())),
                Some(oid) if oid == OID_NIST_EC_P384 => VerificationKey::new(KeyType::EcP384, ec_key(point.data())),
                _ => VerificationKey::unsupported(),
            })
        }
        PublicKey::Unknown(key) if spki.algorithm.algorithm == OID_SIG_ED25519 => {
            Ok(VerificationKey::new(KeyType::Ed25519, DecodingKey::from_ed_der(key)))
        }
        _ => bail!("unsupported public key algorithm {}", spki.algorithm.algorithm),
    }
}

/// An uncompressed EC point as *ring* takes it (`DecodingKey::from_ec_der` wants the point,
/// not a DER document, whatever its name says).
fn ec_key(point: &[u8]) -> DecodingKey {
    DecodingKey::from_ec_der(point)
}

/// A JWK (RFC 7517) with the members of every key type this module reads.
#[derive(Deserialize)]
pub(super) struct Jwk {
    kty: String,
    alg: Option<String>,
    kid: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
    d: Option<String>,
    p: Option<String>,
    q: Option<String>,
    dp: Option<String>,
    dq: Option<String>,
    qi: Option<String>,
    k: Option<String>,
}

impl Jwk {
    /// Member `name`, base64url-decoded; it must be there.
    fn bytes(&self, name: &str, member: &Option<String>) -> Result<Vec<u8>> {
        let text = member.as_deref().ok_or_else(|| anyhow!("{} JWK without `{name}`", self.kty))?;
        base64url_decode(text).with_context(|| format!("{} JWK member `{name}`", self.kty))
    }

    /// The curve's key size in bytes, for `EC` and `OKP` keys; `None` for curves not supported.
    fn curve(&self) -> Result<Option<(KeyType, usize)>> {
        Ok(match (self.kty.as_str(), self.crv.as_deref()) {
            ("EC", Some("P-256")) => Some((KeyType::EcP256, 32)),
            ("EC", Some("P-384")) => Some((KeyType::EcP384, 48)),
            ("EC", Some("P-521")) | ("OKP", Some("X25519" | "Ed448" | "X448")) => None,
            ("OKP", Some("Ed25519")) => Some((KeyType::Ed25519, 32)),
            (kty, crv) => bail!("unsupported {kty} JWK curve {crv:?}"),
        })
    }

    /// `x` and `y` (`x` alone for `OKP`), each exactly `size` bytes.
    fn point(&self, size: usize) -> Result<Vec<u8>> {
        let x = self.bytes("x", &self.x)?;
        if self.kty == "OKP" {
            return exact(x, size, "x");
        }
        let y = exact(self.bytes("y", &self.y)?, size, "y")?;
        Ok([&[0x04][..], &exact(x, size, "x")?, &y].concat())
    }

    fn verification_key(&self) -> Result<VerificationKey> {
        let mut key = match self.kty.as_str() {
            "RSA" => {
                let (n, e) = (self.bytes("n", &self.n)?, self.bytes("e", &self.e)?);
                VerificationKey::new(KeyType::Rsa, DecodingKey::from_rsa_raw_components(unsigned(&n), unsigned(&e)))
            }
            "EC" | "OKP" => match self.curve()? {
                Some((KeyType::Ed25519, size)) => {
                    VerificationKey::new(KeyType::Ed25519, DecodingKey::from_ed_der(&self.point(size)?))
                }
                Some((key_type, size)) => VerificationKey::new(key_type, ec_key(&self.point(size)?)),
                None => VerificationKey::unsupported(),
            },
            "oct" => VerificationKey::secret(&self.bytes("k", &self.k)?),
            other => bail!("invalid key type {other:?}"),
        };
        key.alg = self.alg.clone().unwrap_or_default();
        key.kid = self.kid.clone().unwrap_or_default();
        Ok(key)
    }
}

/// `bytes` if it is `size` long.
fn exact(bytes: Vec<u8>, size: usize, name: &str) -> Result<Vec<u8>> {
    if bytes.len() != size {
        bail!("JWK member `{name}` is {} bytes, not {size}", bytes.len());
    }
    Ok(bytes)
}

/// A big-endian unsigned integer without its leading zero bytes.
fn unsigned(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// The keys of a JWK set (`{"keys": [...]}`) or of a single JWK, as OPA reads them: a key whose
/// `alg` OPA does not know is left out, any other unreadable key fails the whole set.
fn keys_from_jwk(text: &str) -> Result<Vec<VerificationKey>> {
    let jwks = parse_jwks(text).map_err(|e| anyhow!("failed to parse a JWK key (set): {e}"))?;
    let known = |jwk: &Jwk| jwk.alg.as_deref().is_none_or(|alg| OPA_ALGORITHMS.contains(&alg));
    jwks.iter().filter(|jwk| known(jwk)).map(Jwk::verification_key).collect()
}

fn parse_jwks(text: &str) -> Result<Vec<Jwk>> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Jwk>,
    }
    let json: serde_json::Value = serde_json::from_str(text)?;
    if json.get("keys").is_some() {
        return Ok(serde_json::from_value::<Set>(json)?.keys);
    }
    Ok(vec![serde_json::from_value(json)?])
}

/// The key `encode_sign` signs with: the first key of a JWK set, or the JWK.
pub(super) fn first_key(jwk: &str) -> Result<Jwk> {
    parse_jwks(jwk)?.into_iter().next().ok_or_else(|| anyhow!("no keys found in JWK set"))
}

/// `jwk` ready to sign `alg`, which needs a private key of `alg`'s type.
pub(super) fn signing_key(jwk: &Jwk, alg: &str) -> Result<(Algorithm, EncodingKey)> {
    let Some((algorithm, key_type)) = jws_algorithm(alg) else { bail!("unsupported JWS algorithm: {alg}") };
    let key = match (key_type, jwk.kty.as_str()) {
        (KeyType::Secret, "oct") => EncodingKey::from_secret(&jwk.bytes("k", &jwk.k)?),
        (KeyType::Rsa, "RSA") => EncodingKey::from_rsa_der(&rsa_private_key(jwk)?),
        (KeyType::EcP256 | KeyType::EcP384, "EC") => EncodingKey::from_ec_der(&ec_private_key(jwk, key_type)?),
        (KeyType::Ed25519, "OKP") => EncodingKey::from_ed_der(&ed25519_private_key(jwk)?),
        (_, kty) => bail!("a {kty} JWK cannot sign {alg}"),
    };
    Ok((algorithm, key))
}

/// The PKCS #1 `RSAPrivateKey` (RFC 8017 appendix A.1.2) of a private RSA JWK; *ring* checks
/// that its parts agree when it loads it.
fn rsa_private_key(jwk: &Jwk) -> Result<Vec<u8>> {
    let members = [
        ("n", &jwk.n),
        ("e", &jwk.e),
        ("d", &jwk.d),
        ("p", &jwk.p),
        ("q", &jwk.q),
        ("dp", &jwk.dp),
        ("dq", &jwk.dq),
        ("qi", &jwk.qi),
    ];
    let mut content = der_uint(&[0]);
    for (name, member) in members {
        content.extend(der_uint(&jwk.bytes(name, member)?));
    }
    Ok(der(TAG_SEQUENCE, &content))
}

/// The PKCS #8 document (RFC 5915, with the public key, which *ring* requires) of a private EC
/// JWK on `key_type`'s curve.
fn ec_private_key(jwk: &Jwk, key_type: KeyType) -> Result<Vec<u8>> {
    let Some((curve, size)) = jwk.curve()?.filter(|(t, _)| *t == key_type) else {
        bail!("EC JWK on curve {:?} cannot sign this algorithm", jwk.crv);
    };
    let curve_oid: &[u8] = match curve {
        KeyType::EcP256 => &OID_P256,
        _ => &OID_P384,
    };
    let d = jwk.bytes("d", &jwk.d)?;
    let d = [vec![0; size.saturating_sub(d.len())], d].concat();
    let public_key = der(TAG_BIT_STRING, &[&[0][..], &jwk.point(size)?].concat());
    let ec_private_key =
        der(TAG_SEQUENCE, &[der_uint(&[1]), der(TAG_OCTET_STRING, &d), der(TAG_CONTEXT_1, &public_key)].concat());
    let algorithm = der(TAG_SEQUENCE, &[&OID_EC_PUBLIC_KEY[..], curve_oid].concat());
    Ok(der(TAG_SEQUENCE, &[der_uint(&[0]), algorithm, der(TAG_OCTET_STRING, &ec_private_key)].concat()))
}

/// The PKCS #8 document (RFC 8410) of a private Ed25519 JWK.
fn ed25519_private_key(jwk: &Jwk) -> Result<Vec<u8>> {
    if jwk.curve()?.map(|(t, _)| t) != Some(KeyType::Ed25519) {
        bail!("OKP JWK on curve {:?} cannot sign EdDSA", jwk.crv);
    }
    let seed = exact(jwk.bytes("d", &jwk.d)?, 32, "d")?;
    let algorithm = der(TAG_SEQUENCE, &OID_ED25519);
    Ok(der(TAG_SEQUENCE, &[der_uint(&[0]), algorithm, der(TAG_OCTET_STRING, &der(TAG_OCTET_STRING, &seed))].concat()))
}

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_SEQUENCE: u8 = 0x30;
/// `[1]`, constructed: ECPrivateKey's `publicKey`.
const TAG_CONTEXT_1: u8 = 0xa1;
/// Encoded OBJECT IDENTIFIERs: id-ecPublicKey (1.2.840.10045.2.1), prime256v1
/// (1.2.840.10045.3.1.7), secp384r1 (1.3.132.0.34), id-Ed25519 (1.3.101.112).
const OID_EC_PUBLIC_KEY: [u8; 9] = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// One DER element (X.690 §8.1): the few key documents above need nothing more.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match u8::try_from(content.len()) {
        Ok(len) if len < 0x80 => out.push(len),
        _ => {
            let len = content.len().to_be_bytes();
            let len = unsigned(&len);
            out.push(0x80 | u8::try_from(len.len()).unwrap_or(0x7f));
            out.extend_from_slice(len);
        }
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER of a big-endian unsigned value: minimal, with a zero byte where the top bit
/// would make it negative.
fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let bytes = unsigned(bytes);
    let mut content = Vec::with_capacity(bytes.len() + 1);
    if bytes.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(bytes);
    der(TAG_INTEGER, &content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_takes_padding_or_none_and_refuses_impossible_lengths() {
        assert_eq!(base64url_decode("aGk").unwrap(), b"hi");
        assert_eq!(base64url_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64url_decode("").unwrap(), b"");
        assert_eq!(base64url_decode("_-8").unwrap(), [0xff, 0xef]);
        assert!(base64url_decode("abcde").unwrap_err().to_string().contains("illegal base64url string"));
        assert!(base64url_decode("a$c=").is_err());
    }

    #[test]
    fn der_lengths_and_integers() {
        assert_eq!(der(TAG_OCTET_STRING, &[1, 2]), [0x04, 2, 1, 2]);
        let long = der(TAG_OCTET_STRING, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(long.len(), 304);
        assert_eq!(der_uint(&[0, 0, 0x7f]), [0x02, 1, 0x7f]);
        assert_eq!(der_uint(&[0x80]), [0x02, 2, 0, 0x80]);
        assert_eq!(der_uint(&[0]), [0x02, 1, 0]);
    }

    #[test]
    fn a_key_serves_only_algorithms_of_its_type() {
        let secret = VerificationKey::secret(b"k");
        let sig = jsonwebtoken::crypto::sign(b"m", &EncodingKey::from_secret(b"k"), Algorithm::HS256).unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        assert!(secret.verifies("HS256", b"m", &sig));
        assert!(!secret.verifies("HS384", b"m", &sig));
        assert!(!secret.verifies("RS256", b"m", &sig));
        assert!(!secret.verifies("none", b"m", &[]));
        assert!(!VerificationKey::unsupported().verifies("ES512", b"m", &sig));
    }

    fn error<T>(result: Result<T>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn jwk_sets_skip_unknown_algorithms_and_refuse_unknown_types() {
        let set =
            r#"{"keys": [{"kty": "oct", "k": "a2V5", "alg": "A128KW"}, {"kty": "oct", "k": "a2V5", "kid": "1"}]}"#;
        let keys = keys_from_jwk(set).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid, "1");
        assert!(keys_from_jwk(r#"{"kty": "XYZ"}"#).is_err());
        assert!(error(keys_from_jwk("not json")).starts_with("failed to parse a JWK key (set)"));
        assert!(error(first_key(r#"{"keys": []}"#)).contains("no keys"));
        let oct = first_key(r#"{"kty": "oct", "k": "a2V5"}"#).unwrap();
        assert!(error(signing_key(&oct, "RS256")).contains("cannot sign"));
        let p521 = first_key(r#"{"kty": "EC", "crv": "P-521"}"#).unwrap();
        assert!(error(signing_key(&p521, "ES512")).contains("unsupported JWS algorithm"));
    }
}
