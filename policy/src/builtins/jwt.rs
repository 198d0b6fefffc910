//! `io.jwt.*` as OPA defines them: `decode`, `decode_verify`, the `verify_*` family and
//! `encode_sign`/`encode_sign_raw`. Only the JWS compact serialization is read; a JWE is an
//! error, as in OPA. Keys and their algorithms are in `jwk`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::jwk::{base64url_decode, first_key, signing_key, verification_keys, VerificationKey, OPA_ALGORITHMS};
use super::{arg, object_arg, string_arg, verified, Builtin};
use crate::Value;

pub(super) const BUILTINS: &[(&str, u8, Builtin)] = &[
    ("io.jwt.decode", 1, decode),
    ("io.jwt.decode_verify", 2, decode_verify),
    ("io.jwt.encode_sign", 3, encode_sign),
    ("io.jwt.encode_sign_raw", 3, encode_sign_raw),
    ("io.jwt.verify_hs256", 2, |args| verify_hmac(args, "HS256")),
    ("io.jwt.verify_hs384", 2, |args| verify_hmac(args, "HS384")),
    ("io.jwt.verify_hs512", 2, |args| verify_hmac(args, "HS512")),
    ("io.jwt.verify_rs256", 2, |args| verify_public(args, "RS256")),
    ("io.jwt.verify_rs384", 2, |args| verify_public(args, "RS384")),
    ("io.jwt.verify_rs512", 2, |args| verify_public(args, "RS512")),
    ("io.jwt.verify_ps256", 2, |args| verify_public(args, "PS256")),
    ("io.jwt.verify_ps384", 2, |args| verify_public(args, "PS384")),
    ("io.jwt.verify_ps512", 2, |args| verify_public(args, "PS512")),
    ("io.jwt.verify_es256", 2, |args| verify_public(args, "ES256")),
    ("io.jwt.verify_es384", 2, |args| verify_public(args, "ES384")),
    ("io.jwt.verify_eddsa", 2, |args| verify_public(args, "EdDSA")),
];

/// The three base64url parts of a compact JWS.
struct Token<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

impl<'a> Token<'a> {
    fn split(jwt: &'a str) -> Result<Self> {
        if !jwt.contains('.') {
            bail!("encoded JWT had no period separators");
        }
        let parts: Vec<&str> = jwt.split('.').collect();
        let [header, payload, signature] = parts[..] else {
            bail!("encoded JWT must have 3 sections, found {}", parts.len());
        };
        Ok(Self { header, payload, signature })
    }

    /// What the signature is over.
    fn signing_input(&self) -> String {
        format!("{}.{}", self.header, self.payload)
    }

    /// The JOSE header, an object; a JWE's (it has `enc`) is refused.
    fn header(&self) -> Result<Value> {
        let bytes = base64url_decode(self.header).map_err(|e| anyhow!("JWT header had invalid encoding: {e}"))?;
        let header = json_object(&bytes).map_err(|e| anyhow!("bad JWT header: {e}"))?;
        if header.as_object().is_ok_and(|h| h.contains_key(&Value::from("enc"))) {
            bail!("JWT is a JWE object, which is not supported");
        }
        Ok(header)
    }

    fn payload(&self) -> Result<Vec<u8>> {
        base64url_decode(self.payload).map_err(|e| anyhow!("JWT payload had invalid encoding: {e}"))
    }

    fn signature(&self) -> Result<Vec<u8>> {
        base64url_decode(self.signature)
    }
}

/// A JSON object from bytes, as OPA reads one (Go's decoder: invalid UTF-8 becomes U+FFFD, a
/// duplicate key's last value wins).
fn json_object(bytes: &[u8]) -> Result<Value> {
    let value = Value::from_json_str(&String::from_utf8_lossy(bytes)).map_err(|e| anyhow!("invalid JSON: {e}"))?;
    match value {
        Value::Object(_) => Ok(value),
        _ => bail!("decoded JSON type was not an Object"),
    }
}

/// The header parameters OPA interprets when verifying (its `tokenHeader`).
#[derive(Default)]
struct Header {
    alg: String,
    kid: String,
    cty: String,
    /// Whether `crit` names a parameter that is present but not one of those above (RFC 7515
    /// §4.1.11: the token must then be refused).
    critical_unknown: bool,
}

