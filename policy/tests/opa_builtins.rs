//! The OPA builtins (`qiria_policy::opa_builtins`) as policies call them, through a bundle and
//! its decision rule: each `io.jwt.*` and `crypto.*` builtin on valid, tampered, expired,
//! wrong-audience and malformed input, with OPA's documented answers (`[false, {}, {}]`,
//! `false`, `[false, []]`, or an evaluation error), and a policy shaped like OPA-Envoy's
//! tutorial. Keys and certificates are generated per run; tokens are signed here with the
//! `rsa`, `p256` and `hmac` crates, not with the library that verifies them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use p256::ecdsa::SigningKey as EcKey;
use qiria_policy::{opa_builtins, BundleOptions, PolicyBundle, PolicyError, Value};
use rand::rngs::OsRng;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::sha2::Sha256;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer, Verifier};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::RsaPrivateKey;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Harness: a bundle whose decision rule is `data.t.result`, with every argument from the input
// (so that loading, which evaluates the rule on a probe input, never calls a builtin).

fn bundle(rego: &str) -> PolicyBundle {
    let options = BundleOptions {
        decision_rule: Some("data.t.result".into()),
        builtins: opa_builtins(),
        ..BundleOptions::for_tools(false)
    };
    let text = format!("package t\nimport rego.v1\n\n{rego}");
    PolicyBundle::from_sources(Path::new("/p"), vec![(PathBuf::from("/p/t.rego"), text)], vec![], &options)
        .unwrap_or_else(|e| panic!("loading the policy: {e}"))
}

/// `data.t.result` for `input`, as JSON (or the evaluation error's message).
fn eval(bundle: &PolicyBundle, input: serde_json::Value) -> Result<serde_json::Value, String> {
    match bundle.evaluate(Value::from(input)) {
        Ok(value) => Ok(serde_json::from_str(&value.to_json_str().unwrap_or_default()).unwrap_or_default()),
        Err(PolicyError::Eval(message)) => Err(message),
        Err(other) => panic!("unexpected failure: {other}"),
    }
}

fn error(result: Result<serde_json::Value, String>) -> String {
    match result {
        Ok(value) => panic!("expected an error, got {value}"),
        Err(message) => message,
    }
}

fn unverified() -> serde_json::Value {
    json!([false, {}, {}])
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// Keys, signers, tokens.

struct Keys {
    rsa: RsaPrivateKey,
    rsa_public_pem: String,
    rsa_cert_pem: String,
    ec: EcKey,
    ec_cert_pem: String,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rsa = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let rsa_public_pem = rsa.to_public_key().to_public_key_pem(LineEnding::LF).unwrap();
        let ec = EcKey::random(&mut OsRng);
        let rsa_cert_pem = self_signed_pem(&rsa.to_pkcs8_pem(LineEnding::LF).unwrap());
        let ec_cert_pem = self_signed_pem(&ec.to_pkcs8_pem(LineEnding::LF).unwrap());
        Keys { rsa, rsa_public_pem, rsa_cert_pem, ec, ec_cert_pem }
    })
}

fn self_signed_pem(private_key_pem: &str) -> String {
    let key = KeyPair::from_pem(private_key_pem).unwrap();
    CertificateParams::new(vec!["issuer.test".to_string()]).unwrap().self_signed(&key).unwrap().pem()
}

type Sign = fn(&[u8]) -> Vec<u8>;

fn hs256_secret(message: &[u8]) -> Vec<u8> {
    hmac_sha256(b"secret", message)
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn rs256(message: &[u8]) -> Vec<u8> {
    rsa::pkcs1v15::SigningKey::<Sha256>::new(keys().rsa.clone()).sign(message).to_vec()
}

fn ps256(message: &[u8]) -> Vec<u8> {
    rsa::pss::BlindedSigningKey::<Sha256>::new(keys().rsa.clone()).sign_with_rng(&mut OsRng, message).to_vec()
}

fn es256(message: &[u8]) -> Vec<u8> {
    let signature: p256::ecdsa::Signature = keys().ec.sign(message);
    signature.to_bytes().to_vec()
}

/// A compact JWS of `header` and `claims`, signed by `sign`.
fn token(header: serde_json::Value, claims: serde_json::Value, sign: Sign) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = sign(input.as_bytes());
    format!("{input}.{}", b64(signature))
}

/// The same token with its claims replaced but its signature kept.
fn tampered(token: &str, claims: serde_json::Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], b64(claims.to_string()), parts[2])
}

fn jwk_rsa_public(kid: &str) -> serde_json::Value {
    let key = keys().rsa.to_public_key();
    json!({"kty": "RSA", "kid": kid, "alg": "RS256", "n": b64(key.n().to_bytes_be()), "e": b64(key.e().to_bytes_be())})
}

fn jwk_ec_public(kid: &str) -> serde_json::Value {
    let point = keys().ec.verifying_key().to_encoded_point(false);
    let (x, y) = (point.x().map(b64).unwrap(), point.y().map(b64).unwrap());
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "x": x, "y": y})
}

fn jwk_rsa_private() -> serde_json::Value {
    let key = &keys().rsa;
    let [p, q] = [&key.primes()[0], &key.primes()[1]];
    let qi = key.crt_coefficient().unwrap();
    json!({
        "kty": "RSA", "n": b64(key.n().to_bytes_be()), "e": b64(key.e().to_bytes_be()),
        "d": b64(key.d().to_bytes_be()), "p": b64(p.to_bytes_be()), "q": b64(q.to_bytes_be()),
        "dp": b64(key.dp().unwrap().to_bytes_be()), "dq": b64(key.dq().unwrap().to_bytes_be()),
        "qi": b64(qi.to_bytes_be()),
    })
}

