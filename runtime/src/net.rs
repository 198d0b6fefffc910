//! Accepted connections for servers whose requests are small and latency-bound.

use tokio::net::{TcpListener, TcpStream};

/// Accepted connections of `listener`, with Nagle's algorithm off: a Check is one small
/// request and one small response, and delayed ACKs would add up to 40 ms to each.
pub fn incoming(listener: TcpListener) -> impl futures_util::Stream<Item = std::io::Result<TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((accepted, listener))
    })
}

/// Binds `addr`; a failure names the setting it came from (`server.grpc_addr`…), so an
/// operator knows which port is taken.
pub async fn bind(addr: std::net::SocketAddr, setting: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr} (`{setting}`): {e}")))
}
