//! The one outbound HTTP client. Every call to a provider, a tool or a webhook receiver goes
//! through [`Outbound::send`], which applies the timeout, caps the response size, verifies TLS
//! (rustls, webpki roots) and, for caller-chosen URLs (webhooks), the SSRF guard: the
//! destination must be http(s) and every address it resolves to must be public, checked at
//! connect time by the resolver so DNS rebinding cannot slip past a check made earlier.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes_limit::read_limited;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use crate::config::HttpVersion;

/// Whose URL a request goes to, which decides whether the SSRF guard applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// An operator-configured provider endpoint: trusted, may be on a private network.
    Provider(HttpVersion),
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

/// Rate-limit headers kept from one response: providers send about a dozen.
pub const MAX_RATE_HEADERS: usize = 24;

/// The headers of `headers` that describe a provider's rate limits.
fn rate_headers(headers: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            name.starts_with("x-ratelimit-") || name.starts_with("anthropic-ratelimit-")
        })
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .take(MAX_RATE_HEADERS)
        .collect()
}

#[derive(Clone)]
pub struct Outbound {
    /// One client (one connection pool) per way of speaking to providers.
    providers: reqwest::Client,
    providers_http1: reqwest::Client,
    providers_http2: reqwest::Client,
    tools: reqwest::Client,
    webhooks: reqwest::Client,
    allow_private_webhooks: bool,
    max_response_bytes: usize,
}

impl Outbound {
    pub fn new(allow_private_webhooks: bool, max_response_bytes: usize) -> Self {
        let base = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_nodelay(true)
                .user_agent(concat!("agentfleet/", env!("CARGO_PKG_VERSION")))
        };
        // Building a client only fails when the TLS backend cannot initialise, which is a
        // broken build rather than bad input.
        let provider = || base().redirect(reqwest::redirect::Policy::limited(3));
        let build = |builder: reqwest::ClientBuilder| {
            builder
                .build()
                .unwrap_or_else(|e| panic!("HTTP client: {e}"))
        };
        let providers = build(provider());
        let providers_http1 = build(provider().http1_only());
        let providers_http2 = build(provider().http2_prior_knowledge());
        let tools = build(base().redirect(reqwest::redirect::Policy::none()));
        let mut webhooks = base().redirect(reqwest::redirect::Policy::none());
        if !allow_private_webhooks {
            webhooks = webhooks.dns_resolver(Arc::new(PublicOnlyResolver));
        }
        let webhooks = build(webhooks);
        Self {
            providers,
            providers_http1,
            providers_http2,
            tools,
            webhooks,
            allow_private_webhooks,
            max_response_bytes,
        }
    }

    /// Checks a caller-chosen URL before it is accepted or used.
    pub fn check_webhook_url(&self, url: &Url) -> Result<(), OutboundError> {
        check_webhook_url(url, self.allow_private_webhooks)
    }

    /// POSTs a JSON body and reads the whole response (bounded in time and size).
    pub async fn post_json(
        &self,
        destination: Destination,
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

    /// Sends a request and reads the whole response (bounded in time and size).
    pub async fn send(
        &self,
        destination: Destination,
        request: Request<'_>,
    ) -> Result<OutboundResponse, OutboundError> {
        let client = match destination {
            Destination::Provider(HttpVersion::Auto) => &self.providers,
            Destination::Provider(HttpVersion::Http1) => &self.providers_http1,
            Destination::Provider(HttpVersion::Http2) => &self.providers_http2,
            Destination::Tool => &self.tools,
            Destination::Webhook => {
                self.check_webhook_url(request.url)?;
                &self.webhooks
            }
        };
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

/// Resolves names and keeps only public addresses; none left is an error.
struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                addrs.into_iter().filter(|a| is_public_ip(a.ip())).collect();
            if public.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> =
                    format!("{BLOCKED_MARKER}: {} has no public address", name.as_str()).into();
                return Err(err);
            }
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

/// True for addresses routable on the public internet.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            is_public_v6(v6)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..=127).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || ip.segments()[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
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
        assert!(check_webhook_url(&url("http://127.0.0.1:9/hook"), true).is_ok());
        assert!(check_webhook_url(&url("ftp://127.0.0.1/"), true).is_err());
    }

    #[tokio::test]
    async fn resolver_refuses_names_that_resolve_inward() {
        use std::str::FromStr as _;
        let name = Name::from_str("localhost").expect("name");
        let err = PublicOnlyResolver
            .resolve(name)
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains(BLOCKED_MARKER), "{err}");
    }
}
