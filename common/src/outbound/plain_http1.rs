//! A lean HTTP/1.1 client for provider endpoints and webhook receivers over plain http.
//!
//! Why not hyper's client (through reqwest) here: each of its HTTP/1.1 connections keeps about
//! 25 KB for as long as it lives — a dispatch-channel block (9 KB), a header buffer (8 KB) and a
//! read buffer (8 KB) — and reqwest lets us size none of it. A call to a slow model holds its
//! connection for the whole call, so 2,000 calls in flight held 50 MB. This client holds no
//! buffer while it waits: the request is written and freed, the connection waits for
//! readability, and the response's buffer lives only while the response arrives. An idle
//! connection is a socket and a timestamp.
//!
//! What it does: one request per connection at a time; keep-alive with a last-in-first-out
//! idle pool per host and port (entries older than the idle timeout are dropped, and a
//! connection the server has closed is noticed before reuse); `Content-Length`, chunked and
//! close-delimited bodies; the response size cap; for providers, 307 and 308 redirects to
//! plain http with the method and body kept, at most [`MAX_REDIRECTS`] (a provider call is a
//! POST, and the other redirects would turn it into a GET); for webhooks, no redirects and the
//! SSRF guard's resolver rule: only public addresses, static `hosts` entries first. What it
//! leaves to its caller: the overall timeout, the URL's literal checks, and https (reqwest,
//! where rustls' own buffers dominate a connection's cost anyway).
//!
//! A request is retried on a fresh connection only when writing it to a reused one failed: then
//! the server cannot have had all of it. Once it is written, a failure is the caller's to
//! decide on — the server may have acted on it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use reqwest::header::{HeaderName, HeaderValue};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use url::{Host, Position, Url};

use super::{
    is_rate_header, lookup, only_public, OutboundError, OutboundResponse, Request, MAX_RATE_HEADERS,
};

/// Redirects a provider call follows.
pub const MAX_REDIRECTS: usize = 3;
/// A response head larger than this is refused.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header lines parsed in one response head.
const MAX_HEADERS: usize = 100;
/// The first read's buffer, taken only once the response has begun to arrive.
const READ_CHUNK: usize = 4 * 1024;
/// A chunk-size line or a trailer line longer than this is refused.
const MAX_LINE: usize = 4 * 1024;

/// Where a connection goes: reused only for the same host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Origin {
    /// As it appears in the URL (an IPv6 address in brackets), for the `Host` header.
    host: String,
    port: u16,
}

impl Origin {
    fn of(url: &Url) -> Result<Self, OutboundError> {
        let host = url
            .host_str()
            .ok_or_else(|| OutboundError::Other("URL has no host".into()))?;
        Ok(Self {
            host: host.to_owned(),
            port: url.port_or_known_default().unwrap_or(80),
        })
    }
}

struct IdleConnection {
    stream: TcpStream,
    since: Instant,
}

/// How a client connects and what it follows.
pub struct Settings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub user_agent: &'static str,
    /// 307/308 redirects followed; 0 makes every redirect the answer.
    pub max_redirects: usize,
    /// Static addresses for host names, consulted before DNS.
    pub hosts: Arc<BTreeMap<String, IpAddr>>,
    /// Connect only to public addresses (the SSRF guard's rule for webhooks).
    pub public_only: bool,
}

/// The client: a pool of idle connections per origin.
pub struct PlainHttp1 {
    idle: Mutex<HashMap<Origin, VecDeque<IdleConnection>>>,
    settings: Settings,
}

/// A response as read off the wire, before it becomes an [`OutboundResponse`].
struct Response {
    head: Head,
    body: bytes::Bytes,
}

