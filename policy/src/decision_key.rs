//! The decision key a bundle may declare (`decision_key := {...}` beside its decision rule):
//! exactly what its decisions read, so that one decision serves every request with the same
//! key — whichever token, whichever id in the path. The bundle states it; this module parses
//! the statement at load, refuses one it cannot honour exactly, and computes a request's route.
//!
//! ```rego
//! decision_key := {
//!     "identity": ["roles"],                       # claims read, besides "is there one"
//!     "routes": {"GET": [["v1", "jobs", "*"]]},    # `*`: a segment the decision ignores
//! }
//! ```
//!
//! A decision keyed so reads only: the method; the path — whole (with its query) unless it
//! matches one of the method's routes, whose `*` segments it ignores; whether a token was
//! verified (else why not); and the listed claims of a verified one. Routes of one method
//! must not overlap: two matching routes would share a key where the policy may not.

use regorus::Value;

/// A claim of the verified identity a keyed decision may read. Only what the token verifier
/// keeps of each token can be part of a key. Exhaustive on purpose: a claim added here must be
/// put in every key that is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyedClaim {
    /// `sub`.
    Subject,
    /// `roles`.
    Roles,
}

/// What a bundle's decisions depend on, as it declared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecisionKey {
    claims: Vec<KeyedClaim>,
    /// Per method, its routes. A list, not a map: a handful of methods, scanned on every
    /// request, costs less than hashing the method.
    routes: Vec<(String, Vec<Route>)>,
}

/// A path pattern: `None` stands for any one segment.
#[derive(Debug, Clone, PartialEq)]
struct Route(Vec<Option<String>>);

/// Why a declared decision key cannot be honoured.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum DecisionKeyError {
    /// A field has the wrong shape.
    #[error("decision_key.{field}: {expected}")]
    Shape {
        /// Which field.
        field: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A claim the verifier does not keep.
    #[error("decision_key.identity: claim `{0}` cannot be part of a key (only `sub` and `roles`)")]
    Claim(String),
    /// Two routes of one method match a common path.
    #[error("decision_key.routes.{method}: routes {first} and {second} overlap")]
    Overlap {
        /// The method.
        method: String,
        /// One route, as declared.
        first: String,
        /// The other.
        second: String,
    },
}

impl DecisionKey {
    /// Parses the value of a bundle's `decision_key` rule.
    pub fn from_value(value: &Value) -> Result<Self, DecisionKeyError> {
        let shape = |field: &str, expected| DecisionKeyError::Shape { field: field.to_string(), expected };
        let object = value.as_object().map_err(|_| shape("", "an object with `identity` and `routes`"))?;
        for key in object.keys() {
            if !matches!(key.as_string().map(|s| s.as_ref()), Ok("identity" | "routes")) {
                return Err(shape(&key.to_string(), "unknown field (only `identity` and `routes`)"));
            }
        }
        let mut claims = Vec::new();
        if let Some(list) = object.get(&Value::from("identity")) {
            for claim in list.as_array().map_err(|_| shape("identity", "an array of claim names"))? {
                let name = claim.as_string().map_err(|_| shape("identity", "an array of claim names"))?;
                let claim = match name.as_ref() {
                    "sub" => KeyedClaim::Subject,
                    "roles" => KeyedClaim::Roles,
                    other => return Err(DecisionKeyError::Claim(other.to_string())),
                };
                if !claims.contains(&claim) {
                    claims.push(claim);
                }
            }
        }
        let mut routes = Vec::new();
        if let Some(methods) = object.get(&Value::from("routes")) {
            let methods = methods.as_object().map_err(|_| shape("routes", "an object: method → routes"))?;
            for (method, list) in methods.iter() {
                let method = method.as_string().map_err(|_| shape("routes", "method names as keys"))?.to_string();
                let field = format!("routes.{method}");
                let list = list.as_array().map_err(|_| shape(&field, "an array of routes"))?;
                let parsed = list.iter().map(|r| Route::from_value(r, &field)).collect::<Result<Vec<_>, _>>()?;
                for (i, first) in parsed.iter().enumerate() {
                    if let Some(second) = parsed[i + 1..].iter().find(|second| first.overlaps(second)) {
                        return Err(DecisionKeyError::Overlap {
                            method,
                            first: first.to_string(),
                            second: second.to_string(),
                        });
                    }
                }
                routes.push((method, parsed));
            }
        }
        Ok(Self { claims, routes })
    }

    /// The claims a key holds, in the order declared.
    pub fn claims(&self) -> &[KeyedClaim] {
        &self.claims
    }

