//! The input document a policy sees: OPA-Envoy's `input`, field for field, so that a policy
//! written for OPA-Envoy runs unchanged, whichever service builds it.
//!
//! `input.attributes` is the v3 `AttributeContext` in its protobuf JSON mapping (lowerCamelCase
//! keys, empty fields omitted, int64 as strings), plus `parsed_path`, `parsed_query`,
//! `parsed_body`, `truncated_body` and `version`. Qiria adds `source_principal` (the mTLS
//! peer's SPIFFE id), `identity` (the verified token's claims) or `identity_error` (why there
//! is none). The document is built straight into `regorus::Value`, without a JSON round trip.
//!
//! Adapters fill it from what their service receives: authz from Envoy's `CheckRequest`, and
//! [`from_http`] here from a plain HTTP request, for services that authorize in-process.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use base64::Engine as _;
use futures_util::FutureExt;
use regorus::Value;

/// Header Envoy sets when `with_request_body` forwarded only part of the body.
pub const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// A request whose input document cannot be built; it is denied with 400.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputError {
    /// The request carries no HTTP attributes (`CheckRequest.attributes.request.http`).
    #[error("request has no HTTP attributes")]
    NoHttpRequest,
    /// A path segment decodes to bytes that are not UTF-8.
    #[error("path segment is not valid UTF-8 once percent-decoded")]
    InvalidPath,
}

/// The HTTP request, as `input.attributes.request.http` describes it.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// The request id (Envoy's `x-request-id`).
    pub id: &'a str,
    /// Method.
    pub method: &'a str,
    /// Path with its query string.
    pub path: &'a str,
    /// Host (`:authority`).
    pub host: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Envoy's separate query field (normally empty: the query is in `path`).
    pub query: &'a str,
    /// Envoy's fragment field (normally empty).
    pub fragment: &'a str,
    /// `HTTP/1.1`, `HTTP/2`…
    pub protocol: &'a str,
    /// Header names in lower case; repeated headers joined with `,` (as Envoy sends them).
    pub headers: &'a HashMap<String, String>,
    /// The body as text, when it was sent as text.
    pub body: &'a str,
    /// The body as bytes, when it was sent as bytes.
    pub raw_body: &'a [u8],
    /// The body's size (`content-length`), 0 when unknown.
    pub size: i64,
}

/// `input`, being built.
pub struct InputDocument {
    root: ObjectBuilder,
    attributes: ObjectBuilder,
    request: ObjectBuilder,
}

impl InputDocument {
    /// The document for `http`: `attributes.request.http`, the parsed path, query and body.
    pub fn new(http: &HttpRequest<'_>) -> Result<Self, InputError> {
        let (path, query) = http.path.split_once('?').unwrap_or((http.path, ""));
        let truncated = http.headers.get(PARTIAL_BODY_HEADER).is_some_and(|v| v == "true");
        let mut root = ObjectBuilder::default();
        root.put("parsed_path", parsed_path(path)?);
        root.put("parsed_query", parsed_query(query));
        // Always present, as in OPA-Envoy: `null` when there is nothing to parse, the type is
        // not one we parse, the body was cut, or it does not parse (where OPA-Envoy fails the
        // whole request, the policy decides on `null`).
        let parsed = if truncated { None } else { body_text(http).and_then(|b| parsed_body(http.headers, &b)) };
        root.put("parsed_body", parsed.unwrap_or(Value::Null));
        root.put("truncated_body", Value::Bool(truncated));
        root.put("version", ObjectBuilder::default().with("encoding", "protojson").with("ext_authz", "v3").build());
        let mut request = ObjectBuilder::default();
        request.put("http", http_request(http));
        Ok(Self { root, attributes: ObjectBuilder::default(), request })
    }

    /// `attributes.request.time`, RFC 3339.
    pub fn set_request_time(&mut self, time: String) {
        self.request.put("time", time);
    }