impl PlainHttp1 {
    pub fn new(settings: Settings) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            settings,
        }
    }

    /// Sends `request` (its URL must be `http`, reached directly) and reads the whole
    /// response, at most `limit` bytes of body. The caller bounds the time. `None`: a redirect
    /// leads to a URL that the environment's `proxy` rules send through a proxy, which only
    /// reqwest speaks to.
    pub async fn send(
        &self,
        request: &Request<'_>,
        limit: usize,
        proxy: Option<&super::ProxyRules>,
    ) -> Result<Option<OutboundResponse>, OutboundError> {
        let reaches_directly = |url: &Url| proxy.is_none_or(|rules| rules.reaches_directly(url));
        let mut url = Cow::Borrowed(request.url);
        let mut followed = 0;
        loop {
            let response = self.exchange(request, &url, limit).await?;
            let max = self.settings.max_redirects;
            match redirect_target(&response.head, &url).filter(|_| max > 0) {
                Some(_) if followed == max => {
                    return Err(OutboundError::Other(format!("more than {max} redirects")))
                }
                Some(next) if !reaches_directly(&next) => return Ok(None),
                Some(next) => {
                    followed += 1;
                    url = Cow::Owned(next);
                }
                None => return Ok(Some(response.into_outbound())),
            }
        }
    }

    /// One request and its response on one connection.
    async fn exchange(
        &self,
        request: &Request<'_>,
        url: &Url,
        limit: usize,
    ) -> Result<Response, OutboundError> {
        let origin = Origin::of(url)?;
        let bytes = request_bytes(request, url, &origin, self.settings.user_agent)?;
        let stream = match self.checkout(&origin) {
            Some(mut reused) => match reused.write_all(&bytes).await {
                Ok(()) => reused,
                // Not all of it reached the server, so it cannot have acted on it.
                Err(_) => self.connect_and_write(url, &origin, &bytes).await?,
            },
            None => self.connect_and_write(url, &origin, &bytes).await?,
        };
        // The request's bytes are not kept while the model works.
        drop(bytes);
        let head_only = request.method == reqwest::Method::HEAD;
        let (response, reusable) = read_response(&stream, head_only, limit).await?;
        if reusable {
            self.checkin(origin, stream);
        }
        Ok(response)
    }

    async fn connect_and_write(
        &self,
        url: &Url,
        origin: &Origin,
        bytes: &[u8],
    ) -> Result<TcpStream, OutboundError> {
        let mut stream = self.connect(url, origin.port).await?;
        stream
            .write_all(bytes)
            .await
            .map_err(|e| OutboundError::Connect(format!("sending the request: {e}")))?;
        Ok(stream)
    }

    async fn connect(&self, url: &Url, port: u16) -> Result<TcpStream, OutboundError> {
        let connect = async {
            let addrs = self.addresses(url, port).await?;
            let mut last = None;
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(stream) => {
                        // Nagle would hold a request's last segment for the ack of its first.
                        stream.set_nodelay(true).ok();
                        return Ok(stream);
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(OutboundError::Connect(last.map_or_else(
                || "the host has no address".to_owned(),
                |e| e.to_string(),
            )))
        };
        tokio::time::timeout(self.settings.connect_timeout, connect)
            .await
            .map_err(|_| OutboundError::Timeout)?
    }

    /// Where `url` may be reached: a static entry or DNS for a name, then, for a guarded
    /// client, only the public addresses — resolved at every connect, so DNS rebinding cannot
    /// slip past a check made earlier.
    async fn addresses(&self, url: &Url, port: u16) -> Result<Vec<SocketAddr>, OutboundError> {
        let mut addrs: Vec<SocketAddr> = match url.host() {
            Some(Host::Ipv4(ip)) => vec![SocketAddr::new(ip.into(), port)],
            Some(Host::Ipv6(ip)) => vec![SocketAddr::new(ip.into(), port)],
            Some(Host::Domain(name)) => lookup(name, port, &self.settings.hosts)
                .await
                .map_err(|e| OutboundError::Connect(format!("resolving {name}: {e}")))?,
            None => return Err(OutboundError::Other("URL has no host".into())),
        };
        if self.settings.public_only {
            addrs = only_public(addrs)
                .ok_or_else(|| OutboundError::Blocked("resolves to a non-public address".into()))?;
        }
        Ok(addrs)
    }

    /// The most recently used idle connection to `origin` that is still open.
    fn checkout(&self, origin: &Origin) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = idle.get_mut(origin)?;
        while let Some(connection) = queue.pop_back() {
            if connection.since.elapsed() >= self.settings.idle_timeout {
                // The rest are older still.
                queue.clear();
                return None;
            }
            if still_open(&connection.stream) {
                return Some(connection.stream);
            }
        }
        None
    }

    fn checkin(&self, origin: Origin, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = idle.entry(origin).or_default();
        // A wave's connections that are no longer needed age out from the front.
        while queue
            .front()
            .is_some_and(|c| c.since.elapsed() >= self.settings.idle_timeout)
        {
            queue.pop_front();
        }
        queue.push_back(IdleConnection {
            stream,
            since: Instant::now(),
        });
    }

    /// Idle connections held, for tests.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.values().map(VecDeque::len).sum()
    }

    /// Idle connections that [`still_open`] would hand out, for tests.
    #[cfg(test)]
    fn idle_connections_open(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.values()
            .flatten()
            .filter(|c| still_open(&c.stream))
            .count()
    }
}

