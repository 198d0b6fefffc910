//! Every manifest the `kubernetes` backend generates — the cluster's static objects and a
//! run's Job and ConfigMap — against the Kubernetes 1.32 schemas, offline, with
//! `kubernetes-validate --strict` (unknown fields are errors). The validator's own rejection
//! of a broken Job is checked too, so that a validator accepting anything fails the test. The
//! test fails, never skips, when the validator is missing (`./dev` installs it in `.venv`).
//!
//! No API server runs here, so the backend is shown up to the request it sends: the real
//! worker binary with `backend = "kubernetes"` sends its first request to an HTTPS listener
//! that records it and refuses it as an API server does (403, a `Status`); the request is
//! checked — path, token, TLS against the cluster's CA only, the Job body against the schemas
//! — and so is what the gateway gets back for each way the cluster fails.

use std::path::PathBuf;
use std::process::Command;

use qiria_test_support::manifests::{kubernetes_validate, passed, write_each};
use qiria_test_support::recorder::Recorder;
use qiria_test_support::tls::{pki, pki_with_clients, TestPki};
use qiria_test_support::worker::{OuterCgroup, ScriptingWorker, GATEWAY_ID};
use scripting_worker::config::Config;
use scripting_worker::pb::script_runner_client::ScriptRunnerClient;
use scripting_worker::pb::RunRequest;
use serde_json::{json, Value};

const RUN_ID: &str = "run-0123456789abcdef0123456789abcdef";
const JOB_UID: &str = "3f0c1e9a-5b7d-4c2e-9f10-6a8b2c4d6e8f";

fn all_manifests() -> Vec<Value> {
    let config = Config::default();
    let mut manifests = scripting_worker::kubernetes_manifests(&config);
    manifests.extend(scripting_worker::kubernetes_run_manifests(&config, RUN_ID, JOB_UID, "print('hello')\n"));
    manifests
}

