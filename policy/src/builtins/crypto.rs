//! `crypto.md5`, `crypto.sha1`, `crypto.sha256` (hex digest of a string), `crypto.hmac.md5`,
//! `.sha1`, `.sha256`, `.sha512` (hex MAC of a message under a key) and `crypto.hmac.equal`
//! (comparison of two MACs in constant time), as OPA defines them.

use anyhow::{anyhow, Result};
use hmac::digest::{Digest, KeyInit};
use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::{string_arg, Builtin};
use crate::Value;

pub(super) const BUILTINS: &[(&str, u8, Builtin)] = &[
    ("crypto.md5", 1, digest_hex::<Md5>),
    ("crypto.sha1", 1, digest_hex::<Sha1>),
    ("crypto.sha256", 1, digest_hex::<Sha256>),
    ("crypto.hmac.md5", 2, hmac_hex::<Hmac<Md5>>),
    ("crypto.hmac.sha1", 2, hmac_hex::<Hmac<Sha1>>),
    ("crypto.hmac.sha256", 2, hmac_hex::<Hmac<Sha256>>),
    ("crypto.hmac.sha512", 2, hmac_hex::<Hmac<Sha512>>),
    ("crypto.hmac.equal", 2, hmac_equal),
];

/// `crypto.<hash>(x)`: the hex digest of the string's bytes.
fn digest_hex<D: Digest>(args: &[Value]) -> Result<Value> {
    Ok(Value::from(hex::encode(D::digest(string_arg(args, 0)?.as_bytes()))))
}

/// `crypto.hmac.<hash>(x, key)`: the hex MAC of the message `x` under `key`.
fn hmac_hex<M: Mac + KeyInit>(args: &[Value]) -> Result<Value> {
    let (message, key) = (string_arg(args, 0)?, string_arg(args, 1)?);
    let mut mac = <M as KeyInit>::new_from_slice(key.as_bytes()).map_err(|e| anyhow!("HMAC key: {e}"))?;
    mac.update(message.as_bytes());
    Ok(Value::from(hex::encode(mac.finalize().into_bytes())))
}

/// `crypto.hmac.equal(mac1, mac2)`: whether the two strings are equal, taking the same time
/// wherever they differ, so that a caller comparing a MAC learns nothing from the timing
/// (strings of different lengths are told apart at once, as Go's `hmac.Equal` does).
fn hmac_equal(args: &[Value]) -> Result<Value> {
    let (a, b) = (string_arg(args, 0)?, string_arg(args, 1)?);
    Ok(Value::from(bool::from(a.as_bytes().ct_eq(b.as_bytes()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(path: &str, args: &[&str]) -> Value {
        let (_, _, function) = BUILTINS.iter().find(|(p, _, _)| *p == path).unwrap();
        function(&args.iter().map(|a| Value::from(*a)).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn digests_are_the_hex_of_the_string() {
        assert_eq!(call("crypto.md5", &["hello"]), Value::from("5d41402abc4b2a76b9719d911017c592"));
        assert_eq!(call("crypto.sha1", &["hello"]), Value::from("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"));
        assert_eq!(
            call("crypto.sha256", &["hello"]),
            Value::from("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
    }

    /// RFC 2202 and RFC 4231, test case 2.
    #[test]
    fn hmacs_match_the_rfc_vectors() {
        let args = ["what do ya want for nothing?", "Jefe"];
        assert_eq!(call("crypto.hmac.md5", &args), Value::from("750c783e6ab0b503eaa86e310a5db738"));
        assert_eq!(call("crypto.hmac.sha1", &args), Value::from("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"));
        assert_eq!(
            call("crypto.hmac.sha256", &args),
            Value::from("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        assert_eq!(
            call("crypto.hmac.sha512", &args),
            Value::from(
                "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
            )
        );
    }

    #[test]
    fn hmac_equal_compares_whole_strings() {
        assert_eq!(call("crypto.hmac.equal", &["abc", "abc"]), Value::from(true));
        assert_eq!(call("crypto.hmac.equal", &["abc", "abd"]), Value::from(false));
        assert_eq!(call("crypto.hmac.equal", &["abc", "abcd"]), Value::from(false));
    }

    #[test]
    fn a_non_string_is_an_error() {
        let err = digest_hex::<Sha256>(&[Value::from(1u64)]).unwrap_err();
        assert_eq!(err.to_string(), "operand 1 must be string but got number");
    }
}
