//! `istio/` as platform teams apply it: each overlay rendered by the real `kubectl kustomize`,
//! every object checked offline by the Kubernetes 1.32 schemas and the Istio CRDs' models,
//! `trivy config` clean at high severity with nothing suppressed, every ConfigMap a config its
//! binary accepts, and the NetworkPolicy reachability matrix between the workloads and their
//! peers exactly the intended one — which a loosened copy of one policy breaks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use qiria_test_support::manifests::{self, istio_validate, kubernetes_validate, render, trivy_config};
use qiria_test_support::mesh::MeshPolicies;
use qiria_test_support::netpol::{Cluster, Pod, Port};
use qiria_test_support::{binary, workspace_root};
use serde_json::Value;

const OVERLAYS: [&str; 2] = ["dev", "prod"];
const WORKLOADS: [&str; 4] = ["authz", "issuer", "worker-gateway", "scripting-worker"];

fn istio() -> PathBuf {
    workspace_root().join("istio")
}

fn rendered(overlay: &str) -> Vec<Value> {
    render(&istio().join("overlays").join(overlay))
}

fn of_kind<'a>(objects: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objects.iter().filter(move |o| o["kind"] == kind)
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn mesh_objects() -> Vec<Value> {
    ["istio-operator.yaml", "peer-authentication.yaml"]
        .iter()
        .flat_map(|f| manifests::parse_yaml(&std::fs::read_to_string(istio().join("mesh").join(f)).expect("mesh file")))
        .collect()
}

