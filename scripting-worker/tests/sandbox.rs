//! The scripting worker with the real runsc, as root, as in production: hostile scripts against
//! canaries the test plants on the host (so a broken sandbox fails the test), each limit
//! against its own bomb, and nothing left behind — processes, cgroups, runsc state, bundles,
//! mounts are listed before and after. Every run is under an outer cgroup with memory and
//! pids limits of its own. These tests fail, never skip, when runsc is missing.

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qiria_test_support::tls::{pki_with_clients, TestPki};
use qiria_test_support::wait_until;
use qiria_test_support::worker::{Leftovers, OuterCgroup, ScriptingWorker, GATEWAY_ID, OTHER_ID};
use scripting_worker::pb::script_runner_client::ScriptRunnerClient;
use scripting_worker::pb::{RunRequest, RunResult};
use tonic::transport::Channel;

/// Limits small enough to hit quickly, each below the outer cgroup's.
const LIMITS: &str = "[limits]\nwall_ms = 8000\ncpu_ms = 1500\nmemory_bytes = 268435456\npids = 128\n\
                      open_files = 64\nfile_size_bytes = 1048576\ntmp_bytes = 4194304\n\
                      artifact_bytes = 1048576\noutput_bytes = 65536\n";

struct Harness {
    _dir: tempfile::TempDir,
    outer: OuterCgroup,
    pki: TestPki,
    worker: ScriptingWorker,
}

impl Harness {
    async fn start(extra_toml: &str) -> Self {
        Self::start_with("runsc", extra_toml).await
    }

    async fn start_with(backend: &str, extra_toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let outer = OuterCgroup::new(2 << 30, 2048);
        let pki = pki_with_clients(GATEWAY_ID, &[OTHER_ID]);
        let state = dir.path().join("state");
        let extra = format!("{LIMITS}{extra_toml}");
        let worker = ScriptingWorker::start_with_backend(dir.path(), &state, &pki, &outer, backend, &extra).await;
        Self { _dir: dir, outer, pki, worker }
    }

    async fn client(&self) -> ScriptRunnerClient<Channel> {
        let channel = self.worker.channel(&self.pki, &self.pki.client_cert_pem, &self.pki.client_key_pem).await;
        ScriptRunnerClient::new(channel).max_decoding_message_size(16 << 20)
    }

    async fn run(&self, body: &str) -> RunResult {
        let request = RunRequest { job_id: "job-test".into(), language: "python".into(), body: body.into() };
        match self.client().await.run(request).await {
            Ok(result) => result.into_inner(),
            Err(status) => panic!("run failed: {status:?}\nworker log:\n{}", self.worker.output()),
        }
    }

    fn leftovers(&self) -> Leftovers {
        Leftovers::of(&self.worker.state_dir, &self.outer)
    }

    /// Nothing of any run is left (waits a moment: cleanup ends after the answer is sent).
    async fn assert_nothing_left(&self, after: &str) {
        let clean = wait_until(Duration::from_secs(10), || async { self.leftovers().is_empty() }).await;
        assert!(clean, "after {after}, left behind: {:#?}", self.leftovers());
    }
}

fn script(path: &str, values: &[(&str, String)]) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(path);
    let mut text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    for (key, value) in values {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    assert!(!text.contains("{{"), "{path}: a placeholder was not filled");
    text
}

/// The script's verdict line: what escaped (must be nothing) and what was blocked.
fn verdict(result: &RunResult, case: &str) -> serde_json::Value {
    let line = result.stdout.lines().last().unwrap_or_default();
    let verdict: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|_| panic!("{case}: no verdict: {result:?}"));
    assert_eq!(result.exit_code, 0, "{case}: {result:?}");
    assert!(result.limits_hit.is_empty(), "{case}: {result:?}");
    assert_eq!(verdict["escaped"], serde_json::json!([]), "{case} escaped: {verdict}");
    assert!(verdict["blocked"].as_array().is_some_and(|b| !b.is_empty()), "{case}: nothing tried: {verdict}");
    verdict
}

/// A TCP listener on the host that counts the connections it accepts.
fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("0.0.0.0:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stream.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (port, accepted)
}