/// An idle connection the server has closed (or written to, which it must not) is readable;
/// an open one is not. The readiness is the runtime's, so this usually costs no system call.
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The request line, the headers and the body, in one buffer (one write).
fn request_bytes(
    request: &Request<'_>,
    url: &Url,
    origin: &Origin,
    user_agent: &str,
) -> Result<Vec<u8>, OutboundError> {
    let body = request.json_body.as_deref();
    let target = &url[Position::BeforePath..Position::AfterQuery];
    let target = if target.is_empty() { "/" } else { target };
    let mut out = format!("{} {target} HTTP/1.1\r\n", request.method).into_bytes();
    out.reserve(256 + body.map_or(0, <[u8]>::len));
    let mut line = |name: &str, value: &str| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    let host = match url.port() {
        Some(port) => Cow::Owned(format!("{}:{port}", origin.host)),
        None => Cow::Borrowed(origin.host.as_str()),
    };
    line("host", &host);
    line("user-agent", user_agent);
    line("accept", "*/*");
    for (name, value) in request.headers {
        // The same checks reqwest makes: no header can smuggle a line break.
        if HeaderName::from_bytes(name.as_bytes()).is_err() || HeaderValue::from_str(value).is_err()
        {
            return Err(OutboundError::Other(format!("invalid header {name:?}")));
        }
        line(name, value);
    }
    if let Some(body) = body {
        line("content-type", "application/json");
        line("content-length", &body.len().to_string());
    } else if request.method == reqwest::Method::POST || request.method == reqwest::Method::PUT {
        line("content-length", "0");
    }
    out.extend_from_slice(b"\r\n");
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
    Ok(out)
}

/// Where a 307 or 308 sends the request, when it stays on plain http.
fn redirect_target(head: &Head, url: &Url) -> Option<Url> {
    if !matches!(head.status, 307 | 308) {
        return None;
    }
    let next = url.join(head.location.as_deref()?).ok()?;
    (next.scheme() == "http").then_some(next)
}

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// What a response head says, parsed once.
#[derive(Debug)]
struct Head {
    status: u16,
    keep_alive: bool,
    framing: Framing,
    retry_after: Option<String>,
    retry_after_ms: Option<String>,
    rate_headers: Vec<(String, String)>,
    location: Option<String>,
}

impl Response {
    fn into_outbound(self) -> OutboundResponse {
        OutboundResponse {
            status: self.head.status,
            retry_after: self.head.retry_after,
            retry_after_ms: self.head.retry_after_ms,
            rate_headers: self.head.rate_headers,
            body: self.body,
        }
    }
}

fn malformed(what: impl std::fmt::Display) -> OutboundError {
    OutboundError::Other(format!("malformed HTTP response: {what}"))
}

fn closed_early() -> OutboundError {
    OutboundError::Other("connection closed before the response was complete".into())
}

/// Reads one response; true beside it when the connection can carry another request.
async fn read_response(
    stream: &TcpStream,
    head_only: bool,
    limit: usize,
) -> Result<(Response, bool), OutboundError> {
    let mut reader = ResponseReader::new(head_only, limit);
    let mut buf = BytesMut::new();
    loop {
        let eof = read_some(stream, &mut buf).await? == 0;
        if let Some(done) = reader.advance(&mut buf, eof)? {
            return Ok(done);
        }
    }
}

/// Waits until the socket is readable, then reads into `buf` (which takes memory only now).
async fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> Result<usize, OutboundError> {
    loop {
        stream
            .readable()
            .await
            .map_err(|e| OutboundError::Other(format!("reading the response: {e}")))?;
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK.max(buf.len()));
        }
        match stream.try_read_buf(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(OutboundError::Other(format!("reading the response: {e}"))),
        }
    }
}