fn jwk_ec_private() -> serde_json::Value {
    let mut jwk = jwk_ec_public("ec");
    jwk["d"] = json!(b64(keys().ec.to_bytes()));
    jwk
}

// ---------------------------------------------------------------------------------------------
// io.jwt.decode

#[test]
fn decode_returns_header_claims_and_the_signature_in_hex() {
    let b = bundle("result := io.jwt.decode(input.token)");
    let jwt = token(json!({"alg": "HS256", "typ": "JWT"}), json!({"sub": "alice"}), hs256_secret);
    let signature = hex::encode(hs256_secret(jwt.rsplit_once('.').unwrap().0.as_bytes()));
    assert_eq!(
        eval(&b, json!({"token": jwt})),
        Ok(json!([{"alg": "HS256", "typ": "JWT"}, {"sub": "alice"}, signature]))
    );

    // Not verified: a tampered token decodes all the same.
    let forged = tampered(&jwt, json!({"sub": "mallory"}));
    assert_eq!(eval(&b, json!({"token": forged})).unwrap()[1], json!({"sub": "mallory"}));

    // A token whose content type is JWT holds another (quoted, as jwt.io writes it).
    let inner = token(json!({"alg": "HS256"}), json!({"sub": "inner"}), hs256_secret);
    let outer = token(json!({"alg": "HS256", "cty": "JWT"}), json!(inner), hs256_secret);
    assert_eq!(eval(&b, json!({"token": outer})).unwrap()[1], json!({"sub": "inner"}));
}

