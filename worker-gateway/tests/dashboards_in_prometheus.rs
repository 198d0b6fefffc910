//! The Grafana dashboards against a real Prometheus: the whole stack runs (Envoy, authz, the
//! issuer delivering its audit trail to a real rsyslog, the worker-gateway with the Kestra
//! double, the scripting worker under runsc), traffic goes through it, Prometheus (Debian's)
//! scrapes every service's `/metrics` — and every PromQL expression of every panel in
//! `deploy/grafana/*.json` parses and returns at least one series built from our own `qiria_*`
//! metrics. Each dashboard has its datasource variable, and every panel uses it.

use std::path::PathBuf;
use std::time::Duration;

use qiria_test_support::authz::{policy_with_flows, Stack};
use qiria_test_support::jobs::{flow, script, watch_to_end, with_token};
use qiria_test_support::kestra::{KestraDouble, KestraOptions};
use qiria_test_support::prometheus::{Answer, Prometheus};
use qiria_test_support::siem::Siem;
use qiria_test_support::tls::pki;
use qiria_test_support::worker::{OuterCgroup, ScriptingWorker, GATEWAY_ID};
use qiria_test_support::{wait_until, workspace_root};
use serde_json::Value;
use worker_gateway::pb::job_service_client::JobServiceClient;
use worker_gateway::pb::JobState;

/// Every dashboard file and its JSON.
fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = workspace_root().join("deploy/grafana");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/grafana")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
        .into_iter()
        .map(|path| {
            let json = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("dashboard JSON");
            (path, json)
        })
        .collect()
}

/// (dashboard, panel title, expression) of every target.
fn expressions() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (path, board) in dashboards() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let variables = board["templating"]["list"].as_array().cloned().unwrap_or_default();
        assert!(
            variables
                .iter()
                .any(|v| v["type"] == "datasource" && v["name"] == "datasource" && v["query"] == "prometheus"),
            "{name}: no Prometheus datasource variable"
        );
        for panel in board["panels"].as_array().expect("panels") {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{name}/{title}: not on the datasource variable");
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("an expr").to_owned();
                assert!(expr.contains("qiria_"), "{name}/{title}: {expr} reads none of our metrics");
                out.push((name.clone(), title.clone(), expr));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_our_series_from_a_real_prometheus() {
    let exprs = expressions();
    let dir = tempfile::tempdir().expect("tempdir");

    // The SIEM first: the issuer's config names its port.
    let siem_pki = pki("spiffe://cluster.local/ns/qiria/sa/issuer");
    let siem = Siem::start(dir.path(), &siem_pki).await;
    let issuer_toml = siem.log_section(dir.path(), &siem_pki, "");
    let kestra = KestraDouble::start(&dir.path().join("kestra"), KestraOptions::default()).await;
    let outer = OuterCgroup::new(1 << 30, 1024);
    let worker_pki = pki(GATEWAY_ID);
    let limits = "[limits]\noutput_bytes = 1024\n";
    let worker = ScriptingWorker::start(dir.path(), &dir.path().join("state"), &worker_pki, &outer, limits).await;
    let gateway_toml = kestra.gateway_toml(dir.path(), None) + &worker.gateway_toml(&worker_pki, dir.path());
    let policy = policy_with_flows(dir.path(), r#"{"qiria.demo": {"hello": "flows:trigger"}}"#);
    let authz = qiria_test_support::binary("authz").display().to_string();
    let stack = Stack::with_issuer_and_gateway(&authz, &policy, &issuer_toml, &gateway_toml).await;

    // Traffic: logins (one failed), a refresh, decisions (denied, allowed, reused), a flow job,
    // a script job and one cut at its output limit.
    let issuer = stack.issuer();
    issuer.add_user("alice", "User");
    let login = |password: &'static str| {
        let url = stack.envoy.url("/v1/auth/token");
        async move {
            let form = [("grant_type", "password"), ("username", "alice"), ("password", password)];
            let response = reqwest::Client::new().post(url).form(&form).send().await.expect("login");
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or_default())
        }
    };
    assert_eq!(login("wrong password").await.0, 400);
    let (status, tokens) = login(qiria_test_support::issuer::PASSWORD).await;
    assert_eq!(status, 200, "{tokens}");
    let refresh =
        [("grant_type", "refresh_token"), ("refresh_token", tokens["refresh_token"].as_str().expect("refresh"))];
    let refreshed =
        reqwest::Client::new().post(stack.envoy.url("/v1/auth/token")).form(&refresh).send().await.expect("refresh");
    assert_eq!(refreshed.status().as_u16(), 200);
    let access = tokens["access_token"].as_str().expect("access").to_owned();
    // An admin call by a User, straight to the issuer's admin API: refused (and audited).
    let refused = reqwest::Client::new()
        .post(issuer.admin_api_url("/v1/admin/users"))
        .bearer_auth(&access)
        .json(&serde_json::json!({ "username": "mallory", "password": "0123456789abcdef", "roles": ["Admin"] }))
        .send()
        .await
        .expect("admin API");
    assert_eq!(refused.status().as_u16(), 403);
    let api = JobServiceClient::connect(stack.envoy.url("")).await.expect("connect through Envoy");
    assert!(api.clone().get_job(worker_gateway::pb::GetJobRequest { id: "nope".into() }).await.is_err(), "denied");
    let flow = flow("qiria.demo", "hello", &[("name", "prometheus")]);
    let flow_job = api.clone().trigger_flow(with_token(flow, &access)).await.expect("trigger").into_inner();
    for body in ["print('ok')\n", "print('x' * 5000)\n"] {
        let job = api.clone().submit_script(with_token(script(body), &access)).await.expect("submit").into_inner();
        watch_to_end(&api, &access, &job.id).await;
    }
    let (states, _) = watch_to_end(&api, &access, &flow_job.id).await;
    assert_eq!(states.last(), Some(&JobState::Success));

    let targets = [
        ("authz", stack.authz.admin_port),
        ("issuer", issuer.admin_port),
        ("worker-gateway", stack.gateway.as_ref().expect("a gateway").admin_port),
        ("scripting-worker", worker.admin_port),
    ];
    let prometheus = Prometheus::start(dir.path(), &targets).await;
    // Rates need two samples of a counter that moved between them: a little more traffic
    // after the first scrapes.
    for _ in 0..3 {
        let _ = api.clone().get_job(worker_gateway::pb::GetJobRequest { id: "nope".into() }).await;
        assert_eq!(login("wrong password").await.0, 400);
    }

    let missing = std::sync::Mutex::new(Vec::new());
    let answered = wait_until(Duration::from_secs(60), || async {
        let mut empty = Vec::new();
        for (board, title, expr) in &exprs {
            match prometheus.query(expr).await {
                Answer::Series(series) if !series.is_empty() => {}
                Answer::Series(_) => empty.push(format!("{board} / {title}: no series for {expr}")),
                Answer::Error(kind, error) => panic!("{board} / {title}: {expr} refused ({kind}): {error}"),
            }
        }
        let done = empty.is_empty();
        *missing.lock().expect("lock") = empty;
        done
    })
    .await;
    assert!(answered, "queries with no data:\n{}", missing.lock().expect("lock").join("\n"));
    // A broken expression would have been refused, not passed over: Prometheus parses them.
    assert!(
        matches!(prometheus.query("sum(rate(qiria_authz_decisions_total[5m]").await, Answer::Error(kind, _) if kind == "bad_data")
    );
    drop(siem);
}
