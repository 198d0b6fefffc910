//! Accepted connections for servers whose requests are small and latency-bound, and the cap
//! on how many a server holds open at once.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// A connection holding one of its server's slots until it closes.
pub struct Counted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

/// [`incoming`] holding at most `max` connections open: one more is accepted and closed at
/// once (so that it neither waits in the kernel's backlog nor costs a TLS handshake), and the
/// slot frees when a connection closes. Whoever can reach the port cannot take every file
/// descriptor of the server.
pub fn incoming_bounded(
    listener: TcpListener,
    max: usize,
) -> impl futures_util::Stream<Item = std::io::Result<Counted>> {
    let slots = Arc::new(Semaphore::new(max));
    futures_util::stream::unfold((listener, slots), move |(listener, slots)| async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => return Some((Err(e), (listener, slots))),
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(max, "connection refused: the server holds its maximum of connections");
                continue;
            };
            let _ = stream.set_nodelay(true);
            return Some((Ok(Counted { stream, _slot: slot }), (listener, slots)));
        }
    })
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The peer's addresses, as for a bare `TcpStream` (the TLS layer wraps them with the peer's
/// certificates).
impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn one_connection_over_the_cap_is_closed_and_a_closed_one_frees_its_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut accepted = Box::pin(incoming_bounded(listener, 1));
        let _first = TcpStream::connect(addr).await.expect("connect");
        let held = accepted.next().await.expect("a connection").expect("accepted");

        // The second is accepted by the kernel, then closed by the server: it reads EOF.
        let mut second = TcpStream::connect(addr).await.expect("connect");
        let next = tokio::spawn(async move { accepted.next().await.map(|c| c.is_ok()) });
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), second.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0))), "over the cap, closed at once: {read:?}");

        drop(held);
        let _third = TcpStream::connect(addr).await.expect("connect");
        let served = tokio::time::timeout(std::time::Duration::from_secs(5), next).await;
        assert!(matches!(served, Ok(Ok(Some(true)))), "the freed slot serves the next one: {served:?}");
    }
}