impl Header {
    fn parse(header: &Value) -> Result<Self> {
        let mut parsed = Self::default();
        let (mut crit, mut unknown) = (Vec::new(), Vec::new());
        for (name, value) in header.as_object()?.iter() {
            let name = name.as_string()?.as_ref();
            match name {
                "alg" => parsed.alg = header_string(name, value)?,
                "kid" => parsed.kid = header_string(name, value)?,
                "cty" => parsed.cty = header_string(name, value)?,
                "typ" => {
                    header_string(name, value)?;
                }
                "crit" => crit = critical(value)?,
                _ => unknown.push(name.to_string()),
            }
        }
        parsed.critical_unknown = unknown.iter().any(|name| crit.contains(name));
        Ok(parsed)
    }

    /// OPA's `valid()`: `alg` is there and nothing critical is misunderstood.
    fn valid(&self) -> bool {
        !self.alg.is_empty() && !self.critical_unknown
    }
}

fn header_string(name: &str, value: &Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.to_string()),
        _ => bail!("{name}: must be a string"),
    }
}

/// The names `crit` lists. As in OPA, reading stops at the first element that is not a string.
fn critical(value: &Value) -> Result<Vec<String>> {
    let Value::Array(items) = value else { bail!("crit: must be a list") };
    let names: Vec<String> = items.iter().map_while(|item| item.as_string().ok().map(|s| s.to_string())).collect();
    if names.is_empty() {
        bail!("crit: must be a nonempty list");
    }
    Ok(names)
}

/// `io.jwt.decode(jwt)`: `[header, payload, signature as hex]`, nothing verified. A token whose
/// `cty` is `JWT` holds another token (quoted, as jwt.io writes it): that one is decoded.
fn decode(args: &[Value]) -> Result<Value> {
    decode_token(string_arg(args, 0)?)
}

fn decode_token(jwt: &str) -> Result<Value> {
    let token = Token::split(jwt)?;
    let header = token.header()?;
    let payload = token.payload()?;
    if let Some(cty) = header.as_object()?.get(&Value::from("cty")) {
        if header_string("cty", cty)? == "JWT" {
            let inner = String::from_utf8_lossy(&payload);
            return decode_token(inner.trim_matches(|c| c == '"' || c == '\''));
        }
    }
    let payload = json_object(&payload)?;
    let signature = token.signature().map_err(|e| anyhow!("JWT signature had invalid encoding: {e}"))?;
    Ok(Value::from(vec![header, payload, Value::from(hex::encode(signature))]))
}

/// OPA's answer for a token that does not verify or does not meet the constraints.
fn unverified() -> Value {
    Value::from(vec![Value::from(false), Value::new_object(), Value::new_object()])
}

/// The `constraints` object of `io.jwt.decode_verify`.
struct Constraints {
    /// From `cert`; an empty set still counts as a key constraint (and verifies nothing).
    keys: Option<Arc<Vec<VerificationKey>>>,
    /// A digest of the key constraint (`cert` or `secret`), naming it in the signature cache.
    key_digest: [u8; 32],
    /// From `secret`; empty means none.
    secret: String,
    alg: String,
    iss: String,
    aud: String,
    /// `time`, else now: nanoseconds since the epoch.
    time_ns: f64,
}

impl Constraints {
    fn parse(constraints: &Value) -> Result<Self> {
        let (mut keys, mut time, mut cert) = (None, None, "");
        let [mut secret, mut alg, mut iss, mut aud] = [""; 4];
        for (name, value) in constraints.as_object()?.iter() {
            let name = name.as_string().map(|n| n.to_string()).unwrap_or_else(|_| name.to_string());
            match name.as_str() {
                "cert" => {
                    cert = constraint_string("cert", value)?;
                    keys = Some(verified::key_set(cert, verification_keys)?);
                }
                "secret" => secret = constraint_string("secret", value)?,
                "alg" => alg = constraint_string("alg", value)?,
                "iss" => iss = constraint_string("iss", value)?,
                "aud" => aud = constraint_string("aud", value)?,
                "time" => time = Some(time_ns(value)?),
                _ => bail!("unknown token validation constraint: {name}"),
            }
        }
        match (keys.is_some(), !secret.is_empty()) {
            (true, true) => bail!("duplicate key constraints"),
            (false, false) => bail!("no key constraint"),
            _ => {}
        }
        let time_ns = match time {
            Some(time) => time,
            None => now_ns()?,
        };
        let key_digest = match keys {
            Some(_) => verified::digest(&[b"cert", cert.as_bytes()]),
            None => verified::digest(&[b"secret", secret.as_bytes()]),
        };
        let [secret, alg, iss, aud] = [secret, alg, iss, aud].map(str::to_string);
        Ok(Self { keys, key_digest, secret, alg, iss, aud, time_ns })
    }