/// A host address that is not loopback (the sandbox must not reach it either), if any.
fn host_ip() -> String {
    let probe = UdpSocket::bind("0.0.0.0:0").expect("udp");
    // No packet is sent: connect only picks the route's source address.
    match probe.connect("10.255.255.1:9").and_then(|()| probe.local_addr()) {
        Ok(addr) => addr.ip().to_string(),
        Err(_) => "127.0.0.1".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_scripts_reach_nothing_of_the_host_and_are_reported_cleanly() {
    hostile_suite("runsc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_bubblewrap_too_hostile_scripts_reach_nothing_of_the_host() {
    hostile_suite("bubblewrap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limit_stops_its_own_bomb_and_the_next_run_works() {
    limits_suite("runsc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_bubblewrap_too_each_limit_stops_its_own_bomb() {
    limits_suite("bubblewrap").await;
}

async fn hostile_suite(backend: &str) {
    let h = Harness::start_with(backend, "").await;
    let before = h.leftovers();
    assert!(before.is_empty(), "a fresh worker has leftovers: {before:#?}");

    // The listener's own connect proves it would count one: the test can fail.
    let (port, accepted) = counting_listener();
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the listener takes a host connect");
    assert!(wait_until(Duration::from_secs(5), || async { accepted.load(Ordering::SeqCst) == 1 }).await);
    let result = h.run(&script("hostile/net_connect.py", &[("PORT", port.to_string()), ("HOST_IP", host_ip())])).await;
    verdict(&result, "net_connect");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the sandbox reached the host's listener");

    let dns = UdpSocket::bind("127.0.0.1:0").expect("dns listener");
    dns.set_nonblocking(true).expect("nonblocking");
    let dns_port = dns.local_addr().expect("addr").port();
    let result = h.run(&script("hostile/dns_resolve.py", &[("DNS_PORT", dns_port.to_string())])).await;
    verdict(&result, "dns_resolve");
    let mut buf = [0u8; 512];
    assert!(dns.recv_from(&mut buf).is_err(), "a DNS query from the sandbox reached the host");

    let canary_dir = tempfile::tempdir().expect("canary dir");
    let canary_file = canary_dir.path().join("canary.txt");
    let canary_content = format!("host-secret-{}", rand_suffix());
    std::fs::write(&canary_file, &canary_content).expect("canary file");
    let token = FakeServiceAccountToken::plant(&canary_content);
    let result = h
        .run(&script(
            "hostile/host_files.py",
            &[
                ("CANARY_FILE", canary_file.display().to_string()),
                ("CANARY_CONTENT_REVERSED", canary_content.chars().rev().collect()),
            ],
        ))
        .await;
    verdict(&result, "host_files");
    drop(token);

    let result = h.run(&script("hostile/proc_env.py", &[("CANARY_VALUE", h.worker.canary.clone())])).await;
    verdict(&result, "proc_env");

    let result = h.run(&script("hostile/write_outside.py", &[])).await;
    verdict(&result, "write_outside");
    assert_eq!(result.artifacts.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["ok"], "{result:?}");
    assert_eq!(result.artifacts[0].content, b"fine");

    let result = h.run(&script("hostile/privileges.py", &[])).await;
    let verdict = verdict(&result, "privileges");
    assert_eq!(verdict["uid"], 65534, "{verdict}");

    h.assert_nothing_left("the hostile suite").await;
}

async fn limits_suite(backend: &str) {
    let h = Harness::start_with(backend, "").await;
    let limited = [
        ("limits/fork_bomb.py", "pids"),
        ("limits/memory_bomb.py", "oom"),
        ("limits/infinite_loop.py", "timeout"),
        ("limits/cpu_spin.py", "cpu_time"),
        ("limits/huge_print.py", "output_truncated"),
        ("limits/huge_artifact.py", "artifact_too_large"),
    ];
    for (case, limit) in limited {
        let result = h.run(&script(case, &[])).await;
        let shown = RunResult { artifacts: Vec::new(), ..result.clone() };
        let sizes: Vec<u64> = result.artifacts.iter().map(|a| a.size).collect();
        assert!(
            result.limits_hit.iter().any(|l| l == limit),
            "{case}: expected {limit}: {shown:?}, artifacts {sizes:?}"
        );
        match limit {
            // The script wrote on; only the cap's worth came back, and no artifact at all.
            "output_truncated" => assert_eq!(result.stdout.len(), 65536, "{case}"),
            "artifact_too_large" => assert!(result.artifacts.is_empty(), "{case}"),
            _ => assert_eq!(result.exit_code, -1, "{case}: a killed sandbox has no exit status: {result:?}"),
        }
        if limit == "cpu_time" {
            assert!(result.cpu_ms >= 1500, "{case}: stopped before its CPU time: {result:?}");
        }
        let next = h.run("print('still fine')").await;
        assert_eq!((next.exit_code, next.stdout.as_str()), (0, "still fine\n"), "after {case}: {next:?}");
        h.assert_nothing_left(case).await;
    }

    // Enforced inside the sandbox: the script sees the error, the run ends normally.
    let tmp = h.run(&script("limits/tmp_fill.py", &[])).await;
    let tmp: serde_json::Value = serde_json::from_str(tmp.stdout.trim()).expect("tmp_fill verdict");
    assert_eq!(tmp["error"], "ENOSPC", "{tmp}");
    assert!(tmp["written"].as_u64().is_some_and(|w| (3 << 20..=4 << 20).contains(&w)), "{tmp}");
    let files = h.run(&script("limits/open_files.py", &[])).await;
    let files: serde_json::Value = serde_json::from_str(files.stdout.trim()).expect("open_files verdict");
    assert_eq!(files["error"], "EMFILE", "{files}");
    assert!(files["opened"].as_u64().is_some_and(|n| n < 64), "{files}");
    let size = h.run(&script("limits/file_size.py", &[])).await;
    let size: serde_json::Value = serde_json::from_str(size.stdout.trim()).expect("file_size verdict");
    assert_eq!((size["error"].as_str(), size["written"].as_u64()), (Some("EFBIG"), Some(1 << 20)), "{size}");
    h.assert_nothing_left("the limits").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_dies_with_its_run_and_a_killed_worker_leaves_nothing() {
    let mut h = Harness::start("").await;
    let result = h.run(&script("limits/daemon.py", &[])).await;
    assert_eq!((result.exit_code, result.stdout.as_str()), (0, "daemon started\n"), "{result:?}");
    h.assert_nothing_left("a daemonising script").await;

    // Killed mid-run: the sandbox is running (runsc and its sandbox are processes) when the
    // worker dies.
    let client = h.client().await;
    let request = RunRequest {
        job_id: "job-killed".into(),
        language: "python".into(),
        body: "import time\ntime.sleep(60)".into(),
    };
    let call = tokio::spawn(async move { client.clone().run(request).await });
    let running = wait_until(Duration::from_secs(20), || async { h.leftovers().processes.len() >= 2 }).await;
    assert!(running, "the run never started: {:#?}\n{}", h.leftovers(), h.worker.output());
    h.worker.kill();
    assert!(call.await.expect("joined").is_err(), "a killed worker answered");
    h.worker.restart().await;
    h.assert_nothing_left("the worker was killed mid-run and restarted").await;
    let swept = h.worker.health().await;
    assert!(swept["swept"]["cgroups"].as_u64().is_some_and(|n| n >= 1), "start-up swept nothing: {swept}");
    let next = h.run("print('after the crash')").await;
    assert_eq!(next.stdout, "after the crash\n");
    h.assert_nothing_left("the run after the restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_gateway_identity_runs_scripts_and_a_full_pool_refuses() {
    let h = Harness::start("[pool]\nsandboxes = 1\nqueue = 1\n").await;
    let request = |body: &str| RunRequest { job_id: "job-1".into(), language: "python".into(), body: body.into() };

    // Same CA, another workload's identity: refused before any sandbox is made.
    let (_, cert, key) = &h.pki.other_clients[0];
    let other = ScriptRunnerClient::new(h.worker.channel(&h.pki, cert, key).await);
    let refused = other.clone().run(request("print(1)")).await.expect_err("another identity ran a script");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // No client certificate at all: the handshake itself fails.
    let plain = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&h.pki.ca_pem))
        .domain_name("localhost");
    let anonymous =
        tonic::transport::Endpoint::from_shared(h.worker.url()).expect("url").tls_config(plain).expect("tls");
    let anonymous = anonymous.connect_lazy();
    let refused =
        ScriptRunnerClient::new(anonymous).run(request("print(1)")).await.expect_err("no certificate ran a script");
    assert_ne!(refused.code(), tonic::Code::Ok);

    let invalid = h.client().await.run(RunRequest { language: "bash".into(), ..request("ls") }).await;
    let invalid = invalid.expect_err("bash ran");
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    assert!(invalid.message().starts_with("language"), "{invalid:?}");

    // One sandbox, one queued: the third call is refused at once.
    let slow = |mut client: ScriptRunnerClient<Channel>| async move {
        client.run(request("import time\ntime.sleep(3)")).await
    };
    let first = tokio::spawn(slow(h.client().await));
    assert!(wait_until(Duration::from_secs(20), || async { h.leftovers().processes.len() >= 2 }).await);
    let second = tokio::spawn(slow(h.client().await));
    let queued = wait_until(Duration::from_secs(10), || async {
        metric(h.worker.admin_port, "qiria_worker_queue_waiting").await == Some(1.0)
    })
    .await;
    assert!(queued, "the second run never queued");
    let third = h.client().await.run(request("print(3)")).await.expect_err("a third run was taken");
    assert_eq!(third.code(), tonic::Code::ResourceExhausted, "{third:?}");
    assert_eq!(first.await.expect("joined").expect("first ran").into_inner().exit_code, 0);
    assert_eq!(second.await.expect("joined").expect("second ran").into_inner().exit_code, 0);
    // Audited: the refused identity, and each run by its script's hash (never its body).
    let log = h.worker.output();
    assert!(log.contains("\"event\":\"script_refused\"") && log.contains(OTHER_ID), "no script_refused event:\n{log}");
    let ran = log.lines().filter(|l| l.contains("\"event\":\"script_ran\"")).count();
    assert!(ran >= 2 && log.contains(GATEWAY_ID) && log.contains("script_sha256"), "runs not audited:\n{log}");
    assert!(!log.contains("time.sleep"), "a script body reached the log");
    h.assert_nothing_left("the pool test").await;
}

/// A TCP echo server on the host that counts its connections.
fn echo_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().expect("clone");
                let _ = std::io::copy(&mut reader, &mut stream);
            });
        }
    });
    (port, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_goes_only_through_the_proxy_and_only_to_allowed_names() {
    let (allowed, allowed_seen) = echo_listener();
    let (other, other_seen) = echo_listener();
    // The test's "internet" is loopback, so private addresses are let through here; the
    // default refuses them (unit-tested in `egress`).
    let egress = format!("[egress]\nallowed_hosts = [\"localhost:{allowed}\"]\nallow_private_addresses = true\n");
    let h = Harness::start(&egress).await;
    let result = h
        .run(&script("hostile/egress.py", &[("ALLOWED_PORT", allowed.to_string()), ("OTHER_PORT", other.to_string())]))
        .await;
    let line = result.stdout.lines().last().unwrap_or_default();
    let seen: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("no verdict: {result:?}"));
    assert_eq!(seen["proxy_env"], "http://127.0.0.1:3128", "{seen}");
    assert_eq!(
        (seen["allowed_status"].as_str(), seen["tunnel"].as_str()),
        (Some("HTTP/1.1 200 Connection Established"), Some("ping")),
        "{seen}"
    );
    for target in [format!("localhost:{other}"), format!("127.0.0.1:{allowed}")] {
        assert_eq!(seen["refused"][&target], "HTTP/1.1 403 Forbidden", "{target}: {seen}");
    }
    assert_eq!(seen["plain_http"], "HTTP/1.1 403 Forbidden", "{seen}");
    assert!(seen["direct"].as_str().is_some_and(|d| d.starts_with("refused")), "{seen}");
    assert_eq!(
        (allowed_seen.load(Ordering::SeqCst), other_seen.load(Ordering::SeqCst)),
        (1, 0),
        "only the tunnel reached a host listener"
    );
    let attempts: Vec<(String, u32, bool)> =
        result.egress.iter().map(|a| (a.host.clone(), a.port, a.allowed)).collect();
    assert!(attempts.contains(&("localhost".into(), u32::from(allowed), true)), "{attempts:?}");
    assert!(attempts.contains(&("localhost".into(), u32::from(other), false)), "{attempts:?}");
    assert!(attempts.contains(&("127.0.0.1".into(), u32::from(allowed), false)), "{attempts:?}");
    h.assert_nothing_left("an egress run").await;
}

async fn metric(admin_port: u16, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7)
}

/// A fake service-account token where a pod's would be on the host, removed on drop.
struct FakeServiceAccountToken;

impl FakeServiceAccountToken {
    const DIR: &'static str = "/var/run/secrets/kubernetes.io/serviceaccount";

    fn plant(content: &str) -> Self {
        std::fs::create_dir_all(Self::DIR).expect("service-account dir (root?)");
        std::fs::write(Path::new(Self::DIR).join("token"), content).expect("fake token");
        Self
    }
}

impl Drop for FakeServiceAccountToken {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(Path::new(Self::DIR).join("token"));
    }
}
