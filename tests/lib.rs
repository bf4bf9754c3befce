//! Test support for Tollgate's end-to-end tests.
//!
//! - [`Upstream`]: a real HTTP/1.1 server on `127.0.0.1:0` that answers every request
//!   with a JSON description of what it received (method, target, headers) and keeps
//!   a record of it.
//! - [`Gateway`]: runs the real `tollgate` binary on a config written to a temp dir,
//!   with `127.0.0.1:0` listeners, and waits (with a deadline) for the line in which
//!   the binary reports the address it bound.
//! - [`raw`]: sends exact bytes and reads the whole answer, for requests a normal
//!   client would "fix" before sending (dot segments, odd framing).
//! - [`IdentityProvider`]: a real OpenID Connect discovery, JWKS and RFC 7662
//!   introspection server whose answers the test sets.
//! - [`DnsServer`]: a real authoritative DNS server (UDP and TCP on one loopback port)
//!   with a zone the test edits, per-name failure [`Rule`]s and a log of the queries.

pub mod dns;
pub mod idp;
pub use dns::{DnsServer, Rule};
pub use idp::{Answer, AuthzService, IdentityProvider};

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Request target as received (path and query).
    pub target: String,
    /// Headers, lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Body length.
    pub body_len: usize,
    /// The body.
    pub body: Vec<u8>,
}

impl Seen {
    /// All values of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).first().copied()
    }
}

/// A recording echo upstream.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it received, in order (health checks to `/healthz` are not recorded).
    pub seen: Arc<Mutex<Vec<Seen>>>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    checks: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Counts a connection closed when its task ends.
