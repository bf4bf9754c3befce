//! Hostile and sloppy clients, byte for byte: request smuggling, limits, path tricks,
//! forged forwarding headers and slow clients. Each case sends exact bytes on its own
//! connection and checks both the answer and the exact bytes the upstream received.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

type Check = Box<dyn Fn(&str) -> bool + Send + Sync>;

struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    /// `None`: the upstream must receive nothing. `Some(check)`: it receives exactly one
    /// request, and `check` holds for its bytes.
    upstream: Option<Check>,
}

fn case(
    name: &'static str,
    request: impl Into<Vec<u8>>,
    status: u16,
    upstream: Option<Check>,
) -> Case {
    Case {
        name,
        request: request.into(),
        status,
        upstream,
    }
}

fn refused(name: &'static str, request: impl Into<Vec<u8>>, status: u16) -> Case {
    case(name, request, status, None)
}

/// A GET of `target` with `headers` (each ending in CRLF) and `Connection: close`.
fn get_raw(target: &str, headers: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: h\r\n{headers}Connection: close\r\n\r\n").into_bytes()
}

/// A GET whose `Connection` header names `nominated` (and `close`).
fn get_conn(target: &str, nominated: &str, headers: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: h\r\n{headers}Connection: {nominated}, close\r\n\r\n")
        .into_bytes()
}

fn saw(needles: &'static [&'static str]) -> Option<Check> {
    Some(Box::new(move |r: &str| {
        needles.iter().all(|n| r.contains(n))
    }))
}

fn saw_not(needles: &'static [&'static str]) -> Option<Check> {
    Some(Box::new(move |r: &str| {
        needles
            .iter()
            .all(|n| !r.to_ascii_lowercase().contains(&n.to_ascii_lowercase()))
    }))
}

fn first_line(expected: &'static str) -> Option<Check> {
    Some(Box::new(move |r: &str| r.lines().next() == Some(expected)))
}

const LIMITS: &str = "[server.limits]\nmax_header_bytes = \"4KiB\"\nmax_headers = 20\n\
                      max_uri_bytes = \"1KiB\"\nheader_timeout = \"1s\"\nidle_timeout = \"1s\"\n\
                      body_timeout = \"1s\"\n";

fn config(up: std::net::SocketAddr) -> String {
    format!(
        "{LIMITS}[upstreams.raw]\nbackends = [\"{up}\"]\n\
         [consumers.ops]\napi_keys = [\"ops-key\"]\n\
         [routes.public]\npaths = [\"/public\"]\nupstream = \"raw\"\n\
         [routes.admin]\npaths = [\"/admin\"]\nupstream = \"raw\"\n\
         [routes.admin.policies.key_auth]\n"
    )
}

