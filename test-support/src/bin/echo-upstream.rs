//! The echo upstream as a program, for the local stack: `echo-upstream PORT`.

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(8080);
    let upstream = qiria_test_support::upstream::EchoUpstream::start_on(port).await;
    eprintln!("echo upstream on 127.0.0.1:{}", upstream.port);
    std::future::pending::<()>().await;
}