#[test]
fn every_overlay_renders_and_every_object_passes_the_kubernetes_schemas() {
    for overlay in OVERLAYS {
        let objects = rendered(overlay);
        let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        for kind in [
            "Namespace",
            "Deployment",
            "Service",
            "ServiceAccount",
            "ConfigMap",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "AuthorizationPolicy",
            "RuntimeClass",
            "ValidatingAdmissionPolicy",
        ] {
            assert!(kinds.contains(kind), "{overlay}: no {kind} among {kinds:?}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let files = manifests::write_each(dir.path(), &objects);
        let verdict = kubernetes_validate(&files);
        assert!(verdict.success, "{overlay}: kubernetes-validate refused an object:\n{}", verdict.output);
        // A kind without a schema is only a warning: every object but the Istio ones must
        // have been checked against one (those are checked below, by Istio's own schemas).
        for (file, object) in files.iter().zip(&objects) {
            let istio_kind = object["apiVersion"].as_str().is_some_and(|v| v.contains(".istio.io/"));
            assert!(
                istio_kind || manifests::passed(&verdict, file),
                "{overlay}: {} was not validated:\n{}",
                file.display(),
                verdict.output
            );
        }
    }
    // The validator is the real one: an object it must refuse is refused.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bad = named(&rendered("prod"), "Deployment", "authz").clone();
    bad["spec"]["replicas"] = Value::String("two".into());
    bad["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = Value::Bool(true);
    let verdict = kubernetes_validate(&manifests::write_each(dir.path(), &[bad]));
    assert!(!verdict.success, "a Deployment with a string replica count passed:\n{}", verdict.output);
}

#[test]
fn every_istio_object_passes_the_istio_schemas_and_a_wrong_one_does_not() {
    for overlay in OVERLAYS {
        let mut objects = rendered(overlay);
        objects.extend(mesh_objects());
        let expected =
            objects.iter().filter(|o| o["apiVersion"].as_str().is_some_and(|v| v.contains(".istio.io/"))).count();
        let verdict = istio_validate(&objects);
        assert!(verdict.success, "{overlay}: an Istio object was refused:\n{}", verdict.output);
        assert_eq!(verdict.output.lines().filter(|l| l.starts_with("ok ")).count(), expected, "{}", verdict.output);
    }
    let mut strictest = named(&mesh_objects(), "PeerAuthentication", "default").clone();
    strictest["spec"]["mtls"]["mode"] = Value::String("STRICTEST".into());
    let mut paths = named(&rendered("dev"), "AuthorizationPolicy", "issuer-ext-authz").clone();
    paths["spec"]["rules"][0]["to"][0]["operation"]["paths"] = Value::from(42);
    let verdict = istio_validate(&[strictest, paths]);
    assert!(!verdict.success);
    assert_eq!(verdict.output.lines().filter(|l| l.starts_with("invalid ")).count(), 2, "{}", verdict.output);
}

#[test]
fn trivy_finds_no_high_severity_misconfiguration_with_nothing_suppressed() {
    // No ignore file and no inline suppression anywhere under istio/ or the policy bundle.
    for dir in [istio(), workspace_root().join("policies")] {
        let grep = Command::new("grep")
            .args(["-rIl", "--exclude-dir=node_modules", "-e", "trivy:ignore", "-e", "trivyignore"])
            .arg(&dir)
            .output()
            .expect("grep");
        assert!(grep.stdout.is_empty(), "a suppression: {}", String::from_utf8_lossy(&grep.stdout));
    }
    assert!(!workspace_root().join(".trivyignore").exists() && !workspace_root().join(".trivyignore.yaml").exists());
    let dir = tempfile::tempdir().expect("tempdir");
    for overlay in OVERLAYS {
        let text: Vec<String> = rendered(overlay).iter().map(|o| serde_yaml::to_string(o).expect("yaml")).collect();
        std::fs::write(dir.path().join(format!("{overlay}.yaml")), text.join("---\n")).expect("write");
    }
    let verdict = trivy_config(dir.path());
    assert!(verdict.success, "trivy config failed:\n{}", verdict.output);
    let report: Value = serde_json::from_str(&verdict.output).unwrap_or_else(|e| panic!("{e}: {}", verdict.output));
    let results = report["Results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), OVERLAYS.len(), "trivy did not scan both overlays: {report}");
    let findings: Vec<String> = results
        .iter()
        .flat_map(|r| r["Misconfigurations"].as_array().cloned().unwrap_or_default())
        .map(|m| format!("{} {} {}: {}", m["Severity"], m["ID"], m["Title"], m["CauseMetadata"]["Resource"]))
        .collect();
    assert!(findings.is_empty(), "high-severity misconfigurations:\n{}", findings.join("\n"));
    // The scan is real: a privileged container in the same place is found.
    let mut privileged = named(&rendered("dev"), "Deployment", "authz").clone();
    privileged["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = Value::Bool(true);
    let bad = tempfile::tempdir().expect("tempdir");
    std::fs::write(bad.path().join("bad.yaml"), serde_yaml::to_string(&privileged).expect("yaml")).expect("write");
    let verdict = trivy_config(bad.path());
    assert!(verdict.output.contains("KSV-0017") || verdict.output.contains("KSV017"), "{}", verdict.output);
}

/// The container of a workload's Deployment.
fn container<'a>(objects: &'a [Value], workload: &str) -> &'a Value {
    &named(objects, "Deployment", workload)["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn every_config_map_is_a_configuration_its_binary_accepts() {
    for overlay in OVERLAYS {
        let objects = rendered(overlay);
        for workload in WORKLOADS {
            let deployment = named(&objects, "Deployment", workload);
            let pod = &deployment["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            let args: Vec<&str> = c["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
            let path = Path::new(args.iter().skip_while(|a| **a != "--config").nth(1).expect("--config"));
            let mount = c["volumeMounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .find(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("/-")))
                .unwrap_or_else(|| panic!("{workload}: nothing mounted at {}", path.display()));
            let volume = pod["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == mount["name"])
                .expect("volume");
            let config_map = named(&objects, "ConfigMap", volume["configMap"]["name"].as_str().expect("a ConfigMap"));
            let key = path.file_name().and_then(|n| n.to_str()).expect("file name");
            let toml =
                config_map["data"][key].as_str().unwrap_or_else(|| panic!("{workload}: no {key} in its ConfigMap"));
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join(key), toml).expect("write");
            // The container's environment too: a secret's value stands in for what the
            // secret holds in the cluster.
            let mut command = Command::new(binary(workload));
            command.env_clear().arg("serve").arg("--config").arg(dir.path().join(key)).arg("--check-config");
            for var in c["env"].as_array().into_iter().flatten() {
                let name = var["name"].as_str().expect("env name");
                let value = match var["value"].as_str() {
                    Some(v) => v.to_string(),
                    None if name.ends_with("DATABASE_URL") => {
                        "postgres://qiria@postgresql.postgres.svc:5432/qiria".into()
                    }
                    None => panic!("{workload}: {name} from a source this test does not stand in for"),
                };
                command.env(name, value);
            }
            let out = command.output().expect("the binary runs");
            assert!(
                out.status.success(),
                "{overlay}/{workload}: its config is refused:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The check is real: a key the binary does not know fails it.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("c.toml"), "[server]\ngrpc_adr = \"0.0.0.0:9191\"\n").expect("write");
    let out = Command::new(binary("authz"))
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("c.toml"))
        .arg("--check-config")
        .output()
        .expect("authz runs");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("grpc_adr"));
}

#[test]
fn the_sandbox_namespace_is_what_the_worker_writes_from_its_config() {
    let out = tempfile::tempdir().expect("tempdir");
    let status = Command::new(binary("scripting-worker"))
        .arg("manifests")
        .arg("--config")
        .arg(istio().join("base/scripting-worker/config.toml"))
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("scripting-worker runs");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let committed = istio().join("base/sandbox");
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json"))
            .collect()
    };
    assert_eq!(names(out.path()), names(&committed), "regenerate: scripting-worker manifests --config istio/base/scripting-worker/config.toml --out istio/base/sandbox");
    for name in names(out.path()) {
        assert_eq!(
            std::fs::read_to_string(out.path().join(&name)).expect("generated"),
            std::fs::read_to_string(committed.join(&name)).expect("committed"),
            "istio/base/sandbox/{name} differs from what the worker writes from its config"
        );
    }
}

#[test]
fn every_workload_is_hardened() {
    for overlay in OVERLAYS {
        let objects = rendered(overlay);
        let deployments: Vec<&Value> = of_kind(&objects, "Deployment").collect();
        assert_eq!(deployments.len(), WORKLOADS.len());
        for deployment in deployments {
            let name = deployment["metadata"]["name"].as_str().expect("name");
            let pod = &deployment["spec"]["template"]["spec"];
            let at = |what: &str| format!("{overlay}/{name}: {what}");
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{}", at("runAsNonRoot"));
            assert!(
                pod["securityContext"]["runAsUser"].as_u64().is_some_and(|u| u > 0),
                "{}",
                at("numeric non-root user")
            );
            assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{}", at("seccomp"));
            // Only the scripting worker calls the Kubernetes API (its `kubernetes` backend).
            assert_eq!(
                pod["automountServiceAccountToken"],
                name == "scripting-worker",
                "{}",
                at("service account token")
            );
            assert!(
                pod["topologySpreadConstraints"].as_array().is_some_and(|t| !t.is_empty()),
                "{}",
                at("topology spread")
            );
            for c in pod["containers"].as_array().expect("containers") {
                let s = &c["securityContext"];
                assert_eq!(s["readOnlyRootFilesystem"], true, "{}", at("readOnlyRootFilesystem"));
                assert_eq!(s["allowPrivilegeEscalation"], false, "{}", at("allowPrivilegeEscalation"));
                assert_eq!(s["capabilities"]["drop"], serde_json::json!(["ALL"]), "{}", at("capabilities"));
                for r in ["requests", "limits"] {
                    for k in ["cpu", "memory"] {
                        assert!(c["resources"][r][k].is_string(), "{}", at(&format!("resources.{r}.{k}")));
                    }
                }
                for probe in ["readinessProbe", "livenessProbe"] {
                    assert!(c[probe].is_object(), "{}", at(probe));
                }
            }
            assert!(
                of_kind(&objects, "PodDisruptionBudget")
                    .any(|p| p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == name),
                "{}",
                at("no PodDisruptionBudget")
            );
        }
        // authz answers gRPC health to the kubelet, and scales (but on dev's single node).
        assert_eq!(container(&objects, "authz")["readinessProbe"]["grpc"]["port"], 9191);
        let hpa = of_kind(&objects, "HorizontalPodAutoscaler").any(|h| h["spec"]["scaleTargetRef"]["name"] == "authz");
        assert_eq!(hpa, overlay == "prod", "{overlay}: authz's HorizontalPodAutoscaler");
    }
}

/// The secrets each workload mounts.
fn secrets_of(objects: &[Value], workload: &str) -> BTreeSet<String> {
    let pod = &named(objects, "Deployment", workload)["spec"]["template"]["spec"];
    let mounts = pod["containers"][0]["volumeMounts"].as_array().cloned().unwrap_or_default();
    pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let secret = v["secret"]["secretName"].as_str()?;
            let mount = mounts
                .iter()
                .find(|m| m["name"] == v["name"])
                .unwrap_or_else(|| panic!("{workload}: {secret} not mounted"));
            assert_eq!(mount["readOnly"], true, "{workload}: {secret} is mounted writable");
            Some(secret.to_string())
        })
        .collect()
}

#[test]
fn private_keys_are_mounted_only_in_the_issuer_and_read_only() {
    for overlay in OVERLAYS {
        let objects = rendered(overlay);
        let mut holders: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for workload in WORKLOADS {
            for secret in secrets_of(&objects, workload) {
                holders.entry(secret).or_default().insert(workload);
            }
        }
        for secret in ["qiria-signing-keys", "qiria-master-keys"] {
            assert_eq!(holders.get(secret), Some(&BTreeSet::from(["issuer"])), "{overlay}: {secret}");
        }
        assert_eq!(
            secrets_of(&objects, "authz")
                .into_iter()
                .filter(|s| !s.starts_with("qiria-audit-key-") && !s.starts_with("qiria-siem-client-"))
                .collect::<Vec<_>>(),
            ["qiria-jwt-public"],
            "{overlay}: authz holds public keys only"
        );
        // One audit key per service, used by nothing else.
        for workload in WORKLOADS {
            assert_eq!(holders.get(&format!("qiria-audit-key-{workload}")), Some(&BTreeSet::from([workload])));
        }
        // A database URL (it may hold a password) comes from a secret, never a ConfigMap.
        if overlay == "prod" {
            for workload in ["issuer", "worker-gateway"] {
                let env = container(&objects, workload)["env"].as_array().cloned().unwrap_or_default();
                let url = env
                    .iter()
                    .find(|e| e["name"].as_str().is_some_and(|n| n.ends_with("STORE__DATABASE_URL")))
                    .expect("database url");
                assert!(url["valueFrom"]["secretKeyRef"]["name"].is_string(), "{workload}: {url}");
            }
        }
    }
}

#[test]
fn the_mesh_extension_provider_fails_closed_and_points_at_authz() {
    let operator = named(&mesh_objects(), "IstioOperator", "qiria").clone();
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(istio().join("mesh/istiod-values.yaml")).expect("values"))
            .expect("yaml");
    let providers = &operator["spec"]["meshConfig"]["extensionProviders"];
    assert_eq!(providers, &values["meshConfig"]["extensionProviders"], "the IstioOperator and the Helm values differ");
    let provider =
        providers.as_array().and_then(|p| p.iter().find(|p| p["name"] == "qiria-authz")).expect("qiria-authz");
    let grpc = provider["envoyExtAuthzGrpc"].as_object().expect("an envoyExtAuthzGrpc provider");
    // IstioOperator's schema leaves meshConfig open, so its fields are checked here against
    // MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider (istio/api).
    let known = ["service", "port", "timeout", "failOpen", "statusOnError", "includeRequestBodyInCheck"];
    for key in grpc.keys() {
        assert!(known.contains(&key.as_str()), "{key} is not a field of Istio's gRPC ext_authz provider");
    }
    for key in grpc["includeRequestBodyInCheck"].as_object().expect("body").keys() {
        assert!(["maxRequestBytes", "allowPartialMessage", "packAsBytes"].contains(&key.as_str()), "{key}");
    }
    assert_eq!(grpc["failOpen"], false);
    let objects = rendered("prod");
    let service = named(&objects, "Service", "authz");
    assert_eq!(
        grpc["service"],
        format!("authz.{}.svc.cluster.local", service["metadata"]["namespace"].as_str().expect("ns"))
    );
    let grpc_port =
        service["spec"]["ports"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "grpc")).expect("grpc port");
    assert_eq!(grpc["port"], grpc_port["port"]);
    // Every workload protected by CUSTOM names this provider.
    let custom: BTreeSet<&str> = of_kind(&objects, "AuthorizationPolicy")
        .filter(|p| p["spec"]["action"] == "CUSTOM")
        .inspect(|p| assert_eq!(p["spec"]["provider"]["name"], "qiria-authz"))
        .filter_map(|p| p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"].as_str())
        .collect();
    assert_eq!(custom, BTreeSet::from(["issuer", "worker-gateway"]));
    // The services behind authz verify the caller's token again, so it must reach them: in
    // the mesh no route can ask for it (Istio's gRPC provider sets no context extension).
    let env = container(&objects, "authz")["env"].as_array().cloned().unwrap_or_default();
    assert!(
        env.iter().any(|e| e["name"] == "QIRIA_AUTHZ_JWT__FORWARD_TOKEN" && e["value"] == "true"),
        "authz does not forward the token: {env:?}"
    );
    let mtls = named(&mesh_objects(), "PeerAuthentication", "default").clone();
    assert_eq!(
        (mtls["metadata"]["namespace"].as_str(), mtls["spec"]["mtls"]["mode"].as_str()),
        (Some("istio-system"), Some("STRICT"))
    );
}

/// The rendered workloads with the peers they meet in a cluster: the mesh's control plane
/// and ingress gateway, DNS, the telemetry collector, the SIEM, Kestra, Prometheus,
/// PostgreSQL, the API server (by address), a pod of another mesh namespace, a pod outside
/// the mesh, and a sandbox run.
fn cluster(objects: &[Value], api_server: Ipv4Addr) -> Cluster {
    let mut cluster = Cluster::from_manifests(objects);
    let peer = Pod::new;
    let meshed = |pod: Pod, account: &str| Pod {
        principal: Some(format!("cluster.local/ns/{}/sa/{account}", pod.namespace)),
        ..pod
    };
    for workload in WORKLOADS {
        // The sidecar's merged Prometheus endpoint.
        if let Some(pod) = cluster.find(workload) {
            pod.ports.push(Port::tcp(15020));
        }
    }
    cluster.namespace("shop", &BTreeMap::from([("istio-injection".to_string(), "enabled".to_string())]));
    for pod in [
        meshed(
            peer(
                "ingress-gateway",
                "istio-system",
                &[("istio", "ingressgateway")],
                vec![Port::tcp(8080), Port::tcp(8443)],
            ),
            "istio-ingressgateway-service-account",
        ),
        peer("istiod", "istio-system", &[("app", "istiod")], vec![Port::tcp(15012), Port::tcp(15017)]),
        peer("kube-dns", "kube-system", &[("k8s-app", "kube-dns")], vec![Port::udp(53), Port::tcp(53)]),
        peer("otel-collector", "observability", &[("app.kubernetes.io/name", "otel-collector")], vec![Port::tcp(4317)]),
        peer("siem", "siem", &[("app.kubernetes.io/name", "siem")], vec![Port::tcp(2514)]),
        peer("kestra", "kestra", &[("app.kubernetes.io/name", "kestra")], vec![Port::tcp(8443), Port::tcp(8080)]),
        peer("prometheus", "monitoring", &[("app.kubernetes.io/name", "prometheus")], vec![Port::tcp(9090)]),
        peer("postgresql", "postgres", &[("app.kubernetes.io/name", "postgresql")], vec![Port::tcp(5432)]),
        meshed(peer("mesh-frontend", "shop", &[("app", "frontend")], vec![Port::tcp(8080)]), "frontend"),
        peer("outside-pod", "legacy", &[("app", "legacy")], vec![Port::tcp(8080)]),
        peer("sandbox-run", "qiria-sandbox", &[("job-name", "run")], vec![Port::tcp(8000)]),
        Pod { ip: Some(api_server), ..peer("api-server", "host-network", &[], vec![Port::tcp(443), Port::tcp(6443)]) },
    ] {
        cluster.pod(pod);
    }
    cluster
}

fn api_server(overlay: &str) -> Ipv4Addr {
    if overlay == "dev" {
        Ipv4Addr::new(172, 18, 0, 2)
    } else {
        Ipv4Addr::new(10, 0, 0, 10)
    }
}

/// Every connection that should be possible, and nothing else.
fn intended(overlay: &str) -> BTreeSet<String> {
    let mut edges = Vec::new();
    for workload in WORKLOADS {
        for to in ["istiod:15012/TCP", "kube-dns:53/UDP", "kube-dns:53/TCP", "otel-collector:4317/TCP", "siem:2514/TCP"]
        {
            edges.push(format!("{workload} -> {to}"));
        }
        // Metrics through the sidecar agent's merged endpoint.
        edges.push(format!("prometheus -> {workload}:15020/TCP"));
    }
    edges.extend(
        [
            // The edge: the ingress gateway reaches the public listeners and asks authz.
            "ingress-gateway -> authz:9191/TCP",
            "ingress-gateway -> issuer:9193/TCP",
            "ingress-gateway -> issuer:9194/TCP",
            "ingress-gateway -> worker-gateway:9196/TCP",
            // Sidecars of mesh namespaces (and of our CUSTOM-protected workloads) ask authz.
            "mesh-frontend -> authz:9191/TCP",
            "issuer -> authz:9191/TCP",
            "worker-gateway -> authz:9191/TCP",
            // Approved work leaves through the gateway only.
            "worker-gateway -> kestra:8443/TCP",
            "worker-gateway -> scripting-worker:9198/TCP",
            // The scripting worker's `kubernetes` backend.
            "scripting-worker -> api-server:443/TCP",
            "scripting-worker -> api-server:6443/TCP",
        ]
        .map(String::from),
    );
    if overlay == "prod" {
        edges.push("issuer -> postgresql:5432/TCP".into());
        edges.push("worker-gateway -> postgresql:5432/TCP".into());
    }
    edges.into_iter().collect()
}

fn difference(actual: &BTreeSet<String>, wanted: &BTreeSet<String>) -> String {
    let extra: Vec<&String> = actual.difference(wanted).collect();
    let missing: Vec<&String> = wanted.difference(actual).collect();
    format!("allowed but not intended: {extra:#?}\nintended but not allowed: {missing:#?}")
}

/// Istio's policies (the mesh's and the overlay's).
fn mesh(objects: &[Value]) -> MeshPolicies {
    let mut all = mesh_objects();
    all.extend(objects.iter().cloned());
    MeshPolicies::from_manifests(&all)
}

#[test]
fn the_reachability_matrix_is_the_intended_one() {
    for overlay in OVERLAYS {
        let objects = rendered(overlay);
        let cluster = cluster(&objects, api_server(overlay));
        let matrix = cluster.matrix(&["qiria", "qiria-sandbox"]);
        let wanted = intended(overlay);
        assert_eq!(matrix, wanted, "{overlay}:\n{}", difference(&matrix, &wanted));
        // Istio's layer on top takes nothing the design needs away.
        let mesh = mesh(&objects);
        let both = cluster
            .matrix_where(&["qiria", "qiria-sandbox"], |f, t, p| cluster.allows(f, t, p) && mesh.admits(f, t, p));
        assert_eq!(both, wanted, "{overlay}, with Istio's policies:\n{}", difference(&both, &wanted));
    }
}

/// Who reaches each listener of our workloads through Istio's layer alone (mutual TLS and the
/// AuthorizationPolicies, whatever the NetworkPolicies say): `workload:port/protocol` → callers.
fn mesh_callers(objects: &[Value], overlay: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mesh = mesh(objects);
    let cluster = cluster(objects, api_server(overlay));
    let mut callers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for edge in cluster.matrix_where(&["qiria"], |f, t, p| t.namespace == "qiria" && mesh.admits(f, t, p)) {
        let (from, to) = edge.split_once(" -> ").expect("an edge");
        callers.entry(to.to_string()).or_default().insert(from.to_string());
    }
    callers
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn istio_admits_each_listener_only_its_callers_and_nobody_without_mutual_tls() {
    let meshed = ["ingress-gateway", "mesh-frontend", "authz", "issuer", "worker-gateway", "scripting-worker"];
    for overlay in OVERLAYS {
        let callers = mesh_callers(&rendered(overlay), overlay);
        let of = |listener: &str| callers.get(listener).cloned().unwrap_or_default();
        let meshed_but = |me: &str| set(&meshed.iter().copied().filter(|m| *m != me).collect::<Vec<_>>());
        // authz: any mesh identity (the NetworkPolicy narrows it to mesh namespaces).
        assert_eq!(of("authz:9191/TCP"), meshed_but("authz"), "{overlay}");
        assert_eq!(of("issuer:9193/TCP"), set(&["ingress-gateway"]), "{overlay}");
        assert_eq!(of("issuer:9194/TCP"), set(&["ingress-gateway"]), "{overlay}: the admin API");
        assert_eq!(of("worker-gateway:9196/TCP"), set(&["ingress-gateway"]), "{overlay}");
        assert_eq!(of("scripting-worker:9198/TCP"), set(&["worker-gateway"]), "{overlay}");
        for (listener, from) in &callers {
            if !listener.ends_with(":15020/TCP") {
                assert!(
                    from.iter().all(|f| meshed.contains(&f.as_str())),
                    "{overlay}: {listener} admits a caller without mutual TLS: {from:?}"
                );
            }
        }
    }
    // A loosened copy: the worker's AuthorizationPolicy admitting any mesh identity.
    let objects = rendered_with("prod", "istio/base/scripting-worker/authorization-policy.yaml", |t| {
        t.replacen("              - cluster.local/ns/qiria/sa/worker-gateway\n", "              - \"*\"\n", 1)
    });
    let loosened = mesh_callers(&objects, "prod");
    assert!(loosened["scripting-worker:9198/TCP"].contains("mesh-frontend"), "{loosened:?}");
}

/// A copy of what the overlays render from (istio/ and the policy bundle) with `edit` applied
/// to one file, rendered.
fn rendered_with(overlay: &str, file: &str, edit: impl Fn(&str) -> String) -> Vec<Value> {
    let copy = tempfile::tempdir().expect("tempdir");
    for dir in ["istio", "policies"] {
        let status =
            Command::new("cp").arg("-a").arg(workspace_root().join(dir)).arg(copy.path()).status().expect("cp");
        assert!(status.success());
    }
    let _ = std::fs::remove_dir_all(copy.path().join("istio/validate/node_modules"));
    let path = copy.path().join(file);
    let text = std::fs::read_to_string(&path).expect("file");
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit of {file} changed nothing");
    std::fs::write(&path, edited).expect("write");
    render(&copy.path().join("istio/overlays").join(overlay))
}

#[test]
fn a_loosened_policy_breaks_the_matrix() {
    // The scripting worker admitting any namespace instead of the gateway alone.
    let objects = rendered_with("prod", "istio/base/network/scripting-worker.yaml", |t| {
        t.replacen(
            "        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: worker-gateway\n",
            "        - namespaceSelector: {}\n",
            1,
        )
    });
    let matrix = cluster(&objects, api_server("prod")).matrix(&["qiria", "qiria-sandbox"]);
    assert!(
        matrix.contains("mesh-frontend -> scripting-worker:9198/TCP"),
        "{}",
        difference(&matrix, &intended("prod"))
    );
    assert!(matrix.contains("outside-pod -> scripting-worker:9198/TCP"));
    assert_ne!(matrix, intended("prod"));

    // The gateway's egress to Kestra's port open to any destination.
    let objects = rendered_with("dev", "istio/base/network/worker-gateway.yaml", |t| {
        t.replacen(
            "    - to:\n        - namespaceSelector:\n            matchLabels:\n              kubernetes.io/metadata.name: kestra\n          podSelector:\n            matchLabels:\n              app.kubernetes.io/name: kestra\n      ports:",
            "    - ports:",
            1,
        )
    });
    let matrix = cluster(&objects, api_server("dev")).matrix(&["qiria", "qiria-sandbox"]);
    assert!(matrix.contains("worker-gateway -> ingress-gateway:8443/TCP"), "{}", difference(&matrix, &intended("dev")));
    assert_ne!(matrix, intended("dev"));
}

#[test]
fn every_image_is_referenced_by_digest_never_by_tag() {
    for overlay in OVERLAYS {
        let objects = rendered(overlay);
        for deployment in of_kind(&objects, "Deployment") {
            for c in deployment["spec"]["template"]["spec"]["containers"].as_array().expect("containers") {
                let image = c["image"].as_str().expect("an image");
                let (name, digest) =
                    image.split_once("@sha256:").unwrap_or_else(|| panic!("{overlay}: {image} is not pinned"));
                assert!(digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()), "{overlay}: {image}");
                assert!(
                    !name.rsplit('/').next().unwrap_or_default().contains(':'),
                    "{overlay}: {image} names a tag too"
                );
            }
        }
    }
    // The sandbox's image, in the worker's config and its admission policy alike.
    let config = std::fs::read_to_string(istio().join("base/scripting-worker/config.toml")).expect("config");
    let image = config.lines().find_map(|l| l.strip_prefix("image = ")).expect("kubernetes.image").trim_matches('"');
    assert!(image.contains("/sandbox-python@sha256:"), "{image}");
    let policy = named(&rendered("prod"), "ValidatingAdmissionPolicy", "qiria-sandbox-pods").to_string();
    assert!(policy.contains(image), "the admission policy does not pin {image}");
}