fn cases() -> Vec<Case> {
    let many_headers: String = (0..21).map(|i| format!("X-H{i}: v\r\n")).collect();
    let twenty_headers: String = (0..17).map(|i| format!("X-H{i}: v\r\n")).collect();
    let very_many_headers: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big_header = format!("X-Big: {}\r\n", "b".repeat(4100));
    let long_uri = format!("/public/{}", "u".repeat(1100));
    let huge_uri = format!("/public/{}", "u".repeat(5000));
    vec![
        // --- framing: refused before anything reaches the upstream ---
        refused(
            "content-length and transfer-encoding",
            "POST /public HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        refused(
            "transfer-encoding then content-length",
            "POST /public HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
            400,
        ),
        refused(
            "two different content-lengths",
            "POST /public HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        refused(
            "a content-length list",
            "POST /public HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 4\r\n\r\nabcd",
            400,
        ),
        refused(
            "a negative content-length",
            "POST /public HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            400,
        ),
        refused(
            "a signed content-length",
            "POST /public HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc",
            400,
        ),
        refused(
            "a hex content-length",
            "POST /public HTTP/1.1\r\nHost: h\r\nContent-Length: 0x3\r\n\r\nabc",
            400,
        ),
        refused(
            "transfer-encoding not ending in chunked",
            "POST /public HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
        ),
        refused(
            "chunked then gzip",
            "POST /public HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            400,
        ),
        refused(
            "a second transfer-encoding header",
            "POST /public HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
            400,
        ),
        refused(
            "HTTP/1.0 with chunked",
            "POST /public HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        refused(
            "obs-fold with a space",
            get_raw("/public", "X-A: 1\r\n continued\r\n"),
            400,
        ),
        refused(
            "obs-fold with a tab",
            get_raw("/public", "X-A: 1\r\n\tcontinued\r\n"),
            400,
        ),
        refused("a bare CR in a value", get_raw("/public", "X-A: a\rb\r\n"), 400),
        refused("a NUL in a value", get_raw("/public", "X-A: a\0b\r\n"), 400),
        refused("an escape character in a value", get_raw("/public", "X-A: a\x1bb\r\n"), 400),
        refused("a DEL in the target", get_raw("/public\x7f", ""), 400),
        refused(
            "a tab in the request line",
            "GET\t/public HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            400,
        ),
        refused("a space before the colon", get_raw("/public", "X-A : 1\r\n"), 400),
        refused("a space in a header name", get_raw("/public", "X A: 1\r\n"), 400),
        refused(
            "no HTTP version",
            "GET /public\r\nHost: h\r\nConnection: close\r\n\r\n",
            400,
        ),
        refused(
            "an unknown HTTP version",
            "GET /public HTTP/7.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            400,
        ),
        refused(
            "a bad chunk size",
            "POST /public HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            400,
        ),
        // --- accepted framing, forwarded as one unambiguous request ---
        case(
            "identical duplicate content-lengths",
            "POST /public HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            200,
            Some(Box::new(|r: &str| r.ends_with("\r\n\r\nabc") && r.matches("ontent-")
                .count() == 1)),
        ),
        case(
            "a chunked body",
            "POST /public HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            200,
            saw(&["abc"]),
        ),
        case(
            "chunk extensions",
            "POST /public HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3;ext=1\r\nabc\r\n0\r\n\r\n",
            200,
            saw(&["abc"]),
        ),
        // --- limits ---
        refused("too many headers", get_raw("/public", &many_headers), 431),
        refused("more headers than the parser takes", get_raw("/public", &very_many_headers), 431),
        refused("a header block too large", get_raw("/public", &big_header), 431),
        refused("a target too long", get_raw(&long_uri, ""), 414),
        refused("a target far too long", get_raw(&huge_uri, ""), 414),
        case("headers just under the limits", get_raw("/public", &twenty_headers), 200, saw(&["x-h16: v"])),
        // --- paths: what is authorised is what is forwarded ---
        refused("dot segments into a protected route", get_raw("/public/../admin", ""), 401),
        refused("encoded dot segments", get_raw("/public/%2e%2e/admin", ""), 401),
        refused("mixed-case encoded dots", get_raw("/public/%2E%2e/admin", ""), 401),
        refused("a doubled slash", get_raw("//admin", ""), 401),
        refused("an encoded letter", get_raw("/%61dmin", ""), 401),
        refused("an encoded slash", get_raw("/public/%2Fadmin", ""), 400),
        refused("an encoded backslash", get_raw("/public/%5Cadmin", ""), 400),
        refused("an encoded NUL", get_raw("/public%00", ""), 400),
        refused("a bad escape", get_raw("/public/%zz", ""), 400),
        refused("escaping the root", get_raw("/../public", ""), 400),
        refused("a raw backslash", get_raw("/public\\..\\admin", ""), 400),
        case(
            "double encoding is decoded once",
            get_raw("/public/%252e%252e/admin", ""),
            200,
            first_line("GET /public/%252e%252e/admin HTTP/1.1"),
        ),
        case(
            "a dot segment inside the route",
            get_raw("/public/./a/../b", ""),
            200,
            first_line("GET /public/b HTTP/1.1"),
        ),
        case(
            "the query is kept as sent",
            get_raw("/public/x?a=%2F&b=..", ""),
            200,
            first_line("GET /public/x?a=%2F&b=.. HTTP/1.1"),
        ),
        refused("a ; parameter is part of the segment", get_raw("/public;x=1", ""), 404),
        case(
            "a ; parameter below the prefix",
            get_raw("/public/a;x=1", ""),
            200,
            first_line("GET /public/a;x=1 HTTP/1.1"),
        ),
        refused("a fragment is not a path", get_raw("/public#frag", ""), 400),
        refused("an unrouted path", get_raw("/nowhere", ""), 404),
        // --- headers the gateway vouches for ---
        case(
            "underscore headers are dropped",
            get_raw("/public", "X_Consumer_Name: ops\r\nApi_Key: ops-key\r\n"),
            200,
            saw_not(&["x_consumer", "api_key"]),
        ),
        case(
            "forged consumer headers are stripped",
            get_raw("/public", "X-Consumer-Name: ops\r\nX-Consumer-Groups: admin\r\n"),
            200,
            saw_not(&["x-consumer-"]),
        ),
        case(
            "an untrusted client's X-Forwarded-For is appended to",
            get_raw("/public", "X-Forwarded-For: 10.9.9.9\r\n"),
            200,
            saw(&["x-forwarded-for: 10.9.9.9, 127.0.0.1\r\n"]),
        ),
        case(
            "X-Forwarded-Proto is the gateway's",
            get_raw("/public", "X-Forwarded-Proto: https\r\n"),
            200,
            saw(&["x-forwarded-proto: http\r\n"]),
        ),
        refused(
            "Connection naming X-Forwarded-For",
            get_conn("/public", "x-forwarded-for", ""),
            400,
        ),
        refused(
            "Connection naming X-Forwarded-Host",
            get_conn("/public", "X-Forwarded-Host", ""),
            400,
        ),
        refused(
            "Connection naming the request id",
            get_conn("/public", "x-request-id", ""),
            400,
        ),
        refused(
            "Connection naming a consumer header",
            get_conn("/admin", "x-consumer-name", "apikey: ops-key\r\n"),
            400,
        ),
        refused(
            "Connection naming the trace context",
            get_conn("/public", "traceparent", ""),
            400,
        ),
        case(
            "Connection strips what it names otherwise",
            get_conn("/public", "x-private", "X-Private: 1\r\n"),
            200,
            saw_not(&["x-private"]),
        ),
        case(
            "hop-by-hop headers stop at the gateway",
            get_raw("/public", "Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nUpgrade: h2c\r\n"),
            200,
            saw_not(&["keep-alive", "proxy-connection", "te: gzip", "upgrade"]),
        ),
        case(
            "a forged request id is replaced",
            get_raw("/public", "X-Request-Id: <script>\r\n"),
            200,
            saw_not(&["<script>"]),
        ),
        case(
            "a valid request id is kept",
            get_raw("/public", "X-Request-Id: abc-123\r\n"),
            200,
            saw(&["x-request-id: abc-123\r\n"]),
        ),
        refused("a wrong API key", get_raw("/admin", "apikey: nope\r\n"), 401),
        case(
            "the API key is not forwarded",
            get_raw("/admin", "apikey: ops-key\r\n"),
            200,
            saw_not(&["ops-key"]),
        ),
        // --- methods ---
        refused("CONNECT is not proxied", "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 405),
        case(
            "an unknown method passes on a route without method rules",
            "BREW /public HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            200,
            first_line("BREW /public HTTP/1.1"),
        ),
    ]
}

async fn run_cases(gw: &Gateway, up: &RawUpstream) -> Vec<String> {
    let mut failures = Vec::new();
    for c in cases() {
        up.clear();
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        let _ = s.write_all(&c.request).await;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        if read.is_err() {
            failures.push(format!("{}: no complete answer", c.name));
            continue;
        }
        let got = if buf.is_empty() {
            0
        } else {
            parse_response(&buf).status
        };
        if got != c.status {
            failures.push(format!(
                "{}: status {got}, want {} ({:?})",
                c.name,
                c.status,
                String::from_utf8_lossy(&buf[..buf.len().min(200)])
            ));
            continue;
        }
        if c.status >= 400 && c.status != 405 {
            let r = parse_response(&buf);
            if r.header("content-type") != Some("application/json") {
                failures.push(format!("{}: refusal without the JSON body: {r:?}", c.name));
            }
        }
        let received = up.requests();
        match &c.upstream {
            None if !received.is_empty() => failures.push(format!(
                "{}: reached the upstream: {:?}",
                c.name,
                String::from_utf8_lossy(&received[0])
            )),
            Some(check) => {
                let ok = received.len() == 1 && check(&String::from_utf8_lossy(&received[0]));
                if !ok {
                    failures.push(format!(
                        "{}: upstream received {:?}",
                        c.name,
                        received
                            .iter()
                            .map(|r| String::from_utf8_lossy(r).into_owned())
                            .collect::<Vec<_>>()
                    ));
                }
            }
            None => {}
        }
    }
    failures
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn hostile_requests_are_refused_or_made_harmless_byte_for_byte() {
    let up = RawUpstream::start().await;
    let gw = gateway_with_admin(&config(up.addr));
    assert!(cases().len() >= 60, "only {} cases", cases().len());
    let failures = run_cases(&gw, &up).await;
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // still healthy, and memory does not grow with more rounds of the same abuse
    let after_one = rss_kib(gw.pid());
    for _ in 0..3 {
        assert!(run_cases(&gw, &up).await.is_empty());
    }
    let after_four = rss_kib(gw.pid());
    assert!(
        after_four < after_one + 16 * 1024,
        "RSS grew from {after_one} KiB to {after_four} KiB"
    );
    let (status, _, _) = get_json(&gw.admin_url("/healthz")).await;
    assert_eq!(status, 200);
    let m = metrics_text(&gw).await;
    assert!(
        m.contains("tollgate_refusals_total{reason=\"headers_too_large\",route=\"_none\"} 12"),
        "{m}"
    );
}

/// Reads from `s` until it closes (or 5 s pass): what the gateway sent.
async fn read_all(s: &mut TcpStream) -> Vec<u8> {
    read_until_closed(s, Duration::from_secs(5)).await
}

async fn slow_gateway() -> (RawUpstream, Gateway) {
    let up = RawUpstream::start().await;
    let gw = gateway_with_admin(&config(up.addr));
    (up, gw)
}

#[tokio::test]
async fn a_head_that_stalls_gets_408_and_the_connection_closes() {
    let (up, gw) = slow_gateway().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /public HTTP/1.1\r\nHost: h\r\n")
        .await
        .unwrap();
    let answer = parse_response(&read_all(&mut s).await);
    assert_eq!(answer.status, 408);
    assert_eq!(answer.json()["error"], "request_timeout");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn one_byte_at_a_time_cannot_hold_a_connection_past_the_header_deadline() {
    let (_up, gw) = slow_gateway().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = get_raw("/public", &"X-Pad: 0123456789\r\n".repeat(5));
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    // each byte well within any per-read timeout; the whole head would take 25 s
    for b in head.iter() {
        if s.write_all(std::slice::from_ref(b)).await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
    }
    answer.extend(read_all(&mut s).await);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held for {:?}",
        started.elapsed()
    );
    assert_eq!(parse_response(&answer).status, 408);
}

#[tokio::test]
async fn a_body_that_stalls_gets_408() {
    let (_up, gw) = slow_gateway().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /public HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let answer = parse_response(&read_all(&mut s).await);
    assert_eq!(answer.status, 408);
    assert_eq!(answer.json()["error"], "request_timeout");
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_quietly() {
    let (_up, gw) = slow_gateway().await;
    // a connection that never sends anything
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    assert!(read_all(&mut silent).await.is_empty());

    // a keep-alive connection: two requests in time, then idle
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /public HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answer")
            .unwrap();
        let r = parse_response(&buf[..n]);
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        read_all(&mut s).await.is_empty(),
        "an idle connection got bytes"
    );
}

#[tokio::test]
async fn a_pipelined_request_is_never_smuggled_to_the_upstream() {
    let (up, gw) = slow_gateway().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let many: String = (0..25).map(|i| format!("X-H{i}: v\r\n")).collect();
    let two = format!(
        "GET /public/1 HTTP/1.1\r\nHost: h\r\n\r\nGET /public/2 HTTP/1.1\r\nHost: h\r\n{many}Connection: close\r\n\r\n"
    );
    s.write_all(two.as_bytes()).await.unwrap();
    let all = String::from_utf8_lossy(&read_all(&mut s).await).into_owned();
    // Pingora answers the first request and closes: the pipelined one is not run, and
    // in particular never reaches the upstream as part of the first one
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let first = String::from_utf8_lossy(&seen[0]).into_owned();
    assert!(
        first.starts_with("GET /public/1 ") && !first.contains("/public/2"),
        "{first}"
    );
}

/// A loopback upstream that runs `conn` on each connection it accepts, each in a task
/// of its own.
async fn serve<F, Fut>(conn: F) -> std::net::SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(conn(s));
        }
    });
    addr
}