struct Closed(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Upstream {
    /// An echo upstream named `name` (the `upstream` field of its JSON answers).
    /// A request whose path contains `/slow` is answered after 2 s, one with
    /// `/delay/MS` after MS milliseconds; one whose path
    /// contains `/own-ratelimit` gets `RateLimit-Limit: 999` (an upstream's own limiter).
    pub async fn start(name: &str) -> Self {
        Self::start_on("127.0.0.1:0", name).await
    }

    /// Like [`Upstream::start`], on a given address.
    pub async fn start_on(bind: &str, name: &str) -> Self {
        let listener = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("bind upstream on {bind}: {e}"));
        Self::serve(listener, name, None)
    }

    /// An echo upstream that speaks HTTPS with the given PEM certificate chain and key.
    pub async fn start_tls(name: &str, cert_pem: &str, key_pem: &str) -> Self {
        let acceptor = tls_acceptor(cert_pem, key_pem, None);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, name, Some(acceptor))
    }

    /// An echo upstream over HTTPS that demands a client certificate issued by a CA of
    /// `client_ca_pem` (mutual TLS): a client without one fails the handshake.
    pub async fn start_mtls(
        name: &str,
        cert_pem: &str,
        key_pem: &str,
        client_ca_pem: &str,
    ) -> Self {
        let acceptor = tls_acceptor(cert_pem, key_pem, Some(client_ca_pem));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, name, Some(acceptor))
    }

    fn serve(listener: TcpListener, name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let addr = listener.local_addr().expect("upstream addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let name: Arc<str> = Arc::from(name);
        let rec = seen.clone();
        let health = healthy.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = connections.clone();
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let opened = open.clone();
        let checks: Arc<Mutex<Vec<String>>> = Arc::default();
        let checked = checks.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                opened.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                let closed = Closed(opened.clone());
                let rec = rec.clone();
                let name = name.clone();
                let health = health.clone();
                let tls = tls.clone();
                let checked = checked.clone();
                tokio::spawn(async move {
                    let _closed = closed;
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let rec = rec.clone();
                        let name = name.clone();
                        let up = health.load(std::sync::atomic::Ordering::Acquire);
                        let checked = checked.clone();
                        async move {
                            let websocket = req
                                .headers()
                                .get("upgrade")
                                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
                            if websocket {
                                return Ok::<_, Infallible>(upgrade_echo(req));
                            }
                            if req.uri().path() == "/healthz" {
                                let host = req.headers().get("host").and_then(|h| h.to_str().ok());
                                if let (Ok(mut c), Some(h)) = (checked.lock(), host) {
                                    c.push(h.to_string());
                                }
                                let status = if up { 200 } else { 503 };
                                let resp = Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()));
                                return Ok::<_, Infallible>(resp.unwrap_or_default());
                            }
                            Ok::<_, Infallible>(echo(req, &name, &rec).await)
                        }
                    });
                    serve_http1(stream, tls, svc).await;
                });
            }
        });
        Self {
            addr,
            seen,
            healthy,
            connections,
            open,
            checks,
            task,
        }
    }

    /// The `Host` of each health check (`GET /healthz`) it received, in order.
    pub fn check_hosts(&self) -> Vec<String> {
        self.checks.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// How many of its connections are open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Acquire)
    }

    /// How many TCP connections it accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Makes `/healthz` answer 200 (healthy) or 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy
            .store(healthy, std::sync::atomic::Ordering::Release);
    }

    /// How many requests it received.
    pub fn count(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// The last request it received.
    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().ok().and_then(|s| s.last().cloned())
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers an upgrade with 101 and then echoes every byte back on the raw connection.
fn upgrade_echo(req: Request<Incoming>) -> Response<Full<Bytes>> {
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 4096];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

/// The answer a `/respond` request asks for in its query: `status=N`, `header=NAME:VALUE`
/// (repeatable), `size=N` (a body of N `x`s instead of the echo), `body=TEXT` (that
/// body), `coding=gzip|deflate|br` (the body encoded so, with its `Content-Encoding`), and, when the request's
/// `If-None-Match` equals the `etag` it asks for, a 304; with `fail_after=N`, every
/// request after the first N for this target gets a bare 500; with `cookie_after=N`,
/// they get a `Set-Cookie` too.
fn respond_as_told(
    target: &str,
    request_headers: &BTreeMap<String, Vec<String>>,
    echo: String,
    seen_before: usize,
) -> Response<Full<Bytes>> {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let typed = form_urlencoded::parse(query.as_bytes())
        .any(|(k, v)| k == "header" && v.to_ascii_lowercase().starts_with("content-type:"));
    let mut resp = Response::builder();
    if !typed {
        resp = resp.header("content-type", "application/json");
    }
    let mut status = 200;
    let mut body = Bytes::from(echo);
    let mut etag = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "status" => status = v.parse().unwrap_or(200),
            "cookie_after" if seen_before >= v.parse().unwrap_or(usize::MAX) => {
                resp = resp.header("set-cookie", "late=1");
            }
            "fail_after" if seen_before >= v.parse().unwrap_or(usize::MAX) => {
                return Response::builder()
                    .status(500)
                    .body(Full::new(Bytes::from_static(b"upstream failed")))
                    .unwrap_or_default();
            }
            "size" => body = Bytes::from(vec![b'x'; v.parse().unwrap_or(0)]),
            "body" => body = Bytes::from(v.into_owned()),
            "header" => {
                if let Some((n, val)) = v.split_once(':') {
                    if n.eq_ignore_ascii_case("etag") {
                        etag = Some(val.to_string());
                    }
                    resp = resp.header(n, val);
                }
            }
            _ => {}
        }
    }
    let matches = etag.is_some_and(|e| {
        request_headers
            .get("if-none-match")
            .is_some_and(|v| v.contains(&e))
    });
    if matches {
        status = 304;
        body = Bytes::new();
    }
    let coding = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "coding");
    if let Some((_, coding)) = coding {
        body = Bytes::from(encode(&coding, &body));
        resp = resp.header("content-encoding", &*coding);
    }
    resp.status(status)
        .body(Full::new(body))
        .unwrap_or_default()
}

/// The request as a server received it, its body read whole.
pub(crate) async fn record(req: Request<Incoming>) -> Seen {
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Seen {
        method,
        target,
        headers,
        body_len: body.len(),
        body: body.to_vec(),
    }
}

