//! Local stand-ins for the outside world, used by tests, benchmarks, the README demo and
//! docker-compose: an OpenAI-compatible LLM ([`llm`]) whose latency, token counts and faults
//! are configurable, which counts what it sees and can play scripted tool-calling
//! conversations ([`script`]); an HTTP tool server ([`tools`]) that counts calls and effects;
//! and a webhook receiver ([`receiver`]) that verifies Standard Webhooks signatures and records
//! deliveries.

pub mod gate;
pub mod llm;
pub mod receiver;
pub mod script;
pub mod tools;

use std::net::SocketAddr;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Concurrent HTTP/2 streams a client may open on one connection, unless a stand-in is served
/// with its own ([`spawn_router_with_streams`]): 100, the least a server should allow
/// (RFC 9113) and what hosted providers commonly allow, so that a worker keeping more calls
/// than that in flight over HTTP/2 needs more than one connection here as it does there.
pub const MAX_HTTP2_STREAMS: u32 = 100;

/// Connections a stand-in's listener queues before it accepts them: as many as the kernel
/// allows (it caps this at `net.core.somaxconn`), not tokio's default of 1,024. A worker
/// opening 2,000 HTTP/1.1 connections at once would otherwise see the rest of its SYNs
/// dropped and retried a second later — a stall of the stand-in, not of the worker.
const LISTEN_BACKLOG: u32 = 65_535;

/// A listener on `addr` with [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A listener on a free loopback port, with [`LISTEN_BACKLOG`].
pub fn bind_loopback() -> std::io::Result<TcpListener> {
    bind(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Serves `router` on `listener` in a background task until the process (or test) ends.
pub fn spawn_router(listener: TcpListener, router: Router) -> SocketAddr {
    spawn_router_with_streams(listener, router, MAX_HTTP2_STREAMS)
}

/// [`spawn_router`], allowing `max_streams` concurrent HTTP/2 streams per connection.
pub fn spawn_router_with_streams(
    listener: TcpListener,
    router: Router,
    max_streams: u32,
) -> SocketAddr {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    tokio::spawn(serve_with_streams(listener, router, max_streams));
    addr
}

/// Serves `router` on `listener`, HTTP/1.1 and HTTP/2 without TLS (prior knowledge), each
/// connection in its own task.
pub async fn serve(listener: TcpListener, router: Router) {
    serve_with_streams(listener, router, MAX_HTTP2_STREAMS).await;
}

/// [`serve`], allowing `max_streams` concurrent HTTP/2 streams per connection.
pub async fn serve_with_streams(listener: TcpListener, router: Router, max_streams: u32) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, typically: back off rather than spin.
                tracing::warn!(error = %err, "stub cannot accept");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http2().max_concurrent_streams(max_streams);
            if let Err(err) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %err, "stub connection ended");
            }
        });
    }
}