/// An upstream that answers every connection with `bytes` and then resets it.
async fn scripted_upstream(bytes: &'static [u8]) -> std::net::SocketAddr {
    serve(move |mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(bytes).await;
        // close with RST; a zero linger does not block
        #[allow(deprecated)]
        let _ = s.set_linger(Some(Duration::ZERO));
        drop(s);
    })
    .await
}

#[tokio::test]
async fn an_upstream_dying_mid_response_never_looks_like_a_complete_answer() {
    let chunked =
        scripted_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
    let sized = scripted_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello").await;
    let gw = gateway(&format!(
        "[upstreams.c]\nbackends = [\"{chunked}\"]\nretries = 0\n\
         [upstreams.s]\nbackends = [\"{sized}\"]\nretries = 0\n\
         [routes.c]\npaths = [\"/c\"]\nupstream = \"c\"\n\
         [routes.s]\npaths = [\"/s\"]\nupstream = \"s\"\n"
    ));
    for (path, complete) in [("/c", &b"0\r\n\r\n"[..]), ("/s", &[][..])] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&get_raw(path, "")).await.unwrap();
        let got = read_all(&mut s).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("hello"), "{text}");
        if path == "/c" {
            assert!(
                !got.windows(complete.len()).any(|w| w == complete),
                "a truncated chunked answer was terminated as if complete: {text:?}"
            );
        } else {
            let body = &got[got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
            assert!(body.len() < 100, "{text:?}");
        }
    }
}