async fn echo(req: Request<Incoming>, name: &str, rec: &Mutex<Vec<Seen>>) -> Response<Full<Bytes>> {
    let seen = record(req).await;
    if let Ok(mut r) = rec.lock() {
        r.push(seen.clone());
    }
    let Seen {
        method,
        target,
        headers,
        body_len,
        ..
    } = seen;
    // `/slow`: 2 s; `/delay/MS`: MS milliseconds
    let delay = if target.contains("/slow") {
        Some(Duration::from_secs(2))
    } else {
        target
            .split("/delay/")
            .nth(1)
            .and_then(|rest| rest.split(['/', '?']).next()?.parse().ok())
            .map(Duration::from_millis)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut hmap: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (n, v) in headers {
        hmap.entry(n).or_default().push(v);
    }
    let json = serde_json::json!({
        "upstream": name, "method": method, "target": target, "headers": hmap, "body_len": body_len,
    });
    // after the delay: `/delay/MS/respond?…` answers as told, late
    if target.contains("/respond") {
        let seen_before = rec
            .lock()
            .map_or(0, |r| r.iter().filter(|s| s.target == target).count() - 1);
        return respond_as_told(&target, &hmap, json.to_string(), seen_before);
    }
    let mut resp = Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", name)
        .header("keep-alive", "timeout=5");
    if target.contains("/own-ratelimit") {
        resp = resp.header("ratelimit-limit", "999");
    }
    if target.contains("/hop-named") {
        // a hop-by-hop header named by `Connection`, which must not reach the client
        resp = resp
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1");
    }
    resp.body(Full::new(Bytes::from(json.to_string())))
        .unwrap_or_default()
}

/// Serves one accepted connection with HTTP/1.1 (upgrades allowed), over TLS with
/// `tls`.
pub async fn serve_http1<S>(stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>, svc: S)
where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    match tls {
        None => {
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            let _ = conn.with_upgrades().await;
        }
        Some(acceptor) => {
            if let Ok(stream) = acceptor.accept(stream).await {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        }
    }
}

/// A TLS acceptor with this PEM certificate chain and key; with `client_ca_pem`, it
/// demands a client certificate issued by one of its CAs.
pub fn tls_acceptor(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("cert pem");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key pem");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.expect("ca pem")).expect("ca");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A closed port on loopback: connecting to it is refused.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

/// A running `tollgate run` process.
pub struct Gateway {
    child: Child,
    /// The proxy listener.
    pub addr: SocketAddr,
    /// The admin listener, when configured.
    pub admin: Option<SocketAddr>,
    /// The first TLS listener, when configured.
    pub tls: Option<SocketAddr>,
    /// The temp dir with the config file.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// How long a gateway may take to start.
pub const START_DEADLINE: Duration = Duration::from_secs(20);

impl Gateway {
    /// Starts `bin run --config` on `toml` (which should listen on port 0) and waits until
    /// it reports its listeners.
    pub fn start(bin: &Path, toml: &str) -> Self {
        Self::spawn(bin, &["run", "--config"], toml, &[], "warn")
    }

    /// Like [`Gateway::start`], with diagnostics at `level` (`RUST_LOG`).
    pub fn start_logging(bin: &Path, toml: &str, level: &str) -> Self {
        Self::spawn(bin, &["run", "--config"], toml, &[], level)
    }

    /// Runs a program built on the library (an example) as `program CONFIG ARGS…` and
    /// waits for the gateway's listeners as for [`Gateway::start`].
    pub fn start_program(program: &Path, toml: &str, args: &[&str]) -> Self {
        Self::spawn(program, &[], toml, args, "warn")
    }

    /// [`Gateway::start_program`], with `env` set for the program (`NAME=value`).
    pub fn start_program_with_env(program: &Path, toml: &str, env: &[&str]) -> Self {
        let script = format!("exec env {} '{}' \"$0\"", env.join(" "), program.display());
        Self::spawn(Path::new("/bin/sh"), &["-c", &script], toml, &[], "warn")
    }

    /// Like [`Gateway::start`], with `env` set for the process (`NAME=value`).
    pub fn start_with_env(bin: &Path, toml: &str, env: &[&str]) -> Self {
        let script = format!(
            "exec env {} '{}' run --config \"$0\"",
            env.join(" "),
            bin.display()
        );
        Self::spawn(Path::new("/bin/sh"), &["-c", &script], toml, &[], "warn")
    }

    /// Like [`Gateway::start`], with the process's open-file limit set to `limit`
    /// (`ulimit -n`), to see the gateway run out of descriptors.
    pub fn start_with_fd_limit(bin: &Path, toml: &str, limit: u32) -> Self {
        let script = format!(
            "ulimit -n {limit} && exec '{}' run --config \"$0\"",
            bin.display()
        );
        Self::spawn(Path::new("/bin/sh"), &["-c", &script], toml, &[], "warn")
    }

    /// Starts `bin run --upgrade` on `toml`: it takes over the listening sockets of the
    /// running instance once that one is sent SIGQUIT (which the caller does). Returns
    /// when the new process reports its listeners; the config needs fixed ports.
    pub fn start_upgrade(bin: &Path, toml: &str) -> Self {
        Self::spawn(bin, &["run", "--config"], toml, &["--upgrade"], "warn")
    }

    fn spawn(bin: &Path, before: &[&str], toml: &str, after: &[&str], log_level: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, toml).expect("write config");
        let mut child = Command::new(bin)
            .args(before)
            .arg(&config)
            .args(after)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tollgate");
        let expect_admin = toml.contains("admin_listen");
        let expect_tls = toml.contains("[[server.tls]]");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stderr_lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let err_sink = stderr_lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[tollgate] {line}");
                if let Ok(mut s) = err_sink.lock() {
                    s.push(line.clone());
                }
                let _ = tx.send(line);
            }
        });
        let stdout_lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let out = child.stdout.take().expect("stdout");
        let sink = stdout_lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push(line);
                }
            }
        });
        let deadline = Instant::now() + START_DEADLINE;
        let (mut addr, mut admin, mut tls) = (None, None, None);
        while addr.is_none() || (expect_admin && admin.is_none()) || (expect_tls && tls.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!("tollgate did not report its listeners within {START_DEADLINE:?}");
                }
            };
            let parse = |l: &str| {
                l.rsplit(' ')
                    .next()
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            };
            if line.starts_with("tollgate: proxy listening on ") {
                addr = parse(&line);
            } else if line.starts_with("tollgate: admin listening on ") {
                admin = parse(&line);
            } else if line.starts_with("tollgate: proxy-tls listening on ") && tls.is_none() {
                tls = parse(&line);
            }
        }
        let addr = addr.expect("proxy address");
        Self {
            child,
            addr,
            admin,
            tls,
            dir,
            config,
            stdout: stdout_lines,
            stderr: stderr_lines,
        }
    }

    /// `http://ADDR` of the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://ADDR` of the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.admin.expect("admin listener configured")
        )
    }

    /// Lines the gateway wrote to stdout so far (the access log).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Lines the gateway wrote to stderr so far (its diagnostics).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "HUP", "TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{signal} failed");
    }

    /// Waits for the process to exit, up to `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + deadline;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket upgrade request for `path` (HTTP/1.1, no body).