    /// `attributes.<key>` (`source`, `destination`, `contextExtensions`, `metadataContext`…).
    pub fn set_attribute(&mut self, key: &str, value: Value) {
        self.attributes.put(key, value);
    }

    /// `source_principal`: the mTLS peer's identity (a SPIFFE id in Istio), if it has one.
    pub fn set_source_principal(&mut self, principal: &str) {
        if !principal.is_empty() {
            self.root.put("source_principal", principal);
        }
    }

    /// `identity`: the claims of `token`, which must be the request's own bearer token and
    /// must have verified. The verified-token cache keeps identities small by not holding
    /// claims, so they are read again from the token itself; one that cannot be read (it
    /// verified, so it can) leaves the request without `identity`.
    pub fn set_identity_from_token(&mut self, token: &str) {
        if let Some(claims) = verified_claims(token) {
            self.root.put("identity", claims);
        }
    }

    /// `identity_error`: why the request has no verified identity.
    pub fn set_identity_error(&mut self, code: &str) {
        self.root.put("identity_error", code);
    }

    /// The finished document.
    pub fn into_value(self) -> Value {
        let Self { mut root, mut attributes, request } = self;
        attributes.put("request", request.build());
        root.put("attributes", attributes.build());
        root.build()
    }
}

/// The input document of a plain HTTP request received by the service itself (no Envoy in
/// between): its peer address is `attributes.source`.
pub fn from_http(
    parts: &http::request::Parts,
    body: &[u8],
    peer: SocketAddr,
    request_id: &str,
) -> Result<InputDocument, InputError> {
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers.entry(name.as_str().to_string()).and_modify(|v| *v = format!("{v},{value}")).or_insert(value.into());
    }
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let protocol = match parts.version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "",
    };
    let host = parts.uri.authority().map(|a| a.as_str()).or_else(|| headers.get("host").map(String::as_str));
    let text = std::str::from_utf8(body).unwrap_or_default();
    let request = HttpRequest {
        id: request_id,
        method: parts.method.as_str(),
        path,
        host: host.unwrap_or_default(),
        scheme: parts.uri.scheme_str().unwrap_or("http"),
        query: "",
        fragment: "",
        protocol,
        headers: &headers,
        body: text,
        raw_body: if text.is_empty() { body } else { &[] },
        size: i64::try_from(body.len()).unwrap_or(i64::MAX),
    };
    let mut document = InputDocument::new(&request)?;
    document.set_attribute("source", socket_peer(&peer.ip().to_string(), u32::from(peer.port())));
    Ok(document)
}

/// `{"address": {"socketAddress": {"address": ip, "portValue": port}}}`, a peer's shape.
pub fn socket_peer(address: &str, port: u32) -> Value {
    let socket = ObjectBuilder::default().with("address", address).with("portValue", u64::from(port)).build();
    ObjectBuilder::default().with("address", ObjectBuilder::default().with("socketAddress", socket).build()).build()
}

/// The claims of a verified compact JWS, as a Rego value.
fn verified_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    Value::from_json_str(std::str::from_utf8(&json).ok()?).ok()
}

/// The request body as text: `body`, or `raw_body` when it is UTF-8 (Envoy's `pack_as_bytes`).
fn body_text<'a>(http: &HttpRequest<'a>) -> Option<std::borrow::Cow<'a, str>> {
    if !http.body.is_empty() {
        return Some(std::borrow::Cow::Borrowed(http.body));
    }
    std::str::from_utf8(http.raw_body).ok().filter(|b| !b.is_empty()).map(std::borrow::Cow::Borrowed)
}

fn http_request(h: &HttpRequest<'_>) -> Value {
    let mut o = ObjectBuilder::default();
    o.put_str("id", h.id);
    o.put_str("method", h.method);
    o.put_nonempty("headers", string_map(h.headers));
    o.put_str("path", h.path);
    o.put_str("host", h.host);
    o.put_str("scheme", h.scheme);
    o.put_str("query", h.query);
    o.put_str("fragment", h.fragment);
    if h.size != 0 {
        o.put("size", h.size.to_string());
    }
    o.put_str("protocol", h.protocol);
    o.put_str("body", h.body);
    if !h.raw_body.is_empty() {
        o.put("rawBody", base64::engine::general_purpose::STANDARD.encode(h.raw_body));
    }
    o.build()
}

