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
pub use tokio_rustls::TlsAcceptor;

/// Concurrent HTTP/2 streams a client may open on one connection, unless a stand-in is served
/// with its own ([`Serving`]): 100, the least a server should allow (RFC 9113) and what
/// hosted providers commonly allow, so that a worker keeping more calls than that in flight
/// over HTTP/2 needs more than one connection here as it does there.
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

/// How a stand-in serves its connections.
#[derive(Clone)]
pub struct Serving {
    /// Concurrent HTTP/2 streams a client may open on one connection.
    pub max_http2_streams: u32,
    /// TLS, offering HTTP/2 and HTTP/1.1 by ALPN; plain http (HTTP/2 by prior knowledge)
    /// when absent.
    pub tls: Option<TlsAcceptor>,
}

impl Default for Serving {
    fn default() -> Self {
        Self {
            max_http2_streams: MAX_HTTP2_STREAMS,
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate chain: {0}")]
    Certificates(String),
    #[error("private key: {0}")]
    Key(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] tokio_rustls::rustls::Error),
}

/// A TLS acceptor for a certificate chain and its private key (PEM), offering HTTP/2 and
/// HTTP/1.1 by ALPN, as a hosted provider does; HTTP/1.1 alone unless `offers_http2`, as a
/// server without HTTP/2 does.
pub fn tls_acceptor(
    chain_pem: &[u8],
    key_pem: &[u8],
    offers_http2: bool,
) -> Result<TlsAcceptor, TlsError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificates(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider.into())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = if offers_http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// Serves `router` on `listener` in a background task until the process (or test) ends.
pub fn spawn_router(listener: TcpListener, router: Router) -> SocketAddr {
    spawn_serving(listener, router, Serving::default())
}

/// [`spawn_router`], served as `serving` says.
pub fn spawn_serving(listener: TcpListener, router: Router, serving: Serving) -> SocketAddr {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    tokio::spawn(serve_with(listener, router, serving));
    addr
}

/// Serves `router` on `listener`, HTTP/1.1 and HTTP/2 without TLS (prior knowledge), each
/// connection in its own task.
pub async fn serve(listener: TcpListener, router: Router) {
    serve_with(listener, router, Serving::default()).await;
}

/// [`serve`], as `serving` says.
pub async fn serve_with(listener: TcpListener, router: Router, serving: Serving) {
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
        let serving = serving.clone();
        tokio::spawn(async move {
            let served = match &serving.tls {
                None => serve_connection(stream, service, serving.max_http2_streams).await,
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        serve_connection(stream, service, serving.max_http2_streams).await
                    }
                    Err(err) => Err(err.into()),
                },
            };
            if let Err(err) = served {
                tracing::debug!(error = %err, "stub connection ended");
            }
        });
    }
}

type ConnectionError = Box<dyn std::error::Error + Send + Sync>;

async fn serve_connection<I>(
    io: I,
    service: TowerToHyperService<Router>,
    max_streams: u32,
) -> Result<(), ConnectionError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(max_streams);
    builder.serve_connection(TokioIo::new(io), service).await
}
