//! The lean client against a real loopback server that answers each request with scripted
//! bytes, records what it received and counts connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::config::HttpVersion;
use crate::outbound::{Destination, Outbound, ProviderRoute, ProxyRules};

/// What the server does after a request: write these bytes, then keep the connection or
/// close it.
struct Reply {
    bytes: Vec<u8>,
    close: bool,
}

fn reply(text: &str) -> Reply {
    Reply {
        bytes: text.as_bytes().to_vec(),
        close: false,
    }
}

fn reply_and_close(text: &str) -> Reply {
    Reply {
        bytes: text.as_bytes().to_vec(),
        close: true,
    }
}

/// A request as the server read it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Server {
    url: Url,
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Server {
    /// Answers request number `i` (counted over all connections) with `script(i)`; a request
    /// the script has no answer for gets no answer.
    async fn start(script: impl Fn(usize) -> Option<Reply> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = Url::parse(&format!(
            "http://{}/v1/chat?x=1",
            listener.local_addr().unwrap()
        ))
        .expect("url");
        let connections = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let (count, log) = (connections.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, script.clone(), log.clone()));
            }
        });
        Self {
            url,
            connections,
            received,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    script: Arc<impl Fn(usize) -> Option<Reply>>,
    log: Arc<Mutex<Vec<Received>>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let index = {
            let mut log = log.lock().unwrap();
            log.push(request);
            log.len() - 1
        };
        let Some(reply) = script(index) else {
            // Hold the connection open without answering.
            let _ = stream.read(&mut [0u8; 1]).await;
            return;
        };
        if stream.write_all(&reply.bytes).await.is_err() || reply.close {
            return;
        }
    }
}

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = request.parse(buf) {
            let headers: Vec<(String, String)> = request
                .headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value).into_owned();
                    (h.name.to_ascii_lowercase(), value)
                })
                .collect();
            let body_len: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let (method, target) = (
                request.method.unwrap().to_owned(),
                request.path.unwrap().to_owned(),
            );
            while buf.len() < len + body_len {
                read_more(stream, buf).await?;
            }
            let body = buf[len..len + body_len].to_vec();
            buf.drain(..len + body_len);
            return Some(Received {
                method,
                target,
                headers,
                body,
            });
        }
        read_more(stream, buf).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn settings() -> Settings {
    Settings {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(90),
        user_agent: "agentfleet-test",
        max_redirects: MAX_REDIRECTS,
        hosts: Arc::default(),
        public_only: false,
    }
}

fn client() -> PlainHttp1 {
    PlainHttp1::new(settings())
}

fn post<'a>(url: &'a Url, headers: &'a [(&'a str, &'a str)], body: &str) -> Request<'a> {
    Request {
        method: reqwest::Method::POST,
        url,
        headers,
        json_body: Some(body.as_bytes().to_vec()),
        timeout: Duration::from_secs(5),
    }
}

const LIMIT: usize = 1024;

/// POSTs `{}` to the server and reads the answer.
async fn send_empty(
    client: &PlainHttp1,
    server: &Server,
) -> Result<OutboundResponse, OutboundError> {
    answered(
        client
            .send_direct(&post(&server.url, &[], "{}"), LIMIT)
            .await,
    )
}

impl PlainHttp1 {
    /// `send` with no proxy named in the environment.
    async fn send_direct(
        &self,
        request: &Request<'_>,
        limit: usize,
    ) -> Result<Option<OutboundResponse>, OutboundError> {
        self.send(request, limit, None).await
    }
}

/// The response of a send that the proxy rules did not hand back to reqwest.
fn answered(
    sent: Result<Option<OutboundResponse>, OutboundError>,
) -> Result<OutboundResponse, OutboundError> {
    sent.map(|response| response.expect("reached directly, not handed to the proxy"))
}

