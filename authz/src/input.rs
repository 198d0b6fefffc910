//! The input document a policy sees, built from Envoy's `CheckRequest`.
//!
//! It is OPA-Envoy's input, field for field, so a policy written for OPA-Envoy runs unchanged:
//! `input.attributes` is the v3 `AttributeContext` in its protobuf JSON mapping (lowerCamelCase
//! keys, empty fields omitted, int64 as strings), plus `parsed_path`, `parsed_query`,
//! `parsed_body`, `truncated_body` and `version`. Qiria adds `source_principal` (the mTLS
//! peer's SPIFFE id), `identity` (the verified token's claims) or `identity_error` (why
//! there is none). The document is built straight into `regorus::Value`, without a JSON
//! round trip.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier, Address, Metadata};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use futures_util::FutureExt;
use regorus::Value;

use crate::jwt::{self, Identity, IdentityError};

/// Header Envoy sets when `with_request_body` forwarded only part of the body.
const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// A request whose input document cannot be built; it is denied with 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    /// `CheckRequest.attributes.request.http` is absent.
    #[error("request has no HTTP attributes")]
    NoHttpRequest,
    /// A path segment decodes to bytes that are not UTF-8.
    #[error("path segment is not valid UTF-8 once percent-decoded")]
    InvalidPath,
}

/// The result of token verification, as the policy should see it.
pub type IdentityResult<'a> = Result<&'a Identity, &'a IdentityError>;

/// Builds `input` for one request.
pub fn build(request: &CheckRequest, identity: IdentityResult<'_>) -> Result<Value, InputError> {
    let attributes = request.attributes.as_ref();
    let http =
        attributes.and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref()).ok_or(InputError::NoHttpRequest)?;
    let (path, query) = http.path.split_once('?').unwrap_or((&http.path, ""));
    let truncated = http.headers.get(PARTIAL_BODY_HEADER).is_some_and(|v| v == "true");
    let body = body_text(http);

    let mut input = Obj::default();
    if let Some(attributes) = attributes {
        input.put("attributes", attribute_context(attributes));
    }
    input.put("parsed_path", parsed_path(path)?);
    input.put("parsed_query", parsed_query(query));
    if !truncated {
        if let Some(parsed) = body.as_deref().and_then(|b| parsed_body(&http.headers, b)) {
            input.put("parsed_body", parsed);
        }
    }
    input.put("truncated_body", Value::Bool(truncated));
    input.put("version", Obj::default().with("encoding", "protojson").with("ext_authz", "v3").into_value());
    if let Some(principal) = attributes.and_then(|a| a.source.as_ref()).map(|s| &s.principal) {
        if !principal.is_empty() {
            input.put("source_principal", principal.as_str());
        }
    }
    match identity {
        // `identity` is this request's own token, verified; its claims parsed as JSON then,
        // so a failure here cannot happen, and would leave the request anonymous if it did.
        Ok(_) => {
            let token = http.headers.get("authorization").and_then(|h| jwt::bearer_token(h));
            if let Some(claims) = token.and_then(jwt::verified_claims) {
                input.put("identity", claims);
            }
        }
        Err(error) => input.put("identity_error", error.code()),
    }
    Ok(input.into_value())
}

/// The request body as text: Envoy's `body`, or `raw_body` when it is UTF-8 (`pack_as_bytes`).
fn body_text(http: &HttpRequest) -> Option<std::borrow::Cow<'_, str>> {
    if !http.body.is_empty() {
        return Some(std::borrow::Cow::Borrowed(&http.body));
    }
    std::str::from_utf8(&http.raw_body).ok().filter(|b| !b.is_empty()).map(std::borrow::Cow::Borrowed)
}

fn attribute_context(a: &AttributeContext) -> Value {
    let mut o = Obj::default();
    if let Some(source) = &a.source {
        o.put("source", peer(source));
    }
    if let Some(destination) = &a.destination {
        o.put("destination", peer(destination));
    }
    if let Some(request) = &a.request {
        let mut r = Obj::default();
        if let Some(time) = &request.time {
            let ts = prost_types::Timestamp { seconds: time.seconds, nanos: time.nanos };
            r.put("time", ts.to_string());
        }
        if let Some(http) = &request.http {
            r.put("http", http_request(http));
        }
        o.put("request", r.into_value());
    }
    o.put_nonempty("contextExtensions", string_map(&a.context_extensions));
    if let Some(m) = &a.metadata_context {
        o.put("metadataContext", metadata(m));
    }
    if let Some(m) = &a.route_metadata_context {
        o.put("routeMetadataContext", metadata(m));
    }
    if let Some(tls) = &a.tls_session {
        if !tls.sni.is_empty() {
            o.put("tlsSession", Obj::default().with("sni", tls.sni.as_str()).into_value());
        }
    }
    o.into_value()
}

