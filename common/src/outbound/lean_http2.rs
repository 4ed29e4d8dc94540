//! A provider lane's own HTTP/2 connection, spoken through hyper without reqwest's layers.
//!
//! Why: a call through reqwest builds a request, clones its header map for its retry and
//! redirect layers and boxes their futures, and goes through a pool. A lane already is one
//! connection, so it needs none of that: it keeps the connection's sender and clones it per
//! call. With 2,000 calls waiting on a slow model, the worker's peak fell by 7.6 MB (8 %) and
//! its CPU per job by about a tenth (docs/BENCHMARKS.md, the ninth session).
//!
//! What it does: connects (TCP, and TLS with ALPN over https, trusting the public roots and the
//! operator's extra ones), speaks HTTP/2 (prior knowledge over plain http), pings while calls
//! are in flight, reconnects when the connection is gone (closed, or a ping unanswered) or
//! has stood idle past the idle timeout, caps the response size.
//! What it leaves to reqwest (the lane's client), answering [`Sent::Elsewhere`]: a URL of
//! another origin, a redirect (reqwest sends the request again and follows it), and a server
//! that chose HTTP/1.1 in ALPN (`auto`); the route leaves it all to reqwest when the
//! environment's proxy rules send its URL through a proxy. The caller applies the timeout.
//!
//! A request is sent again on a fresh connection only when its connection was found closed
//! before the request went out. Once it is sent, a failure is the caller's to decide on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use url::{Host, Url};

use super::{
    error_chain, rate_headers, ExtraRoots, OutboundError, OutboundResponse, ProxyRules, Request,
    CONNECT_TIMEOUT, POOL_IDLE_TIMEOUT, USER_AGENT,
};
use crate::config::HttpVersion;

/// How often a connection with calls in flight is pinged, and how long an answer may take.
/// Not more often: some servers answer frequent pings with GOAWAY.
/// (Shorter in unit tests, which wait for an unanswered ping.)
const KEEP_ALIVE_INTERVAL: Duration = if cfg!(test) {
    Duration::from_millis(200)
} else {
    Duration::from_secs(60)
};
const KEEP_ALIVE_TIMEOUT: Duration = if cfg!(test) {
    Duration::from_millis(200)
} else {
    Duration::from_secs(20)
};

/// What a lane's connection made of a request.
pub(super) enum Sent {
    Answered(OutboundResponse),
    /// Not for this connection (see the module's doc): the lane's reqwest client sends it.
    Elsewhere,
}

/// Where a route's lanes connect, shared by them.
pub(super) struct Dial {
    scheme: String,
    /// As the URL spells it (normalised by the parser), to tell a request's origin cheaply.
    host_str: String,
    host: Host<String>,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Set when the server chose HTTP/1.1 in ALPN: every lane leaves its calls to reqwest.
    chose_http1: AtomicBool,
}