    /// Whether the signature verifies with the constrained key(s); checked once per token
    /// and key constraint (`verified`).
    fn signature_verifies(&self, header: &Header, message: &[u8], signature: &[u8]) -> bool {
        let cached =
            verified::digest(&[&self.key_digest, header.alg.as_bytes(), header.kid.as_bytes(), message, signature]);
        verified::verifies_once(cached, || {
            let verify = |key: &VerificationKey| key.verifies(&header.alg, message, signature);
            match &self.keys {
                Some(keys) => any_key_verifies(keys, header, verify),
                None => verify(&VerificationKey::secret(self.secret.as_bytes())),
            }
        })
    }

    /// The registered claims against the constraints: `iss` if constrained, `aud` always (a
    /// token for an audience is refused when none is given), `exp` and `nbf` against the time.
    fn claims_hold(&self, claims: &Value) -> Result<bool> {
        let claims = claims.as_object()?;
        if !self.iss.is_empty() {
            match claims.get(&Value::from("iss")) {
                None => return Ok(false),
                Some(Value::String(iss)) => {
                    if iss.as_ref() != self.iss {
                        return Ok(false);
                    }
                }
                Some(_) => bail!("iss value must be a string"),
            }
        }
        let audience_holds = match claims.get(&Value::from("aud")) {
            Some(aud) => self.audience_matches(aud),
            None => self.aud.is_empty(),
        };
        let now = self.time_ns / 1e9;
        let expired = claim_seconds(claims.get(&Value::from("exp")), "exp")?.is_some_and(|exp| now >= exp);
        let early = claim_seconds(claims.get(&Value::from("nbf")), "nbf")?.is_some_and(|nbf| now < nbf);
        Ok(audience_holds && !expired && !early)
    }

    /// OPA's `validAudience`: the claim (a string, or an array with a string) is the
    /// constrained audience, which is the empty string when there is none.
    fn audience_matches(&self, aud: &Value) -> bool {
        match aud {
            Value::String(s) => s.as_ref() == self.aud,
            Value::Array(items) => items.iter().any(|item| matches!(item, Value::String(s) if s.as_ref() == self.aud)),
            _ => false,
        }
    }
}

fn constraint_string<'v>(name: &str, value: &'v Value) -> Result<&'v str> {
    match value {
        Value::String(s) => Ok(s),
        _ => bail!("{name} constraint: must be a string"),
    }
}

fn time_ns(value: &Value) -> Result<f64> {
    let Value::Number(n) = value else { bail!("token time constraint: must be a number") };
    // Nanoseconds since the epoch are past 2^53, where regorus' exact `as_f64` gives up: OPA
    // takes them as a (rounded) float64, and so does this (`"time": time.now_ns()` must work).
    let time = n
        .as_f64()
        .or_else(|| n.as_i128().map(|i| i as f64))
        .ok_or_else(|| anyhow!("token time constraint: invalid float64"))?;
    if time < 0.0 {
        bail!("token time constraint: must not be negative");
    }
    Ok(time)
}

fn now_ns() -> Result<f64> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| anyhow!("clock before 1970: {e}"))?;
    Ok(now.as_nanos() as f64)
}

/// A time claim in seconds, if present; a claim that is not a number is an error, as in OPA.
fn claim_seconds(claim: Option<&Value>, name: &str) -> Result<Option<f64>> {
    match claim {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(|| anyhow!("{name} value is out of range")),
        Some(_) => bail!("{name} value must be a number"),
    }
}

/// OPA's key selection: the key whose `kid` is the token's, alone, if there is one; otherwise
/// every key whose `alg` is unset or the token's.
fn any_key_verifies(keys: &[VerificationKey], header: &Header, verify: impl Fn(&VerificationKey) -> bool) -> bool {
    if !header.kid.is_empty() {
        if let Some(key) = keys.iter().find(|key| key.kid == header.kid) {
            return verify(key);
        }
    }
    keys.iter().filter(|key| key.alg.is_empty() || key.alg == header.alg).any(verify)
}