/// An upstream that reads a request and then sends a response head one byte every
/// 100 ms: each read is quick, the head would take minutes.
async fn trickling_upstream() -> std::net::SocketAddr {
    serve(move |mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let head = format!(
            "HTTP/1.1 200 OK\r\n{}",
            "X-Slow: 0123456789\r\n".repeat(100)
        );
        trickle(&mut s, &head).await;
    })
    .await
}

/// A gateway with one route, `/`, to the upstream `up` with `upstream` settings (TOML
/// lines of its table), and `more` tables after.
fn one_route(up: std::net::SocketAddr, upstream: &str, more: &str) -> Gateway {
    gateway(&format!(
        "[upstreams.u]\nbackends = [\"{up}\"]\n{upstream}\
         [routes.u]\npaths = [\"/\"]\nupstream = \"u\"\n{more}"
    ))
}

#[tokio::test]
async fn an_upstream_trickling_its_head_gets_504_at_read_timeout() {
    let up = trickling_upstream().await;
    let gw = one_route(up, "retries = 0\nread_timeout = \"1s\"\n", "");
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&get_raw("/t", "")).await.unwrap();
    let answer = parse_response(&read_all(&mut s).await);
    let took = started.elapsed();
    assert_eq!(answer.status, 504);
    assert_eq!(answer.json()["error"], "gateway_timeout");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
}