#[test]
fn decode_of_a_malformed_token_is_an_error() {
    let b = bundle("result := io.jwt.decode(input.token)");
    assert!(error(eval(&b, json!({"token": "no-dots"}))).contains("encoded JWT had no period separators"));
    assert!(error(eval(&b, json!({"token": "a.b"}))).contains("encoded JWT must have 3 sections, found 2"));
    assert!(error(eval(&b, json!({"token": "%%%.e30.sig"}))).contains("JWT header had invalid encoding"));
    let not_object = format!("{}.{}.", b64(r#"{"alg":"HS256"}"#), b64("[1]"));
    assert!(error(eval(&b, json!({"token": not_object}))).contains("decoded JSON type was not an Object"));
    assert!(error(eval(&b, json!({"token": 42}))).contains("operand 1 must be string"));
}

// ---------------------------------------------------------------------------------------------
// io.jwt.decode_verify

const DECODE_VERIFY: &str = "result := io.jwt.decode_verify(input.token, input.constraints)";

#[test]
fn decode_verify_hs256_valid_tampered_wrong_secret() {
    let b = bundle(DECODE_VERIFY);
    let claims = json!({"sub": "alice", "exp": now() + 600});
    let jwt = token(json!({"alg": "HS256", "typ": "JWT"}), claims.clone(), hs256_secret);
    let secret = json!({"secret": "secret"});
    assert_eq!(
        eval(&b, json!({"token": jwt, "constraints": secret})),
        Ok(json!([true, {"alg": "HS256", "typ": "JWT"}, claims]))
    );
    let forged = tampered(&jwt, json!({"sub": "admin", "exp": now() + 600}));
    assert_eq!(eval(&b, json!({"token": forged, "constraints": secret})), Ok(unverified()));
    assert_eq!(eval(&b, json!({"token": jwt, "constraints": {"secret": "other"}})), Ok(unverified()));
}

#[test]
fn decode_verify_checks_exp_and_nbf_against_now_or_the_given_time() {
    let b = bundle(DECODE_VERIFY);
    let check = |claims: serde_json::Value, constraints: serde_json::Value| {
        let jwt = token(json!({"alg": "HS256"}), claims, hs256_secret);
        eval(&b, json!({"token": jwt, "constraints": constraints})).unwrap()[0].clone()
    };
    let secret = json!({"secret": "secret"});
    assert_eq!(check(json!({"exp": now() - 1}), secret.clone()), json!(false), "expired");
    assert_eq!(check(json!({"nbf": now() + 600}), secret.clone()), json!(false), "not yet valid");
    assert_eq!(check(json!({"nbf": now() - 1, "exp": now() + 600}), secret.clone()), json!(true));
    // `time` is in nanoseconds; exp is exclusive, nbf inclusive.
    let at = |seconds: i64| json!({"secret": "secret", "time": seconds * 1_000_000_000});
    assert_eq!(check(json!({"exp": 1000}), at(999)), json!(true));
    assert_eq!(check(json!({"exp": 1000}), at(1000)), json!(false));
    assert_eq!(check(json!({"nbf": 1000}), at(1000)), json!(true));
    assert_eq!(check(json!({"nbf": 1000}), at(999)), json!(false));
    assert_eq!(check(json!({"exp": 1000.5}), json!({"secret": "secret", "time": 1_000_400_000_000u64})), json!(true));
}

#[test]
fn decode_verify_audience_follows_opa() {
    let b = bundle(DECODE_VERIFY);
    let check = |claims: serde_json::Value, constraints: serde_json::Value| {
        let jwt = token(json!({"alg": "HS256"}), claims, hs256_secret);
        eval(&b, json!({"token": jwt, "constraints": constraints})).unwrap()[0].clone()
    };
    let with_aud = json!({"secret": "secret", "aud": "api"});
    assert_eq!(check(json!({"aud": "api"}), with_aud.clone()), json!(true));
    assert_eq!(check(json!({"aud": ["web", "api"]}), with_aud.clone()), json!(true));
    assert_eq!(check(json!({"aud": "web"}), with_aud.clone()), json!(false), "wrong audience");
    assert_eq!(check(json!({}), with_aud), json!(false), "constraint but no claim");
    // A token for an audience is refused when the caller names none.
    assert_eq!(check(json!({"aud": "api"}), json!({"secret": "secret"})), json!(false));
}

#[test]
fn decode_verify_issuer_and_algorithm_constraints() {
    let b = bundle(DECODE_VERIFY);
    let jwt = token(json!({"alg": "HS256"}), json!({"iss": "https://issuer.test"}), hs256_secret);
    let check = |constraints: serde_json::Value| eval(&b, json!({"token": jwt, "constraints": constraints}));
    assert_eq!(check(json!({"secret": "secret", "iss": "https://issuer.test"})).unwrap()[0], json!(true));
    assert_eq!(check(json!({"secret": "secret", "iss": "https://other.test"})), Ok(unverified()));
    assert_eq!(check(json!({"secret": "secret", "alg": "HS256"})).unwrap()[0], json!(true));
    assert_eq!(check(json!({"secret": "secret", "alg": "RS256"})), Ok(unverified()));
    let no_iss = token(json!({"alg": "HS256"}), json!({}), hs256_secret);
    let constraints = json!({"secret": "secret", "iss": "https://issuer.test"});
    assert_eq!(eval(&b, json!({"token": no_iss, "constraints": constraints})), Ok(unverified()));
}

#[test]
fn decode_verify_refuses_unsigned_and_critical_tokens() {
    let b = bundle(DECODE_VERIFY);
    let secret = json!({"secret": "secret"});
    let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(r#"{"sub":"admin"}"#));
    assert_eq!(eval(&b, json!({"token": none, "constraints": secret})), Ok(unverified()));
    let no_alg = token(json!({"typ": "JWT"}), json!({}), hs256_secret);
    assert_eq!(eval(&b, json!({"token": no_alg, "constraints": secret})), Ok(unverified()));
    let critical = token(json!({"alg": "HS256", "b64": false, "crit": ["b64"]}), json!({}), hs256_secret);
    assert_eq!(eval(&b, json!({"token": critical, "constraints": secret})), Ok(unverified()));
}

#[test]
fn decode_verify_errors_where_opa_raises_them() {
    let b = bundle(DECODE_VERIFY);
    let jwt = token(json!({"alg": "HS256"}), json!({}), hs256_secret);
    let check = |constraints: serde_json::Value| error(eval(&b, json!({"token": jwt, "constraints": constraints})));
    assert!(check(json!({"secret": "secret", "leeway": 5})).contains("unknown token validation constraint: leeway"));
    assert!(check(json!({})).contains("no key constraint"));
    assert!(check(json!({"secret": "", "alg": "HS256"})).contains("no key constraint"));
    assert!(check(json!({"secret": "s", "cert": keys().rsa_public_pem})).contains("duplicate key constraints"));
    assert!(check(json!({"secret": "secret", "time": "now"})).contains("token time constraint: must be a number"));
    assert!(check(json!({"secret": "secret", "time": -1})).contains("must not be negative"));
    assert!(check(json!({"cert": 1})).contains("cert constraint: must be a string"));
    assert!(check(json!({"cert": "not a key"})).contains("failed to parse a JWK key (set)"));
    let bad_exp = token(json!({"alg": "HS256"}), json!({"exp": "tomorrow"}), hs256_secret);
    let input = json!({"token": bad_exp, "constraints": {"secret": "secret"}});
    assert!(error(eval(&b, input)).contains("exp value must be a number"));
    let input = json!({"token": "a.b", "constraints": {"secret": "secret"}});
    assert!(error(eval(&b, input)).contains("encoded JWT must have 3 sections"));
    assert!(error(eval(&b, json!({"token": jwt, "constraints": "secret"}))).contains("operand 2 must be object"));
    // Not implemented (no P-521): said so, rather than a silent `false`.
    let es512 = format!("{}.{}.{}", b64(r#"{"alg":"ES512"}"#), b64("{}"), b64("sig"));
    let input = json!({"token": es512, "constraints": {"cert": keys().ec_cert_pem}});
    assert!(error(eval(&b, input)).contains("ES512 is not supported"));
}

#[test]
fn decode_verify_rs256_ps256_with_a_certificate_or_a_public_key() {
    let b = bundle(DECODE_VERIFY);
    let claims = json!({"sub": "alice"});
    for (alg, sign) in [("RS256", rs256 as Sign), ("PS256", ps256 as Sign)] {
        let jwt = token(json!({"alg": alg}), claims.clone(), sign);
        for cert in [&keys().rsa_cert_pem, &keys().rsa_public_pem] {
            let input = json!({"token": jwt, "constraints": {"cert": cert}});
            assert_eq!(eval(&b, input), Ok(json!([true, {"alg": alg}, claims])), "{alg}");
        }
        let forged = tampered(&jwt, json!({"sub": "admin"}));
        let input = json!({"token": forged, "constraints": {"cert": keys().rsa_cert_pem}});
        assert_eq!(eval(&b, input), Ok(unverified()), "{alg} tampered");
        let input = json!({"token": jwt, "constraints": {"cert": keys().ec_cert_pem}});
        assert_eq!(eval(&b, input), Ok(unverified()), "{alg} wrong key");
    }
    let trailing = format!("{}\nextra", keys().rsa_public_pem);
    let input = json!({"token": token(json!({"alg": "RS256"}), claims, rs256), "constraints": {"cert": trailing}});
    assert!(error(eval(&b, input)).contains("extra data after a PEM certificate block"));
}

#[test]
fn decode_verify_es256_with_a_jwks_picks_the_key_by_kid() {
    let b = bundle(DECODE_VERIFY);
    let jwks = json!({"keys": [jwk_rsa_public("rsa"), jwk_ec_public("ec")]}).to_string();
    let claims = json!({"sub": "alice"});
    let with_kid = token(json!({"alg": "ES256", "kid": "ec"}), claims.clone(), es256);
    assert_eq!(eval(&b, json!({"token": with_kid, "constraints": {"cert": jwks}})).unwrap()[0], json!(true));
    let without_kid = token(json!({"alg": "ES256"}), claims.clone(), es256);
    assert_eq!(eval(&b, json!({"token": without_kid, "constraints": {"cert": jwks}})).unwrap()[0], json!(true));
    // The kid names the RSA key: only that one is tried.
    let wrong_kid = token(json!({"alg": "ES256", "kid": "rsa"}), claims.clone(), es256);
    assert_eq!(eval(&b, json!({"token": wrong_kid, "constraints": {"cert": jwks}})), Ok(unverified()));
    let rs = token(json!({"alg": "RS256", "kid": "rsa"}), claims, rs256);
    assert_eq!(eval(&b, json!({"token": rs, "constraints": {"cert": jwks}})).unwrap()[0], json!(true));
    let empty = json!({"keys": []}).to_string();
    assert_eq!(eval(&b, json!({"token": with_kid, "constraints": {"cert": empty}})), Ok(unverified()));
}

/// The classic confusion: a token saying HS256, its MAC keyed with the verifier's public key.
#[test]
fn decode_verify_never_uses_a_public_key_as_an_hmac_secret() {
    let b = bundle(DECODE_VERIFY);
    let pem = keys().rsa_public_pem.clone();
    let input = format!("{}.{}", b64(r#"{"alg":"HS256"}"#), b64(r#"{"sub":"admin"}"#));
    let forged = format!("{input}.{}", b64(hmac_sha256(pem.as_bytes(), input.as_bytes())));
    assert_eq!(eval(&b, json!({"token": forged, "constraints": {"cert": pem}})), Ok(unverified()));
}

// ---------------------------------------------------------------------------------------------
// io.jwt.verify_*

const VERIFY: &str = r#"
result := io.jwt.verify_hs256(input.token, input.key) if input.alg == "HS256"
result := io.jwt.verify_hs384(input.token, input.key) if input.alg == "HS384"
result := io.jwt.verify_hs512(input.token, input.key) if input.alg == "HS512"
result := io.jwt.verify_rs256(input.token, input.key) if input.alg == "RS256"
result := io.jwt.verify_rs384(input.token, input.key) if input.alg == "RS384"
result := io.jwt.verify_rs512(input.token, input.key) if input.alg == "RS512"
result := io.jwt.verify_ps256(input.token, input.key) if input.alg == "PS256"
result := io.jwt.verify_ps384(input.token, input.key) if input.alg == "PS384"
result := io.jwt.verify_ps512(input.token, input.key) if input.alg == "PS512"
result := io.jwt.verify_es256(input.token, input.key) if input.alg == "ES256"
result := io.jwt.verify_es384(input.token, input.key) if input.alg == "ES384"
result := io.jwt.verify_eddsa(input.token, input.key) if input.alg == "EdDSA"
"#;

#[test]
fn verify_family_true_for_the_right_key_false_otherwise() {
    let b = bundle(VERIFY);
    let verify = |alg: &str, jwt: &str, key: &str| eval(&b, json!({"alg": alg, "token": jwt, "key": key})).unwrap();
    let claims = json!({"sub": "alice"});
    let cases: [(&str, Sign, &str, &str); 4] = [
        ("HS256", hs256_secret, "secret", "other"),
        ("RS256", rs256, &keys().rsa_cert_pem, &keys().ec_cert_pem),
        ("PS256", ps256, &keys().rsa_public_pem, &keys().ec_cert_pem),
        ("ES256", es256, &keys().ec_cert_pem, &keys().rsa_cert_pem),
    ];
    for (alg, sign, right, wrong) in cases {
        let jwt = token(json!({"alg": alg}), claims.clone(), sign);
        assert_eq!(verify(alg, &jwt, right), json!(true), "{alg}");
        assert_eq!(verify(alg, &tampered(&jwt, json!({"sub": "x"})), right), json!(false), "{alg} tampered");
        assert_eq!(verify(alg, &jwt, wrong), json!(false), "{alg} wrong key");
    }
    // A JWKS works too, and an RS256 signature is not a PS256 or RS512 one.
    let jwt = token(json!({"alg": "RS256"}), claims.clone(), rs256);
    let jwks = json!({"keys": [jwk_rsa_public("k")]}).to_string();
    assert_eq!(verify("RS256", &jwt, &jwks), json!(true));
    let es = token(json!({"alg": "ES256"}), claims.clone(), es256);
    assert_eq!(verify("ES256", &es, &jwk_ec_public("k").to_string()), json!(true), "a single JWK");
    assert_eq!(verify("PS256", &jwt, &keys().rsa_public_pem), json!(false));
    assert_eq!(verify("RS512", &jwt, &keys().rsa_public_pem), json!(false));
    let hs = token(json!({"alg": "HS256"}), claims, hs256_secret);
    assert_eq!(verify("HS512", &hs, "secret"), json!(false));
}

#[test]
fn verify_family_errors_on_malformed_tokens_and_keys() {
    let b = bundle(VERIFY);
    let verify = |alg: &str, jwt: &str, key: &str| eval(&b, json!({"alg": alg, "token": jwt, "key": key}));
    assert!(error(verify("RS256", "a.b.c.d", &keys().rsa_public_pem)).contains("must have 3 sections"));
    let jwt = token(json!({"alg": "RS256"}), json!({}), rs256);
    assert!(error(verify("RS256", &jwt, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
        .contains("failed to parse a PEM certificate"));
    assert!(error(verify("HS256", "x.y.%%", "secret")).contains("illegal base64"));
}

#[test]
fn verify_eddsa_with_an_ed25519_certificate() {
    let b = bundle(VERIFY);
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cert = CertificateParams::new(Vec::<String>::new()).unwrap().self_signed(&key).unwrap().pem();
    let signer = jsonwebtoken::EncodingKey::from_ed_der(&key.serialize_der());
    let input = format!("{}.{}", b64(r#"{"alg":"EdDSA"}"#), b64(r#"{"sub":"alice"}"#));
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &signer, jsonwebtoken::Algorithm::EdDSA).unwrap();
    let jwt = format!("{input}.{signature}");
    assert_eq!(eval(&b, json!({"alg": "EdDSA", "token": jwt, "key": cert})), Ok(json!(true)));
    let forged = tampered(&jwt, json!({"sub": "admin"}));
    assert_eq!(eval(&b, json!({"alg": "EdDSA", "token": forged, "key": cert})), Ok(json!(false)));
}

// ---------------------------------------------------------------------------------------------
// io.jwt.encode_sign, encode_sign_raw

const ENCODE: &str = r#"
result := io.jwt.encode_sign(input.headers, input.payload, input.key) if not input.raw
result := io.jwt.encode_sign_raw(input.headers, input.payload, input.key) if input.raw
"#;

#[test]
fn encode_sign_hs256_is_byte_for_byte_what_opa_writes() {
    let b = bundle(ENCODE);
    let secret = b"shared-secret";
    let jwk = json!({"kty": "oct", "k": b64(secret)});
    let input =
        json!({"raw": false, "headers": {"typ": "JWT", "alg": "HS256"}, "payload": {"b": 1, "a": "<&>"}, "key": jwk});
    let jwt = eval(&b, input).unwrap();
    // Go's json.Marshal: sorted keys, compact, HTML characters escaped.
    let signing_input =
        format!("{}.{}", b64(r#"{"alg":"HS256","typ":"JWT"}"#), b64(r#"{"a":"\u003c\u0026\u003e","b":1}"#));
    let expected = format!("{signing_input}.{}", b64(hmac_sha256(secret, signing_input.as_bytes())));
    assert_eq!(jwt, json!(expected));

    let raw = json!({"raw": true, "headers": r#"{"alg":"HS256"}"#, "payload": "{\"x\": 1}", "key": jwk.to_string()});
    let jwt = eval(&b, raw).unwrap();
    let signing_input = format!("{}.{}", b64(r#"{"alg":"HS256"}"#), b64("{\"x\": 1}"));
    assert_eq!(jwt, json!(format!("{signing_input}.{}", b64(hmac_sha256(secret, signing_input.as_bytes())))));
}

#[test]
fn encode_sign_rs256_and_es256_with_private_jwks() {
    let b = bundle(ENCODE);
    let payload = json!({"sub": "alice"});
    let input = json!({"raw": false, "headers": {"alg": "RS256"}, "payload": payload, "key": jwk_rsa_private()});
    let jwt = eval(&b, input).unwrap().as_str().unwrap().to_string();
    let (signing_input, signature) = jwt.rsplit_once('.').unwrap();
    // PKCS #1 v1.5 is deterministic: the `rsa` crate's signature of the same input is the same.
    assert_eq!(signature, b64(rs256(signing_input.as_bytes())));

    let input = json!({"raw": false, "headers": {"alg": "ES256"}, "payload": payload, "key": jwk_ec_private()});
    let jwt = eval(&b, input).unwrap().as_str().unwrap().to_string();
    let (signing_input, signature) = jwt.rsplit_once('.').unwrap();
    let signature = p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
    assert!(keys().ec.verifying_key().verify(signing_input.as_bytes(), &signature).is_ok());

    // And decode_verify accepts both.
    let verify = bundle(DECODE_VERIFY);
    let input = json!({"token": jwt, "constraints": {"cert": keys().ec_cert_pem}});
    assert_eq!(eval(&verify, input), Ok(json!([true, {"alg": "ES256"}, payload])));
}

#[test]
fn encode_sign_errors() {
    let b = bundle(ENCODE);
    let oct = json!({"kty": "oct", "k": b64("k")});
    let sign = |headers: serde_json::Value, key: serde_json::Value| {
        error(eval(&b, json!({"raw": false, "headers": headers, "payload": {}, "key": key})))
    };
    assert!(sign(json!({"alg": "XS256"}), oct.clone()).contains("unknown JWS algorithm: XS256"));
    assert!(sign(json!({"typ": "JWT"}), oct.clone()).contains("missing or invalid 'alg' header"));
    assert!(sign(json!({"alg": "RS256"}), oct).contains("cannot sign RS256"));
    assert!(sign(json!({"alg": "ES256"}), jwk_ec_public("ec")).contains("without `d`"));
    let raw = json!({"raw": true, "headers": r#"{"alg":"HS256"}"#, "payload": "not json", "key": r#"{"kty":"oct","k":"aw"}"#});
    assert!(error(eval(&b, raw)).contains("type is JWT but payload is not JSON"));
}

// ---------------------------------------------------------------------------------------------
// crypto.*

#[test]
fn crypto_digests_and_macs_from_a_policy() {
    let b = bundle(
        r#"result := {
	"md5": crypto.md5(input.x),
	"sha1": crypto.sha1(input.x),
	"sha256": crypto.sha256(input.x),
	"hmac_md5": crypto.hmac.md5(input.x, input.key),
	"hmac_sha1": crypto.hmac.sha1(input.x, input.key),
	"hmac_sha256": crypto.hmac.sha256(input.x, input.key),
	"hmac_sha512": crypto.hmac.sha512(input.x, input.key),
	"equal": crypto.hmac.equal(crypto.hmac.sha256(input.x, input.key), input.mac),
	"unequal": crypto.hmac.equal(crypto.hmac.sha256(input.x, input.key), "00"),
}"#,
    );
    let mac = hex::encode(hmac_sha256(b"key", b"hello"));
    let result = eval(&b, json!({"x": "hello", "key": "key", "mac": mac})).unwrap();
    assert_eq!(result["md5"], json!("5d41402abc4b2a76b9719d911017c592"));
    assert_eq!(result["sha1"], json!("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"));
    assert_eq!(result["sha256"], json!("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"));
    assert_eq!(result["hmac_sha256"], json!(mac));
    assert_eq!(result["hmac_md5"].as_str().map(str::len), Some(32));
    assert_eq!(result["hmac_sha1"].as_str().map(str::len), Some(40));
    assert_eq!(result["hmac_sha512"].as_str().map(str::len), Some(128));
    assert_eq!((result["equal"].clone(), result["unequal"].clone()), (json!(true), json!(false)));
    assert!(error(eval(&b, json!({"x": 1, "key": "key", "mac": ""}))).contains("operand 1 must be string"));
}

// ---------------------------------------------------------------------------------------------
// crypto.x509.*

struct Pki {
    root: String,
    intermediate: String,
    leaf: String,
    ders: Vec<Vec<u8>>,
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "Qiria");
    name
}

fn ca(common_name: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// A workload certificate as a SPIFFE X509-SVID looks, with a DNS, an IP and an e-mail SAN.
fn leaf(usages: Vec<ExtendedKeyUsagePurpose>) -> CertificateParams {
    let mut params = CertificateParams::new(vec!["api.qiria.test".to_string(), "10.0.0.7".to_string()]).unwrap();
    params.subject_alt_names.push(SanType::URI("spiffe://qiria.test/ns/default/sa/api".try_into().unwrap()));
    params.subject_alt_names.push(SanType::Rfc822Name("ops@qiria.test".try_into().unwrap()));
    params.distinguished_name = name("workload");
    params.serial_number = Some(SerialNumber::from_slice(&[1, 2, 3]));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    params
}

/// Root → intermediate → leaf, the leaf from `leaf_params`, the intermediate from `int_params`.
fn pki_with(root_params: CertificateParams, int_params: CertificateParams, leaf_params: CertificateParams) -> Pki {
    let root = CertifiedIssuer::self_signed(root_params, KeyPair::generate().unwrap()).unwrap();
    let intermediate = CertifiedIssuer::signed_by(int_params, KeyPair::generate().unwrap(), &root).unwrap();
    let leaf = leaf_params.signed_by(&KeyPair::generate().unwrap(), &intermediate).unwrap();
    let ders = vec![root.der().to_vec(), intermediate.der().to_vec(), leaf.der().to_vec()];
    Pki { root: root.pem(), intermediate: intermediate.pem(), leaf: leaf.pem(), ders }
}

fn pki() -> Pki {
    let usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    pki_with(
        ca("Root", BasicConstraints::Unconstrained),
        ca("Intermediate", BasicConstraints::Unconstrained),
        leaf(usages),
    )
}

const X509: &str = r#"
result := crypto.x509.parse_certificates(input.certs) if not input.verify
result := crypto.x509.parse_and_verify_certificates(input.certs) if input.verify
"#;

#[test]
fn parse_certificates_describes_them_under_go_field_names() {
    let b = bundle(X509);
    let pki = pki();
    let certs = eval(&b, json!({"verify": false, "certs": pki.leaf})).unwrap();
    let leaf = &certs[0];
    assert_eq!(leaf["Subject"]["CommonName"], json!("workload"));
    assert_eq!(leaf["Subject"]["Organization"], json!(["Qiria"]));
    assert_eq!(leaf["Subject"]["Country"], json!(null));
    assert_eq!(leaf["Subject"]["Names"][0], json!({"Type": [2, 5, 4, 3], "Value": "workload"}));
    assert_eq!(leaf["Issuer"]["CommonName"], json!("Intermediate"));
    assert_eq!(leaf["SerialNumber"], json!(66051));
    assert_eq!(leaf["Version"], json!(3));
    assert_eq!(leaf["NotBefore"], json!("1975-01-01T00:00:00Z"));
    assert_eq!(leaf["NotAfter"], json!("4096-01-01T00:00:00Z"));
    assert_eq!(leaf["URIStrings"], json!(["spiffe://qiria.test/ns/default/sa/api"]));
    assert_eq!(leaf["DNSNames"], json!(["api.qiria.test"]));
    assert_eq!(leaf["IPAddresses"], json!(["10.0.0.7"]));
    assert_eq!(leaf["EmailAddresses"], json!(["ops@qiria.test"]));
    assert_eq!(leaf["KeyUsage"], json!(1), "digitalSignature");
    assert_eq!(leaf["ExtKeyUsage"], json!([1, 2]), "serverAuth, clientAuth");
    assert_eq!(leaf["IsCA"], json!(false));
    assert_eq!(leaf["SignatureAlgorithm"], json!(10), "ECDSAWithSHA256");
    assert_eq!(leaf["PublicKeyAlgorithm"], json!(3), "ECDSA");
    assert_eq!(STANDARD.decode(leaf["Raw"].as_str().unwrap()).unwrap(), pki.ders[2]);

    // Base64 of concatenated DER, and base64 of PEM, read the same.
    let der = STANDARD.encode(pki.ders.concat());
    let certs = eval(&b, json!({"verify": false, "certs": der})).unwrap();
    let names: Vec<_> = certs.as_array().unwrap().iter().map(|c| c["Subject"]["CommonName"].clone()).collect();
    assert_eq!(names, [json!("Root"), json!("Intermediate"), json!("workload")]);
    let root = &certs[0];
    assert_eq!((root["IsCA"].clone(), root["BasicConstraintsValid"].clone()), (json!(true), json!(true)));
    assert_eq!((root["MaxPathLen"].clone(), root["KeyUsage"].clone()), (json!(-1), json!(96)));
    assert_eq!(root["URIStrings"], json!(null));
    let pem_b64 = STANDARD.encode(&pki.root);
    assert_eq!(
        eval(&b, json!({"verify": false, "certs": pem_b64})).unwrap()[0]["Subject"]["CommonName"],
        json!("Root")
    );
}

#[test]
fn parse_certificates_of_malformed_input_is_an_error() {
    let b = bundle(X509);
    assert!(error(eval(&b, json!({"verify": false, "certs": "%%%"}))).contains("illegal base64"));
    assert!(
        error(eval(&b, json!({"verify": false, "certs": STANDARD.encode("junk")}))).contains("malformed certificate")
    );
    let key = keys().rsa.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    assert!(error(eval(&b, json!({"verify": false, "certs": key}))).contains("expected CERTIFICATE"));
}

#[test]
fn parse_and_verify_accepts_root_first_and_returns_leaf_first() {
    let b = bundle(X509);
    let pki = pki();
    let chain = format!("{}{}{}", pki.root, pki.intermediate, pki.leaf);
    let result = eval(&b, json!({"verify": true, "certs": chain})).unwrap();
    assert_eq!(result[0], json!(true));
    let names: Vec<_> = result[1].as_array().unwrap().iter().map(|c| c["Subject"]["CommonName"].clone()).collect();
    assert_eq!(names, [json!("workload"), json!("Intermediate"), json!("Root")]);
    assert_eq!(result[1][0]["URIStrings"], json!(["spiffe://qiria.test/ns/default/sa/api"]));
    // Root and leaf alone do not chain: the intermediate is missing.
    let invalid = json!([false, []]);
    let gap = format!("{}{}", pki.root, pki.leaf);
    assert_eq!(eval(&b, json!({"verify": true, "certs": gap})), Ok(invalid.clone()));
    // As OPA, leaf first is not a chain, nor is one certificate, nor garbage.
    let reversed = format!("{}{}{}", pki.leaf, pki.intermediate, pki.root);
    assert_eq!(eval(&b, json!({"verify": true, "certs": reversed})), Ok(invalid.clone()));
    assert_eq!(eval(&b, json!({"verify": true, "certs": pki.leaf})), Ok(invalid.clone()));
    assert_eq!(eval(&b, json!({"verify": true, "certs": "%%%"})), Ok(invalid));
}

#[test]
fn parse_and_verify_refuses_what_go_refuses() {
    let b = bundle(X509);
    let invalid = json!([false, []]);
    let check =
        |pki: Pki| eval(&b, json!({"verify": true, "certs": format!("{}{}{}", pki.root, pki.intermediate, pki.leaf)}));
    let server = || vec![ExtendedKeyUsagePurpose::ServerAuth];
    let unconstrained = || ca("Intermediate", BasicConstraints::Unconstrained);

    let mut expired = leaf(server());
    (expired.not_before, expired.not_after) = (date_time_ymd(2019, 1, 1), date_time_ymd(2020, 1, 1));
    assert_eq!(
        check(pki_with(ca("Root", BasicConstraints::Unconstrained), unconstrained(), expired)),
        Ok(invalid.clone())
    );

    // Go's default usage is server authentication: a client-only certificate fails.
    let client_only = leaf(vec![ExtendedKeyUsagePurpose::ClientAuth]);
    assert_eq!(
        check(pki_with(ca("Root", BasicConstraints::Unconstrained), unconstrained(), client_only)),
        Ok(invalid.clone())
    );

    // An intermediate that is not a CA, and a root that admits no intermediate.
    let mut not_ca = unconstrained();
    not_ca.is_ca = IsCa::ExplicitNoCa;
    assert_eq!(
        check(pki_with(ca("Root", BasicConstraints::Unconstrained), not_ca, leaf(server()))),
        Ok(invalid.clone())
    );
    let no_intermediates = ca("Root", BasicConstraints::Constrained(0));
    assert_eq!(check(pki_with(no_intermediates, unconstrained(), leaf(server()))), Ok(invalid.clone()));

    // Same names, another root key: the intermediate's signature does not verify.
    let (genuine, impostor) = (pki(), pki());
    let forged = format!("{}{}{}", impostor.root, genuine.intermediate, genuine.leaf);
    assert_eq!(eval(&b, json!({"verify": true, "certs": forged})), Ok(invalid));
    let good = check(pki_with(ca("Root", BasicConstraints::Unconstrained), unconstrained(), leaf(server())));
    assert_eq!(good.unwrap()[0], json!(true));
}

// ---------------------------------------------------------------------------------------------
// A policy shaped like OPA-Envoy's tutorial: HS256 bearer tokens, glob paths, a base64url
// claim, the clock.

const ENVOY_TUTORIAL: &str = r#"
default result := false

result if {
	token.valid
	now := time.now_ns() / 1000000000
	token.payload.nbf <= now
	now < token.payload.exp
	action_allowed
}

action_allowed if {
	input.attributes.request.http.method == "GET"
	token.payload.role == "guest"
	glob.match("/people/*", ["/"], input.attributes.request.http.path)
}

action_allowed if {
	input.attributes.request.http.method == "POST"
	token.payload.role == "admin"
	glob.match("/people", ["/"], input.attributes.request.http.path)
	lower(input.parsed_body.firstname) != base64url.decode(token.payload.sub)
}

token := {"valid": valid, "payload": payload} if {
	[_, encoded] := split(input.attributes.request.http.headers.authorization, " ")
	[valid, _, payload] := io.jwt.decode_verify(encoded, {"secret": "secret"})
}
"#;

fn request(method: &str, path: &str, jwt: &str, firstname: &str) -> serde_json::Value {
    json!({
        "attributes": {"request": {"http": {"method": method, "path": path, "headers": {"authorization": format!("Bearer {jwt}")}}}},
        "parsed_body": {"firstname": firstname},
    })
}

#[test]
fn envoy_tutorial_policy() {
    let b = bundle(ENVOY_TUTORIAL);
    let claims = |role: &str, nbf: i64, exp: i64| json!({"role": role, "sub": URL_SAFE_NO_PAD.encode("alice"), "nbf": nbf, "exp": exp});
    let (earlier, later) = (now() - 60, now() + 600);
    let guest = token(json!({"alg": "HS256", "typ": "JWT"}), claims("guest", earlier, later), hs256_secret);
    let admin = token(json!({"alg": "HS256", "typ": "JWT"}), claims("admin", earlier, later), hs256_secret);
    let decide = |method: &str, path: &str, jwt: &str, firstname: &str| eval(&b, request(method, path, jwt, firstname));

    assert_eq!(decide("GET", "/people/bob", &guest, ""), Ok(json!(true)));
    assert_eq!(decide("POST", "/people", &guest, "Bob"), Ok(json!(false)), "guests do not create");
    assert_eq!(decide("POST", "/people", &admin, "Bob"), Ok(json!(true)));
    assert_eq!(decide("POST", "/people", &admin, "Alice"), Ok(json!(false)), "admins do not create themselves");

    let other_secret: Sign = |m| hmac_sha256(b"not-the-secret", m);
    let forged = token(json!({"alg": "HS256"}), claims("guest", earlier, later), other_secret);
    assert_eq!(decide("GET", "/people/bob", &forged, ""), Ok(json!(false)));
    let expired = token(json!({"alg": "HS256"}), claims("guest", earlier - 600, earlier), hs256_secret);
    assert_eq!(decide("GET", "/people/bob", &expired, ""), Ok(json!(false)));
    let early = token(json!({"alg": "HS256"}), claims("guest", later, later + 600), hs256_secret);
    assert_eq!(decide("GET", "/people/bob", &early, ""), Ok(json!(false)));
    assert_eq!(eval(&b, json!({})), Ok(json!(false)), "no token at all");
}

#[test]
fn every_builtin_is_registered_once() {
    let builtins = opa_builtins();
    let mut paths: Vec<&str> = builtins.iter().map(|b| b.path.as_str()).collect();
    paths.sort_unstable();
    let before = paths.len();
    paths.dedup();
    assert_eq!(paths.len(), before);
    for path in ["io.jwt.decode_verify", "io.jwt.verify_es384", "crypto.hmac.equal", "crypto.x509.parse_certificates"] {
        assert!(paths.contains(&path), "{path}");
    }
    assert!(!paths.contains(&"io.jwt.verify_es512"), "no P-521 in jsonwebtoken 9");
}