pub fn websocket_upgrade(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes()
}

/// Reads one response head (to its empty line, byte by byte so that nothing after it
/// is taken), each byte within 5 s; panics if the connection closes first.
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .expect("a response head in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "connection closed in a response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A parsed raw HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// Body bytes (de-chunking is not done).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends `request` bytes to `addr` and reads the answer until the connection closes
/// (send `Connection: close`), for at most 10 s.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    parse_response(&read_until_closed(&mut s, Duration::from_secs(10)).await)
}

/// Reads from `s` until the peer closes it; panics if that takes longer than `deadline`.
pub async fn read_until_closed(s: &mut TcpStream, deadline: Duration) -> Vec<u8> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(deadline, s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the connection was not closed within {deadline:?}; got {:?}",
        String::from_utf8_lossy(&buf)
    );
    buf
}

/// Parses one HTTP/1.1 response.
pub fn parse_response(buf: &[u8]) -> RawResponse {
    let text_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header block in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..text_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    RawResponse {
        status,
        headers,
        body: buf[text_end + 4..].to_vec(),
    }
}

/// Polls `cond` every 20 ms until it holds or `deadline` passes.
pub async fn eventually(deadline: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real `redis-server` for one test, on a Unix socket in a temp dir (no TCP port, so
/// nothing to race for). Killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` and waits (at most 10 s) until it answers `PING`.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); scripts/install-deps.sh installs it")
            });
        let server = Self {
            child: Some(child),
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// The URL for `[server.redis] url`.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// Kills the server (for store-failure tests) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A response body of one data frame followed by trailers (as gRPC answers).
struct TrailerBody {
    data: Option<Bytes>,
    trailers: Option<hyper::HeaderMap>,
}

impl hyper::body::Body for TrailerBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        use hyper::body::Frame;
        if let Some(d) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(d))));
        }
        std::task::Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// What a gRPC upstream saw of one call: path, HTTP version, `te` header.