/// Reads a response out of bytes received in `parts`, as the client would if they arrived in
/// those reads and the connection closed after the last: its status and body, or the client's
/// error. The parsing without the socket, for tests and the fuzz target.
pub fn read_received(parts: &[&[u8]], limit: usize) -> Result<(u16, bytes::Bytes), OutboundError> {
    let mut buf = BytesMut::new();
    let mut reader = ResponseReader::new(false, limit);
    for (i, part) in parts.iter().enumerate() {
        buf.extend_from_slice(part);
        let eof = i + 1 == parts.len();
        if let Some((response, _)) = reader.advance(&mut buf, eof)? {
            return Ok((response.head.status, response.body));
        }
    }
    Err(closed_early())
}

/// Reading one response, without I/O: fed what has arrived so far, it consumes what it can
/// and says when the response is complete.
struct ResponseReader {
    head_only: bool,
    limit: usize,
    head: Option<Head>,
    chunked: Chunked,
}

impl ResponseReader {
    fn new(head_only: bool, limit: usize) -> Self {
        Self {
            head_only,
            limit,
            head: None,
            chunked: Chunked::new(limit),
        }
    }

    /// The response and whether the connection is clean for another, once complete; `eof`
    /// says nothing more will arrive, so an incomplete response is an error then.
    fn advance(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
    ) -> Result<Option<(Response, bool)>, OutboundError> {
        let incomplete = || if eof { Err(closed_early()) } else { Ok(None) };
        if self.head.is_none() {
            match final_head(buf, self.head_only)? {
                Some(head) => self.head = Some(head),
                None => return incomplete(),
            }
        }
        let (framing, keep_alive) = match &self.head {
            Some(head) => (head.framing, head.keep_alive),
            None => return incomplete(),
        };
        let body = match framing {
            Framing::Empty => Some(bytes::Bytes::new()),
            Framing::Length(len) if len > self.limit => {
                return Err(OutboundError::TooLarge(self.limit))
            }
            Framing::Length(len) if buf.len() < len => {
                buf.reserve(len - buf.len());
                None
            }
            Framing::Length(len) => Some(buf.split_to(len).freeze()),
            Framing::Chunked => self
                .chunked
                .feed(buf)?
                .then(|| std::mem::take(&mut self.chunked.body).freeze()),
            Framing::UntilClose if buf.len() > self.limit => {
                return Err(OutboundError::TooLarge(self.limit))
            }
            Framing::UntilClose => eof.then(|| buf.split().freeze()),
        };
        let Some(body) = body else {
            return incomplete();
        };
        let Some(head) = self.head.take() else {
            return incomplete();
        };
        // Bytes past the body were never asked for, and a body that ran to the close has no
        // connection left: either way the connection is not used again.
        let clean = buf.is_empty() && framing != Framing::UntilClose;
        Ok(Some((Response { head, body }, keep_alive && clean)))
    }
}

/// The first head in `buf` that is not informational (1xx answers such as 103 Early Hints
/// precede the real one), consumed from `buf`; `None` while it has not all arrived.
fn final_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<Head>, OutboundError> {
    loop {
        let Some((head, len)) = parse_head(buf, head_only)? else {
            if buf.len() > MAX_HEAD_BYTES {
                return Err(malformed("head too large"));
            }
            return Ok(None);
        };
        buf.advance(len);
        if !(100..200).contains(&head.status) {
            return Ok(Some(head));
        }
    }
}