/// Writes `text` one byte every 100 ms (an upstream that trickles), until the peer goes.
async fn trickle(s: &mut tokio::net::TcpStream, text: &str) {
    for b in text.bytes() {
        if s.write_all(&[b]).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An upstream whose connections answer their first request at once (and stay open)
/// and trickle the head of every later one.
async fn trickling_on_reuse_upstream() -> std::net::SocketAddr {
    serve(move |mut s| async move {
        let mut buf = [0u8; 4096];
        if matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {
            return;
        }
        let quick = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        if s.write_all(quick).await.is_err() {
            return;
        }
        if matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {
            return;
        }
        trickle(&mut s, &"HTTP/1.1 200 OK\r\nX-Slow: 1\r\n".repeat(20)).await;
    })
    .await
}

#[tokio::test]
async fn a_pooled_upstream_connection_trickling_its_head_gets_504_too() {
    let up = trickling_on_reuse_upstream().await;
    let gw = one_route(up, "retries = 0\nread_timeout = \"1s\"\n", "");
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&get_raw("/first", "")).await.unwrap();
    assert_eq!(parse_response(&read_all(&mut s).await).status, 200);
    // the second request goes over the pooled connection, whose head now trickles
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&get_raw("/second", "")).await.unwrap();
    let answer = parse_response(&read_all(&mut s).await);
    let took = started.elapsed();
    assert_eq!(answer.status, 504);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn a_slow_upload_longer_than_read_timeout_is_not_cut() {
    let up = Upstream::start("u").await;
    let gw = one_route(up.addr, "read_timeout = \"500ms\"\n", "");
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // the body takes 1.2 s, more than twice the upstream's read_timeout
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(b"12345").await.unwrap();
    }
    let answer = parse_response(&read_all(&mut s).await);
    assert_eq!(answer.status, 200);
    assert_eq!(up.last().unwrap().body_len, 20);
}