    /// Which of `method`'s routes `path` (with or without its query) matches, compared as
    /// the policy sees it (`input.parsed_path`, each segment percent-decoded on its own).
    pub fn route(&self, method: &str, path: &str) -> Option<usize> {
        let (_, routes) = self.routes.iter().find(|(m, _)| m == method)?;
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        // Split on each call rather than into a Vec: this runs on every request.
        let segments = || path.trim_start_matches('/').split('/');
        let count = segments().count();
        routes.iter().position(|route| route.0.len() == count && route.matches(segments()))
    }
}

impl Route {
    fn from_value(value: &Value, field: &str) -> Result<Self, DecisionKeyError> {
        let shape = || DecisionKeyError::Shape {
            field: field.to_string(),
            expected: "each route an array of path segments (\"*\": any one)",
        };
        let segments = value.as_array().map_err(|_| shape())?;
        let segments = segments
            .iter()
            .map(|s| s.as_string().map(|s| (s.as_ref() != "*").then(|| s.to_string())).map_err(|_| shape()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(segments))
    }

    /// Whether some path matches both.
    fn overlaps(&self, other: &Route) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| a.is_none() || b.is_none() || a == b)
    }

    /// Whether `segments`, as many as the route has, match it.
    fn matches<'a>(&self, segments: impl Iterator<Item = &'a str>) -> bool {
        self.0.iter().zip(segments).all(|(pattern, raw)| match pattern {
            None => true,
            // A segment without `%` is its own decoding; one with it is decoded first.
            Some(literal) if !raw.contains('%') => literal == raw,
            Some(literal) => {
                percent_encoding::percent_decode_str(raw).decode_utf8().is_ok_and(|decoded| decoded == **literal)
            }
        })
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let segments: Vec<&str> = self.0.iter().map(|s| s.as_deref().unwrap_or("*")).collect();
        write!(f, "/{}", segments.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(json: &str) -> Result<DecisionKey, DecisionKeyError> {
        DecisionKey::from_value(&Value::from_json_str(json).unwrap())
    }

    #[test]
    fn routes_match_as_the_policy_sees_the_path() {
        let k =
            key(r#"{"identity": ["roles"], "routes": {"GET": [["v1", "jobs", "*"], ["v1", "jobs", "*", "events"]]}}"#)
                .unwrap();
        assert_eq!(k.claims(), &[KeyedClaim::Roles]);
        assert_eq!(k.route("GET", "/v1/jobs/42"), Some(0));
        assert_eq!(k.route("GET", "/v1/jobs/43?verbose=1"), Some(0), "the query is not the path");
        assert_eq!(k.route("GET", "/v1/jobs/a%2Fb"), Some(0), "an encoded / stays in its segment");
        assert_eq!(k.route("GET", "/v1/j%6Fbs/42/events"), Some(1), "segments compare decoded");
        assert_eq!(k.route("GET", "/v1/jobs"), None);
        assert_eq!(k.route("GET", "/v1/jobs/42/"), None, "a trailing / is one more (empty) segment");
        assert_eq!(k.route("GET", "/v1/jobs/%FF/events/x"), None);
        assert_eq!(k.route("GET", "/v1/j%FFbs/42"), None, "undecodable: no route");
        assert_eq!(k.route("POST", "/v1/jobs/42"), None, "routes are per method");
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        assert_eq!(key(r#"{"identity": ["email"]}"#), Err(DecisionKeyError::Claim("email".into())));
        assert!(matches!(key(r#"{"identity": "roles"}"#), Err(DecisionKeyError::Shape { .. })));
        assert!(matches!(key(r#"{"routes": {"GET": [["v1", 1]]}}"#), Err(DecisionKeyError::Shape { .. })));
        assert!(matches!(key(r#"{"paths": {}}"#), Err(DecisionKeyError::Shape { .. })));
        assert!(matches!(key("true"), Err(DecisionKeyError::Shape { .. })));
        let overlap = key(r#"{"routes": {"GET": [["v1", "*", "x"], ["v1", "jobs", "*"]]}}"#).unwrap_err();
        assert_eq!(overlap.to_string(), "decision_key.routes.GET: routes /v1/*/x and /v1/jobs/* overlap");
        assert!(key(r#"{"routes": {"GET": [["v1", "*"], ["v1", "*", "x"]], "POST": [["v1", "*"]]}}"#).is_ok());
        assert_eq!(key("{}").unwrap(), DecisionKey::default(), "an empty key: method and path only");
    }
}
