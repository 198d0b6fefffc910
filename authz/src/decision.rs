//! What the policy decided, read from the decision rule's value the way OPA-Envoy reads it:
//! either a bool, or an object with `allowed` and optional `headers`,
//! `response_headers_to_add`, `request_headers_to_remove`, `query_parameters_to_set`,
//! `query_parameters_to_remove`, `body`, `http_status` and `dynamic_metadata`.
//! Anything else is malformed, and a malformed decision denies.

use std::ops::Deref;
use std::sync::{Arc, LazyLock};

use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value as PbValue};
use qiria_policy::Value;

/// A policy's verdict and the changes it asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Headers to set on the upstream request (allow) or the denial response (deny).
    pub headers: Vec<(String, String)>,
    /// Headers to add to the response sent to the client (allow only).
    pub response_headers_to_add: Vec<(String, String)>,
    /// Request headers to strip before forwarding (allow only).
    pub request_headers_to_remove: Vec<String>,
    /// Query parameters to set (allow only).
    pub query_parameters_to_set: Vec<(String, String)>,
    /// Query parameters to remove (allow only).
    pub query_parameters_to_remove: Vec<String>,
    /// Body of the denial response.
    pub body: Option<String>,
    /// Status of the denial response.
    pub http_status: Option<u16>,
    /// Extra dynamic metadata for Envoy (access logs, later filters), converted once when the
    /// decision is made, not on every request a cached decision answers.
    pub dynamic_metadata: Option<Struct>,
}

/// The decision rule's value is not a decision.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecisionError {
    /// The rule was undefined for this input (OPA-Envoy treats this as an error too).
    #[error("decision rule is undefined for this request")]
    Undefined,
    /// The value has the wrong shape; the field is named.
    #[error("malformed decision: `{field}` {reason}")]
    Malformed {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

const KNOWN_FIELDS: [&str; 9] = [
    "allowed",
    "headers",
    "response_headers_to_add",
    "request_headers_to_remove",
    "query_parameters_to_set",
    "query_parameters_to_remove",
    "body",
    "http_status",
    "dynamic_metadata",
];

impl Decision {
    /// Reads a decision rule's value.
    pub fn from_value(value: &Value) -> Result<Self, DecisionError> {
        let malformed = |field, reason| DecisionError::Malformed { field, reason };
        match value {
            Value::Undefined => Err(DecisionError::Undefined),
            Value::Bool(allowed) => Ok(Self { allowed: *allowed, ..Self::default() }),
            Value::Object(obj) => {
                for key in obj.keys() {
                    let known = key.as_string().is_ok_and(|k| KNOWN_FIELDS.contains(&k.as_ref()));
                    if !known {
                        return Err(malformed("(object)", "has a field OPA-Envoy does not define"));
                    }
                }
                let field = |name: &str| obj.get(&Value::from(name)).filter(|v| !matches!(v, Value::Undefined));
                let allowed = match field("allowed") {
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(malformed("allowed", "must be a boolean")),
                    None => return Err(malformed("allowed", "is required")),
                };
                let http_status = match field("http_status") {
                    None => None,
                    Some(v) => Some(
                        v.as_u64()
                            .ok()
                            .and_then(|s| u16::try_from(s).ok())
                            .filter(|s| (100..=599).contains(s))
                            .ok_or(malformed("http_status", "must be an HTTP status code"))?,
                    ),
                };
                let body = match field("body") {
                    None => None,
                    Some(Value::String(s)) => Some(s.to_string()),
                    Some(_) => return Err(malformed("body", "must be a string")),
                };
                let dynamic_metadata = match field("dynamic_metadata") {
                    None => None,
                    Some(v @ Value::Object(_)) => {
                        let json = v.to_json_str().map_err(|_| malformed("dynamic_metadata", "must be JSON"))?;
                        let map: serde_json::Map<String, serde_json::Value> =
                            serde_json::from_str(&json).map_err(|_| malformed("dynamic_metadata", "must be JSON"))?;
                        Some(Struct { fields: map.iter().map(|(k, v)| (k.clone(), pb_value(v))).collect() })
                    }
                    Some(_) => return Err(malformed("dynamic_metadata", "must be an object")),
                };
                Ok(Self {
                    allowed,
                    headers: pairs(field("headers"), "headers")?,
                    response_headers_to_add: pairs(field("response_headers_to_add"), "response_headers_to_add")?,
                    request_headers_to_remove: strings(
                        field("request_headers_to_remove"),
                        "request_headers_to_remove",
                    )?,
                    query_parameters_to_set: pairs(field("query_parameters_to_set"), "query_parameters_to_set")?,
                    query_parameters_to_remove: strings(
                        field("query_parameters_to_remove"),
                        "query_parameters_to_remove",
                    )?,
                    body,
                    http_status,
                    dynamic_metadata,
                })
            }
            _ => Err(malformed("(decision)", "must be a boolean or an object")),
        }
    }
}

/// A JSON value in protobuf's `Value` form, as Envoy's dynamic metadata holds it.
fn pb_value(value: &serde_json::Value) -> PbValue {
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(items) => Kind::ListValue(ListValue { values: items.iter().map(pb_value).collect() }),
        J::Object(map) => {
            Kind::StructValue(Struct { fields: map.iter().map(|(k, v)| (k.clone(), pb_value(v))).collect() })
        }
    };
    PbValue { kind: Some(kind) }
}