/// `io.jwt.decode_verify(jwt, constraints)`: `[true, header, payload]` when the signature
/// verifies and the claims meet the constraints, `[false, {}, {}]` when not; a malformed token
/// or constraint is an error. A token whose `cty` is `JWT` holds another token, verified in
/// turn with the same constraints; the innermost header and claims are returned.
fn decode_verify(args: &[Value]) -> Result<Value> {
    let constraints = Constraints::parse(object_arg(args, 1)?)?;
    let mut jwt = string_arg(args, 0)?.to_string();
    loop {
        let token = Token::split(&jwt)?;
        let header_value = token.header()?;
        let header = Header::parse(&header_value)?;
        if !header.valid() || (!constraints.alg.is_empty() && constraints.alg != header.alg) {
            return Ok(unverified());
        }
        if header.alg == "ES512" && constraints.keys.is_some() {
            // OPA would verify it with a P-521 key; a plain `false` would deny every such token
            // with no word of why.
            bail!("JWS algorithm ES512 is not supported (jsonwebtoken 9 has no P-521)");
        }
        let signature = token.signature()?;
        if !constraints.signature_verifies(&header, token.signing_input().as_bytes(), &signature) {
            return Ok(unverified());
        }
        let payload = token.payload()?;
        if header.cty.eq_ignore_ascii_case("JWT") {
            jwt = String::from_utf8_lossy(&payload).into_owned();
            continue;
        }
        let payload = json_object(&payload)?;
        if !constraints.claims_hold(&payload)? {
            return Ok(unverified());
        }
        return Ok(Value::from(vec![Value::from(true), header_value, payload]));
    }
}

/// `io.jwt.verify_hs*(jwt, secret)`: whether the HMAC is right. As in OPA, the header is not
/// read: its `alg` does not matter.
fn verify_hmac(args: &[Value], alg: &str) -> Result<Value> {
    let (jwt, secret) = (string_arg(args, 0)?, string_arg(args, 1)?);
    let token = Token::split(jwt)?;
    let signature = token.signature()?;
    let key = VerificationKey::secret(secret.as_bytes());
    Ok(Value::from(key.verifies(alg, token.signing_input().as_bytes(), &signature)))
}

/// `io.jwt.verify_rs*`, `ps*`, `es*`, `eddsa(jwt, certificate)`: whether the signature verifies
/// with `alg` under one of the keys. As in OPA, the header's `alg` only selects JWKS keys that
/// declare one.
fn verify_public(args: &[Value], alg: &str) -> Result<Value> {
    let token = Token::split(string_arg(args, 0)?)?;
    let keys = verification_keys(string_arg(args, 1)?)?;
    let signature = token.signature()?;
    let header = Header::parse(&token.header()?)?;
    let message = token.signing_input();
    Ok(Value::from(any_key_verifies(&keys, &header, |key| key.verifies(alg, message.as_bytes(), &signature))))
}

/// `io.jwt.encode_sign(headers, payload, key)`: the compact JWS of the JSON of `payload` under
/// the JSON of `headers`, signed with the JWK `key`.
fn encode_sign(args: &[Value]) -> Result<Value> {
    let headers = go_json(arg(args, 0)?)?;
    let payload = go_json(arg(args, 1)?)?;
    let key = go_json(arg(args, 2)?)?;
    sign(&headers, &payload, &key)
}

/// `io.jwt.encode_sign_raw(headers, payload, key)`: the same with the three JSON texts given.
fn encode_sign_raw(args: &[Value]) -> Result<Value> {
    let key = string_arg(args, 2)?;
    sign(string_arg(args, 0)?, string_arg(args, 1)?, key)
}

fn sign(headers: &str, payload: &str, jwk: &str) -> Result<Value> {
    let jwk = first_key(jwk)?;
    let parsed: serde_json::Value = serde_json::from_str(headers).unwrap_or_default();
    let Some(alg) = parsed.get("alg").and_then(|alg| alg.as_str()) else { bail!("missing or invalid 'alg' header") };
    if !OPA_ALGORITHMS.contains(&alg) {
        bail!("unknown JWS algorithm: {alg}");
    }
    let typ = parsed.get("typ").and_then(|typ| typ.as_str());
    let is_json = serde_json::from_str::<serde::de::IgnoredAny>(payload).is_ok();
    if typ.is_none_or(|typ| typ == "JWT") && !is_json {
        bail!("type is JWT but payload is not JSON");
    }
    let (algorithm, key) = signing_key(&jwk, alg)?;
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(headers), URL_SAFE_NO_PAD.encode(payload));
    let signature = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, algorithm)
        .map_err(|e| anyhow!("signing with the JWK: {e}"))?;
    Ok(Value::from(format!("{signing_input}.{signature}")))
}