/// Parses a complete response head at the start of `buf`, with its length; `None` while it is
/// incomplete. Kept out of the async functions so the header array never lives in a future.
fn parse_head(buf: &[u8], head_only: bool) -> Result<Option<(Head, usize)>, OutboundError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf).map_err(malformed)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.ok_or_else(|| malformed("no status"))?;
    let mut head = Head {
        status,
        // HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 closes it.
        keep_alive: response.version == Some(1),
        framing: Framing::UntilClose,
        retry_after: None,
        retry_after_ms: None,
        rate_headers: Vec::new(),
        location: None,
    };
    let mut content_length = None;
    let mut chunked = None;
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value)
            .map_err(|_| malformed(format_args!("header {} is not UTF-8", header.name)))?;
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value
                .trim()
                .parse()
                .map_err(|_| malformed(format_args!("content-length {value:?}")))?;
            if content_length.is_some_and(|seen| seen != len) {
                return Err(malformed("two different content-lengths"));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or("").trim();
            chunked = Some(last.eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && response.version == Some(0) {
                    head.keep_alive = true;
                }
            }
        } else {
            keep_header(&mut head, name, value);
        }
    }
    head.framing = framing(status, head_only, content_length, chunked);
    if chunked.is_some() && content_length.is_some() {
        // Both is how responses are smuggled: read by the transfer coding, then close.
        head.keep_alive = false;
    }
    Ok(Some((head, len)))
}

/// The headers a caller reads: `Retry-After`, `retry-after-ms`, rate limits, `Location`.
fn keep_header(head: &mut Head, name: &str, value: &str) {
    if name.eq_ignore_ascii_case("retry-after") {
        head.retry_after = Some(value.to_owned());
    } else if name.eq_ignore_ascii_case("retry-after-ms") {
        head.retry_after_ms = Some(value.to_owned());
    } else if name.eq_ignore_ascii_case("location") {
        head.location = Some(value.to_owned());
    } else if head.rate_headers.len() < MAX_RATE_HEADERS {
        let name = name.to_ascii_lowercase();
        if is_rate_header(&name) {
            head.rate_headers.push((name, value.to_owned()));
        }
    }
}

/// RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; the transfer coding wins over a length;
/// a transfer coding that does not end in chunked, or no framing at all, runs to the close.
fn framing(
    status: u16,
    head_only: bool,
    content_length: Option<usize>,
    chunked: Option<bool>,
) -> Framing {
    if head_only || (100..200).contains(&status) || status == 204 || status == 304 {
        return Framing::Empty;
    }
    match (chunked, content_length) {
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) => Framing::UntilClose,
        (None, Some(len)) => Framing::Length(len),
        (None, None) => Framing::UntilClose,
    }
}

/// An incremental decoder of a chunked body: fed whatever has arrived, it consumes what it
/// can and keeps its place, so a body that arrives in many reads is scanned once.
struct Chunked {
    state: ChunkState,
    body: BytesMut,
    limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data are still to come.
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines, up to an empty one.
    Trailers,
}

impl Chunked {
    fn new(limit: usize) -> Self {
        Self {
            state: ChunkState::Size,
            body: BytesMut::new(),
            limit,
        }
    }

    /// Consumes from `buf`; true once the body is complete (what is left in `buf` is not
    /// part of it).
    fn feed(&mut self, buf: &mut BytesMut) -> Result<bool, OutboundError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(end) = line_end(buf)? else {
                        return Ok(false);
                    };
                    let size = match httparse::parse_chunk_size(&buf[..end]) {
                        Ok(httparse::Status::Complete((_, size))) => size,
                        _ => return Err(malformed("bad chunk size")),
                    };
                    let size =
                        usize::try_from(size).map_err(|_| OutboundError::TooLarge(self.limit))?;
                    if size > self.limit.saturating_sub(self.body.len()) {
                        return Err(OutboundError::TooLarge(self.limit));
                    }
                    buf.advance(end);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        self.body.reserve(size);
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(false);
                    }
                    let take = remaining.min(buf.len());
                    self.body.extend_from_slice(&buf[..take]);
                    buf.advance(take);
                    self.state = match remaining - take {
                        0 => ChunkState::DataEnd,
                        left => ChunkState::Data(left),
                    };
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(false);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(malformed("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(end) = line_end(buf)? else {
                        return Ok(false);
                    };
                    buf.advance(end);
                    if end == 2 {
                        return Ok(true);
                    }
                }
            }
        }
    }
}

/// The length of the first line in `buf`, CRLF included; `None` while it is incomplete.
fn line_end(buf: &[u8]) -> Result<Option<usize>, OutboundError> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(at) if at <= MAX_LINE => Ok(Some(at + 2)),
        Some(_) => Err(malformed("line too long")),
        None if buf.len() > MAX_LINE => Err(malformed("line too long")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests;
