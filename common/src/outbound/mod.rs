//! The one outbound HTTP client. Every call to a provider, a tool or a webhook receiver goes
//! through [`Outbound::send`], which applies the timeout, caps the response size, verifies TLS
//! (rustls, webpki roots) and, for caller-chosen URLs (webhooks), the SSRF guard: the
//! destination must be http(s) and every address it resolves to must be public, checked at
//! connect time by the resolver so DNS rebinding cannot slip past a check made earlier.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes_limit::read_limited;
use ip_network::{Ipv4Network, Ipv6Network};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use crate::config::HttpVersion;

mod lanes;
mod lean_http2;
mod plain_http1;
mod roots;

pub use lanes::{ProviderRoute, RouteSettings};
pub use plain_http1::read_received;
use plain_http1::{PlainHttp1, Settings};
pub use roots::{ExtraRoots, ExtraRootsError};

/// Whose URL a request goes to, which decides whether the SSRF guard applies.
#[derive(Debug, Clone, Copy)]
pub enum Destination<'a> {
    /// An operator-configured provider endpoint: trusted, may be on a private network.
    Provider(&'a ProviderRoute),
    /// An operator-configured HTTP tool: trusted host (it may be internal), but redirects are
    /// not followed, so a tool server cannot send a call to a host the operator did not name.
    Tool,
    /// A tenant-chosen webhook URL: guarded unless private networks are explicitly allowed.
    Webhook,
}

/// One outbound request.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: reqwest::Method,
    pub url: &'a Url,
    pub headers: &'a [(&'a str, &'a str)],
    /// A JSON body, sent with `Content-Type: application/json`.
    pub json_body: Option<Vec<u8>>,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("destination not allowed: {0}")]
    Blocked(String),
    #[error("request timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("request failed: {0}")]
    Other(String),
}