impl Dial {
    /// How a route's lanes reach `base_url`; `None` when reqwest must (a proxy applies, or the
    /// URL is not one this connection speaks).
    pub(super) fn new(version: HttpVersion, base_url: &Url, roots: &ExtraRoots) -> Option<Self> {
        let proxied = ProxyRules::any_from_environment()
            .is_some_and(|rules| !rules.reaches_directly(base_url));
        if proxied {
            return None;
        }
        let host = base_url.host()?.to_owned();
        let port = base_url.port_or_known_default()?;
        let tls = match base_url.scheme() {
            "https" => {
                let name = match &host {
                    Host::Domain(name) => ServerName::try_from(name.clone()).ok()?,
                    Host::Ipv4(ip) => ServerName::from(std::net::IpAddr::V4(*ip)),
                    Host::Ipv6(ip) => ServerName::from(std::net::IpAddr::V6(*ip)),
                };
                let config = tls_config(version, roots)
                    .inspect_err(
                        |e| tracing::warn!(error = %e, "provider lanes' TLS; reqwest's instead"),
                    )
                    .ok()?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
            // Prior knowledge: plain http speaks HTTP/2 only when asked to.
            "http" if version == HttpVersion::Http2 => None,
            _ => return None,
        };
        Some(Self {
            scheme: base_url.scheme().to_owned(),
            host_str: base_url.host_str()?.to_owned(),
            host,
            port,
            tls,
            chose_http1: AtomicBool::new(false),
        })
    }

    /// Whether a lane's connection takes a request for `url`.
    fn serves(&self, url: &Url) -> bool {
        !self.chose_http1.load(Ordering::Relaxed)
            && url.scheme() == self.scheme
            && url.host_str() == Some(self.host_str.as_str())
            && url.port_or_known_default() == Some(self.port)
    }

    /// A new HTTP/2 connection; `None` when the server chose HTTP/1.1.
    async fn connect(&self) -> Result<Option<SendRequest<Full<Bytes>>>, OutboundError> {
        let tcp = match &self.host {
            Host::Domain(name) => TcpStream::connect((name.as_str(), self.port)).await,
            Host::Ipv4(ip) => TcpStream::connect((*ip, self.port)).await,
            Host::Ipv6(ip) => TcpStream::connect((*ip, self.port)).await,
        }
        .map_err(|e| OutboundError::Connect(e.to_string()))?;
        tcp.set_nodelay(true)
            .map_err(|e| OutboundError::Connect(e.to_string()))?;
        let Some((connector, name)) = &self.tls else {
            return handshake(tcp).await.map(Some);
        };
        let tls = connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| OutboundError::Connect(format!("TLS: {}", error_chain(&e))))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            self.chose_http1.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        handshake(tls).await.map(Some)
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, OutboundError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // While calls are in flight, a peer that vanished without a word (no FIN, no
        // GOAWAY) is found by a ping going unanswered, and the lane connects again; else
        // each of its calls would run into its timeout on a dead connection.
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(false)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| OutboundError::Connect(error_chain(&e)))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %error_chain(&err), "a provider's HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

/// The public roots and the operator's, offering HTTP/2 in ALPN (and HTTP/1.1 for `auto`).
fn tls_config(version: HttpVersion, roots: &ExtraRoots) -> Result<ClientConfig, rustls::Error> {
    let mut store = RootCertStore::empty();
    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in roots.ders() {
        store.add(der.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = match version {
        HttpVersion::Http2 => vec![b"h2".to_vec()],
        HttpVersion::Auto | HttpVersion::Http1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Ok(config)
}

/// One lane's connection: its sender, cloned by each call, and when it was last used.
pub(super) struct Connection {
    dial: Arc<Dial>,
    current: tokio::sync::Mutex<Option<(SendRequest<Full<Bytes>>, Instant)>>,
}

impl Connection {
    pub(super) fn new(dial: Arc<Dial>) -> Self {
        Self {
            dial,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether this connection takes a request for `url` (else the lane's reqwest client).
    pub(super) fn serves(&self, url: &Url) -> bool {
        self.dial.serves(url)
    }

    /// A sender on a live connection, connecting when there is none, it has closed, or it has
    /// stood idle too long (a peer or a middlebox may have dropped it without a word); `None`
    /// when the server chose HTTP/1.1. Calls wait for one connect rather than each making one.
    async fn sender(&self) -> Result<Option<SendRequest<Full<Bytes>>>, OutboundError> {
        let mut current = self.current.lock().await;
        let now = Instant::now();
        if let Some((sender, used)) = current.as_mut() {
            if !sender.is_closed() && now.duration_since(*used) < POOL_IDLE_TIMEOUT {
                *used = now;
                return Ok(Some(sender.clone()));
            }
        }
        *current = None;
        // Boxed: a connect's future (TLS included) is large, and is rarely needed.
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, Box::pin(self.dial.connect()))
            .await
            .map_err(|_| OutboundError::Connect("connecting timed out".into()))??;
        Ok(connected.inspect(|sender| *current = Some((sender.clone(), now))))
    }

    /// Sends `request` (its body given apart, as bytes) and reads the whole response.
    pub(super) async fn send(
        &self,
        request: &Request<'_>,
        body: Option<&Bytes>,
        max_bytes: usize,
    ) -> Result<Sent, OutboundError> {
        let Some(mut sender) = self.sender().await? else {
            return Ok(Sent::Elsewhere);
        };
        let response = match sender.try_send_request(http_request(request, body)?).await {
            Ok(response) => response,
            Err(mut failed) => {
                let Some(unsent) = failed.take_message() else {
                    return Err(OutboundError::Other(error_chain(&failed.into_error())));
                };
                // The connection went away before the request went out (hyper gave it
                // back): the server has none of it, so it goes once more on a new one.
                let Some(mut sender) = self.sender().await? else {
                    return Ok(Sent::Elsewhere);
                };
                sender
                    .send_request(unsent)
                    .await
                    .map_err(|e| OutboundError::Other(error_chain(&e)))?
            }
        };
        if response.status().is_redirection() && response.headers().contains_key("location") {
            return Ok(Sent::Elsewhere);
        }
        read_response(response, max_bytes).await.map(Sent::Answered)
    }
}

/// The request as hyper takes it; a JSON body when there is one.
fn http_request(
    request: &Request<'_>,
    body: Option<&Bytes>,
) -> Result<http::Request<Full<Bytes>>, OutboundError> {
    let mut builder = http::Request::builder()
        .method(request.method.clone())
        .uri(request.url.as_str())
        .header(http::header::USER_AGENT, USER_AGENT);
    if body.is_some() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    }
    for (name, value) in request.headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(body.cloned().unwrap_or_default()))
        .map_err(|e| OutboundError::Other(format!("building the request: {e}")))
}

async fn read_response(
    response: http::Response<hyper::body::Incoming>,
    max_bytes: usize,
) -> Result<OutboundResponse, OutboundError> {
    let (parts, mut incoming) = response.into_parts();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_bytes as u64) {
        return Err(OutboundError::TooLarge(max_bytes));
    }
    // One DATA frame (the usual answer) is kept as it came; more are joined.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| OutboundError::Other(error_chain(&e)))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let held = first.as_ref().map_or(0, Bytes::len) + joined.len();
        if held + data.len() > max_bytes {
            return Err(OutboundError::TooLarge(max_bytes));
        }
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            Some(earlier) => {
                joined.extend_from_slice(&earlier);
                joined.extend_from_slice(&data);
            }
            None => joined.extend_from_slice(&data),
        }
    }
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Ok(OutboundResponse {
        status: parts.status.as_u16(),
        retry_after: header("retry-after"),
        retry_after_ms: header("retry-after-ms"),
        rate_headers: rate_headers(&parts.headers),
        body: first.unwrap_or_else(|| joined.freeze()),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::outbound::{Destination, Outbound, ProviderRoute, RouteSettings};

    /// A lane's connection to `url`, dialled as `version` asks.
    fn connection_to(version: HttpVersion, url: &Url, roots: &ExtraRoots) -> Connection {
        Connection::new(Arc::new(Dial::new(version, url, roots).expect("dial")))
    }

    /// A POST without a body.
    fn post(url: &Url, timeout: Duration) -> Request<'_> {
        Request {
            method: reqwest::Method::POST,
            url,
            headers: &[],
            json_body: None,
            timeout,
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../tests/fixtures/tls/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// A TLS server (the test CA's certificate) that offers only HTTP/1.1 in ALPN.
    async fn http1_only_tls_server() -> std::net::SocketAddr {
        use tokio_rustls::rustls::pki_types::pem::PemObject as _;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(&fixture("server.pem"))
            .collect::<Result<Vec<_>, _>>()
            .expect("chain");
        let key = PrivateKeyDer::from_pem_slice(&fixture("server.key")).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        addr
    }

    /// An HTTP/2 server (prior knowledge) answering `/v1` with a 307 to `/moved` and `/moved`
    /// with `moved`; the paths it was asked for, in order.
    async fn redirecting_http2_server() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>)
    {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = asked.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let path = req.uri().path().to_owned();
                    seen.lock().expect("paths").push(path.clone());
                    async move {
                        let response = if path == "/moved" {
                            http::Response::new(Full::new(Bytes::from_static(b"moved")))
                        } else {
                            let mut response = http::Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = http::StatusCode::TEMPORARY_REDIRECT;
                            response
                                .headers_mut()
                                .insert("location", http::HeaderValue::from_static("/moved"));
                            response
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        (addr, asked)
    }

    /// A redirect is left to the lane's reqwest client, which sends the request again and
    /// follows it (as a provider call through reqwest always did).
    #[tokio::test]
    async fn a_redirect_is_followed_by_the_lanes_reqwest_client() {
        let (addr, asked) = redirecting_http2_server().await;
        let url = Url::parse(&format!("http://{addr}/v1")).expect("url");
        let route = ProviderRoute::new(RouteSettings {
            version: HttpVersion::Http2,
            base_url: &url,
            concurrency: 4,
            streams_per_connection: 100,
            extra_roots: &ExtraRoots::default(),
        });
        let outbound = Outbound::new(false, 1024, &Default::default());
        let response = outbound
            .post_json(
                Destination::Provider(&route),
                &url,
                &[],
                b"{}".to_vec(),
                Duration::from_secs(5),
            )
            .await
            .expect("answered");
        assert_eq!(response.status, 200);
        assert_eq!(&response.body[..], b"moved");
        let asked = asked.lock().expect("paths").clone();
        assert_eq!(
            asked,
            ["/v1", "/v1", "/moved"],
            "the lane's connection, then reqwest"
        );
    }

    /// An HTTP/2 server (prior knowledge) that closes each connection after one answer, as a
    /// provider's load balancer closes connections; the connections it took.
    async fn one_answer_per_connection_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let connections = Arc::new(AtomicUsize::new(0));
        let taken = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                taken.fetch_add(1, Ordering::SeqCst);
                let answered = Arc::new(tokio::sync::Notify::new());
                let notify = answered.clone();
                let service = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    notify.notify_one();
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                tokio::spawn(async move {
                    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        () = answered.notified() => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
            }
        });
        (addr, connections)
    }

    /// A connection the server closed is noticed and a new one made for the next call.
    #[tokio::test]
    async fn a_closed_connection_is_replaced_for_the_next_call() {
        let (addr, connections) = one_answer_per_connection_server().await;
        let url = Url::parse(&format!("http://{addr}/v1")).expect("url");
        let connection = connection_to(HttpVersion::Http2, &url, &ExtraRoots::default());
        let request = post(&url, Duration::from_secs(5));
        for call in 1..=2 {
            let sent = connection.send(&request, None, 1024).await;
            let Ok(Sent::Answered(response)) = sent else {
                panic!("call {call}: {:?}", sent.err());
            };
            assert_eq!(&response.body[..], b"ok");
            // Until this side has seen the close (hyper's connection task reads it).
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let closed = connection
                    .current
                    .lock()
                    .await
                    .as_ref()
                    .is_some_and(|(s, _)| s.is_closed());
                if closed {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "call {call}: the close was never seen"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    /// A peer that completes HTTP/2's handshake (its SETTINGS and the ack of ours), then
    /// reads everything and answers nothing, pings included: alive to TCP, dead to HTTP/2.
    async fn silent_http2_peer() -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
                    const SETTINGS_ACK: [u8; 9] = [0, 0, 0, 4, 1, 0, 0, 0, 0];
                    let _ = tcp.write_all(&SETTINGS).await;
                    let _ = tcp.write_all(&SETTINGS_ACK).await;
                    let mut sink = [0_u8; 4096];
                    while tcp.read(&mut sink).await.is_ok_and(|n| n > 0) {}
                });
            }
        });
        addr
    }

