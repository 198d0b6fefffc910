//! Helpers shared by Qiria's integration tests: real processes (Envoy, our binaries) on
//! loopback ports, an echo upstream that shows what got through, a Kestra contract double, and
//! signing keys to mint tokens with. Every process is killed when its handle drops.

pub mod authz;
pub mod call;
pub mod envoy;
pub mod gateway;
pub mod issuer;
pub mod jobs;
pub mod kestra;
pub mod manifests;
pub mod mesh;
pub mod netpol;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod recorder;
pub mod siem;
pub mod tls;
pub mod tokens;
pub mod upstream;
pub mod worker;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The workspace root (where `envoy/`, `policies/` and `.venv/` live).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// A binary of this workspace (`authz`, `issuer`…), built beside the running test: tests of
/// one crate start another crate's binary (`./dev test` builds the whole workspace).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // Tests run from target/<profile>/deps/, binaries (benchmarks among them) sit in
    // target/<profile>/.
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let profile_dir = if dir.ends_with("deps") { dir.parent().map(PathBuf::from).unwrap_or_default() } else { dir };
    let bin = profile_dir.join(name);
    assert!(bin.is_file(), "no {} (run `cargo build --workspace --bins` or ./dev test)", bin.display());
    bin
}

/// Ports handed to test services: below Linux's ephemeral range (32768–60999), so that no
/// outgoing connection of a concurrent test can take one between our check and the service's
/// own bind (port 0 handed out exactly those, and a test once lost its port that way).
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port that is free now and that no other call in this process has handed out.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    // Each test process starts at its own offset, so processes rarely walk the same ports.
    let start = std::process::id().wrapping_mul(7919) % span;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = TEST_PORTS.start + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}")
}

/// Polls `probe` every 50 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Waits until `http://127.0.0.1:<admin_port>/health` answers 200; panics with `process`'s
/// output otherwise (every Qiria service has this admin endpoint).
pub async fn wait_healthy(process: &process::Process, admin_port: u16) {
    let url = format!("http://127.0.0.1:{admin_port}/health");
    let ready = wait_until(Duration::from_secs(30), || {
        let url = url.clone();
        async move { reqwest::get(url).await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    if !ready {
        process.fail("did not become healthy");
    }
}

/// The `/health` document of the service whose admin port is `admin_port` (null if none).
pub async fn health(admin_port: u16) -> serde_json::Value {
    match reqwest::get(format!("http://127.0.0.1:{admin_port}/health")).await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

/// An HTTP/1.1 client, or with `h2c` an HTTP/2 prior-knowledge one; neither follows redirects.
pub fn client(h2c: bool) -> reqwest::Client {
    let base = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(10));
    let base = if h2c { base.http2_prior_knowledge() } else { base.http1_only() };
    base.build().expect("HTTP client")
}