#[test]
fn every_generated_manifest_passes_the_kubernetes_schemas() {
    let manifests = all_manifests();
    let kinds: Vec<&str> = manifests.iter().filter_map(|m| m["kind"].as_str()).collect();
    for kind in [
        "Namespace",
        "NetworkPolicy",
        "LimitRange",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "RuntimeClass",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "Job",
        "ConfigMap",
    ] {
        assert!(kinds.contains(&kind), "no {kind} among {kinds:?}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_each(dir.path(), &manifests);
    let verdict = kubernetes_validate(&files);
    assert!(verdict.success, "kubernetes-validate refused a manifest:\n{}", verdict.output);
    // An unknown kind is only a warning: every file must have been checked against a schema.
    for file in &files {
        assert!(passed(&verdict, file), "{} was not validated:\n{}", file.display(), verdict.output);
    }
    assert!(!verdict.output.contains("WARN"), "{}", verdict.output);
}

#[test]
fn the_validator_rejects_a_job_with_a_wrong_field_type_or_an_unknown_field() {
    let manifests = all_manifests();
    let job = manifests.iter().find(|m| m["kind"] == "Job").expect("a Job").clone();
    let dir = tempfile::tempdir().expect("tempdir");

    let mut wrong_type = job.clone();
    wrong_type["spec"]["backoffLimit"] = json!("zero");
    let file = dir.path().join("wrong-type.json");
    std::fs::write(&file, serde_json::to_vec(&wrong_type).expect("json")).expect("write");
    let verdict = kubernetes_validate(std::slice::from_ref(&file));
    assert!(!verdict.success, "a string backoffLimit was accepted:\n{}", verdict.output);
    assert!(verdict.output.contains("backoffLimit"), "{}", verdict.output);

    let mut unknown = job;
    unknown["spec"]["template"]["spec"]["containers"][0]["privilegedd"] = json!(false);
    let file = dir.path().join("unknown-field.json");
    std::fs::write(&file, serde_json::to_vec(&unknown).expect("json")).expect("write");
    let verdict = kubernetes_validate(std::slice::from_ref(&file));
    assert!(!verdict.success, "an unknown field was accepted (is --strict in effect?):\n{}", verdict.output);
    assert!(verdict.output.contains("privilegedd"), "{}", verdict.output);
}

#[test]
fn the_sandbox_pod_is_held_to_the_design() {
    let manifests = all_manifests();
    let job = manifests.iter().find(|m| m["kind"] == "Job").expect("a Job");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["runtimeClassName"], "gvisor");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(job["metadata"]["namespace"], "qiria-sandbox");
    let config_map = manifests.iter().find(|m| m["kind"] == "ConfigMap").expect("a ConfigMap");
    assert_eq!(config_map["data"]["main.py"], "print('hello')\n");
    assert_eq!(config_map["metadata"]["ownerReferences"][0]["uid"], JOB_UID);
    let policy = manifests.iter().find(|m| m["kind"] == "NetworkPolicy").expect("a NetworkPolicy");
    assert_eq!(policy["metadata"]["namespace"], "qiria-sandbox");
    assert!(policy["spec"].get("egress").is_none() && policy["spec"].get("ingress").is_none(), "no rule");
}

#[test]
fn scripting_worker_manifests_writes_them_from_the_config_and_refuses_an_unpinned_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = qiria_test_support::binary("scripting-worker");
    let config = dir.path().join("worker.toml");
    let image = format!("registry.example.org/python@sha256:{}", "ab".repeat(32));
    std::fs::write(&config, format!("[kubernetes]\nnamespace = \"team-sandbox\"\nimage = \"{image}\"\n"))
        .expect("config");
    let out = dir.path().join("manifests");
    let run = Command::new(&worker)
        .args(["manifests", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("runs");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let files: Vec<PathBuf> = std::fs::read_dir(&out).expect("written").flatten().map(|e| e.path()).collect();
    assert!(files.len() >= 8, "{files:?}");
    let verdict = kubernetes_validate(&files);
    assert!(verdict.success, "{}", verdict.output);
    let namespace: Value = serde_json::from_slice(
        &std::fs::read(files.iter().find(|f| f.to_string_lossy().contains("-namespace-")).expect("a namespace"))
            .expect("read"),
    )
    .expect("json");
    assert_eq!(namespace["metadata"]["name"], "team-sandbox", "the config's namespace, not the default");

    std::fs::write(&config, "[kubernetes]\nimage = \"python:3\"\n").expect("config");
    let run = Command::new(&worker)
        .args(["manifests", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("runs");
    assert_eq!(run.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("kubernetes.image"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// The pinned image the worker's `[kubernetes]` section names in these tests.
const IMAGE: &str =
    "registry.example.org/python@sha256:abababababababababababababababababababababababababababababababab";
/// The service account token the test mounts for the worker.
const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln";

/// How the API server refuses a Job to a service account without the right (its real shape).
fn forbidden() -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "jobs.batch is forbidden: User \"system:serviceaccount:qiria:scripting-worker\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"qiria-sandbox\"",
        "reason": "Forbidden", "details": { "group": "batch", "kind": "jobs" }, "code": 403,
    })
}

/// A worker on the `kubernetes` backend whose API server is `api_server`, trusting
/// `cluster_ca`, with the token file at `token` (written when given).
struct ClusterWorker {
    dir: tempfile::TempDir,
    pki: TestPki,
    worker: ScriptingWorker,
    _outer: OuterCgroup,
}

impl ClusterWorker {
    async fn start(api_server: &str, cluster_ca: &str, token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = pki_with_clients(GATEWAY_ID, &[]);
        let ca = dir.path().join("cluster-ca.crt");
        std::fs::write(&ca, cluster_ca).expect("ca");
        let token_path = dir.path().join("token");
        if let Some(token) = token {
            std::fs::write(&token_path, token).expect("token");
        }
        let extra = format!(
            "[kubernetes]\napi_server = \"{api_server}\"\nca_path = \"{}\"\ntoken_path = \"{}\"\nimage = \"{IMAGE}\"\n",
            ca.display(),
            token_path.display()
        );
        // Nothing runs on this host: the outer cgroup is only what the helper asks for.
        let outer = OuterCgroup::new(1 << 30, 256);
        let state = dir.path().join("state");
        let worker = ScriptingWorker::start_with_backend(dir.path(), &state, &pki, &outer, "kubernetes", &extra).await;
        Self { dir, pki, worker, _outer: outer }
    }

    async fn run(&self) -> tonic::Status {
        let channel = self.worker.channel(&self.pki, &self.pki.client_cert_pem, &self.pki.client_key_pem).await;
        let request =
            RunRequest { job_id: "job-k8s".into(), language: "python".into(), body: "print('hello')\n".into() };
        match ScriptRunnerClient::new(channel).run(request).await {
            Ok(result) => panic!("no cluster ran it, yet: {:?}", result.into_inner()),
            Err(status) => status,
        }
    }
}

#[tokio::test]
async fn the_kubernetes_backend_sends_the_job_with_the_token_to_the_api_server_and_reports_its_refusal() {
    let cluster = pki("spiffe://cluster.local/ns/default/sa/kubernetes");
    let api = Recorder::start(&cluster.server_cert_pem, &cluster.server_key_pem, 403, forbidden()).await;
    let worker = ClusterWorker::start(&api.url(), &cluster.ca_pem, Some(&format!("{TOKEN}\n"))).await;
    assert_eq!(worker.worker.health().await["backend"], "kubernetes");

    let status = worker.run().await;
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(
        status
            .message()
            .contains("refused POST /apis/batch/v1/namespaces/qiria-sandbox/jobs: 403 jobs.batch is forbidden"),
        "{status:?}"
    );
    assert!(status.metadata().get("qiria-run-not-started").is_none(), "a refusal is not worth retrying");

    // Exactly one request: no Job was made, so nothing followed it (no ConfigMap, no delete).
    let requests = api.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let job = &requests[0];
    assert_eq!((job.method.as_str(), job.path.as_str()), ("POST", "/apis/batch/v1/namespaces/qiria-sandbox/jobs"));
    assert_eq!(job.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()), "the token file, trimmed");
    assert_eq!(job.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&job.body).expect("a JSON body");
    assert_eq!(body["kind"], "Job");
    let pod = &body["spec"]["template"]["spec"];
    assert_eq!(pod["runtimeClassName"], "gvisor");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["containers"][0]["image"], IMAGE);
    let name = body["metadata"]["name"].as_str().expect("a name");
    assert!(name.starts_with("run-") && name.len() == 36, "{name}");
    // What was sent, not only what the library makes, passes the schemas.
    let files = write_each(worker.dir.path(), std::slice::from_ref(&body));
    let verdict = kubernetes_validate(&files);
    assert!(verdict.success, "the Job sent was refused by the schemas:\n{}", verdict.output);
    // The token reaches the API server and no log.
    assert!(!worker.worker.output().contains(TOKEN), "the token is in the worker's log");
}

#[tokio::test]
async fn an_api_server_outside_the_clusters_ca_or_out_of_reach_gets_no_request_and_the_gateway_may_retry() {
    let cluster = pki("spiffe://cluster.local/ns/default/sa/kubernetes");
    let impostor = pki("spiffe://cluster.local/ns/default/sa/kubernetes");
    let api = Recorder::start(&impostor.server_cert_pem, &impostor.server_key_pem, 201, json!({})).await;
    let worker = ClusterWorker::start(&api.url(), &cluster.ca_pem, Some(TOKEN)).await;
    let status = worker.run().await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("not started") && status.message().contains("unreachable"), "{status:?}");
    assert_eq!(status.metadata().get("qiria-run-not-started").map(|v| v.to_str().ok()), Some(Some("true")));
    assert!(api.requests().is_empty(), "a server the CA does not vouch for got a request (the token)");
    drop(worker);

    // Nobody listening at all.
    let port = qiria_test_support::free_port();
    let worker = ClusterWorker::start(&format!("https://127.0.0.1:{port}"), &cluster.ca_pem, Some(TOKEN)).await;
    let status = worker.run().await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.metadata().get("qiria-run-not-started").is_some(), "{status:?}");
}

#[tokio::test]
async fn without_its_token_the_worker_sends_nothing_and_names_the_file() {
    let cluster = pki("spiffe://cluster.local/ns/default/sa/kubernetes");
    let api = Recorder::start(&cluster.server_cert_pem, &cluster.server_key_pem, 403, forbidden()).await;
    let worker = ClusterWorker::start(&api.url(), &cluster.ca_pem, None).await;
    let status = worker.run().await;
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(status.message().contains(&worker.dir.path().join("token").display().to_string()), "{status:?}");
    assert!(api.requests().is_empty());
}