pub type GrpcCall = (String, String, Option<String>);

/// A gRPC-style unary echo server over h2c (HTTP/2 prior knowledge): answers each call
/// with the request's message, `content-type: application/grpc` and trailers
/// `grpc-status: 0`, `grpc-message: echo`. Records what it received.
pub struct GrpcUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `(path, http version, te header)` of each call.
    pub calls: Arc<Mutex<Vec<GrpcCall>>>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcUpstream {
    /// Starts the server on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let calls: Arc<Mutex<Vec<GrpcCall>>> = Arc::default();
        let rec = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let rec = rec.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let rec = rec.clone();
                        async move {
                            let te = req
                                .headers()
                                .get("te")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            let entry = (
                                req.uri().path().to_string(),
                                format!("{:?}", req.version()),
                                te,
                            );
                            if let Ok(mut r) = rec.lock() {
                                r.push(entry);
                            }
                            let msg = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert(
                                "grpc-status",
                                hyper::header::HeaderValue::from_static("0"),
                            );
                            trailers.insert(
                                "grpc-message",
                                hyper::header::HeaderValue::from_static("echo"),
                            );
                            let resp = Response::builder()
                                .header("content-type", "application/grpc")
                                .body(TrailerBody {
                                    data: Some(msg),
                                    trailers: Some(trailers),
                                })
                                .expect("response");
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let builder = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { addr, calls, task }
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One gRPC-framed unary call over h2c to `addr`: returns (status, content-type,
/// response message, trailers).
pub async fn grpc_call(
    addr: SocketAddr,
    path: &str,
    message: &[u8],
) -> (u16, String, Bytes, hyper::HeaderMap) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(frame)))
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let body = collected.to_bytes();
    let msg = if body.len() >= 5 {
        body.slice(5..)
    } else {
        body
    };
    (status, ct, msg, trailers)
}

/// One span an [`OtlpCollector`] received, with the `service.name` of its resource.
pub type CollectedSpan = (String, opentelemetry_proto::tonic::trace::v1::Span);

/// A real OTLP/gRPC trace collector (tonic, HTTP/2 prior knowledge) on `127.0.0.1:0`
/// that keeps every span it receives. An export with no spans is refused with
/// `INVALID_ARGUMENT`, so error statuses can be checked too.
pub struct OtlpCollector {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Spans received so far.
    pub spans: Arc<Mutex<Vec<CollectedSpan>>>,
    task: tokio::task::JoinHandle<()>,
}

