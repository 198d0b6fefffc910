//! The input document of an Envoy `CheckRequest`: authz's adapter onto the policy library's
//! [`InputDocument`], which owns the OPA-Envoy shape. Here is only what Envoy adds: the peers,
//! the request time, context extensions, metadata and the TLS session, in protobuf JSON form.

use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier, Address, Metadata};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use qiria_identity::{bearer_token, IdentityError};
use qiria_policy::input::{string_map, HttpRequest, InputDocument, InputError, ObjectBuilder};
use qiria_policy::Value;

/// Builds `input` for one request; `identity` is the outcome of verifying its bearer token.
pub fn build(request: &CheckRequest, identity: Result<(), &IdentityError>) -> Result<Value, InputError> {
    let attributes = request.attributes.as_ref();
    let http =
        attributes.and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref()).ok_or(InputError::NoHttpRequest)?;
    let mut input = InputDocument::new(&HttpRequest {
        id: &http.id,
        method: &http.method,
        path: &http.path,
        host: &http.host,
        scheme: &http.scheme,
        query: &http.query,
        fragment: &http.fragment,
        protocol: &http.protocol,
        headers: &http.headers,
        body: &http.body,
        raw_body: &http.raw_body,
        size: http.size,
    })?;
    if let Some(attributes) = attributes {
        envoy_attributes(&mut input, attributes);
        if let Some(source) = &attributes.source {
            input.set_source_principal(&source.principal);
        }
    }
    match identity {
        Ok(()) => {
            if let Some(token) = http.headers.get("authorization").and_then(|h| bearer_token(h)) {
                input.set_identity_from_token(token);
            }
        }
        Err(error) => input.set_identity_error(error.code()),
    }
    Ok(input.into_value())
}

/// What Envoy's `AttributeContext` holds besides the HTTP request, under its protobuf JSON names.
fn envoy_attributes(input: &mut InputDocument, a: &AttributeContext) {
    if let Some(source) = &a.source {
        input.set_attribute("source", peer(source));
    }
    if let Some(destination) = &a.destination {
        input.set_attribute("destination", peer(destination));
    }
    if let Some(time) = a.request.as_ref().and_then(|r| r.time.as_ref()) {
        input.set_request_time(prost_types::Timestamp { seconds: time.seconds, nanos: time.nanos }.to_string());
    }
    let extensions = string_map(&a.context_extensions);
    if extensions.as_object().is_ok_and(|o| !o.is_empty()) {
        input.set_attribute("contextExtensions", extensions);
    }
    if let Some(m) = &a.metadata_context {
        input.set_attribute("metadataContext", metadata(m));
    }
    if let Some(m) = &a.route_metadata_context {
        input.set_attribute("routeMetadataContext", metadata(m));
    }
    if let Some(tls) = &a.tls_session {
        if !tls.sni.is_empty() {
            input.set_attribute("tlsSession", ObjectBuilder::default().with("sni", tls.sni.as_str()).build());
        }
    }
}

fn peer(p: &Peer) -> Value {
    let mut o = ObjectBuilder::default();
    if let Some(addr) = &p.address {
        o.put("address", address(addr));
    }
    o.put_str("service", &p.service);
    o.put_nonempty("labels", string_map(&p.labels));
    o.put_str("principal", &p.principal);
    o.put_str("certificate", &p.certificate);
    o.build()
}

fn address(a: &Address) -> Value {
    let mut o = ObjectBuilder::default();
    match &a.address {
        Some(address::Address::SocketAddress(s)) => {
            let mut sa = ObjectBuilder::default();
            sa.put_str("address", &s.address);
            match &s.port_specifier {
                Some(PortSpecifier::PortValue(port)) => sa.put("portValue", u64::from(*port)),
                Some(PortSpecifier::NamedPort(name)) => sa.put_str("namedPort", name),
                None => {}
            }
            o.put("socketAddress", sa.build());
        }
        Some(address::Address::Pipe(p)) => {
            o.put("pipe", ObjectBuilder::default().with("path", p.path.as_str()).build())
        }
        _ => {}
    }
    o.build()
}

fn metadata(m: &Metadata) -> Value {
    let mut filters = ObjectBuilder::default();
    for (name, s) in &m.filter_metadata {
        filters.put(name, pb_struct(s));
    }
    let mut o = ObjectBuilder::default();
    o.put_nonempty("filterMetadata", filters.build());
    o.build()
}

fn pb_struct(s: &Struct) -> Value {
    let mut o = ObjectBuilder::default();
    for (k, v) in &s.fields {
        o.put(k, pb_value(v));
    }
    o.build()
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

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};

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
    fn missing_http_attributes_is_an_error() {
        assert_eq!(
            build(&CheckRequest::default(), Err(&IdentityError::Missing)).unwrap_err(),
            InputError::NoHttpRequest
        );
    }
}