#[tokio::test]
async fn a_client_pausing_its_body_longer_than_read_timeout_is_not_blamed_on_the_upstream() {
    let up = Upstream::start("u").await;
    let gw = one_route(
        up.addr,
        "read_timeout = \"500ms\"\n",
        "[server.limits]\nbody_timeout = \"5s\"\n",
    );
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\nConnection: close\r\n\r\n12345",
    )
    .await
    .unwrap();
    // the client (not the upstream) pauses for three times the upstream's read_timeout,
    // within its own body_timeout
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"67890").await.unwrap();
    let answer = parse_response(&read_all(&mut s).await);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(up.last().unwrap().body_len, 10);
}

#[tokio::test]
async fn a_steady_upload_to_a_slow_upstream_is_not_cut_at_read_timeout() {
    const SIZE: usize = 1 << 20;
    // the upstream is the bottleneck: it takes 16 KiB every 20 ms (~1.3 s for 1 MiB,
    // four times its read_timeout), through a small receive buffer
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = socket.listen(16).unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                let body_start = loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let mut body = got.len() - body_start;
                while body < SIZE {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => body += n,
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    let gw = one_route(up, "read_timeout = \"300ms\"\nretries = 0\n", "");
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b'u'; SIZE]).await.unwrap();
    let answer = parse_response(&read_until_closed(&mut s, Duration::from_secs(30)).await);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        started.elapsed() > Duration::from_millis(600),
        "the upload was not slower than read_timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_client_pausing_its_body_past_body_timeout_gets_408_not_504() {
    let up = Upstream::start("u").await;
    let gw = one_route(
        up.addr,
        "read_timeout = \"300ms\"\n",
        "[server.limits]\nbody_timeout = \"1s\"\n",
    );
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\nConnection: close\r\n\r\n12345",
    )
    .await
    .unwrap();
    let answer = parse_response(&read_all(&mut s).await);
    let took = started.elapsed();
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.json()["error"], "request_timeout");
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn an_upstream_stalling_its_body_after_an_upload_is_still_cut() {
    // reads the request, sends a head and part of a body, then nothing
    let up = serve(move |mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    // with a request body, a read of the response waits at most read_timeout +
    // body_timeout (the per-read timer also runs between the pieces of the body, where
    // the client's own limit must come first)
    let gw = one_route(
        up,
        "read_timeout = \"500ms\"\nretries = 0\n",
        "[server.limits]\nbody_timeout = \"1s\"\n",
    );
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\n12345",
    )
    .await
    .unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "the stalled body was cut after {took:?}"
    );
}

/// An upstream that accepts connections and never reads from them or answers (a small
/// receive buffer, so that what it does not take soon stops the gateway's writes).
async fn non_reading_upstream() -> std::net::SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = socket.listen(16).unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_that_stops_taking_the_request_body_gets_504_at_read_timeout() {
    let up = non_reading_upstream().await;
    let gw = one_route(up, "retries = 0\nread_timeout = \"500ms\"\n", "");
    const SIZE: usize = 64 << 20;
    let (mut rd, mut wr) = TcpStream::connect(gw.addr).await.unwrap().into_split();
    // the client uploads as fast as it is let (and stops when the gateway gives up)
    tokio::spawn(async move {
        let head = format!(
            "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
        );
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'u'; 64 * 1024];
        for _ in 0..SIZE / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut got)).await;
    assert!(
        ended.is_ok(),
        "the request hung: no answer, and the connection still open after 10 s"
    );
    if !got.is_empty() {
        assert_eq!(parse_response(&got).status, 504);
    }
    // the answer itself may be lost to the reset of a connection whose upload was not
    // read to the end; the access log has it
    assert!(
        eventually(Duration::from_secs(5), async || gw
            .stdout_lines()
            .iter()
            .any(|l| l.contains("\"status\":504")))
        .await,
        "no 504 in the access log: {:?}",
        gw.stdout_lines()
    );
}