fn http_request(h: &HttpRequest) -> Value {
    let mut o = Obj::default();
    o.put_str("id", &h.id);
    o.put_str("method", &h.method);
    o.put_nonempty("headers", string_map(&h.headers));
    o.put_str("path", &h.path);
    o.put_str("host", &h.host);
    o.put_str("scheme", &h.scheme);
    o.put_str("query", &h.query);
    o.put_str("fragment", &h.fragment);
    if h.size != 0 {
        o.put("size", h.size.to_string());
    }
    o.put_str("protocol", &h.protocol);
    o.put_str("body", &h.body);
    if !h.raw_body.is_empty() {
        o.put("rawBody", base64::engine::general_purpose::STANDARD.encode(&h.raw_body));
    }
    o.into_value()
}

fn peer(p: &Peer) -> Value {
    let mut o = Obj::default();
    if let Some(addr) = &p.address {
        o.put("address", address(addr));
    }
    o.put_str("service", &p.service);
    o.put_nonempty("labels", string_map(&p.labels));
    o.put_str("principal", &p.principal);
    o.put_str("certificate", &p.certificate);
    o.into_value()
}

fn address(a: &Address) -> Value {
    let mut o = Obj::default();
    match &a.address {
        Some(address::Address::SocketAddress(s)) => {
            let mut sa = Obj::default();
            sa.put_str("address", &s.address);
            match &s.port_specifier {
                Some(PortSpecifier::PortValue(port)) => sa.put("portValue", u64::from(*port)),
                Some(PortSpecifier::NamedPort(name)) => sa.put_str("namedPort", name),
                None => {}
            }
            o.put("socketAddress", sa.into_value());
        }
        Some(address::Address::Pipe(p)) => o.put("pipe", Obj::default().with("path", p.path.as_str()).into_value()),
        _ => {}
    }
    o.into_value()
}

fn metadata(m: &Metadata) -> Value {
    let mut filters = Obj::default();
    for (name, s) in &m.filter_metadata {
        filters.put(name, pb_struct(s));
    }
    let mut o = Obj::default();
    o.put_nonempty("filterMetadata", filters.into_value());
    o.into_value()
}

fn pb_struct(s: &Struct) -> Value {
    let mut o = Obj::default();
    for (k, v) in &s.fields {
        o.put(k, pb_value(v));
    }
    o.into_value()
}

fn pb_value(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => Value::from(*n),
        Some(Kind::StringValue(s)) => Value::from(s.as_str()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => pb_struct(s),
        Some(Kind::ListValue(l)) => Value::from(l.values.iter().map(pb_value).collect::<Vec<_>>()),
    }
}

fn string_map(m: &HashMap<String, String>) -> Value {
    let mut o = Obj::default();
    for (k, v) in m {
        o.put(k, v.as_str());
    }
    o.into_value()
}

/// Path segments, percent-decoded one by one (so an encoded `/` stays inside its segment).
fn parsed_path(path: &str) -> Result<Value, InputError> {
    path.trim_start_matches('/')
        .split('/')
        .map(|segment| {
            percent_encoding::percent_decode_str(segment)
                .decode_utf8()
                .map(|s| Value::from(s.as_ref()))
                .map_err(|_| InputError::InvalidPath)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::from)
}

/// `name → [values]`, in order of appearance.
fn parsed_query(query: &str) -> Value {
    multi_map(form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())))
}

fn multi_map(pairs: impl Iterator<Item = (String, String)>) -> Value {
    let mut map: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (k, v) in pairs {
        map.entry(k).or_default().push(Value::from(v));
    }
    let mut o = Obj::default();
    for (k, values) in map {
        o.put(&k, Value::from(values));
    }
    o.into_value()
}

/// JSON, urlencoded and multipart bodies; anything else (or anything unparsable) gives none.
fn parsed_body(headers: &HashMap<String, String>, body: &str) -> Option<Value> {
    let content_type = headers.get("content-type")?;
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime == "application/json" || mime.ends_with("+json") {
        Value::from_json_str(body).ok()
    } else if mime == "application/x-www-form-urlencoded" {
        Some(multi_map(form_urlencoded::parse(body.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))))
    } else if mime == "multipart/form-data" {
        multipart_fields(content_type, body)
    } else {
        None
    }
}

/// Text fields of a multipart form (`name → [values]`); file parts are left out.
fn multipart_fields(content_type: &str, body: &str) -> Option<Value> {
    let boundary = multer::parse_boundary(content_type).ok()?;
    let data = bytes::Bytes::copy_from_slice(body.as_bytes());
    let stream = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(data) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut pairs = Vec::new();
    // The whole body is already in memory, so every future here is ready at once.
    while let Some(field) = multipart.next_field().now_or_never()?.ok()? {
        let (name, is_file) = (field.name().map(str::to_string), field.file_name().is_some());
        let text = field.text().now_or_never()?.ok()?;
        if let (Some(name), false) = (name, is_file) {
            pairs.push((name, text));
        }
    }
    Some(multi_map(pairs.into_iter()))
}

/// A small builder for `regorus` objects with string keys.
#[derive(Default)]
struct Obj(BTreeMap<Value, Value>);

impl Obj {
    fn put(&mut self, key: &str, value: impl Into<Value>) {
        self.0.insert(Value::from(key), value.into());
    }