struct Collector(Arc<Mutex<Vec<CollectedSpan>>>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let req = request.into_inner();
        if req.resource_spans.is_empty() {
            return Err(tonic::Status::invalid_argument("no resource spans"));
        }
        let mut got = Vec::new();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                got.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        if let Ok(mut spans) = self.0.lock() {
            spans.extend(got);
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

impl OtlpCollector {
    /// Starts the collector.
    pub async fn start() -> Self {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spans: Arc<Mutex<Vec<CollectedSpan>>> = Arc::default();
        let svc = TraceServiceServer::new(Collector(spans.clone()));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        Self { addr, spans, task }
    }

    /// A copy of the spans received so far.
    pub fn received(&self) -> Vec<CollectedSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Exports `spans` spans (all of trace `trace_id`) to an OTLP collector at `addr` over
/// h2c with a real tonic client. Errors are `(code, message)` of the gRPC status.
pub async fn otlp_export(
    addr: SocketAddr,
    trace_id: [u8; 16],
    spans: usize,
) -> Result<(), (String, String)> {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let status = |s: tonic::Status| (format!("{:?}", s.code()), s.message().to_string());
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| ("Connect".to_string(), e.to_string()))?;
    let spans = (0..spans)
        .map(|i| Span {
            trace_id: trace_id.to_vec(),
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            name: format!("span-{i}"),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    let resource_spans = if spans.is_empty() {
        Vec::new()
    } else {
        vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }]
    };
    client
        .export(ExportTraceServiceRequest { resource_spans })
        .await
        .map(|_| ())
        .map_err(status)
}

/// An upstream that records the exact bytes of every request it receives (head and
/// body) and answers each with `200 ok`, after a `103 Early Hints` when the request has
/// `x-interim: 1`. It understands just enough HTTP/1.1 framing (Content-Length,
/// chunked) to find where each request ends.
pub struct RawUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where the request starting at `buf[0]` ends, if all of it is in `buf`.
fn request_end(buf: &[u8]) -> Option<usize> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        let end = find(&buf[head_end..], b"0\r\n\r\n")?;
        return Some(head_end + end + 5);
    }
    let len: usize = header("content-length:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (buf.len() >= head_end + len).then_some(head_end + len)
}

impl RawUpstream {
    /// Starts it on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let rec = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let rec = rec.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        while let Some(end) = request_end(&buf) {
                            let req: Vec<u8> = buf.drain(..end).collect();
                            let interim = find(&req, b"x-interim: 1").is_some();
                            if let Ok(mut r) = rec.lock() {
                                r.push(req);
                            }
                            let hints = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n";
                            if interim && stream.write_all(hints).await.is_err() {
                                return;
                            }
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(ok).await.is_err() {
                                return;
                            }
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    /// Every request received so far, as bytes.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        if let Ok(mut r) = self.requests.lock() {
            r.clear();
        }
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request body in pieces with no length known in advance (no `Content-Length`, as a
/// streaming HTTP/2 client sends it).
struct Pieces(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// POSTs `body` over HTTP/2 (prior knowledge) in 16 KiB pieces without a
/// `Content-Length`: (status, response body).
pub async fn h2_post_streamed(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, Bytes) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let pieces = body.chunks(16 << 10).map(Bytes::copy_from_slice).collect();
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Pieces(pieces))
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body)
}

/// `data` decoded from `coding` (`gzip`, `br`, `zstd`), as a client would; `None` when
/// it is not a complete, valid stream of that coding.
pub fn decode(coding: &str, data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    match coding {
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .ok()?,
        "br" => brotli::Decompressor::new(data, 4096)
            .read_to_end(&mut out)
            .ok()?,
        "zstd" => zstd::stream::read::Decoder::new(data)
            .ok()?
            .read_to_end(&mut out)
            .ok()?,
        "deflate" => flate2::read::ZlibDecoder::new(data)
            .read_to_end(&mut out)
            .ok()?,
        _ => return None,
    };
    Some(out)
}

/// `data` encoded in `coding` (`gzip` or `x-gzip`, `deflate` (zlib), `br`); other
/// codings: as it is.
pub fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match coding {
        "gzip" | "x-gzip" => gzip(data),
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).expect("deflate");
            e.finish().expect("deflate")
        }
        "br" => {
            let mut e = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
            e.write_all(data).expect("br");
            e.into_inner()
        }
        _ => data.to_vec(),
    }
}

/// `data` gzip-compressed (one member).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// What of `data`, the start of a gzip stream, decodes so far.
pub fn gunzip_so_far(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut d = flate2::read::GzDecoder::new(data);
    let mut buf = [0u8; 4096];
    // a stream that is not finished ends in an error after what it holds
    while let Ok(n) = d.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}