    /// A call on a connection whose peer went silent ends when a ping goes unanswered, not
    /// at the call's timeout, and the next call connects again.
    #[tokio::test]
    async fn a_silent_peer_is_found_by_an_unanswered_ping() {
        let addr = silent_http2_peer().await;
        let url = Url::parse(&format!("http://{addr}/v1")).expect("url");
        let connection = connection_to(HttpVersion::Http2, &url, &ExtraRoots::default());
        let request = post(&url, Duration::from_secs(30));
        let started = Instant::now();
        let sent = tokio::time::timeout(request.timeout, connection.send(&request, None, 1024))
            .await
            .expect("ended before the call's timeout");
        assert!(
            matches!(sent, Err(OutboundError::Other(_))),
            "{:?}",
            sent.err()
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let current = connection.current.lock().await;
        assert!(
            current
                .as_ref()
                .is_none_or(|(sender, _)| sender.is_closed()),
            "the dead connection is not kept for the next call"
        );
    }

    /// `auto` over https to a server that chooses HTTP/1.1: the lanes leave their calls to
    /// reqwest (which speaks HTTP/1.1 to it), from then on without connecting again.
    #[tokio::test]
    async fn a_server_that_chooses_http1_is_left_to_reqwest() {
        let addr = http1_only_tls_server().await;
        let roots = ExtraRoots::from_pem(&fixture("ca.pem")).expect("test CA");
        let url = Url::parse(&format!("https://localhost:{}/v1", addr.port())).expect("url");
        let connection = connection_to(HttpVersion::Auto, &url, &roots);
        assert!(connection.serves(&url));
        let request = post(&url, Duration::from_secs(5));
        let body = Bytes::from_static(b"{}");
        let sent = connection.send(&request, Some(&body), 1024).await;
        assert!(matches!(sent, Ok(Sent::Elsewhere)), "{:?}", sent.err());
        assert!(
            !connection.serves(&url),
            "every lane of the route now leaves it to reqwest"
        );
    }

    #[test]
    fn lanes_dial_http2_over_https_and_over_http_only_when_asked() {
        let roots = ExtraRoots::default();
        let url = |s: &str| Url::parse(s).expect("url");
        let https =
            Dial::new(HttpVersion::Auto, &url("https://p.example/v1"), &roots).expect("dial");
        assert!(https.serves(&url("https://p.example/v1/chat/completions")));
        assert!(!https.serves(&url("https://q.example/v1/chat/completions")));
        assert!(!https.serves(&url("https://p.example:8443/v1")));
        assert!(!https.serves(&url("http://p.example/v1")));
        let h2c =
            Dial::new(HttpVersion::Http2, &url("http://127.0.0.1:9/v1"), &roots).expect("dial");
        assert!(h2c.tls.is_none());
        assert!(h2c.serves(&url("http://127.0.0.1:9/x")));
        assert!(Dial::new(HttpVersion::Auto, &url("http://p.example/v1"), &roots).is_none());
        https.chose_http1.store(true, Ordering::Relaxed);
        assert!(!https.serves(&url("https://p.example/v1")));
    }
}