#[tokio::test]
async fn a_response_with_a_length_is_read_and_its_connection_reused() {
    let server = Server::start(|_| {
        Some(reply(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nRetry-After: 3\r\nretry-after-ms: 2500\r\n\
             X-RateLimit-Remaining-Requests: 7\r\nx-other: 1\r\n\r\nhello",
        ))
    })
    .await;
    let client = client();
    let headers = [
        ("x-agentfleet-job-id", "job-1"),
        ("authorization", "Bearer k"),
    ];
    for _ in 0..2 {
        let response = client
            .send_direct(&post(&server.url, &headers, r#"{"a":1}"#), LIMIT)
            .await
            .expect("response")
            .expect("reached directly");
        assert_eq!(response.status, 200);
        assert_eq!(&response.body[..], b"hello");
        assert_eq!(response.retry_after.as_deref(), Some("3"));
        assert_eq!(response.retry_after_ms.as_deref(), Some("2500"));
        assert_eq!(
            response.rate_headers,
            vec![("x-ratelimit-remaining-requests".to_owned(), "7".to_owned())]
        );
    }
    assert_eq!(
        server.connections(),
        1,
        "the second request reuses the connection"
    );
    assert_eq!(client.idle_count(), 1);
    let request = &server.received()[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/v1/chat?x=1");
    let port = server.url.port().unwrap();
    assert_eq!(
        request.header("host"),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("content-length"), Some("7"));
    assert_eq!(request.header("x-agentfleet-job-id"), Some("job-1"));
    assert_eq!(request.header("authorization"), Some("Bearer k"));
    assert_eq!(request.header("user-agent"), Some("agentfleet-test"));
    assert_eq!(request.body, br#"{"a":1}"#);
}

/// An answer's framing and version decide its body and whether its connection is used again.
struct FramingCase {
    answer: &'static str,
    /// The server closes the connection after answering.
    server_closes: bool,
    body: &'static [u8],
    /// Two requests in a row: how many connections the server saw, how many the client keeps.
    connections: usize,
    idle_after: usize,
}

#[tokio::test]
async fn the_framing_decides_the_body_and_whether_the_connection_is_kept() {
    let cases = [
        FramingCase {
            answer: "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            server_closes: true,
            body: b"ok",
            connections: 2,
            idle_after: 0,
        },
        FramingCase {
            answer: "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            server_closes: true,
            body: b"ok",
            connections: 2,
            idle_after: 0,
        },
        FramingCase {
            answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                     5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n",
            server_closes: false,
            body: b"hello, world",
            connections: 1,
            idle_after: 1,
        },
        FramingCase {
            answer: "HTTP/1.1 200 OK\r\n\r\nall of it",
            server_closes: true,
            body: b"all of it",
            connections: 2,
            idle_after: 0,
        },
        FramingCase {
            // No body for a 204, whatever its length says.
            answer: "HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
            server_closes: false,
            body: b"",
            connections: 1,
            idle_after: 1,
        },
    ];
    for case in cases {
        let (answer, closes) = (case.answer, case.server_closes);
        let server = Server::start(move |_| {
            Some(if closes {
                reply_and_close(answer)
            } else {
                reply(answer)
            })
        })
        .await;
        let client = client();
        for _ in 0..2 {
            let response = send_empty(&client, &server).await;
            assert_eq!(&response.expect(answer).body[..], case.body, "{answer:?}");
        }
        assert_eq!(server.connections(), case.connections, "{answer:?}");
        assert_eq!(client.idle_count(), case.idle_after, "{answer:?}");
    }
}

#[tokio::test]
async fn informational_answers_before_the_real_one_are_skipped() {
    let server = Server::start(|_| {
        Some(reply(
            "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ))
    })
    .await;
    let response = send_empty(&client(), &server).await;
    let response = response.expect("response");
    assert_eq!((response.status, &response.body[..]), (200, &b"ok"[..]));
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_however_they_are_framed() {
    let big = "x".repeat(LIMIT + 1);
    let answers = [
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{big}", big.len()),
        format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n", big.len()),
        format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n200\r\n{}\r\n201\r\n{}\r\n0\r\n\r\n", &big[..512], &big[..513]),
        format!("HTTP/1.1 200 OK\r\n\r\n{big}"),
    ];
    for answer in answers {
        let server = Server::start(move |_| Some(reply_and_close(&answer))).await;
        let result = send_empty(&client(), &server).await;
        assert!(
            matches!(result, Err(OutboundError::TooLarge(LIMIT))),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn malformed_responses_get_a_precise_error() {
    let cases = [
        ("SMTP ready\r\n\r\n", "malformed HTTP response"),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n",
            "content-length \"ten\"",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            "two different",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            "closed before the response",
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "bad chunk size",
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX",
            "not followed by CRLF",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-le",
            "closed before the response",
        ),
    ];
    for (answer, expected) in cases {
        let server = Server::start(move |_| Some(reply_and_close(answer))).await;
        let result = send_empty(&client(), &server).await;
        match result {
            Err(OutboundError::Other(message)) => {
                assert!(message.contains(expected), "{answer:?}: {message}");
            }
            other => panic!("{answer:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_not_reused() {
    let server = Server::start(|_| {
        // Keep-alive promised, but the server closes the connection anyway.
        Some(reply_and_close(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ))
    })
    .await;
    let client = client();
    let first = send_empty(&client, &server).await;
    assert_eq!(&first.expect("first").body[..], b"ok");
    assert_eq!(client.idle_count(), 1);
    // The runtime learns of the close asynchronously: poll, with a deadline, until it has.
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.idle_connections_open() != 0 {
        assert!(Instant::now() < deadline, "the close was never noticed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let second = send_empty(&client, &server).await;
    assert_eq!(&second.expect("second").body[..], b"ok");
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn temporary_redirects_are_followed_with_the_method_and_body_kept() {
    let server = Server::start(|i| {
        Some(reply(if i == 0 {
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: /moved\r\ncontent-length: 0\r\n\r\n"
        } else {
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        }))
    })
    .await;
    let response = answered(
        client()
            .send_direct(&post(&server.url, &[], r#"{"b":2}"#), LIMIT)
            .await,
    );
    assert_eq!(&response.expect("response").body[..], b"ok");
    let received = server.received();
    assert_eq!(received[1].target, "/moved");
    assert_eq!(received[1].method, "POST");
    assert_eq!(received[1].body, br#"{"b":2}"#);
}

/// Proxy rules as the environment would give them: a proxy for plain http that nothing
/// here answers, and `no_proxy` exempting `exempt`.
fn proxy_rules(exempt: &str) -> ProxyRules {
    let matcher = hyper_util::client::proxy::matcher::Matcher::builder()
        .http("http://proxy.invalid:3128")
        .no(exempt)
        .build();
    ProxyRules(matcher)
}

/// A server that answers its first `redirects` requests with a 307 to the location set in
/// the answered `Mutex` (set once the target listens), and the rest with `ok`.
async fn redirector(redirects: usize) -> (Server, Arc<std::sync::Mutex<String>>) {
    let location = Arc::new(std::sync::Mutex::new(String::new()));
    let server = Server::start({
        let location = location.clone();
        move |i| {
            let location = location.lock().expect("lock").clone();
            Some(reply(&if i < redirects {
                format!("HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n")
            } else {
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_owned()
            }))
        }
    })
    .await;
    (server, location)
}

#[tokio::test]
async fn with_a_proxy_in_the_environment_a_redirect_is_followed_only_to_an_exempt_host() {
    let (server, to_localhost) = redirector(2).await;
    let port = server.url.port().expect("port");
    let client = client();
    // The redirect leads to `localhost`, which the proxy serves: handed back, not followed.
    *to_localhost.lock().expect("lock") = format!("http://localhost:{port}/moved");
    let request = post(&server.url, &[], "{}");
    let sent = client
        .send(&request, LIMIT, Some(&proxy_rules("127.0.0.1")))
        .await;
    assert!(matches!(sent, Ok(None)), "{sent:?}");
    assert_eq!(server.received().len(), 1);
    // Both exempt: followed.
    let sent = client
        .send(&request, LIMIT, Some(&proxy_rules("127.0.0.1, localhost")))
        .await;
    assert_eq!(&answered(sent).expect("response").body[..], b"ok");
    assert_eq!(server.received()[2].target, "/moved");
}

#[tokio::test]
async fn a_redirect_the_proxy_serves_is_sent_again_by_reqwest_through_outbound() {
    let (server, to_localhost) = redirector(usize::MAX).await;
    let answering =
        Server::start(|_| Some(reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"))).await;
    let port = answering.url.port().expect("port");
    *to_localhost.lock().expect("lock") = format!("http://localhost:{port}/moved");
    let mut outbound = Outbound::new(false, LIMIT, &std::collections::BTreeMap::new());
    // `localhost` goes through the proxy by these rules; this test's own environment names
    // none, so reqwest reaches it directly.
    outbound.plain_proxy = Some(Arc::new(proxy_rules("127.0.0.1")));
    let response = outbound
        .post_json(
            Destination::Provider(&ProviderRoute::shared(HttpVersion::Auto)),
            &server.url,
            &[],
            b"{}".to_vec(),
            Duration::from_secs(5),
        )
        .await
        .expect("response");
    assert_eq!(&response.body[..], b"ok");
    assert_eq!(
        server.received().len(),
        2,
        "the lean client's try, then reqwest's"
    );
    assert_eq!(answering.received()[0].target, "/moved");
}

#[tokio::test]
async fn other_redirects_are_answers_and_loops_end() {
    let found = Server::start(|_| {
        Some(reply(
            "HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n",
        ))
    })
    .await;
    let response = send_empty(&client(), &found).await;
    assert_eq!(response.expect("response").status, 302);

    let to_https = Server::start(|_| {
        Some(reply("HTTP/1.1 308 Permanent Redirect\r\nlocation: https://example.com/\r\ncontent-length: 0\r\n\r\n"))
    })
    .await;
    let response = send_empty(&client(), &to_https).await;
    assert_eq!(response.expect("response").status, 308);

    let looping = Server::start(|_| {
        Some(reply(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: /again\r\ncontent-length: 0\r\n\r\n",
        ))
    })
    .await;
    let result = send_empty(&client(), &looping).await;
    assert!(
        matches!(&result, Err(OutboundError::Other(m)) if m.contains("more than 3 redirects")),
        "{result:?}"
    );
    assert_eq!(looping.received().len(), MAX_REDIRECTS + 1);
}

#[tokio::test]
async fn a_header_that_could_smuggle_a_line_is_refused_before_anything_is_sent() {
    let server =
        Server::start(|_| Some(reply("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"))).await;
    let headers = [("x-agentfleet-job-id", "a\r\nx-evil: 1")];
    let result = answered(
        client()
            .send_direct(&post(&server.url, &headers, "{}"), LIMIT)
            .await,
    );
    assert!(
        matches!(&result, Err(OutboundError::Other(m)) if m.contains("invalid header")),
        "{result:?}"
    );
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn outbound_sends_plain_http_provider_calls_through_it_within_the_timeout() {
    let server = Server::start(|i| {
        (i == 0).then(|| reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"))
    })
    .await;
    let outbound = Outbound::new(false, LIMIT, &Default::default());
    let destination = Destination::Provider(&ProviderRoute::shared(HttpVersion::Http1));
    let response = outbound
        .post_json(
            destination,
            &server.url,
            &[],
            b"{}".to_vec(),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(&response.expect("response").body[..], b"ok");
    assert_eq!(
        server.received()[0].header("user-agent"),
        Some(USER_AGENT_FOR_TESTS)
    );
    // The second call gets no answer: the caller's timeout ends it.
    let started = Instant::now();
    let result = outbound
        .post_json(
            destination,
            &server.url,
            &[],
            b"{}".to_vec(),
            Duration::from_millis(200),
        )
        .await;
    assert!(matches!(result, Err(OutboundError::Timeout)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_plain_http_webhook_reaches_only_public_addresses_and_follows_no_redirect() {
    let server = Server::start(|_| {
        Some(reply(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n",
        ))
    })
    .await;
    let port = server.url.port().expect("port");
    let hosts = [(
        "receiver.example.test".to_owned(),
        IpAddr::from([127, 0, 0, 1]),
    )]
    .into();
    let url = Url::parse(&format!("http://receiver.example.test:{port}/hook")).expect("url");
    let send = |outbound: Outbound| {
        let url = url.clone();
        async move {
            let timeout = Duration::from_secs(5);
            outbound
                .post_json(Destination::Webhook, &url, &[], b"{}".to_vec(), timeout)
                .await
        }
    };

    // Guarded: the static entry points inward, so nothing is sent.
    let guarded = send(Outbound::new(false, LIMIT, &hosts)).await;
    assert!(
        matches!(guarded, Err(OutboundError::Blocked(_))),
        "{guarded:?}"
    );
    assert_eq!(server.connections(), 0);

    // Private networks allowed: delivered, and the redirect is the answer.
    let allowed = send(Outbound::new(true, LIMIT, &hosts)).await;
    assert_eq!(allowed.expect("answer").status, 307);
    assert_eq!(server.received().len(), 1, "the redirect is not followed");
}

#[tokio::test]
async fn a_guarded_client_connects_to_no_private_address() {
    let server =
        Server::start(|_| Some(reply("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"))).await;
    let guarded = PlainHttp1::new(Settings {
        public_only: true,
        ..settings()
    });
    let result = send_empty(&guarded, &server).await;
    assert!(
        matches!(result, Err(OutboundError::Blocked(_))),
        "{result:?}"
    );
    assert_eq!(server.connections(), 0);
}

const USER_AGENT_FOR_TESTS: &str = concat!("agentfleet/", env!("CARGO_PKG_VERSION"));

#[test]
fn a_chunked_body_decodes_the_same_whether_it_arrives_whole_or_byte_by_byte() {
    let wire =
        b"4\r\nWiki\r\n6;ext=1\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\ntrailer: x\r\n\r\nNEXT";
    let mut whole = BytesMut::from(&wire[..]);
    let mut decoder = Chunked::new(LIMIT);
    assert!(decoder.feed(&mut whole).expect("whole"));
    assert_eq!(&decoder.body[..], b"Wikipedia in \r\n\r\nchunks.");
    assert_eq!(
        &whole[..],
        b"NEXT",
        "what follows the body is left in the buffer"
    );

    let mut decoder = Chunked::new(LIMIT);
    let mut buf = BytesMut::new();
    let mut done_at = None;
    for (i, byte) in wire.iter().enumerate() {
        buf.extend_from_slice(&[*byte]);
        if decoder.feed(&mut buf).expect("byte") {
            done_at = Some(i);
            break;
        }
    }
    assert_eq!(done_at, Some(wire.len() - 5), "complete at the final CRLF");
    assert_eq!(&decoder.body[..], b"Wikipedia in \r\n\r\nchunks.");
}

#[test]
fn a_chunk_size_line_without_end_is_refused_once_it_is_too_long() {
    let mut buf = BytesMut::from("1".repeat(MAX_LINE + 1).as_str());
    let result = Chunked::new(usize::MAX).feed(&mut buf);
    assert!(matches!(&result, Err(OutboundError::Other(m)) if m.contains("line too long")));
}

#[test]
fn a_chunk_size_past_usize_is_too_large_not_a_panic() {
    let mut buf = BytesMut::from("ffffffffffffffff\r\n");
    let result = Chunked::new(LIMIT).feed(&mut buf);
    assert!(
        matches!(result, Err(OutboundError::TooLarge(LIMIT))),
        "{result:?}"
    );
}

#[test]
fn a_response_reads_the_same_whole_or_in_two_parts_wherever_it_is_cut() {
    let responses: [&[u8]; 4] = [
        b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 500 Oops\r\n\r\nto the close",
        b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ncut short",
    ];
    for wire in responses {
        let whole = read_received(&[wire], LIMIT);
        assert!(whole.is_ok(), "{whole:?}");
        for cut in 0..=wire.len() {
            let parts = read_received(&[&wire[..cut], &wire[cut..]], LIMIT);
            assert_eq!(format!("{parts:?}"), format!("{whole:?}"), "cut at {cut}");
        }
    }
    let short = read_received(&[b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ncut"], LIMIT);
    assert!(matches!(&short, Err(OutboundError::Other(m)) if m.contains("closed before")));
}

/// A plain-http tool call (through the lean client) takes a redirect as the answer: a tool
/// server cannot send a call to a host the operator did not name.
#[tokio::test]
async fn a_plain_http_tool_call_goes_through_it_and_follows_no_redirect() {
    let (server, location) = redirector(usize::MAX).await;
    *location.lock().expect("lock") = "/elsewhere".to_owned();
    let outbound = Outbound::new(false, LIMIT, &Default::default());
    let timeout = Duration::from_secs(5);
    let response = outbound
        .post_json(Destination::Tool, &server.url, &[], b"{}".to_vec(), timeout)
        .await;
    assert_eq!(response.expect("answer").status, 307);
    let received = server.received();
    assert_eq!(received.len(), 1, "the redirect is not followed");
    assert_eq!(received[0].header("user-agent"), Some(USER_AGENT_FOR_TESTS));
}