/// An upstream that answers each connection's first request with `size` bytes of body,
/// written as fast as the connection takes them.
async fn big_upstream(size: usize) -> std::net::SocketAddr {
    serve(move |mut s| async move {
        let mut buf = [0u8; 4096];
        if matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {
            return;
        }
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            if s.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
    })
    .await
}

/// A gateway with `send_timeout = "500ms"` in front of `up`, and a client connection to
/// it with a small receive buffer (so that what it does not read soon stops the
/// gateway's writes) that has sent `GET /big`.
async fn big_download(up: std::net::SocketAddr) -> (Gateway, TcpStream) {
    let gw = one_route(up, "", "[server.limits]\nsend_timeout = \"500ms\"\n");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(gw.addr).await.unwrap();
    s.write_all(&get_raw("/big", "")).await.unwrap();
    (gw, s)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_send_timeout() {
    const SIZE: usize = 64 << 20;
    let (_gw, mut s) = big_download(big_upstream(SIZE).await).await;
    // the client takes nothing for four times send_timeout (the behaviour under test,
    // not a wait for the gateway), then reads what there is
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = read_all(&mut s).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &got[..got.len().min(64)]
    );
    assert!(
        got.len() < SIZE,
        "the gateway went on writing to a client that had stopped reading ({} bytes)",
        got.len()
    );
}

#[tokio::test]
async fn a_slow_but_steady_reader_is_not_cut() {
    const SIZE: usize = 4 << 20;
    let (_gw, mut s) = big_download(big_upstream(SIZE).await).await;
    // 256 KiB, then a pause of 100 ms (a fifth of send_timeout), and again: ~1.6 s in
    // all, three times send_timeout, which bounds each pause, not the whole answer
    let body = read_slowly(&mut s, 256 * 1024, Duration::from_millis(100)).await;
    assert_eq!(body, SIZE, "the answer was cut short");
}

/// Reads a whole 200 answer `step` bytes at a time with a `pause` after each (the
/// client's pace, the behaviour under test); the length of its body.
async fn read_slowly(s: &mut TcpStream, step: usize, pause: Duration) -> usize {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let finished = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mark = got.len();
            while got.len() - mark < step {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            tokio::time::sleep(pause).await;
        }
    })
    .await;
    assert!(finished.is_ok(), "the download did not end");
    assert!(got.starts_with(b"HTTP/1.1 200"));
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    got.len() - head_end
}

#[tokio::test]
async fn a_slow_reader_of_the_answer_to_an_upload_is_not_cut_at_read_timeout() {
    const SIZE: usize = 4 << 20;
    // reads the whole request (head and its 5-byte body), then answers SIZE bytes
    let up = serve(move |mut s| async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"hello") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&vec![b'x'; SIZE]).await;
    })
    .await;
    let gw = one_route(
        up,
        "read_timeout = \"300ms\"\nretries = 0\n",
        "[server.limits]\nsend_timeout = \"5s\"\n",
    );
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await
    .unwrap();
    // the client, not the upstream, is slow: 512 KiB, then a pause longer than the
    // upstream's read_timeout (within send_timeout), and again
    let body = read_slowly(&mut s, 512 * 1024, Duration::from_millis(400)).await;
    assert_eq!(
        body,
        SIZE,
        "the answer was cut short: {:?}",
        gw.stdout_lines()
    );
}

#[tokio::test]
async fn a_client_pausing_after_100_continue_is_not_blamed_on_the_upstream() {
    let up = Upstream::start("u").await;
    let gw = one_route(
        up.addr,
        "read_timeout = \"500ms\"\n",
        "[server.limits]\nbody_timeout = \"5s\"\n",
    );
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    // the upstream (hyper) answers 100 Continue once it is asked for the body
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head:?}");
    s.write_all(b"12345").await.unwrap();
    // the client pauses for three times the upstream's read_timeout
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"67890").await.unwrap();
    let answer = parse_response(&read_all(&mut s).await);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(up.last().unwrap().body_len, 10);
}