/// `{name: value}` of a string map.
pub fn string_map(m: &HashMap<String, String>) -> Value {
    let mut o = ObjectBuilder::default();
    for (k, v) in m {
        o.put(k, v.as_str());
    }
    o.build()
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

/// `name → [values]` of a query string or urlencoded form, in order of appearance.
fn parsed_query(query: &str) -> Value {
    multi_map(form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())))
}

fn multi_map(pairs: impl Iterator<Item = (String, String)>) -> Value {
    let mut map: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (k, v) in pairs {
        map.entry(k).or_default().push(Value::from(v));
    }
    let mut o = ObjectBuilder::default();
    for (k, values) in map {
        o.put(&k, Value::from(values));
    }
    o.build()
}

/// JSON, urlencoded and multipart bodies; anything else (or anything unparsable) gives none.
fn parsed_body(headers: &HashMap<String, String>, body: &str) -> Option<Value> {
    let content_type = headers.get("content-type")?;
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime == "application/json" || mime.ends_with("+json") {
        Value::from_json_str(body).ok()
    } else if mime == "application/x-www-form-urlencoded" {
        Some(parsed_query(body))
    } else if mime == "multipart/form-data" {
        multipart_fields(content_type, body)
    } else {
        None
    }
}

/// A multipart form as OPA-Envoy presents it: `name → [values]`, file parts with their
/// content as text, parts sent as `application/json` parsed.
fn multipart_fields(content_type: &str, body: &str) -> Option<Value> {
    let boundary = multer::parse_boundary(content_type).ok()?;
    let data = bytes::Bytes::copy_from_slice(body.as_bytes());
    let stream = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(data) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut map: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    // The whole body is already in memory, so every future here is ready at once.
    while let Some(field) = multipart.next_field().now_or_never()?.ok()? {
        let name = field.name().map(str::to_string);
        let json = field.content_type().is_some_and(|m| m.essence_str() == "application/json");
        let text = field.text().now_or_never()?.ok()?;
        let value = if json { Value::from_json_str(&text).ok()? } else { Value::from(text) };
        if let Some(name) = name {
            map.entry(name).or_default().push(value);
        }
    }
    let mut o = ObjectBuilder::default();
    for (k, values) in map {
        o.put(&k, Value::from(values));
    }
    Some(o.build())
}

/// A small builder for Rego objects with string keys.
#[derive(Default)]
pub struct ObjectBuilder(BTreeMap<Value, Value>);

impl ObjectBuilder {
    /// Sets `key`.
    pub fn put(&mut self, key: &str, value: impl Into<Value>) {
        self.0.insert(Value::from(key), value.into());
    }

