//! Script jobs through the real path: a client → Envoy → authz → the worker-gateway → the
//! scripting worker over mutual TLS (the gateway's certificate is the identity the worker
//! admits) → a fresh runsc sandbox. A User's script runs and its output and artifacts come back
//! with the job; a failing script and a limit fail the job, saying why; a cancel stops the
//! sandbox; nothing is left behind. Needs root and runsc, as the worker does in production.

use std::time::Duration;

use qiria_test_support::authz::Stack;
use qiria_test_support::jobs::{script, watch_to_end, with_token, Api};
use qiria_test_support::tls::pki;
use qiria_test_support::worker::{Leftovers, OuterCgroup, ScriptingWorker, GATEWAY_ID};
use qiria_test_support::{wait_until, workspace_root};
use worker_gateway::pb::job_service_client::JobServiceClient;
use worker_gateway::pb::{CancelJobRequest, GetJobRequest, JobState};

struct World {
    stack: Stack,
    worker: ScriptingWorker,
    outer: OuterCgroup,
    api: Api,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let outer = OuterCgroup::new(2 << 30, 2048);
    let pki = pki(GATEWAY_ID);
    let limits = "[limits]\nwall_ms = 20000\ncpu_ms = 1000\n";
    let worker = ScriptingWorker::start(dir.path(), &dir.path().join("state"), &pki, &outer, limits).await;
    let toml = worker.gateway_toml(&pki, dir.path());
    let stack = Stack::with_gateway_config(
        &qiria_test_support::binary("authz").display().to_string(),
        &workspace_root().join("policies/rego"),
        &toml,
    )
    .await;
    let api = JobServiceClient::connect(stack.envoy.url("")).await.expect("connect through Envoy");
    World { stack, worker, outer, api, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_script_runs_in_the_sandbox_and_its_output_comes_back_with_the_job() {
    let w = world().await;
    let alice = w.stack.token("alice", &["User"]);
    let body = "import socket\nprint('hello from', socket.gethostname())\nopen('/out/report.txt', 'w').write('42')\n";
    let job = w.api.clone().submit_script(with_token(script(body), &alice)).await.expect("submit").into_inner();
    assert_eq!(job.state(), JobState::Queued, "{job:?}");
    let (states, done) = watch_to_end(&w.api, &alice, &job.id).await;
    assert_eq!(
        states.last(),
        Some(&JobState::Success),
        "{done:?}\n{}",
        w.stack.gateway.as_ref().map(|g| g.output()).unwrap_or_default()
    );
    assert!(states.contains(&JobState::Running), "{states:?}");
    let result = done.script_result.clone().expect("a result with the job");
    assert_eq!((result.exit_code, result.stdout.as_str()), (0, "hello from sandbox\n"), "{result:?}");
    assert_eq!(result.artifacts.len(), 1, "{result:?}");
    assert_eq!((result.artifacts[0].name.as_str(), result.artifacts[0].content.as_slice()), ("report.txt", &b"42"[..]));
    assert_eq!(done.reason, "the script exited 0");

    // The same result is what a later GetJob shows, and the REST form shows it as JSON.
    let again = w
        .api
        .clone()
        .get_job(with_token(GetJobRequest { id: job.id.clone() }, &alice))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(again.script_result, done.script_result);
    let rest: serde_json::Value = reqwest::Client::new()
        .get(w.stack.envoy.url(&format!("/v1/jobs/{}", job.id)))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("REST get")
        .json()
        .await
        .expect("JSON");
    assert_eq!(rest["script_result"]["stdout"], "hello from sandbox\n", "{rest}");

    // Another user cannot read it.
    let bob = w.stack.token("bob", &["User"]);
    let hidden = w.api.clone().get_job(with_token(GetJobRequest { id: job.id.clone() }, &bob)).await;
    assert_eq!(hidden.expect_err("bob read alice's job").code(), tonic::Code::NotFound);
    assert!(
        wait_until(Duration::from_secs(10), || async { Leftovers::of(&w.worker.state_dir, &w.outer).is_empty() }).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_script_a_limit_and_a_cancel_each_end_the_job_saying_why() {
    let w = world().await;
    let alice = w.stack.token("alice", &["User"]);
    let submit = |body: &'static str| {
        let (api, token) = (w.api.clone(), alice.clone());
        async move { api.clone().submit_script(with_token(script(body), &token)).await.expect("submit").into_inner() }
    };

    let failing = submit("import sys\nprint('bad input', file=sys.stderr)\nsys.exit(3)").await;
    let (_, done) = watch_to_end(&w.api, &alice, &failing.id).await;
    assert_eq!((done.state(), done.reason.as_str()), (JobState::Failed, "the script exited 3"), "{done:?}");
    assert_eq!(done.script_result.as_ref().map(|r| r.stderr.as_str()), Some("bad input\n"));

    let spinning = submit("while True: pass").await;
    let (_, done) = watch_to_end(&w.api, &alice, &spinning.id).await;
    assert_eq!((done.state(), done.reason.as_str()), (JobState::Failed, "stopped by its limits: cpu_time"), "{done:?}");

    let sleeping = submit("import time\ntime.sleep(120)").await;
    let running = wait_until(Duration::from_secs(30), || async {
        let request = with_token(GetJobRequest { id: sleeping.id.clone() }, &alice);
        let job = w.api.clone().get_job(request).await.map(|r| r.into_inner());
        job.is_ok_and(|j| j.state() == JobState::Running)
            && Leftovers::of(&w.worker.state_dir, &w.outer).processes.len() >= 2
    })
    .await;
    assert!(running, "the script never ran");
    let cancel = with_token(CancelJobRequest { id: sleeping.id.clone() }, &alice);
    w.api.clone().cancel_job(cancel).await.expect("cancel");
    let (_, done) = watch_to_end(&w.api, &alice, &sleeping.id).await;
    assert_eq!(done.state(), JobState::Cancelled, "{done:?}");
    assert!(done.reason.starts_with("cancelled by alice"), "{done:?}");
    let clean =
        wait_until(Duration::from_secs(15), || async { Leftovers::of(&w.worker.state_dir, &w.outer).is_empty() }).await;
    assert!(clean, "the cancelled sandbox was left: {:#?}", Leftovers::of(&w.worker.state_dir, &w.outer));
    let logs = w.stack.gateway.as_ref().map(|g| g.output()).unwrap_or_default() + &w.worker.output();
    assert!(!logs.contains("time.sleep") && !logs.contains("bad input"), "a script or its output reached a log");
}