    fn put_str(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.put(key, value);
        }
    }

    fn put_nonempty(&mut self, key: &str, value: Value) {
        if value.as_object().is_ok_and(|o| !o.is_empty()) {
            self.put(key, value);
        }
    }

    fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.put(key, value);
        self
    }

    fn into_value(self) -> Value {
        Value::from(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::Request;

    fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    time: None,
                    http: Some(HttpRequest {
                        method: method.into(),
                        path: path.into(),
                        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                        body: body.into(),
                        size: body.len() as i64,
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
        }
    }

    fn json(v: &Value) -> serde_json::Value {
        serde_json::from_str(&v.to_json_str().unwrap()).unwrap()
    }

    #[test]
    fn follows_opa_envoy_field_names_and_protojson_types() {
        let req = request("POST", "/v1/jobs/a%20b?x=1&x=2&y=", &[("content-type", "application/json")], r#"{"k":[1]}"#);
        let input = json(&build(&req, Err(&IdentityError::Missing)).unwrap());
        let http = &input["attributes"]["request"]["http"];
        assert_eq!(http["method"], "POST");
        assert_eq!(http["size"], "9", "int64 is a string in protobuf JSON");
        assert_eq!(input["parsed_path"], serde_json::json!(["v1", "jobs", "a b"]));
        assert_eq!(input["parsed_query"], serde_json::json!({"x": ["1", "2"], "y": [""]}));
        assert_eq!(input["parsed_body"], serde_json::json!({"k": [1]}));
        assert_eq!(input["truncated_body"], false);
        assert_eq!(input["identity_error"], "missing");
        assert!(input.get("identity").is_none());
        assert_eq!(input["version"]["ext_authz"], "v3");
    }

    #[test]
    fn peer_principal_address_and_metadata_are_mapped() {
        use envoy_types::pb::envoy::config::core::v3::SocketAddress;
        let mut req = request("GET", "/", &[], "");
        let attributes = req.attributes.as_mut().unwrap();
        attributes.source = Some(Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "10.1.2.3".into(),
                    port_specifier: Some(PortSpecifier::PortValue(41000)),
                    ..Default::default()
                })),
            }),
            principal: "spiffe://cluster.local/ns/web/sa/frontend".into(),
            ..Default::default()
        });
        let tag = PbValue { kind: Some(Kind::StringValue("blue".into())) };
        let filter = Struct { fields: [("tag".to_string(), tag)].into_iter().collect() };
        attributes.metadata_context = Some(Metadata {
            filter_metadata: [("envoy.lb".to_string(), filter)].into_iter().collect(),
            ..Default::default()
        });
        let input = json(&build(&req, Err(&IdentityError::Missing)).unwrap());
        let source = &input["attributes"]["source"];
        assert_eq!(source["address"]["socketAddress"]["address"], "10.1.2.3");
        assert_eq!(source["address"]["socketAddress"]["portValue"], 41000);
        assert_eq!(input["source_principal"], "spiffe://cluster.local/ns/web/sa/frontend");
        assert_eq!(input["attributes"]["metadataContext"]["filterMetadata"]["envoy.lb"]["tag"], "blue");
    }

    #[test]
    fn partial_body_is_flagged_and_not_parsed() {
        let req =
            request("POST", "/", &[("content-type", "application/json"), (PARTIAL_BODY_HEADER, "true")], "{\"a\":");
        let input = json(&build(&req, Err(&IdentityError::Missing)).unwrap());
        assert_eq!(input["truncated_body"], true);
        assert!(input.get("parsed_body").is_none());
    }

    #[test]
    fn form_and_multipart_bodies_are_parsed() {
        let form = request("POST", "/", &[("content-type", "application/x-www-form-urlencoded")], "a=1&a=2&b=x+y");
        let input = json(&build(&form, Err(&IdentityError::Missing)).unwrap());
        assert_eq!(input["parsed_body"], serde_json::json!({"a": ["1", "2"], "b": ["x y"]}));

        let body = "--XX\r\nContent-Disposition: form-data; name=\"flow\"\r\n\r\nnightly\r\n--XX\r\nContent-Disposition: form-data; name=\"f\"; filename=\"s.py\"\r\n\r\nprint(1)\r\n--XX--\r\n";
        let multi = request("POST", "/", &[("content-type", "multipart/form-data; boundary=XX")], body);
        let input = json(&build(&multi, Err(&IdentityError::Missing)).unwrap());
        assert_eq!(input["parsed_body"], serde_json::json!({"flow": ["nightly"]}));
    }

    #[test]
    fn invalid_json_body_gives_no_parsed_body_and_bad_utf8_path_is_an_error() {
        let req = request("POST", "/", &[("content-type", "application/json")], "{nope");
        let input = json(&build(&req, Err(&IdentityError::Missing)).unwrap());
        assert!(input.get("parsed_body").is_none());
        let bad = request("GET", "/a/%ff", &[], "");
        assert_eq!(build(&bad, Err(&IdentityError::Missing)).unwrap_err(), InputError::InvalidPath);
    }

    #[test]
    fn missing_http_attributes_is_an_error() {
        assert_eq!(
            build(&CheckRequest::default(), Err(&IdentityError::Missing)).unwrap_err(),
            InputError::NoHttpRequest
        );
    }
}
