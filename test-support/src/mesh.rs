//! Istio's half of who may call whom, over rendered manifests: mutual TLS (`PeerAuthentication`
//! STRICT: a caller without a sidecar has no identity and its connection is refused) and
//! `AuthorizationPolicy` (ALLOW and DENY rules on principals, namespaces and ports), for what
//! the NetworkPolicies ([`crate::netpol`]) let through. `CUSTOM` policies are authz's to decide
//! per request, so they open or close nothing here.
//!
//! The rules (security.istio.io/v1): a policy applies to the pods its `selector` matches in its
//! namespace (all of them without one; a policy in the root namespace `istio-system` applies
//! mesh-wide); a DENY that matches refuses; then, if any ALLOW applies, one of its rules must
//! match. A rule matches when one of its `from` sources and one of its `to` operations do (a
//! missing list matches everything). Principals and namespaces match exactly, by prefix
//! (`abc*`), by suffix (`*abc`) or `*` (any authenticated peer). An operation with paths or
//! methods matches some requests on its ports, so the port counts as reachable. Ports the
//! sidecar does not capture (the agent's 15020 and 15021, Envoy's 15090) bypass all of it.

use serde_json::Value;

use crate::netpol::{selects, Pod, Port};

/// Ports served outside the sidecar's inbound listener.
const UNCAPTURED: [u16; 3] = [15020, 15021, 15090];
const ROOT_NAMESPACE: &str = "istio-system";

/// The mesh's authentication mode and authorization policies.
#[derive(Debug, Default)]
pub struct MeshPolicies {
    strict: bool,
    policies: Vec<Value>,
}

impl MeshPolicies {
    /// The `PeerAuthentication`s and `AuthorizationPolicy`s among `objects`.
    pub fn from_manifests(objects: &[Value]) -> Self {
        let mut mesh = Self::default();
        for object in objects {
            match object["kind"].as_str() {
                Some("PeerAuthentication") => {
                    let mesh_wide =
                        object["metadata"]["namespace"] == ROOT_NAMESPACE && object["spec"].get("selector").is_none();
                    assert!(mesh_wide, "only a mesh-wide PeerAuthentication is modelled: {object}");
                    mesh.strict = object["spec"]["mtls"]["mode"] == "STRICT";
                }
                Some("AuthorizationPolicy") => mesh.policies.push(object.clone()),
                _ => {}
            }
        }
        mesh
    }

    /// Whether a connection from `from` reaches `to`'s application on `port`.
    pub fn admits(&self, from: &Pod, to: &Pod, port: &Port) -> bool {
        // Outside the mesh, or a port the sidecar does not capture: nothing of Istio applies.
        if to.principal.is_none() || UNCAPTURED.contains(&port.number) {
            return true;
        }
        let source = from.principal.as_deref();
        if self.strict && source.is_none() {
            return false;
        }
        let applying: Vec<&Value> = self
            .policies
            .iter()
            .filter(|p| {
                let namespace = p["metadata"]["namespace"].as_str().unwrap_or_default();
                namespace == to.namespace || namespace == ROOT_NAMESPACE
            })
            .filter(|p| p["spec"].get("selector").is_none_or(|s| selects(s, &to.labels)))
            .collect();
        let action = |p: &Value| p["spec"]["action"].as_str().unwrap_or("ALLOW").to_string();
        let matched =
            |p: &Value| p["spec"]["rules"].as_array().into_iter().flatten().any(|r| rule_matches(r, source, port));
        if applying.iter().any(|p| action(p) == "DENY" && matched(p)) {
            return false;
        }
        let allows: Vec<&&Value> = applying.iter().filter(|p| action(p) == "ALLOW").collect();
        allows.is_empty() || allows.iter().any(|p| matched(p))
    }
}

