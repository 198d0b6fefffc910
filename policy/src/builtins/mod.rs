//! OPA-compatible host builtins that regorus lacks, so that policies written for OPA-Envoy
//! load and decide the same: `io.jwt.*` (`jwt`, key material in `jwk`), `crypto.*` digests and
//! MACs (`crypto`), `crypto.x509.*` (`x509`, chain verification in `chain`); what
//! `io.jwt.decode_verify` already verified is remembered (`verified`).
//!
//! Each follows OPA's semantics and result shapes: where OPA answers "not valid"
//! (`[false, {}, {}]`, `false`, `[false, []]`), so do these; where OPA raises a builtin error,
//! these return `Err`, which strict builtin errors turn into a failed evaluation, a denial.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::{HostBuiltin, Value};

mod chain;
mod crypto;
mod jwk;
mod jwt;
mod verified;
mod x509;

/// One builtin: its arguments in, its value out.
type Builtin = fn(&[Value]) -> Result<Value>;

/// Every builtin here, ready for `BundleOptions::builtins`.
pub fn opa_builtins() -> Vec<HostBuiltin> {
    jwt::BUILTINS
        .iter()
        .chain(crypto::BUILTINS)
        .chain(x509::BUILTINS)
        .map(|&(path, nargs, function)| HostBuiltin {
            path: path.to_string(),
            nargs,
            function: Arc::new(move |args: Vec<Value>| function(&args)),
        })
        .collect()
}

/// Argument `index` (from 0), which must be there: regorus checks the count first.
fn arg(args: &[Value], index: usize) -> Result<&Value> {
    match args.get(index) {
        Some(value) => Ok(value),
        None => bail!("operand {} missing", index + 1),
    }
}

/// Argument `index` as a string, failing with OPA's message when it is not one.
fn string_arg(args: &[Value], index: usize) -> Result<&str> {
    match arg(args, index)? {
        Value::String(s) => Ok(s),
        other => bail!("operand {} must be string but got {}", index + 1, type_name(other)),
    }
}

/// Argument `index` as an object, failing with OPA's message when it is not one.
fn object_arg(args: &[Value], index: usize) -> Result<&Value> {
    match arg(args, index)? {
        object @ Value::Object(_) => Ok(object),
        other => bail!("operand {} must be object but got {}", index + 1, type_name(other)),
    }
}

/// OPA's name of a value's type, for error messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Set(_) => "set",
        Value::Object(_) => "object",
        Value::Undefined => "undefined",
    }
}

/// An object with string keys.
fn object<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::from(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect::<BTreeMap<_, _>>())
}