// --- HTTP/2 abuse, with a scripted client writing raw frames over h2c ---

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET path` on `stream` (HPACK: indexed :method GET, :scheme http, literal :path,
/// literal :authority "h"), ending the stream.
fn h2_get(stream: u32, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 0x01, b'h']);
    frame(0x1, 0x4 | 0x1, stream, &block)
}

fn h2_start() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out
}

/// Reads frames until the server closes or `deadline` passes: (type, flags, stream,
/// first 4 payload bytes) of each.
async fn h2_frames(s: &mut TcpStream, deadline: Duration) -> Vec<(u8, u8, u32, u32)> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(deadline, async {
        let mut chunk = [0u8; 16384];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 9 {
        let len = (usize::from(buf[at]) << 16)
            | (usize::from(buf[at + 1]) << 8)
            | usize::from(buf[at + 2]);
        let stream =
            u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]]) & 0x7fff_ffff;
        let p = &buf[(at + 9).min(buf.len())..(at + 9 + len).min(buf.len())];
        let first = if p.len() >= 4 {
            u32::from_be_bytes([p[0], p[1], p[2], p[3]])
        } else {
            0
        };
        let code = if buf[at + 3] == 0x7 && p.len() >= 8 {
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]) // GOAWAY: the error code
        } else {
            first
        };
        frames.push((buf[at + 3], buf[at + 4], stream, code));
        at += 9 + len;
    }
    frames
}

#[tokio::test]
async fn rapid_reset_gets_the_connection_closed_and_the_gateway_keeps_serving() {
    let (_up, gw) = slow_gateway().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut out = h2_start();
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        out.extend(h2_get(id, "/public"));
        out.extend(frame(0x3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let _ = s.write_all(&out).await;
    let frames = h2_frames(&mut s, Duration::from_secs(10)).await;
    let goaway = frames.iter().find(|f| f.0 == 0x7);
    assert!(
        goaway.is_some(),
        "no GOAWAY after 2000 reset streams: {} frames",
        frames.len()
    );
    assert_eq!(
        goaway.unwrap().3,
        0xb,
        "GOAWAY is not ENHANCE_YOUR_CALM: {goaway:?}"
    );
    let (status, _, _) = get_json(&gw.url("/public")).await;
    assert_eq!(status, 200, "the gateway stopped serving");
}

#[tokio::test]
async fn an_http2_client_that_grants_no_window_is_cut_at_send_timeout() {
    let up = big_upstream(64 << 20).await;
    let gw = one_route(up, "", "[server.limits]\nsend_timeout = \"500ms\"\n");
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut out = h2_start();
    out.extend(h2_get(1, "/big"));
    s.write_all(&out).await.unwrap();
    // the client never sends WINDOW_UPDATE: the answer stops after the first 64 KiB
    let frames = h2_frames(&mut s, Duration::from_secs(3)).await;
    assert!(
        frames.iter().any(|f| f.0 == 0x1 && f.2 == 1),
        "no HEADERS on the stream: {frames:?}"
    );
    assert!(
        frames
            .iter()
            .any(|f| (f.0 == 0x3 && f.2 == 1) || f.0 == 0x7),
        "the stalled stream was neither reset nor its connection closed: {frames:?}"
    );
}

#[tokio::test]
async fn streams_beyond_the_concurrency_limit_are_refused() {
    let slow = Upstream::start("slow").await;
    let gw = gateway(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"slow\"\n",
        upstream_table("slow", &[slow.addr])
    ));
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut out = h2_start();
    for i in 0..150u32 {
        out.extend(h2_get(2 * i + 1, "/slow"));
    }
    s.write_all(&out).await.unwrap();
    // the refusals come at once; the admitted streams wait on the slow upstream
    let frames = h2_frames(&mut s, Duration::from_secs(3)).await;
    let refused = frames
        .iter()
        .filter(|f| f.0 == 0x3 && f.3 == 0x7) // RST_STREAM REFUSED_STREAM
        .count();
    assert!(
        frames.iter().any(|f| f.0 == 0x4 && f.1 == 0),
        "no server SETTINGS"
    );
    assert!(
        refused >= 50,
        "only {refused} of 150 streams refused: {frames:?}"
    );
    assert!(
        slow.count() <= 100,
        "{} requests reached the upstream",
        slow.count()
    );
}
