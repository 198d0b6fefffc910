//! Kubernetes NetworkPolicy semantics over rendered manifests: which pod may open a
//! connection to which pod, on which port. What a CNI enforces, computed from the objects
//! alone, so a test can state the reachability matrix a platform team gets and see it change
//! when a policy is loosened.
//!
//! The rules (networking.k8s.io/v1): a policy selects pods of its own namespace; a pod that
//! no policy selects for a direction (`policyTypes`, `Ingress` implied, `Egress` when the
//! policy has egress rules) is open in that direction; a selected pod admits only what one of
//! its policies' rules admits. A connection needs both the source's egress and the
//! destination's ingress. Peers: `podSelector` (this namespace), `namespaceSelector` (any pod
//! there), both (those pods there), or `ipBlock` (addresses; pods are matched by theirs only
//! when the model gives them one, as policies do not treat pod IPs specially). Ports: a number
//! or the destination container's port name, `endPort` ranges, TCP unless said otherwise.
//! Every namespace carries `kubernetes.io/metadata.name`, as the API server sets it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::Value;

/// A port a pod listens on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    /// The container port's name, if it has one.
    pub name: Option<String>,
    pub number: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

impl Port {
    pub fn tcp(number: u16) -> Self {
        Self { name: None, number, protocol: "TCP".into() }
    }
    pub fn udp(number: u16) -> Self {
        Self { name: None, number, protocol: "UDP".into() }
    }
}

/// A pod: one per workload (its Deployment's template), or a peer the test adds.
#[derive(Debug, Clone)]
pub struct Pod {
    /// What the matrix calls it (a workload's name).
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    /// Only for peers outside the pod network (the API server): what `ipBlock` matches.
    pub ip: Option<Ipv4Addr>,
    /// Its mesh identity (`cluster.local/ns/<ns>/sa/<account>`) when it has a sidecar (its
    /// namespace has `istio-injection: enabled`) or is a gateway; what Istio's
    /// AuthorizationPolicies match ([`crate::mesh`]).
    pub principal: Option<String>,
}

impl Pod {
    /// A peer with these labels and ports, no address and no mesh identity.
    pub fn new(name: &str, namespace: &str, labels: &[(&str, &str)], ports: Vec<Port>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ports,
            ip: None,
            principal: None,
        }
    }
}

/// Namespaces, pods and the NetworkPolicies between them.
#[derive(Debug, Default)]
pub struct Cluster {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods: Vec<Pod>,
    policies: Vec<Value>,
}

/// One allowed connection: `from -> to:port/protocol`.
pub type Edge = String;