    /// Sets `key` unless `value` is empty (protobuf JSON omits empty fields).
    pub fn put_str(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.put(key, value);
        }
    }

    /// Sets `key` unless `value` is an empty object.
    pub fn put_nonempty(&mut self, key: &str, value: Value) {
        if value.as_object().is_ok_and(|o| !o.is_empty()) {
            self.put(key, value);
        }
    }

    /// Sets `key`, builder style.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.put(key, value);
        self
    }

    /// The object.
    pub fn build(self) -> Value {
        Value::from(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(v: &Value) -> serde_json::Value {
        serde_json::from_str(&v.to_json_str().unwrap()).unwrap()
    }

    fn document(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> serde_json::Value {
        let headers: HashMap<String, String> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let request = HttpRequest {
            id: "",
            method,
            path,
            host: "",
            scheme: "",
            query: "",
            fragment: "",
            protocol: "",
            headers: &headers,
            body,
            raw_body: &[],
            size: body.len() as i64,
        };
        let mut doc = InputDocument::new(&request).unwrap();
        doc.set_identity_error("missing");
        json(&doc.into_value())
    }

    #[test]
    fn follows_opa_envoy_field_names_and_protojson_types() {
        let input =
            document("POST", "/v1/jobs/a%20b?x=1&x=2&y=", &[("content-type", "application/json")], r#"{"k":[1]}"#);
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
    fn partial_body_is_flagged_and_not_parsed() {
        let input =
            document("POST", "/", &[("content-type", "application/json"), (PARTIAL_BODY_HEADER, "true")], "{\"a\":");
        assert_eq!(input["truncated_body"], true);
        assert_eq!(input["parsed_body"], serde_json::Value::Null, "present, and null");
    }

    #[test]
    fn form_and_multipart_bodies_are_parsed() {
        let input = document("POST", "/", &[("content-type", "application/x-www-form-urlencoded")], "a=1&a=2&b=x+y");
        assert_eq!(input["parsed_body"], serde_json::json!({"a": ["1", "2"], "b": ["x y"]}));
        let body = "--XX\r\nContent-Disposition: form-data; name=\"flow\"\r\n\r\nnightly\r\n--XX\r\nContent-Disposition: form-data; name=\"f\"; filename=\"s.py\"\r\n\r\nprint(1)\r\n--XX\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n{\"n\": 2}\r\n--XX--\r\n";
        let input = document("POST", "/", &[("content-type", "multipart/form-data; boundary=XX")], body);
        assert_eq!(
            input["parsed_body"],
            serde_json::json!({"flow": ["nightly"], "f": ["print(1)"], "meta": [{"n": 2}]}),
            "file parts with their content, JSON parts parsed"
        );
    }

    #[test]
    fn invalid_json_body_gives_no_parsed_body_and_bad_utf8_path_is_an_error() {
        let input = document("POST", "/", &[("content-type", "application/json")], "{nope");
        assert_eq!(input["parsed_body"], serde_json::Value::Null);
        let input = document("GET", "/", &[], "");
        assert_eq!(input["parsed_body"], serde_json::Value::Null, "no body: null, not absent");
        let headers = HashMap::new();
        let bad = HttpRequest {
            id: "",
            method: "GET",
            path: "/a/%ff",
            host: "",
            scheme: "",
            query: "",
            fragment: "",
            protocol: "",
            headers: &headers,
            body: "",
            raw_body: &[],
            size: 0,
        };
        assert_eq!(InputDocument::new(&bad).err(), Some(InputError::InvalidPath));
    }

    #[test]
    fn a_plain_http_request_has_the_same_shape_with_its_peer_as_source() {
        let request = http::Request::builder()
            .method("PUT")
            .uri("/v1/admin/users/bob/roles?dry=1")
            .header("content-type", "application/json")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let peer: SocketAddr = "10.0.0.7:4242".parse().unwrap();
        let doc = from_http(&parts, br#"{"roles":["User"]}"#, peer, "rid-1").unwrap();
        let input = json(&doc.into_value());
        let http = &input["attributes"]["request"]["http"];
        assert_eq!(http["method"], "PUT");
        assert_eq!(http["path"], "/v1/admin/users/bob/roles?dry=1");
        assert_eq!(http["headers"]["x-a"], "1,2");
        assert_eq!(http["id"], "rid-1");
        assert_eq!(input["parsed_path"], serde_json::json!(["v1", "admin", "users", "bob", "roles"]));
        assert_eq!(input["parsed_query"], serde_json::json!({"dry": ["1"]}));
        assert_eq!(input["parsed_body"], serde_json::json!({"roles": ["User"]}));
        assert_eq!(input["attributes"]["source"]["address"]["socketAddress"]["address"], "10.0.0.7");
        assert_eq!(input["attributes"]["source"]["address"]["socketAddress"]["portValue"], 4242);
    }
}
