//! Shared helpers for the end-to-end tests.

use std::path::Path;

pub use tollgate_tests::*;

/// The binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tollgate"))
}

/// Starts the binary with `body` appended to a `[server]` table listening on port 0.
pub fn gateway(body: &str) -> Gateway {
    Gateway::start(bin(), &format!("{}\n{body}", server_table(false)))
}

/// Like [`gateway_with_admin`], with diagnostics at `level` on stderr.
pub fn gateway_logging(body: &str, level: &str) -> Gateway {
    Gateway::start_logging(bin(), &format!("{}\n{body}", server_table(true)), level)
}

/// Like [`gateway_with_admin`], with `env` (`NAME=value`) set for the process.
pub fn gateway_with_env(body: &str, env: &[&str]) -> Gateway {
    Gateway::start_with_env(bin(), &format!("{}\n{body}", server_table(true)), env)
}

/// Like [`gateway`], with an admin listener too.
pub fn gateway_with_admin(body: &str) -> Gateway {
    Gateway::start(bin(), &format!("{}\n{body}", server_table(true)))
}

fn server_table(admin: bool) -> String {
    let n = std::process::id().to_string() + &fastid();
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{}threads = 1\naccess_log = \"stdout\"\n\
         pid_file = \"/tmp/tollgate-test-{n}.pid\"\nupgrade_sock = \"/tmp/tollgate-test-{n}.sock\"\n\
         grace_period = \"1s\"\ngraceful_shutdown_timeout = \"1s\"\n",
        if admin { "admin_listen = \"127.0.0.1:0\"\n" } else { "" }
    )
}

/// `-N`, a number unique within this test process (for file names).
pub fn fastid() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// An HTTP client that does not pool connections across tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// GET `url` and return (status, headers, JSON body or Null).
pub async fn get_json(url: &str) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let r = client().get(url).send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.expect("body");
    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, headers, v)
}

/// `[upstreams.NAME]` with these backends.
pub fn upstream_table(name: &str, backends: &[std::net::SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[upstreams.{name}]\nbackends = [{}]\n", list.join(", "))
}

/// A `GET` request with extra header lines (each ending in `\r\n`) and `Connection: close`.
pub fn get(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: h\r\n{headers}Connection: close\r\n\r\n").into_bytes()
}

/// POST `/admin/reload`: (status, JSON body).
pub async fn admin_reload(gw: &Gateway) -> (u16, serde_json::Value) {
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .expect("reload");
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

/// Runs `tollgate check` on `toml` (written as `g.toml` in a temp dir), asserts that it
/// exits with status 1 and returns its stderr.
pub fn check_fails(toml: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("g.toml");
    std::fs::write(&p, toml).expect("write config");
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .expect("run check");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "check did not fail: {err}");
    err
}

/// One answer, read whole: status, headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap_or("?"))
    }

    /// `X-Cache-Status`.
    pub fn cache(&self) -> Option<&str> {
        self.header("x-cache-status")
    }
}

/// Sends `r` and reads the whole answer.
pub async fn send(r: reqwest::RequestBuilder) -> Answer {
    let r = r.send().await.expect("request");
    Answer {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.bytes().await.expect("body").to_vec(),
    }
}

/// The value of the metric sample `series` (exact name and labels), if present.
pub async fn sample(gw: &Gateway, series: &str) -> Option<f64> {
    metrics_text(gw).await.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    })
}

/// The gateway's `/metrics` text.
pub async fn metrics_text(gw: &Gateway) -> String {
    let r = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        ct.starts_with("text/plain; version=0.0.4"),
        "content-type {ct:?}"
    );
    let text = r.text().await.expect("metrics body");
    check_exposition(&text);
    text
}

/// Asserts that `text` is Prometheus text exposition format: `# HELP`/`# TYPE` lines
/// and `name{label="value",…} number` samples, every sample of a declared family.
pub fn check_exposition(text: &str) {
    let mut families = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad TYPE line {line:?}"
            );
            families.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value in {line:?}"
        );
        let name = series.split('{').next().unwrap_or("");
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels in {line:?}"
                );
                for pair in labels[1..labels.len() - 1]
                    .split("\",")
                    .filter(|p| !p.is_empty())
                {
                    let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                    assert!(!k.is_empty() && !v.contains('\n'), "bad label in {line:?}");
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(*f)))
            .unwrap_or(name);
        assert!(
            families.contains(family),
            "sample of undeclared family: {line:?}"
        );
    }
}

/// `clients` tasks sending GETs to `url` back to back until [`Load::finish`].
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u32, u32, Vec<String>)>>,
}

impl Load {
    /// Starts the clients; each keeps its connections alive between requests.
    pub fn start(url: &str, clients: usize) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                let url = url.to_string();
                tokio::spawn(async move {
                    let c = client();
                    let (mut ok, mut failed, mut why) = (0u32, 0u32, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Acquire) {
                        match c.get(&url).send().await {
                            Ok(r) if r.status() == 200 => match r.bytes().await {
                                Ok(_) => ok += 1,
                                Err(e) => {
                                    failed += 1;
                                    why.push(format!("body: {e:?}"));
                                }
                            },
                            Ok(r) => {
                                failed += 1;
                                why.push(format!("status {}", r.status()));
                            }
                            Err(e) => {
                                failed += 1;
                                why.push(format!("{e:?}"));
                            }
                        }
                    }
                    (ok, failed, why)
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the clients; returns (succeeded, failed, why the first failures failed).
    pub async fn finish(self) -> (u32, u32, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let (mut ok, mut failed, mut why) = (0, 0, Vec::new());
        for t in self.tasks {
            let (o, f, w) = t.await.expect("load client");
            ok += o;
            failed += f;
            why.extend(w.into_iter().take(3));
        }
        (ok, failed, why)
    }
}

/// The access-log lines (JSON, on stdout) of requests, once at least `n` are written
/// (the log is written by a thread of its own, a little after the answer), within 5 s.
pub async fn access_log(gw: &Gateway, n: usize) -> Vec<serde_json::Value> {
    let lines = || -> Vec<serde_json::Value> {
        gw.stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v.get("route").is_some())
            .collect()
    };
    let written = eventually(std::time::Duration::from_secs(5), async || {
        lines().len() >= n
    })
    .await;
    assert!(written, "fewer than {n} access-log lines were written");
    lines()
}

/// Sends every request at once and returns their statuses, in order.
pub async fn statuses_at_once(requests: Vec<reqwest::RequestBuilder>) -> Vec<u16> {
    let sent: Vec<_> = requests
        .into_iter()
        .map(|r| tokio::spawn(async move { r.send().await.expect("request").status().as_u16() }))
        .collect();
    let mut out = Vec::with_capacity(sent.len());
    for s in sent {
        out.push(s.await.expect("request task"));
    }
    out
}

/// The same body sent chunked, in pieces of at most 16 KiB.
pub fn post_chunked(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: h\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for piece in body.chunks(16 << 10) {
        r.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        r.extend_from_slice(piece);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}