/// A decision as caches hand it out. The plain allow and deny, by far the most common, are
/// statics: sharing one reference-counted copy would have every core write its count on
/// every request.
#[derive(Debug, Clone)]
pub enum SharedDecision {
    /// `true` or `false`, nothing else.
    Plain(&'static Decision),
    /// A decision with headers, status, body or metadata.
    Custom(Arc<Decision>),
}

impl SharedDecision {
    /// Wraps `decision`, using the statics for the plain ones.
    pub fn new(decision: Decision) -> Self {
        static ALLOW: LazyLock<Decision> = LazyLock::new(|| Decision { allowed: true, ..Decision::default() });
        static DENY: LazyLock<Decision> = LazyLock::new(Decision::default);
        match decision {
            d if d == *ALLOW => Self::Plain(&ALLOW),
            d if d == *DENY => Self::Plain(&DENY),
            d => Self::Custom(Arc::new(d)),
        }
    }
}

impl Deref for SharedDecision {
    type Target = Decision;
    fn deref(&self) -> &Decision {
        match self {
            Self::Plain(d) => d,
            Self::Custom(d) => d,
        }
    }
}

/// `{name: value}` or `{name: [values]}` → `(name, value)` pairs.
fn pairs(value: Option<&Value>, field: &'static str) -> Result<Vec<(String, String)>, DecisionError> {
    let bad = DecisionError::Malformed { field, reason: "must map names to strings or arrays of strings" };
    let Some(value) = value else { return Ok(Vec::new()) };
    let obj = value.as_object().map_err(|_| bad.clone())?;
    let mut out = Vec::new();
    for (k, v) in obj.iter() {
        let k = k.as_string().map_err(|_| bad.clone())?.to_string();
        match v {
            Value::String(s) => out.push((k, s.to_string())),
            Value::Array(items) => {
                for item in items.iter() {
                    out.push((k.clone(), item.as_string().map_err(|_| bad.clone())?.to_string()));
                }
            }
            _ => return Err(bad),
        }
    }
    Ok(out)
}

/// An array (or set) of strings.
fn strings(value: Option<&Value>, field: &'static str) -> Result<Vec<String>, DecisionError> {
    let bad = DecisionError::Malformed { field, reason: "must be an array of strings" };
    let items: Vec<&Value> = match value {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(Value::Set(s)) => s.iter().collect(),
        Some(_) => return Err(bad),
    };
    items.into_iter().map(|v| v.as_string().map(|s| s.to_string()).map_err(|_| bad.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(json: &str) -> Result<Decision, DecisionError> {
        Decision::from_value(&Value::from_json_str(json).unwrap())
    }

    #[test]
    fn bool_and_object_forms() {
        assert!(decide("true").unwrap().allowed);
        assert!(!decide("false").unwrap().allowed);
        let d = decide(r#"{"allowed": false, "http_status": 429, "body": "slow down", "headers": {"retry-after": "5", "x": ["a","b"]}}"#).unwrap();
        assert_eq!(d.http_status, Some(429));
        assert_eq!(d.body.as_deref(), Some("slow down"));
        assert_eq!(d.headers.len(), 3);
    }

    #[test]
    fn malformed_decisions_name_the_field() {
        assert_eq!(
            decide(r#"{"allowed": "yes"}"#).unwrap_err().to_string(),
            "malformed decision: `allowed` must be a boolean"
        );
        assert!(decide(r#"{"http_status": 200}"#).unwrap_err().to_string().contains("`allowed` is required"));
        assert!(decide(r#"{"allowed": true, "http_status": 1000}"#).unwrap_err().to_string().contains("http_status"));
        assert!(decide(r#"{"allowed": true, "headers": {"a": 1}}"#).unwrap_err().to_string().contains("headers"));
        assert!(decide(r#"{"allowed": true, "allow": true}"#).is_err());
        assert!(decide(r#""allow""#).is_err());
        assert_eq!(Decision::from_value(&Value::Undefined), Err(DecisionError::Undefined));
    }
}