/// The JSON text of `value` as OPA writes it (Go's `json.Marshal`): compact, keys sorted, and
/// `<`, `>`, `&`, U+2028, U+2029 escaped, so that a token signed here and one signed by OPA
/// from the same values are the same bytes.
fn go_json(value: &Value) -> Result<String> {
    let json = serde_json::to_string(value)?;
    let mut escaped = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => escaped.push_str("\\u003c"),
            '>' => escaped.push_str("\\u003e"),
            '&' => escaped.push_str("\\u0026"),
            '\u{2028}' => escaped.push_str("\\u2028"),
            '\u{2029}' => escaped.push_str("\\u2029"),
            c => escaped.push(c),
        }
    }
    Ok(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn malformed_tokens_are_errors() {
        let err = |jwt: &str| decode(&[Value::from(jwt)]).unwrap_err().to_string();
        assert_eq!(err("abc"), "encoded JWT had no period separators");
        assert_eq!(err("a.b"), "encoded JWT must have 3 sections, found 2");
        assert!(err("!!.e30.").starts_with("JWT header had invalid encoding"));
        assert!(err(&format!("{}.e30.", b64("[1]"))).starts_with("bad JWT header"));
        let jwe = format!("{}.e30.", b64(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#));
        assert_eq!(err(&jwe), "JWT is a JWE object, which is not supported");
        assert!(err(&format!("{}.e30.!!", b64(r#"{"alg":"HS256"}"#))).starts_with("JWT signature had invalid encoding"));
    }

    #[test]
    fn header_parameters_are_typed_and_crit_is_respected() {
        let header = |json: &str| Header::parse(&Value::from_json_str(json).unwrap());
        assert!(header(r#"{"alg": "HS256", "crit": ["exp"]}"#).unwrap().valid());
        assert!(!header(r#"{"alg": "HS256", "b64": false, "crit": ["b64"]}"#).unwrap().valid());
        assert!(!header(r#"{"typ": "JWT"}"#).unwrap().valid());
        assert_eq!(header(r#"{"alg": 1}"#).err().map(|e| e.to_string()).as_deref(), Some("alg: must be a string"));
        assert!(header(r#"{"alg": "HS256", "crit": []}"#).is_err());
        assert!(header(r#"{"alg": "HS256", "crit": "b64"}"#).is_err());
    }

    #[test]
    fn a_signature_is_checked_once_per_token_and_key_and_the_claims_every_time() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let token = |exp: u64| {
            let claims = serde_json::json!({"sub": "alice", "exp": exp, "aud": "api"});
            let key = jsonwebtoken::EncodingKey::from_secret(b"cache-test-secret");
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
        };
        let verify = |jwt: &str, constraints: &str| {
            let args = [Value::from(jwt), Value::from_json_str(constraints).unwrap()];
            decode_verify(&args).unwrap()[0] == Value::from(true)
        };
        let (valid, at) = (token(now + 300), r#"{"secret": "cache-test-secret", "aud": "api"}"#);
        let before = verified::checks();
        assert!(verify(&valid, at) && verify(&valid, at) && verify(&valid, at));
        assert_eq!(verified::checks() - before, 1, "one check for three calls");
        // The same signature under another constraint is checked again (and fails).
        assert!(!verify(&valid, r#"{"secret": "another", "aud": "api"}"#));
        assert_eq!(verified::checks() - before, 2);
        // Claims are not cached: the remembered signature does not make a wrong audience pass,
        // and a later `time` past `exp` fails a token verified before.
        assert!(!verify(&valid, r#"{"secret": "cache-test-secret", "aud": "other"}"#));
        let later =
            format!(r#"{{"secret": "cache-test-secret", "aud": "api", "time": {}}}"#, (now + 301) * 1_000_000_000);
        assert!(!verify(&valid, &later));
        // Failures are never remembered: a tampered token is checked, and refused, each time.
        let at_sig = valid.rfind('.').unwrap() + 5;
        let flipped = if &valid[at_sig..=at_sig] == "A" { "B" } else { "A" };
        let tampered = format!("{}{flipped}{}", &valid[..at_sig], &valid[at_sig + 1..]);
        let before = verified::checks();
        assert!(!verify(&tampered, at) && !verify(&tampered, at));
        assert_eq!(verified::checks() - before, 2);
    }

    #[test]
    fn go_json_is_compact_sorted_and_html_escaped() {
        let value = Value::from_json_str(r#"{"b": "<&>", "a": [1, 2.5]}"#).unwrap();
        assert_eq!(go_json(&value).unwrap(), r#"{"a":[1,2.5],"b":"\u003c\u0026\u003e"}"#);
    }
}