impl Cluster {
    /// The namespaces, workload pods (Deployments, StatefulSets, DaemonSets) and policies of
    /// rendered manifests.
    pub fn from_manifests(objects: &[Value]) -> Self {
        let mut cluster = Self::default();
        for object in objects {
            let namespace = object["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
            match object["kind"].as_str() {
                Some("Namespace") => {
                    let name = object["metadata"]["name"].as_str().unwrap_or_default();
                    cluster.namespace(name, &labels_of(&object["metadata"]["labels"]));
                }
                Some("NetworkPolicy") => {
                    let mut policy = object.clone();
                    policy["metadata"]["namespace"] = Value::String(namespace);
                    cluster.policies.push(policy);
                }
                Some("Deployment" | "StatefulSet" | "DaemonSet") => {
                    let template = &object["spec"]["template"];
                    let ports = template["spec"]["containers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                        .map(|p| Port {
                            name: p["name"].as_str().map(str::to_string),
                            number: p["containerPort"].as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(0),
                            protocol: p["protocol"].as_str().unwrap_or("TCP").to_string(),
                        })
                        .collect();
                    let account = template["spec"]["serviceAccountName"].as_str().unwrap_or("default");
                    cluster.pods.push(Pod {
                        name: object["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                        principal: Some(format!("cluster.local/ns/{namespace}/sa/{account}")),
                        namespace,
                        labels: labels_of(&template["metadata"]["labels"]),
                        ports,
                        ip: None,
                    });
                }
                _ => {}
            }
        }
        // Only pods with a sidecar have a mesh identity.
        for pod in &mut cluster.pods {
            let injected = cluster.namespaces.get(&pod.namespace).and_then(|l| l.get("istio-injection"));
            if injected.map(String::as_str) != Some("enabled") {
                pod.principal = None;
            }
        }
        cluster
    }

    /// Declares (or relabels) a namespace.
    pub fn namespace(&mut self, name: &str, labels: &BTreeMap<String, String>) {
        let mut labels = labels.clone();
        labels.insert("kubernetes.io/metadata.name".into(), name.into());
        self.namespaces.insert(name.into(), labels);
    }

    /// Adds a peer pod (its namespace is declared with no labels if it is new).
    pub fn pod(&mut self, pod: Pod) {
        if !self.namespaces.contains_key(&pod.namespace) {
            self.namespace(&pod.namespace.clone(), &BTreeMap::new());
        }
        self.pods.push(pod);
    }

    /// A pod by name.
    pub fn find(&mut self, name: &str) -> Option<&mut Pod> {
        self.pods.iter_mut().find(|p| p.name == name)
    }

    /// Every connection the policies allow, between any two pods (a pod to itself left out),
    /// restricted to pairs where at least one end is in `namespaces`.
    pub fn matrix(&self, namespaces: &[&str]) -> BTreeSet<Edge> {
        self.matrix_where(namespaces, |from, to, port| self.allows(from, to, port))
    }

    /// The same for any rule of who may connect (`allowed`): another layer's, or several
    /// together.
    pub fn matrix_where(&self, namespaces: &[&str], allowed: impl Fn(&Pod, &Pod, &Port) -> bool) -> BTreeSet<Edge> {
        let mut edges = BTreeSet::new();
        for from in &self.pods {
            for to in &self.pods {
                if from.name == to.name {
                    continue;
                }
                if !namespaces.contains(&from.namespace.as_str()) && !namespaces.contains(&to.namespace.as_str()) {
                    continue;
                }
                for port in &to.ports {
                    if allowed(from, to, port) {
                        edges.insert(format!("{} -> {}:{}/{}", from.name, to.name, port.number, port.protocol));
                    }
                }
            }
        }
        edges
    }

    /// Whether `from` may connect to `to` on `port`.
    pub fn allows(&self, from: &Pod, to: &Pod, port: &Port) -> bool {
        self.direction_allows("Egress", from, to, to, port) && self.direction_allows("Ingress", to, from, to, port)
    }

    /// `subject`'s policies for `direction`, about a connection with `peer`, to `destination`'s
    /// `port`.
    fn direction_allows(&self, direction: &str, subject: &Pod, peer: &Pod, destination: &Pod, port: &Port) -> bool {
        let applying: Vec<&Value> = self
            .policies
            .iter()
            .filter(|p| p["metadata"]["namespace"].as_str() == Some(subject.namespace.as_str()))
            .filter(|p| selects(&p["spec"]["podSelector"], &subject.labels))
            .filter(|p| policy_types(p).contains(direction))
            .collect();
        if applying.is_empty() {
            return true;
        }
        let (rules_key, peers_key) = if direction == "Ingress" { ("ingress", "from") } else { ("egress", "to") };
        applying.iter().any(|policy| {
            let namespace = policy["metadata"]["namespace"].as_str().unwrap_or_default();
            policy["spec"][rules_key].as_array().into_iter().flatten().any(|rule| {
                let peers_ok = match rule[peers_key].as_array() {
                    None => true,
                    Some(peers) if peers.is_empty() => true,
                    Some(peers) => peers.iter().any(|p| self.peer_matches(p, namespace, peer)),
                };
                let ports_ok = match rule["ports"].as_array() {
                    None => true,
                    Some(ports) if ports.is_empty() => true,
                    Some(ports) => ports.iter().any(|p| port_matches(p, destination, port)),
                };
                peers_ok && ports_ok
            })
        })
    }

    fn peer_matches(&self, peer: &Value, policy_namespace: &str, pod: &Pod) -> bool {
        if let Some(block) = peer.get("ipBlock") {
            let Some(ip) = pod.ip else { return false };
            let inside = |cidr: &Value| {
                cidr.as_str().and_then(|c| c.parse::<ipnet::Ipv4Net>().ok()).is_some_and(|n| n.contains(&ip))
            };
            return inside(&block["cidr"]) && !block["except"].as_array().into_iter().flatten().any(inside);
        }
        let pod_selector = peer.get("podSelector");
        let namespace_selector = peer.get("namespaceSelector");
        let namespace_ok = match namespace_selector {
            Some(selector) => self.namespaces.get(&pod.namespace).is_some_and(|labels| selects(selector, labels)),
            None => pod.namespace == policy_namespace,
        };
        let pod_ok = pod_selector.is_none_or(|selector| selects(selector, &pod.labels));
        pod.ip.is_none() && namespace_ok && pod_ok
    }
}

fn labels_of(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default()
}

fn policy_types(policy: &Value) -> BTreeSet<&str> {
    match policy["spec"]["policyTypes"].as_array() {
        Some(types) => types.iter().filter_map(Value::as_str).collect(),
        None => {
            let mut types = BTreeSet::from(["Ingress"]);
            if policy["spec"].get("egress").is_some() {
                types.insert("Egress");
            }
            types
        }
    }
}

/// A label selector (`matchLabels` and `matchExpressions`; empty selects everything).
pub fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let expressions_ok = selector["matchExpressions"].as_array().into_iter().flatten().all(|e| {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        match e["operator"].as_str() {
            Some("In") => labels.get(key).is_some_and(|v| values.contains(&v.as_str())),
            Some("NotIn") => labels.get(key).is_none_or(|v| !values.contains(&v.as_str())),
            Some("Exists") => labels.contains_key(key),
            Some("DoesNotExist") => !labels.contains_key(key),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

fn port_matches(rule: &Value, destination: &Pod, port: &Port) -> bool {
    if rule["protocol"].as_str().unwrap_or("TCP") != port.protocol {
        return false;
    }
    match &rule["port"] {
        Value::Null => true,
        Value::Number(n) => {
            let first = n.as_u64().unwrap_or(0);
            let last = rule["endPort"].as_u64().unwrap_or(first);
            (first..=last).contains(&u64::from(port.number))
        }
        // A name is the destination container's port of that name.
        Value::String(name) => destination.ports.iter().any(|p| {
            p.name.as_deref() == Some(name.as_str()) && p.number == port.number && p.protocol == port.protocol
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, namespace: &str, labels: &[(&str, &str)], ports: Vec<Port>) -> Pod {
        Pod::new(name, namespace, labels, ports)
    }

    #[test]
    fn an_unselected_pod_is_open_and_a_selected_one_admits_only_its_rules() {
        let mut cluster = Cluster::from_manifests(&[json!({
            "kind": "NetworkPolicy", "metadata": {"name": "db", "namespace": "a"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                  "ports": [{"port": "sql"}]}]}
        })]);
        cluster.pod(pod(
            "db",
            "a",
            &[("app", "db")],
            vec![Port { name: Some("sql".into()), ..Port::tcp(5432) }, Port::tcp(8080)],
        ));
        cluster.pod(pod("web", "a", &[("app", "web")], vec![Port::tcp(80)]));
        cluster.pod(pod("other", "b", &[("app", "web")], vec![]));
        let edges = cluster.matrix(&["a"]);
        assert!(edges.contains("web -> db:5432/TCP"));
        assert!(!edges.contains("web -> db:8080/TCP"), "the port is named in the rule");
        assert!(!edges.contains("other -> db:5432/TCP"), "a podSelector alone is this namespace only");
        assert!(
            edges.contains("db -> web:80/TCP") && edges.contains("other -> web:80/TCP"),
            "web is selected by nothing"
        );
    }

    #[test]
    fn namespace_and_pod_selectors_together_mean_both_and_egress_needs_its_own_allow() {
        let mut cluster = Cluster::from_manifests(&[
            json!({"kind": "NetworkPolicy", "metadata": {"name": "in", "namespace": "a"},
                   "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"mesh": "yes"}},
                                                   "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["x"]}]}}]}]}}),
            json!({"kind": "NetworkPolicy", "metadata": {"name": "out", "namespace": "b"},
                   "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}),
        ]);
        cluster.namespace("b", &BTreeMap::from([("mesh".to_string(), "yes".to_string())]));
        cluster.namespace("c", &BTreeMap::from([("mesh".to_string(), "yes".to_string())]));
        cluster.pod(pod("server", "a", &[], vec![Port::tcp(1)]));
        cluster.pod(pod("x-in-b", "b", &[("app", "x")], vec![]));
        cluster.pod(pod("x-in-c", "c", &[("app", "x")], vec![]));
        cluster.pod(pod("y-in-c", "c", &[("app", "y")], vec![]));
        let edges = cluster.matrix(&["a"]);
        assert_eq!(edges, BTreeSet::from(["x-in-c -> server:1/TCP".to_string()]), "b denies its own egress");
    }

    #[test]
    fn ip_blocks_match_addresses_with_their_exceptions() {
        let mut cluster = Cluster::from_manifests(&[json!({
            "kind": "NetworkPolicy", "metadata": {"name": "out", "namespace": "a"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                     "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                                 "ports": [{"port": 6000, "endPort": 6443}]}]}
        })]);
        cluster.pod(pod("client", "a", &[], vec![]));
        for (name, ip) in [("api", [10, 0, 0, 1]), ("excepted", [10, 1, 0, 1])] {
            cluster.pod(Pod {
                ip: Some(Ipv4Addr::from(ip)),
                ..pod(name, "outside", &[], vec![Port::tcp(6443), Port::tcp(443)])
            });
        }
        let edges = cluster.matrix(&["a"]);
        assert_eq!(edges, BTreeSet::from(["client -> api:6443/TCP".to_string()]));
    }
}