impl From<reqwest::Error> for OutboundError {
    fn from(err: reqwest::Error) -> Self {
        // Drop the URL: a provider URL may carry a key in its query.
        let err = err.without_url();
        if err.is_timeout() {
            Self::Timeout
        } else if err.is_connect() {
            let text = error_chain(&err);
            if text.contains(BLOCKED_MARKER) {
                Self::Blocked("resolves to a non-public address".into())
            } else {
                Self::Connect(text)
            }
        } else {
            Self::Other(error_chain(&err))
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// A response read in full (up to the size cap).
#[derive(Debug)]
pub struct OutboundResponse {
    pub status: u16,
    /// `Retry-After`, when the server sent one.
    pub retry_after: Option<String>,
    /// `retry-after-ms` (OpenAI-compatible servers send it beside `Retry-After`): finer.
    pub retry_after_ms: Option<String>,
    /// A provider's rate-limit headers (`x-ratelimit-*`, `anthropic-ratelimit-*`), at most
    /// [`MAX_RATE_HEADERS`] of them, names lowercase.
    pub rate_headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
}

/// Whether the environment names a proxy that reqwest would send plain-http requests through
/// (`http_proxy`, `all_proxy`, either case), before `no_proxy` is looked at.
fn proxy_for_plain_http(var: impl Fn(&str) -> Option<String>) -> bool {
    ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .into_iter()
        .any(|name| var(name).is_some_and(|value| !value.trim().is_empty()))
}

/// [`proxy_for_plain_http`], or a proxy for https (`https_proxy`, either case).
fn proxy_for_any(var: impl Fn(&str) -> Option<String>) -> bool {
    proxy_for_plain_http(&var)
        || ["https_proxy", "HTTPS_PROXY"]
            .into_iter()
            .any(|name| var(name).is_some_and(|value| !value.trim().is_empty()))
}

/// The proxy rules reqwest applies to every client it builds (its "system" proxies: on Linux,
/// `http_proxy`, `all_proxy` and `no_proxy` as curl reads them), read by the same code, so the
/// lean client takes exactly the plain-http URLs that reqwest would reach directly.
pub(crate) struct ProxyRules(hyper_util::client::proxy::matcher::Matcher);

impl ProxyRules {
    /// The rules in the environment, when it names a proxy for plain http at all.
    fn from_environment() -> Option<Self> {
        proxy_for_plain_http(|name| std::env::var(name).ok())
            .then(|| Self(hyper_util::client::proxy::matcher::Matcher::from_system()))
    }

    /// The rules in the environment, when it names a proxy for any scheme.
    fn any_from_environment() -> Option<Self> {
        proxy_for_any(|name| std::env::var(name).ok())
            .then(|| Self(hyper_util::client::proxy::matcher::Matcher::from_system()))
    }

    /// Whether reqwest would connect to `url` itself rather than through a proxy.
    pub(crate) fn reaches_directly(&self, url: &Url) -> bool {
        match url.as_str().parse::<http::Uri>() {
            Ok(uri) => self.0.intercept(&uri).is_none(),
            // Not a URL http can carry: leave it to reqwest, which will say why.
            Err(_) => false,
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const USER_AGENT: &str = concat!("agentfleet/", env!("CARGO_PKG_VERSION"));

fn base_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_nodelay(true)
        .user_agent(USER_AGENT)
}

/// Building a client only fails when the TLS backend cannot initialise (a broken build), or
/// on a root certificate it cannot take, which [`ExtraRoots::from_pem`] refuses first.
fn build(builder: reqwest::ClientBuilder) -> reqwest::Client {
    builder
        .build()
        .unwrap_or_else(|e| panic!("HTTP client: {e}"))
}

/// A client (one connection pool) speaking to providers as `version` asks.
fn provider_client(version: HttpVersion, roots: &ExtraRoots) -> reqwest::Client {
    let builder = base_client().redirect(reqwest::redirect::Policy::limited(
        plain_http1::MAX_REDIRECTS,
    ));
    let builder = roots.trusted_by(builder);
    build(match version {
        HttpVersion::Auto => builder,
        HttpVersion::Http1 => builder.http1_only(),
        HttpVersion::Http2 => builder.http2_prior_knowledge(),
    })
}

fn tools_client(roots: &ExtraRoots) -> reqwest::Client {
    build(roots.trusted_by(base_client().redirect(reqwest::redirect::Policy::none())))
}

/// Rate-limit headers kept from one response: providers send about a dozen.
pub const MAX_RATE_HEADERS: usize = 24;

/// Whether a header (its name in lowercase) describes a provider's rate limits.
fn is_rate_header(name: &str) -> bool {
    name.starts_with("x-ratelimit-") || name.starts_with("anthropic-ratelimit-")
}

/// The headers of `headers` that describe a provider's rate limits.
fn rate_headers(headers: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| is_rate_header(name.as_str()))
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .take(MAX_RATE_HEADERS)
        .collect()
}

#[derive(Clone)]
pub struct Outbound {
    /// Plain-http providers spoken to over HTTP/1.1, plain-http tools and plain-http webhook
    /// receivers go through the lean client, which holds no buffer while a call waits (see
    /// [`plain_http1`]) — unless the environment's proxy rules send the URL through a proxy,
    /// which only reqwest speaks to.
    plain_providers: Arc<PlainHttp1>,
    /// Plain-http tools: no redirect followed (a tool server cannot send a call elsewhere).
    plain_tools: Arc<PlainHttp1>,
    plain_webhooks: Arc<PlainHttp1>,
    /// The environment's proxy rules, when it names a proxy for plain http.
    plain_proxy: Option<Arc<ProxyRules>>,
    /// One client (one connection pool) per way of speaking HTTP/1.1 to providers; calls that
    /// may speak HTTP/2 take their route's lanes instead.
    providers: reqwest::Client,
    providers_http1: reqwest::Client,
    tools: reqwest::Client,
    webhooks: reqwest::Client,
    allow_private_webhooks: bool,
    /// Static entries for webhook host names (`webhooks.hosts`).
    hosts: Arc<BTreeMap<String, IpAddr>>,
    max_response_bytes: usize,
}

impl Outbound {
    /// `hosts`: static entries for webhook host names, consulted before DNS (and still
    /// guarded).
    pub fn new(
        allow_private_webhooks: bool,
        max_response_bytes: usize,
        hosts: &BTreeMap<String, IpAddr>,
    ) -> Self {
        Self::trusting(
            allow_private_webhooks,
            max_response_bytes,
            hosts,
            &ExtraRoots::default(),
        )
    }

    /// [`Outbound::new`], its provider and tool clients trusting `roots` as well (a route's
    /// lanes take the roots from its settings); the webhook clients never do.
    pub fn trusting(
        allow_private_webhooks: bool,
        max_response_bytes: usize,
        hosts: &BTreeMap<String, IpAddr>,
        roots: &ExtraRoots,
    ) -> Self {
        let providers = provider_client(HttpVersion::Auto, roots);
        let providers_http1 = provider_client(HttpVersion::Http1, roots);
        let tools = tools_client(roots);
        let hosts = Arc::new(hosts.clone());
        let mut webhooks = base_client().redirect(reqwest::redirect::Policy::none());
        if !allow_private_webhooks {
            webhooks = webhooks.dns_resolver(Arc::new(PublicOnlyResolver {
                hosts: hosts.clone(),
            }));
        } else {
            for (name, ip) in hosts.iter() {
                webhooks = webhooks.resolve(name, SocketAddr::new(*ip, 0));
            }
        }
        let webhooks = build(webhooks);
        let plain_proxy = ProxyRules::from_environment().map(Arc::new);
        let lean = |max_redirects, public_only| {
            Arc::new(PlainHttp1::new(Settings {
                connect_timeout: CONNECT_TIMEOUT,
                idle_timeout: POOL_IDLE_TIMEOUT,
                user_agent: USER_AGENT,
                max_redirects,
                hosts: hosts.clone(),
                public_only,
            }))
        };
        Self {
            plain_providers: lean(plain_http1::MAX_REDIRECTS, false),
            plain_tools: lean(0, false),
            plain_webhooks: lean(0, !allow_private_webhooks),
            plain_proxy,
            providers,
            providers_http1,
            tools,
            webhooks,
            allow_private_webhooks,
            hosts: hosts.clone(),
            max_response_bytes,
        }
    }

    /// Checks a caller-chosen URL before it is accepted or used: its scheme, credentials and
    /// literal address, and the address of a static `hosts` entry for its name. (Other names
    /// are checked when they are resolved, at every delivery.)
    pub fn check_webhook_url(&self, url: &Url) -> Result<(), OutboundError> {
        check_webhook_url(url, self.allow_private_webhooks)?;
        let entry = url.host_str().and_then(|host| self.hosts.get(host));
        match entry {
            Some(ip) if !self.allow_private_webhooks && !is_public_ip(*ip) => Err(
                OutboundError::Blocked("the host's configured address is not public".into()),
            ),
            _ => Ok(()),
        }
    }

    /// POSTs a JSON body and reads the whole response (bounded in time and size).
    pub async fn post_json(
        &self,
        destination: Destination<'_>,
        url: &Url,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<OutboundResponse, OutboundError> {
        let request = Request {
            method: reqwest::Method::POST,
            url,
            headers,
            json_body: Some(body),
            timeout,
        };
        self.send(destination, request).await
    }

    /// The lean client for a provider over plain http that is not asked for HTTP/2 (`auto`
    /// speaks HTTP/1.1 to a plain-http server too), for a plain-http tool and for a plain-http
    /// webhook receiver, whose URL is checked first; none for a URL the environment's proxy
    /// rules send through a proxy.
    fn lean_client(
        &self,
        destination: Destination<'_>,
        url: &Url,
    ) -> Result<Option<&PlainHttp1>, OutboundError> {
        if url.scheme() != "http" {
            return Ok(None);
        }
        let lean = match destination {
            Destination::Provider(route) if route.version != HttpVersion::Http2 => {
                &self.plain_providers
            }
            Destination::Tool => &self.plain_tools,
            Destination::Webhook => {
                self.check_webhook_url(url)?;
                &self.plain_webhooks
            }
            Destination::Provider(_) => return Ok(None),
        };
        let direct = self
            .plain_proxy
            .as_ref()
            .is_none_or(|rules| rules.reaches_directly(url));
        Ok(direct.then_some(lean.as_ref()))
    }

    /// Sends a request and reads the whole response (bounded in time and size).
    pub async fn send(
        &self,
        destination: Destination<'_>,
        mut request: Request<'_>,
    ) -> Result<OutboundResponse, OutboundError> {
        if let Some(lean) = self.lean_client(destination, request.url)? {
            let started = tokio::time::Instant::now();
            let proxy = self.plain_proxy.as_deref();
            let work = lean.send(&request, self.max_response_bytes, proxy);
            let sent = tokio::time::timeout(request.timeout, work)
                .await
                .map_err(|_| OutboundError::Timeout)??;
            match sent {
                Some(response) => return Ok(response),
                // A redirect to a URL the proxy serves: reqwest sends the request again from
                // the start (the first server only redirected it) and follows it through the
                // proxy, within what is left of the timeout.
                None => request.timeout = request.timeout.saturating_sub(started.elapsed()),
            }
        }
        // A lane is counted until the response is read (or the call given up).
        let lane = match destination {
            Destination::Provider(route) => route.lanes.as_ref().map(lanes::Lanes::take),
            _ => None,
        };
        if let Some(connection) = lane.as_ref().and_then(lanes::Taken::connection) {
            if connection.serves(request.url) {
                // Boxed, as the lean client's call: inline, its future would make every
                // call's larger, whichever way it goes (and a run task holds its call).
                request = match Box::pin(self.send_on_lane(connection, request)).await? {
                    Ok(response) => return Ok(response),
                    Err(request) => request,
                };
            }
        }
        let client = match (destination, &lane) {
            (_, Some(lane)) => lane.client(),
            (Destination::Provider(route), None) => match route.version {
                HttpVersion::Http1 => &self.providers_http1,
                // Plain http through a proxy (an HTTP/2 route always has lanes).
                HttpVersion::Auto | HttpVersion::Http2 => &self.providers,
            },
            (Destination::Tool, None) => &self.tools,
            (Destination::Webhook, None) => {
                self.check_webhook_url(request.url)?;
                &self.webhooks
            }
        };
        self.send_with(client, request).await
    }

    /// A provider call on its lane's own HTTP/2 connection; the request given back, with what
    /// is left of its timeout, when the lane's reqwest client must send it instead.
    async fn send_on_lane<'r>(
        &self,
        connection: &lean_http2::Connection,
        mut request: Request<'r>,
    ) -> Result<Result<OutboundResponse, Request<'r>>, OutboundError> {
        let started = tokio::time::Instant::now();
        let body = request.json_body.take().map(bytes::Bytes::from);
        let work = connection.send(&request, body.as_ref(), self.max_response_bytes);
        let sent = tokio::time::timeout(request.timeout, work)
            .await
            .map_err(|_| OutboundError::Timeout)??;
        match sent {
            lean_http2::Sent::Answered(response) => Ok(Ok(response)),
            lean_http2::Sent::Elsewhere => {
                request.timeout = request.timeout.saturating_sub(started.elapsed());
                request.json_body = body.map(Vec::from);
                Ok(Err(request))
            }
        }
    }

    /// Sends a request through one of reqwest's clients and reads the whole response.
    async fn send_with(
        &self,
        client: &reqwest::Client,
        request: Request<'_>,
    ) -> Result<OutboundResponse, OutboundError> {
        let timeout = request.timeout;
        let mut builder = client
            .request(request.method, request.url.clone())
            .timeout(timeout);
        if let Some(body) = request.json_body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        for (name, value) in request.headers {
            builder = builder.header(*name, *value);
        }
        let work = async {
            let response = builder.send().await?;
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let retry_after = header("retry-after");
            let retry_after_ms = header("retry-after-ms");
            let rate_headers = rate_headers(response.headers());
            let body = read_limited(response, self.max_response_bytes).await?;
            Ok(OutboundResponse {
                status,
                retry_after,
                retry_after_ms,
                rate_headers,
                body,
            })
        };
        // The per-request timeout covers the body too, but bound the whole exchange anyway.
        tokio::time::timeout(timeout + Duration::from_millis(100), work)
            .await
            .map_err(|_| OutboundError::Timeout)?
    }
}

mod bytes_limit {
    use super::OutboundError;

    pub async fn read_limited(
        mut response: reqwest::Response,
        limit: usize,
    ) -> Result<bytes::Bytes, OutboundError> {
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(OutboundError::TooLarge(limit));
        }
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > limit {
                return Err(OutboundError::TooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

const BLOCKED_MARKER: &str = "agentfleet-ssrf-guard";

/// Where a host name may be reached: its static `hosts` entry, else DNS.
async fn lookup(
    name: &str,
    port: u16,
    hosts: &BTreeMap<String, IpAddr>,
) -> std::io::Result<Vec<SocketAddr>> {
    match hosts.get(name) {
        Some(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
        None => Ok(tokio::net::lookup_host((name, port)).await?.collect()),
    }
}

/// The public addresses of `addrs`; none is `None`.
fn only_public(mut addrs: Vec<SocketAddr>) -> Option<Vec<SocketAddr>> {
    addrs.retain(|addr| is_public_ip(addr.ip()));
    (!addrs.is_empty()).then_some(addrs)
}

/// Resolves names (static `hosts` entries first, then DNS) and keeps only public
/// addresses; none left is an error.
struct PublicOnlyResolver {
    hosts: Arc<BTreeMap<String, IpAddr>>,
}

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let hosts = self.hosts.clone();
        Box::pin(async move {
            let addrs = lookup(name.as_str(), 0, &hosts).await?;
            let Some(public) = only_public(addrs) else {
                let err: Box<dyn std::error::Error + Send + Sync> =
                    format!("{BLOCKED_MARKER}: {} has no public address", name.as_str()).into();
                return Err(err);
            };
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

/// Scheme and literal-address checks for a webhook URL. Host names are checked again when
/// they are resolved (see [`PublicOnlyResolver`]).
pub fn check_webhook_url(url: &Url, allow_private: bool) -> Result<(), OutboundError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(OutboundError::Blocked(
            "scheme must be http or https".into(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(OutboundError::Blocked(
            "credentials in the URL are not allowed".into(),
        ));
    }
    let private = match url.host() {
        None => return Err(OutboundError::Blocked("URL has no host".into())),
        Some(Host::Ipv4(ip)) => !is_public_ip(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => !is_public_ip(IpAddr::V6(ip)),
        Some(Host::Domain(domain)) => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            domain == "localhost" || domain.ends_with(".localhost") || domain.ends_with(".internal")
        }
    };
    if private && !allow_private {
        return Err(OutboundError::Blocked(
            "loopback, private and link-local destinations are not allowed".into(),
        ));
    }
    Ok(())
}

/// True for addresses routable on the public internet. The base rule is the IANA
/// special-purpose registries as `ip_network` knows them (private, shared, loopback,
/// link-local, documentation, benchmarking, reserved, unique-local, site-local…), plus
/// multicast; an IPv6 address that embeds an IPv4 one — v4-mapped, NAT64 (`64:ff9b::/96`),
/// 6to4 (`2002::/16`), Teredo (`2001::/32`) — is public only if every embedded address is,
/// since a gateway would forward to it.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Embedded::None => is_public_v6(v6),
            Embedded::One(v4) => is_public_v4(v4),
            Embedded::Two(a, b) => is_public_v4(a) && is_public_v4(b),
            Embedded::NeverPublic => false,
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    Ipv4Network::from(ip).is_global() && !ip.is_multicast()
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    Ipv6Network::from(ip).is_global()
        // Not globally reachable per IANA, and unknown to the crate:
        && s[..4] != [0x0100, 0, 0, 0] // discard-only, 100::/64
        && !(s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments, 2001::/23
        && s[0] != 0x5f00 // SRv6 SIDs, 5f00::/16
}

/// The IPv4 addresses an IPv6 address carries, by the transition mechanism it belongs to.
enum Embedded {
    None,
    One(Ipv4Addr),
    /// Teredo: the server's and the client's (obfuscated in the address).
    Two(Ipv4Addr, Ipv4Addr),
    /// A range that only ever reaches a local network (local-use NAT64, `64:ff9b:1::/48`;
    /// IPv4-compatible, `::/96`).
    NeverPublic,
}

fn embedded_v4(ip: Ipv6Addr) -> Embedded {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return Embedded::One(mapped);
    }
    match s {
        [0x0064, 0xff9b, 0, 0, 0, 0, hi, lo] => Embedded::One(v4(hi, lo)),
        [0x0064, 0xff9b, 0x0001, ..] => Embedded::NeverPublic,
        [0x2002, hi, lo, ..] => Embedded::One(v4(hi, lo)),
        [0x2001, 0x0000, server_hi, server_lo, _, _, client_hi, client_lo] => {
            Embedded::Two(v4(server_hi, server_lo), v4(!client_hi, !client_lo))
        }
        [0, 0, 0, 0, 0, 0, _, _] => Embedded::NeverPublic,
        _ => Embedded::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_CA: &[u8] = include_bytes!("../../../tests/fixtures/tls/ca.pem");

    #[test]
    fn extra_roots_take_a_pem_bundle_and_refuse_anything_else() {
        let roots = ExtraRoots::from_pem(TEST_CA).expect("the test CA");
        assert_eq!(roots.len(), 1);
        let twice = [TEST_CA, TEST_CA].concat();
        assert_eq!(ExtraRoots::from_pem(&twice).expect("a bundle").len(), 2);
        assert!(matches!(
            ExtraRoots::from_pem(b"not a certificate"),
            Err(ExtraRootsError::Empty)
        ));
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        // PEM that holds no certificate: refused when a client is built with it, here
        // rather than at the first call.
        let refused = ExtraRoots::from_pem(garbage).expect_err("not a certificate");
        assert!(
            matches!(refused, ExtraRootsError::Refused(_)),
            "{refused:?}"
        );
    }

    #[test]
    fn a_proxy_for_plain_http_in_the_environment_is_seen_in_either_case() {
        let env = |set: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                set.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(!proxy_for_plain_http(env(&[])));
        assert!(!proxy_for_plain_http(env(&[
            ("HTTPS_PROXY", "http://p:3128"),
            ("http_proxy", " ")
        ])));
        assert!(proxy_for_plain_http(env(&[(
            "http_proxy",
            "http://p:3128"
        )])));
        assert!(proxy_for_plain_http(env(&[(
            "HTTP_PROXY",
            "http://p:3128"
        )])));
        assert!(proxy_for_plain_http(env(&[(
            "ALL_PROXY",
            "socks5://p:1080"
        )])));
        // The provider lanes' own connections step aside for a proxy of either scheme.
        assert!(proxy_for_any(env(&[("HTTPS_PROXY", "http://p:3128")])));
        assert!(proxy_for_any(env(&[("https_proxy", "http://p:3128")])));
        assert!(proxy_for_any(env(&[("http_proxy", "http://p:3128")])));
        assert!(!proxy_for_any(env(&[("https_proxy", " ")])));
    }

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn the_lean_client_takes_only_the_urls_the_proxy_rules_leave_direct() {
        let matcher = hyper_util::client::proxy::matcher::Matcher::builder()
            .http("http://proxy.invalid:3128")
            .no("vllm.svc, 10.0.0.0/8")
            .build();
        let rules = ProxyRules(matcher);
        for direct in [
            "http://vllm.svc:8000/v1/chat/completions",
            "http://a.vllm.svc/",
            "http://10.1.2.3/",
        ] {
            assert!(rules.reaches_directly(&url(direct)), "{direct}");
        }
        for proxied in [
            "http://api.example.com/",
            "http://notvllm.svc/",
            "http://11.0.0.1/",
        ] {
            assert!(!rules.reaches_directly(&url(proxied)), "{proxied}");
        }

        let mut outbound = Outbound::new(true, 1024, &BTreeMap::new());
        outbound.plain_proxy = Some(Arc::new(rules));
        let lean = |outbound: &Outbound, destination, to: &str| {
            let chosen = outbound.lean_client(destination, &url(to));
            chosen.expect("not blocked").is_some()
        };
        let provider = Destination::Provider(&ProviderRoute::shared(HttpVersion::Auto));
        assert!(lean(&outbound, provider, "http://vllm.svc:8000/"));
        assert!(lean(
            &outbound,
            Destination::Webhook,
            "http://10.1.2.3/hook"
        ));
        assert!(!lean(&outbound, provider, "http://api.example.com/"));
        let webhook = Destination::Webhook;
        assert!(!lean(&outbound, webhook, "http://api.example.com/hook"));
        // No proxy rules: every plain-http provider and webhook URL.
        outbound.plain_proxy = None;
        assert!(lean(&outbound, provider, "http://api.example.com/"));
    }

    #[test]
    fn internal_destinations_are_blocked() {
        for bad in [
            "http://127.0.0.1/hook",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            // NAT64 of 127.0.0.1 and 10.0.0.1; local-use NAT64.
            "http://[64:ff9b::7f00:1]/",
            "http://[64:ff9b::a00:1]/",
            "http://[64:ff9b:1::808:808]/",
            // 6to4 of 127.0.0.1 and 192.168.1.1.
            "http://[2002:7f00:1::1]/",
            "http://[2002:c0a8:101::]/",
            // Teredo with client 127.0.0.1 (obfuscated: !7f00:0001) or server 10.0.0.1.
            "http://[2001:0:5ef5:79fb:0:0:80ff:fffe]/",
            "http://[2001:0:a00:1::f7f7:f7f7]/",
            // IPv4-compatible, discard-only, IETF assignments, multicast, reserved.
            "http://[::7f00:1]/",
            "http://[100::1]/",
            "http://[2001:2::1]/",
            "http://224.0.0.1/",
            "http://[ff02::1]/",
            "http://240.0.0.1/",
            "http://198.18.0.1/",
            "http://192.0.0.8/",
            "http://localhost:8080/",
            "http://metadata.google.internal/",
            "ftp://example.com/",
            "http://user:pw@example.com/",
        ] {
            assert!(
                check_webhook_url(&url(bad), false).is_err(),
                "{bad} must be blocked"
            );
        }
    }

    #[test]
    fn public_destinations_pass_and_private_ones_when_allowed() {
        assert!(check_webhook_url(&url("https://example.com/hook"), false).is_ok());
        assert!(check_webhook_url(&url("https://93.184.216.34/hook"), false).is_ok());
        // The same public address through each transition mechanism stays public.
        for public in [
            "http://[64:ff9b::5db8:d822]/",
            "http://[2002:5db8:d822::1]/",
            "http://[2001:0:5ef5:79fb:0:0:a247:29dd]/",
            "http://[2606:4700::6810:84e5]/",
        ] {
            assert!(check_webhook_url(&url(public), false).is_ok(), "{public}");
        }
        assert!(check_webhook_url(&url("http://127.0.0.1:9/hook"), true).is_ok());
        assert!(check_webhook_url(&url("ftp://127.0.0.1/"), true).is_err());
    }

    #[tokio::test]
    async fn resolver_refuses_names_that_resolve_inward() {
        use std::str::FromStr as _;
        let name = Name::from_str("localhost").expect("name");
        let err = PublicOnlyResolver {
            hosts: Arc::default(),
        }
        .resolve(name)
        .await
        .err()
        .expect("refused");
        assert!(err.to_string().contains(BLOCKED_MARKER), "{err}");
    }
}

#[cfg(test)]
mod future_size {
    use super::*;

    /// A run's task holds its provider call's future: what any way of sending adds to it,
    /// every call in flight pays (a TLS connect inline added 20 KB to each).
    #[test]
    fn a_calls_future_stays_small() {
        let outbound = Outbound::new(false, 1024, &BTreeMap::new());
        let route = ProviderRoute::shared(HttpVersion::Auto);
        let url = Url::parse("http://p.example/v1").expect("url");
        let call = outbound.send(
            Destination::Provider(&route),
            Request {
                method: reqwest::Method::POST,
                url: &url,
                headers: &[],
                json_body: None,
                timeout: Duration::from_secs(1),
            },
        );
        let size = std::mem::size_of_val(&call);
        assert!(size <= 4096, "a call's future is {size} B");
    }
}
