//! Helpers shared by Qiria's integration tests: real processes (Envoy, our binaries) on
//! loopback ports, an echo upstream that shows what got through, and signing keys to mint
//! tokens with. Every process is killed when its handle drops.

pub mod authz;
pub mod call;
pub mod envoy;
pub mod postgres;
pub mod process;
pub mod tls;
pub mod tokens;
pub mod upstream;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The workspace root (where `envoy/`, `policies/` and `.venv/` live).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free loopback port")
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

/// An HTTP/1.1 client, or with `h2c` an HTTP/2 prior-knowledge one; neither follows redirects.
pub fn client(h2c: bool) -> reqwest::Client {
    let base = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(10));
    let base = if h2c { base.http2_prior_knowledge() } else { base.http1_only() };
    base.build().expect("HTTP client")
}