fn rule_matches(rule: &Value, principal: Option<&str>, port: &Port) -> bool {
    let sources_ok = match rule["from"].as_array() {
        None => true,
        Some(from) => from.iter().any(|f| source_matches(&f["source"], principal)),
    };
    let operations_ok = match rule["to"].as_array() {
        None => true,
        Some(to) => to.iter().any(|t| {
            let operation = &t["operation"];
            for key in operation.as_object().into_iter().flatten().map(|(k, _)| k.as_str()) {
                assert!(["ports", "paths", "methods", "hosts"].contains(&key), "operation.{key} is not modelled");
            }
            operation["ports"]
                .as_array()
                .is_none_or(|ports| ports.iter().any(|p| p.as_str() == Some(port.number.to_string().as_str())))
        }),
    };
    sources_ok && operations_ok
}

fn source_matches(source: &Value, principal: Option<&str>) -> bool {
    for key in source.as_object().into_iter().flatten().map(|(k, _)| k.as_str()) {
        assert!(["principals", "namespaces"].contains(&key), "source.{key} is not modelled");
    }
    let namespace = principal.and_then(|p| p.split("/ns/").nth(1)).and_then(|rest| rest.split('/').next());
    let matches_any = |list: &Value, value: Option<&str>| {
        list.as_array().is_none_or(|patterns| {
            patterns.iter().filter_map(Value::as_str).any(|pattern| value.is_some_and(|v| glob(pattern, v)))
        })
    };
    matches_any(&source["principals"], principal) && matches_any(&source["namespaces"], namespace)
}

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` (anything non-empty).
fn glob(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        !value.is_empty()
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else {
        pattern == value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, principal: Option<&str>) -> Pod {
        Pod {
            name: name.into(),
            namespace: "a".into(),
            labels: [("app".to_string(), name.to_string())].into(),
            ports: vec![],
            ip: None,
            principal: principal.map(str::to_string),
        }
    }

    fn mesh(policies: Vec<Value>) -> MeshPolicies {
        let mut objects = vec![
            json!({"kind": "PeerAuthentication", "metadata": {"name": "default", "namespace": "istio-system"}, "spec": {"mtls": {"mode": "STRICT"}}}),
        ];
        objects.extend(policies);
        MeshPolicies::from_manifests(&objects)
    }

    #[test]
    fn strict_mtls_refuses_callers_without_an_identity_but_not_on_uncaptured_ports() {
        let mesh = mesh(vec![]);
        let server = pod("server", Some("cluster.local/ns/a/sa/server"));
        assert!(!mesh.admits(&pod("plain", None), &server, &Port::tcp(8080)));
        assert!(mesh.admits(&pod("plain", None), &server, &Port::tcp(15020)));
        assert!(mesh.admits(&pod("meshed", Some("cluster.local/ns/b/sa/x")), &server, &Port::tcp(8080)));
    }

    #[test]
    fn allow_rules_match_principals_by_pattern_and_ports_and_deny_wins() {
        let mesh = mesh(vec![
            json!({"kind": "AuthorizationPolicy", "metadata": {"name": "allow", "namespace": "a"},
                   "spec": {"selector": {"matchLabels": {"app": "server"}}, "action": "ALLOW",
                            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/b*"]}}], "to": [{"operation": {"ports": ["8080"]}}]}]}}),
            json!({"kind": "AuthorizationPolicy", "metadata": {"name": "deny", "namespace": "a"},
                   "spec": {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["b-evil"]}}]}]}}),
        ]);
        let server = pod("server", Some("cluster.local/ns/a/sa/server"));
        assert!(mesh.admits(&pod("b", Some("cluster.local/ns/b/sa/client")), &server, &Port::tcp(8080)));
        assert!(
            !mesh.admits(&pod("b", Some("cluster.local/ns/b/sa/client")), &server, &Port::tcp(9090)),
            "another port"
        );
        assert!(
            !mesh.admits(&pod("c", Some("cluster.local/ns/c/sa/client")), &server, &Port::tcp(8080)),
            "another namespace"
        );
        assert!(
            !mesh.admits(&pod("evil", Some("cluster.local/ns/b-evil/sa/x")), &server, &Port::tcp(8080)),
            "DENY first"
        );
    }
}
