//! The library's examples (`examples/*.rs`), each run on loopback against real upstreams,
//! using only the public API of the `tollgate` crate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

/// An example binary, built by cargo next to this test (`target/*/examples/NAME`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("examples");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: cargo test builds the examples of this package",
        path.display()
    );
    path
}

fn server_table(extra: &str) -> String {
    let n = format!("{}{}", std::process::id(), fastid());
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\naccess_log = \"off\"\n\
         pid_file = \"/tmp/tollgate-example-{n}.pid\"\nupgrade_sock = \"/tmp/tollgate-example-{n}.sock\"\n{extra}"
    )
}

/// Whether `url` answers 200 within 10 s (the program may still be starting).
async fn answers_200(url: &str) -> bool {
    eventually(Duration::from_secs(10), async || {
        client()
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await
}

/// Runs `program CONFIG` on `toml` and expects it to refuse the config: exit 1 with the
/// errors on stderr.
fn refused(program: &std::path::Path, toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gateway.toml");
    std::fs::write(&p, toml).unwrap();
    let out = std::process::Command::new(program)
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn minimal_serves_a_config_file() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start_program(
        &example("minimal"),
        &server_table(&format!(
            "admin_listen = \"127.0.0.1:0\"\n{}[routes.r]\npaths = [\"/api\"]\nupstream = \"a\"\n",
            upstream_table("a", &[up.addr])
        )),
        &[],
    );
    let (status, _, body) = get_json(&gw.url("/api/orders")).await;
    assert_eq!(status, 200);
    assert_eq!(body["upstream"], "a");
    assert_eq!(get_json(&gw.url("/other")).await.2["error"], "no_route");
    assert!(metrics_text(&gw).await.contains("route=\"r\""));
    let err = refused(
        &example("minimal"),
        "[routes.r]\npaths = [\"/\"]\nupstream = \"nope\"\n",
    );
    assert!(err.contains(":3:"), "{err}");
}

#[tokio::test]
async fn a_user_policy_is_enabled_from_toml_and_refuses_and_allows() {
    let up = Upstream::start("a").await;
    let program = example("custom_policy");
    let routes = |policy: &str| {
        format!(
            "{}[routes.orders]\npaths = [\"/orders\"]\nupstream = \"a\"\n\
             [routes.orders.policies.tenant]\n{policy}\
             [routes.open]\npaths = [\"/open\"]\nupstream = \"a\"\n",
            upstream_table("a", &[up.addr])
        )
    };
    let gw = Gateway::start_program(
        &program,
        &server_table(&routes(
            "allowed = [\"acme\", \"globex\"]\nforward_as = \"x-tenant-id\"\n",
        )),
        &[],
    );
    let r = raw(gw.addr, &get("/orders/1", "")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthorized");
    let r = raw(gw.addr, &get("/orders/1", "x-tenant: initech\r\n")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden");
    assert_eq!(up.count(), 0, "a refused request reached the upstream");

    let r = raw(gw.addr, &get("/orders/1", "x-tenant: globex\r\n")).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().unwrap().header("x-tenant-id"), Some("globex"));
    // a route without the policy is not affected by it
    assert_eq!(raw(gw.addr, &get("/open", "")).await.status, 200);

    // the policy's config errors carry line and column, like a built-in's
    let line_of = |toml: &str, start: &str| {
        1 + toml
            .lines()
            .position(|l| l.starts_with(start))
            .expect("line")
    };
    let toml = server_table(&routes("allowed = []\n"));
    let err = refused(&program, &toml);
    let want = format!(
        ":{}:1: routes.orders.policies.tenant.allowed: name at least one tenant",
        line_of(&toml, "allowed")
    );
    assert!(err.contains(&want), "{err}");
    let toml = server_table(&routes("allowed = [\"a\"]\ntenants = 1\n"));
    let err = refused(&program, &toml);
    let want = format!(
        ":{}:1: routes.orders.policies.tenant.tenants: unknown field `tenants`",
        line_of(&toml, "tenants")
    );
    assert!(err.contains(&want), "{err}");
    // the stock binary does not know the policy
    let e = check_fails(&server_table(&routes("allowed = [\"a\"]\n")));
    assert!(e.contains("tenant"), "{e}");
}

#[tokio::test]
async fn an_embedding_program_serves_its_own_proxy_beside_the_gateway() {
    let own_backend = Upstream::start("own").await;
    let gw_backend = Upstream::start("gw").await;
    let own_listen = closed_port().to_string();
    let gw = Gateway::start_program(
        &example("embed"),
        &server_table(&format!(
            "{}[routes.r]\npaths = [\"/api\"]\nupstream = \"gw\"\n",
            upstream_table("gw", &[gw_backend.addr])
        )),
        &[&own_listen, &own_backend.addr.to_string()],
    );
    let (status, _, body) = get_json(&gw.url("/api/x")).await;
    assert_eq!((status, body["upstream"].as_str()), (200, Some("gw")));
    assert_eq!(get_json(&gw.url("/elsewhere")).await.0, 404);

    let own = format!("http://{own_listen}/anything");
    assert!(
        answers_200(&own).await,
        "the program's own proxy does not answer"
    );
    let (_, _, body) = get_json(&own).await;
    assert_eq!(body["upstream"], "own");
    assert_eq!(gw_backend.count(), 1);
}

#[tokio::test]
async fn a_listener_that_cannot_bind_does_not_take_the_embedding_program_down() {
    let own_backend = Upstream::start("own").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let own_listen = closed_port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"{}\"]\naccess_log = \"off\"\n{}[routes.r]\npaths = [\"/\"]\nupstream = \"gw\"\n",
            taken.local_addr().unwrap(),
            upstream_table("gw", &[own_backend.addr])
        ),
    )
    .unwrap();
    let child = std::process::Command::new(example("embed"))
        .arg(&config)
        .args([&own_listen, &own_backend.addr.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    let own = format!("http://{own_listen}/still-here");
    assert!(
        answers_200(&own).await,
        "the program's own proxy went down with the gateway's listener"
    );
    assert!(child.0.try_wait().unwrap().is_none(), "the program exited");
    let _ = child.0.kill();
    let out = child.0.stderr.take().map(|mut e| {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut e, &mut s).unwrap();
        s
    });
    assert!(
        out.unwrap_or_default().contains("proxy: cannot listen on"),
        "the bind failure was not reported"
    );
}

/// `[server]` with an admin listener, for the programs whose metrics a test reads.
fn server_table_admin(extra: &str) -> String {
    server_table(&format!("admin_listen = \"127.0.0.1:0\"\n{extra}"))
}

/// Waits until the program counted `n` successful reloads.
async fn reloaded(gw: &Gateway, n: usize) -> bool {
    let want = format!("tollgate_config_reloads_total{{result=\"ok\"}} {n}");
    eventually(Duration::from_secs(10), async || {
        metrics_text(gw).await.contains(&want)
    })
    .await
}

#[tokio::test]
async fn a_policy_sends_requests_to_another_upstream_or_one_backend_and_a_down_choice_is_503() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let canary2 = Upstream::start("canary2").await;
    let program = example("canary");
    let toml = |policy: &str| {
        server_table_admin(&format!(
            "{}{}\n[upstreams.canary.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\n\
             unhealthy_after = 1\nhealthy_after = 1\n\
             [routes.shop]\npaths = [\"/shop\"]\nupstream = \"stable\"\n\
             [routes.shop.policies.canary]\n{policy}",
            upstream_table("stable", &[stable.addr]),
            upstream_table("canary", &[canary.addr, canary2.addr]),
        ))
    };
    let gw = Gateway::start_program(
        &program,
        &toml(&format!(
            "upstream = \"canary\"\npin_header = \"x-tenant\"\npins = {{ acme = \"{}\" }}\n",
            canary2.addr
        )),
        &[],
    );
    let upstream_of = async |headers: &str| {
        let r = raw(gw.addr, &get("/shop/cart", headers)).await;
        (r.status, r.json()["upstream"].as_str().map(str::to_string))
    };
    assert_eq!(upstream_of("").await, (200, Some("stable".into())));
    // the chosen upstream's balancing: both canary backends get requests
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(upstream_of("x-canary: 1\r\n").await.1.unwrap());
    }
    assert_eq!(seen, ["canary", "canary2"].map(String::from).into());
    // one backend, by address
    for _ in 0..3 {
        assert_eq!(
            upstream_of("x-tenant: acme\r\n").await,
            (200, Some("canary2".into()))
        );
    }
    // the access log and metrics follow the choice
    let text = metrics_text(&gw).await;
    assert!(
        text.contains("tollgate_upstream_duration_seconds_count{upstream=\"canary\"}"),
        "{text}"
    );

    // the pinned backend goes down (active health): 503, not another backend
    canary2.set_healthy(false);
    let url = gw.url("/shop/cart");
    let gone = eventually(Duration::from_secs(5), async || {
        let r = client()
            .get(&url)
            .header("x-tenant", "acme")
            .send()
            .await
            .unwrap();
        r.status() == 503
    })
    .await;
    assert!(gone, "an unhealthy pinned backend still got requests");
    let r = raw(gw.addr, &get("/shop/cart", "x-tenant: acme\r\n")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_healthy_upstream");
    assert_eq!(r.header("retry-after"), Some("1"));
    let before = canary2.count();
    // the whole chosen upstream down: 503 too; the route's own upstream is not used
    canary.set_healthy(false);
    let all_down = eventually(Duration::from_secs(5), async || {
        raw(gw.addr, &get("/shop/cart", "x-canary: 1\r\n"))
            .await
            .status
            == 503
    })
    .await;
    assert!(all_down, "a down canary upstream still answered");
    assert_eq!(
        canary2.count(),
        before,
        "an unhealthy backend got a request"
    );
    assert_eq!(upstream_of("").await, (200, Some("stable".into())));

    // check reports an upstream the policy names that does not exist, at its key
    let toml = toml("upstream = \"canry\"\n");
    let err = refused(&program, &toml);
    let line = 1 + toml
        .lines()
        .position(|l| l.starts_with("upstream = \"canry\""))
        .unwrap();
    assert!(
        err.contains(&format!(
            ":{line}:1: routes.shop.policies.canary.upstream: unknown upstream \"canry\""
        )),
        "{err}"
    );
}

#[tokio::test]
async fn a_policy_rewrites_a_streamed_response_body_and_passes_a_larger_one_unchanged() {
    let up = Upstream::start("a").await;
    let program = example("redact");
    let routes = format!(
        "{}[routes.small]\npaths = [\"/small\"]\nupstream = \"a\"\n\
         [routes.small.policies.redact]\nfields = [\"headers\", \"method\"]\nmax_body = 20\n\
         [routes.users]\npaths = [\"/users\"]\nupstream = \"a\"\n\
         [routes.users.policies.redact]\nfields = [\"headers\", \"method\"]\n",
        upstream_table("a", &[up.addr])
    );
    let gw = Gateway::start_program(&program, &server_table(&routes), &[]);
    let (status, _, body) = get_json(&gw.url("/users/1")).await;
    assert_eq!(status, 200);
    assert!(
        body.get("headers").is_none() && body.get("method").is_none(),
        "{body}"
    );
    assert_eq!(body["target"], "/users/1");
    assert_eq!(body["upstream"], "a");
    // its length changed: sent chunked, not with the upstream's Content-Length
    let r = raw(gw.addr, &get("/users/1", "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));

    // over the policy's cap: passed through whole, never cut
    let r = raw(gw.addr, &get("/small/1", "")).await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["method"], "GET", "{body}");
    assert!(body["headers"].is_object());

    // kept-alive: a second request on the same connection gets its own edited body
    let http = client();
    for _ in 0..2 {
        let v: serde_json::Value = http
            .get(gw.url("/users/2"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(v.get("headers").is_none(), "{v}");
    }
}

/// A real authorization service on loopback: `Bearer good` is allowed (as user `ann`),
/// `Bearer slow` is answered after 2 s, `Bearer wait` is allowed after 300 ms, anything
/// else is 403. Counts what it was asked.
async fn authorization_service() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let (addr, asked, _) = authorization_service_counting().await;
    (addr, asked)
}

/// [`authorization_service`], with the most calls it had open at once.
async fn authorization_service_counting() -> (
    std::net::SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (count, peak) = (asked.clone(), most.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (count, peak, open) = (count.clone(), peak.clone(), open.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // the whole request: head, then the JSON body
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf);
                    if text.trim_end().ends_with('}') {
                        break;
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let text = String::from_utf8_lossy(&buf).into_owned();
                let answer = if text.contains("\"authorization\":\"Bearer good\"") {
                    "HTTP/1.1 200 OK\r\nx-user: ann\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else if text.contains("Bearer wait") {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else if text.contains("Bearer slow") {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else {
                    "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                };
                open.fetch_sub(1, Ordering::SeqCst);
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, asked, most)
}

#[tokio::test]
async fn a_policy_calls_an_http_service_to_authorize_and_a_call_that_times_out_is_refused() {
    use std::sync::atomic::Ordering;
    let up = Upstream::start("a").await;
    let (authz, asked) = authorization_service().await;
    let program = example("authorize");
    let gw = Gateway::start_program(
        &program,
        &server_table_admin(&format!(
            "[server.outbound]\ntimeout = \"5s\"\n{}\
             [routes.orders]\npaths = [\"/orders\"]\nupstream = \"a\"\n\
             [routes.orders.policies.authorize]\nurl = \"http://{authz}/check\"\ntimeout = \"300ms\"\n\
             [routes.down]\npaths = [\"/down\"]\nupstream = \"a\"\n\
             [routes.down.policies.authorize]\nurl = \"http://{}/check\"\n",
            upstream_table("a", &[up.addr]),
            closed_port()
        )),
        &[],
    );
    let r = raw(
        gw.addr,
        &get(
            "/orders/1",
            "authorization: Bearer good\r\nx-user: mallory\r\n",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().unwrap().header("x-user"), Some("ann"));

    let r = raw(gw.addr, &get("/orders/1", "authorization: Bearer bad\r\n")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden");

    // the call's own timeout (300ms), not the service's 2 s
    let start = std::time::Instant::now();
    let r = raw(gw.addr, &get("/orders/1", "authorization: Bearer slow\r\n")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "authorizer_unavailable");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    // an unreachable service: refused too, never let through
    let r = raw(gw.addr, &get("/down/1", "authorization: Bearer good\r\n")).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        up.count(),
        1,
        "only the allowed request reached the upstream"
    );
    assert_eq!(asked.load(Ordering::SeqCst), 3);

    let text = metrics_text(&gw).await;
    for series in [
        "tollgate_outbound_requests_total{policy=\"authorize\",status=\"200\"} 1",
        "tollgate_outbound_requests_total{policy=\"authorize\",status=\"403\"} 1",
        "tollgate_outbound_requests_total{policy=\"authorize\",status=\"timeout\"} 1",
        "tollgate_outbound_requests_total{policy=\"authorize\",status=\"error\"} 1",
        "tollgate_outbound_request_duration_seconds_count{policy=\"authorize\"} 4",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
}

#[tokio::test]
async fn a_policys_state_survives_a_sighup_and_is_dropped_when_its_table_changes() {
    let up = Upstream::start("a").await;
    let program = example("counter");
    let toml = |tick: &str| {
        server_table_admin(&format!(
            "{}[routes.api]\npaths = [\"/api\"]\nupstream = \"a\"\n\
             [routes.api.policies.counter]\npath = \"/api/_count\"\ntick = \"{tick}\"\n",
            upstream_table("a", &[up.addr])
        ))
    };
    let gw = Gateway::start_program(&program, &toml("20ms"), &[]);
    let count = async || {
        let r = raw(gw.addr, &get("/api/x", "")).await;
        assert_eq!(r.status, 200);
        r.header("x-request-count").map(str::to_string)
    };
    for n in 1..=3 {
        assert_eq!(count().await.as_deref(), Some(n.to_string().as_str()));
    }
    // the policy answers its own path with a body; the upstream never sees it
    let seen = up.count();
    let (status, headers, body) = get_json(&gw.url("/api/_count")).await;
    assert_eq!(status, 200);
    assert_eq!(body["requests"], 3);
    assert!(headers.get("x-request-id").is_some());
    assert_eq!(up.count(), seen);
    // its background task ticks
    let ticking = eventually(Duration::from_secs(5), async || {
        get_json(&gw.url("/api/_count")).await.2["ticks"]
            .as_u64()
            .is_some_and(|t| t >= 2)
    })
    .await;
    assert!(ticking, "the background task never ran");

    // SIGHUP with the table unchanged (another route added): the count goes on
    let same = toml("20ms") + "[routes.other]\npaths = [\"/other\"]\nupstream = \"a\"\n";
    std::fs::write(&gw.config, same).unwrap();
    gw.signal("HUP");
    assert!(reloaded(&gw, 1).await, "no reload");
    assert_eq!(count().await.as_deref(), Some("4"));

    // the table changes: new state, from zero
    std::fs::write(&gw.config, toml("1h")).unwrap();
    gw.signal("HUP");
    assert!(reloaded(&gw, 2).await, "no second reload");
    assert_eq!(count().await.as_deref(), Some("1"));
    // (the old state had ticked many times; the new task ticks once an hour)
    let ticks = get_json(&gw.url("/api/_count")).await.2["ticks"].as_u64();
    assert!(ticks.is_some_and(|t| t <= 1), "{ticks:?}");
}

/// A request with a body, `Content-Length` framed, and `Connection: close`.
fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: h\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A JSON object of about `size` bytes with a `debug` member.
fn json_of(size: usize) -> Vec<u8> {
    let pad = "x".repeat(size.saturating_sub(40));
    format!(r#"{{"id":7,"debug":true,"pad":"{pad}"}}"#).into_bytes()
}

#[tokio::test]
async fn a_policy_reads_the_whole_request_body_and_replaces_it_before_the_upstream_is_asked() {
    let up = Upstream::start("a").await;
    let program = example("json_body");
    let gw = Gateway::start_program(
        &program,
        &server_table_admin(&format!(
            "[server.limits]\nbody_buffer_total = \"1MiB\"\n{}\
             [routes.orders]\npaths = [\"/orders\"]\nupstream = \"a\"\n\
             [routes.orders.policies.json_body]\nremove = [\"debug\"]\nmax_body = 400000\nstamp = true\n\
             [routes.big]\npaths = [\"/big\"]\nupstream = \"a\"\n\
             [routes.big.policies.json_body]\nmax_body = 900000\n\
             [routes.small]\npaths = [\"/small\"]\nupstream = \"a\"\n\
             [routes.small.policies.json_body]\nmax_body = 1000\n\
             [routes.plain]\npaths = [\"/plain\"]\nupstream = \"a\"\n",
            upstream_table("a", &[up.addr])
        )),
        &[],
    );
    let sent = |r: &RawResponse| {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let seen = up.last().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
        (seen, body)
    };
    // small, and well over Pingora's 64 KiB replay buffer; Content-Length and chunked
    for (size, chunked) in [(100, false), (200_000, false), (30_000, true)] {
        let body = json_of(size);
        let req = if chunked {
            post_chunked("/orders/new", &body)
        } else {
            post("/orders/new", &body)
        };
        let (seen, got) = sent(&raw(gw.addr, &req).await);
        assert_eq!(got["id"], 7);
        assert!(
            got.get("debug").is_none(),
            "the upstream saw debug ({size} bytes)"
        );
        assert_eq!(got["pad"].as_str().unwrap().len(), size.saturating_sub(40));
        // the length of what the policy left, not of what the client sent
        assert_eq!(
            seen.header("content-length"),
            Some(seen.body.len().to_string().as_str()),
            "{size} bytes, chunked: {chunked}"
        );
        assert_eq!(seen.header("transfer-encoding"), None);
        assert!(seen.body.len() < body.len());
    }
    let count = up.count();

    // over max_body: 413 before the upstream is asked, by Content-Length or as it arrives
    let r = raw(gw.addr, &post("/orders/new", &json_of(400_100))).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "payload_too_large");
    let r = raw(gw.addr, &post_chunked("/small/new", &json_of(2_000))).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "payload_too_large");
    // a refusal of the policy's own
    let r = raw(gw.addr, &post("/orders/new", b"{not json")).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("not JSON"));
    // chunked and over 64 KiB: Pingora cannot replay it (docs/writing-policies.md §7.6),
    // refused as soon as it is over, not read to the route's limit
    let r = raw(gw.addr, &post_chunked("/orders/new", &json_of(100_000))).await;
    assert_eq!(r.status, 411);
    let r = raw(gw.addr, &post_chunked("/orders/new", &json_of(400_100))).await;
    assert_eq!(r.status, 411);
    assert_eq!(r.json()["error"], "length_required");
    assert_eq!(up.count(), count, "a refused request reached the upstream");

    // body_buffer_total (1 MiB) is shared: a body that does not fit beside the others
    // is 503 with Retry-After, and fits again once they are gone
    let r = raw(gw.addr, &post("/big/1", &json_of(800_000))).await;
    assert_eq!(r.status, 200);
    let hold = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut hold = hold;
    use tokio::io::AsyncWriteExt;
    let big = post("/big/1", &json_of(800_000));
    // all but the last byte: the gateway holds (reserved by Content-Length) its room
    hold.write_all(&big[..big.len() - 1]).await.unwrap();
    let url = gw.url("/big/2");
    let refused = eventually(Duration::from_secs(5), async || {
        let r = client()
            .post(&url)
            .body(json_of(300_000))
            .send()
            .await
            .unwrap();
        r.status() == 503 && r.headers().get("retry-after").is_some_and(|v| v == "1")
    })
    .await;
    assert!(refused, "a body past body_buffer_total was held");
    hold.write_all(&big[big.len() - 1..]).await.unwrap();
    let r = parse_response(&read_until_closed(&mut hold, Duration::from_secs(10)).await);
    assert_eq!(r.status, 200);
    let r = raw(gw.addr, &post("/big/3", &json_of(300_000))).await;
    assert_eq!(r.status, 200, "the room came back");

    // the whole response: stamped with the request id, without the upstream's length
    let r = client()
        .post(gw.url("/orders/x"))
        .body(&b"{}"[..])
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["request_id"], id.as_str());
    assert_eq!(v["upstream"], "a");
    // a route without the policy streams as before: the client's body, its length
    let (seen, got) = sent(&raw(gw.addr, &post("/plain/1", &json_of(100))).await);
    assert_eq!(got["debug"], true);
    assert_eq!(
        seen.header("content-length"),
        Some(seen.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn a_response_over_the_policys_limit_passes_unchanged_and_is_counted() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start_program(
        &example("json_body"),
        &server_table_admin(&format!(
            "{}[routes.r]\npaths = [\"/r\"]\nupstream = \"a\"\n\
             [routes.r.policies.json_body]\nmax_body = 64\nstamp = true\n",
            upstream_table("a", &[up.addr])
        )),
        &[],
    );
    // the echo's answer names every request header: longer than 64 bytes
    let (status, _, body) = get_json(&gw.url("/r/x")).await;
    assert_eq!(status, 200);
    assert!(body.get("request_id").is_none(), "{body}");
    assert_eq!(body["upstream"], "a");
    let text = metrics_text(&gw).await;
    assert!(
        text.contains("tollgate_response_bodies_passed_total{reason=\"too_large\",route=\"r\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_held_request_body_is_sent_whole_again_when_the_first_backend_refuses() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start_program(
        &example("json_body"),
        &server_table(&format!(
            "[upstreams.a]\nbackends = [\"{}\", \"{}\"]\nretries = 1\n\
             [routes.r]\npaths = [\"/r\"]\nupstream = \"a\"\n\
             [routes.r.policies.json_body]\nremove = [\"debug\"]\n",
            closed_port(),
            up.addr
        )),
        &[],
    );
    // round robin: every other first try goes to the closed port and is retried
    for _ in 0..4 {
        let body = json_of(100_000);
        let r = raw(gw.addr, &post("/r/1", &body)).await;
        assert_eq!(r.status, 200);
        let seen = up.last().unwrap();
        let got: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
        assert!(got.get("debug").is_none());
        assert_eq!(seen.body.len(), body.len() - r#""debug":true,"#.len());
    }
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn grpc_trailers_pass_routes_whose_policies_filter_or_hold_response_bodies() {
    let grpc = GrpcUpstream::start().await;
    for (program, policy) in [
        (
            "redact",
            "[routes.greeter.policies.redact]\nfields = [\"x\"]\n",
        ),
        (
            "json_body",
            "[routes.greeter.policies.json_body]\nrequest = false\nstamp = true\n",
        ),
    ] {
        let gw = Gateway::start_program(
            &example(program),
            &server_table(&format!(
                "[upstreams.grpc]\nbackends = [\"{}\"]\nhttp2 = true\n\
                 [routes.greeter]\npaths = [\"/helloworld.Greeter\"]\nupstream = \"grpc\"\n{policy}",
                grpc.addr
            )),
            &[],
        );
        for name in ["world", "tollgate"] {
            let (status, ct, msg, trailers) =
                grpc_call(gw.addr, "/helloworld.Greeter/SayHello", name.as_bytes()).await;
            assert_eq!(
                (status, ct.as_str()),
                (200, "application/grpc"),
                "{program}"
            );
            assert_eq!(&msg[..], name.as_bytes(), "{program}");
            assert_eq!(
                trailers.get("grpc-status").map(|v| v.as_bytes()),
                Some(&b"0"[..]),
                "{program}: {trailers:?}"
            );
        }
    }
}

#[tokio::test]
async fn the_outbound_client_trusts_its_ca_file_and_bounds_calls_in_flight() {
    use std::sync::atomic::Ordering;
    let up = Upstream::start("a").await;
    let (ca, leaf, key) = crate::tls::ca_and_leaf("localhost");
    let authz_tls = Upstream::start_tls("authz", &leaf, &key).await;
    let (authz, _, most) = authorization_service_counting().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let routes = |outbound: &str| {
        server_table(&format!(
            "[server.outbound]\n{outbound}\n{}\
             [routes.tls]\npaths = [\"/tls\"]\nupstream = \"a\"\n\
             [routes.tls.policies.authorize]\nurl = \"https://localhost:{}/check\"\n\
             [routes.wait]\npaths = [\"/wait\"]\nupstream = \"a\"\n\
             [routes.wait.policies.authorize]\nurl = \"http://{authz}/check\"\ntimeout = \"10s\"\n",
            upstream_table("a", &[up.addr]),
            authz_tls.addr.port()
        ))
    };
    let waits = |gw: &Gateway| {
        let addr = gw.addr;
        let calls: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn(async move {
                    raw(addr, &get("/wait/1", "authorization: Bearer wait\r\n")).await
                })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for c in calls {
                out.push(c.await.unwrap().status);
            }
            out
        }
    };
    // with the test CA as the only roots: verified, allowed (the TLS service answers 200)
    let gw = Gateway::start_program(
        &example("authorize"),
        &routes(&format!(
            "ca_file = \"{}\"\nmax_in_flight = 1\ntimeout = \"10s\"",
            ca_file.display()
        )),
        &[],
    );
    assert_eq!(raw(gw.addr, &get("/tls/1", "")).await.status, 200);
    assert_eq!(authz_tls.count(), 1);
    // three calls at once, one slot: the service never has two open
    let start = std::time::Instant::now();
    assert_eq!(waits(&gw).await, [200, 200, 200]);
    assert_eq!(most.load(Ordering::SeqCst), 1);
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    drop(gw);

    // the system's roots do not know the test CA: the call fails, the request is refused
    let gw = Gateway::start_program(&example("authorize"), &routes("timeout = \"10s\""), &[]);
    let r = raw(gw.addr, &get("/tls/1", "")).await;
    assert_eq!(r.status, 503);
    assert_eq!(authz_tls.count(), 1, "an unverified service was asked");
    // the default bound lets the three run together
    most.store(0, Ordering::SeqCst);
    assert_eq!(waits(&gw).await, [200, 200, 200]);
    assert_eq!(most.load(Ordering::SeqCst), 3);

    // a CA file that is no certificate is refused at its key
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let err = refused(
        &example("authorize"),
        &routes(&format!("ca_file = \"{}\"", bad.display())),
    );
    assert!(err.contains("server.outbound.ca_file:"), "{err}");
}

#[tokio::test]
async fn a_held_body_answers_expect_continue_and_a_paused_one_gives_its_room_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("a").await;
    let gw = Gateway::start_program(
        &example("json_body"),
        &server_table(&format!(
            "[server.limits]\nbody_buffer_total = \"1MiB\"\nbody_timeout = \"300ms\"\n{}\
             [routes.r]\npaths = [\"/r\"]\nupstream = \"a\"\n\
             [routes.r.policies.json_body]\nremove = [\"debug\"]\n",
            upstream_table("a", &[up.addr])
        )),
        &[],
    );
    // the client waits for `100 Continue` before its body: the gateway, which reads the
    // body before asking the upstream, sends it
    let body = json_of(1000);
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /r/1 HTTP/1.1\r\nHost: h\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut interim))
        .await
        .expect("no 100 Continue")
        .unwrap();
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&interim)
    );
    s.write_all(&body).await.unwrap();
    let r = parse_response(&read_until_closed(&mut s, Duration::from_secs(10)).await);
    assert_eq!(r.status, 200);
    let seen = up.last().unwrap();
    assert_eq!(
        seen.header("expect"),
        None,
        "the upstream was asked to continue again"
    );
    assert!(!String::from_utf8_lossy(&seen.body).contains("debug"));

    // a body that stops: 408 after body_timeout, and its room (reserved by its length)
    // is free again
    let mut stalled = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let big = post("/r/2", &json_of(800_000));
    stalled.write_all(&big[..1000]).await.unwrap();
    let r = parse_response(&read_until_closed(&mut stalled, Duration::from_secs(5)).await);
    assert_eq!(r.status, 408);
    let r = raw(gw.addr, &post("/r/3", &json_of(800_000))).await;
    assert_eq!(r.status, 200, "the stalled body kept its room");
}

#[tokio::test]
async fn whole_request_bodies_over_http2_downstream() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start_program(
        &example("json_body"),
        &server_table(&format!(
            "{}[routes.r]\npaths = [\"/r\"]\nupstream = \"a\"\n\
             [routes.r.policies.json_body]\nremove = [\"debug\"]\nstamp = true\n",
            upstream_table("a", &[up.addr])
        )),
        &[],
    );
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // with a length, past the 64 KiB replay buffer: the whole edited body goes up
    let body = json_of(200_000);
    let r = h2
        .post(gw.url("/r/1"))
        .header("content-length", body.len())
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["request_id"].is_string(),
        "the response was held and stamped: {v}"
    );
    let seen = up.last().unwrap();
    assert_eq!(seen.body.len(), body.len() - r#""debug":true,"#.len());
    assert_eq!(
        seen.header("content-length"),
        Some(seen.body.len().to_string().as_str())
    );
    // without a length (a streamed body): small ones work, larger are 411
    let (status, _) = h2_post_streamed(gw.addr, "/r/2", &json_of(1_000)).await;
    assert_eq!(status, 200);
    let seen = up.last().unwrap();
    assert!(!String::from_utf8_lossy(&seen.body).contains("debug"));
    assert_eq!(
        seen.header("content-length"),
        Some(seen.body.len().to_string().as_str())
    );
    let (status, body) = h2_post_streamed(gw.addr, "/r/3", &json_of(100_000)).await;
    assert_eq!(status, 411, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn a_policy_call_ignores_proxy_variables_takes_its_own_timeout_and_ca() {
    let up = Upstream::start("a").await;
    let (ca, leaf, key) = crate::tls::ca_and_leaf("localhost");
    let authz_tls = Upstream::start_tls("authz", &leaf, &key).await;
    let (authz, asked) = authorization_service().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("authz-ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let proxy = format!("http://{}", closed_port());
    let gw = Gateway::start_program_with_env(
        &example("authorize"),
        &server_table(&format!(
            "[server.outbound]\ntimeout = \"100ms\"\n{}\
             [routes.tls]\npaths = [\"/tls\"]\nupstream = \"a\"\n\
             [routes.tls.policies.authorize]\nurl = \"https://localhost:{}/check\"\nca_file = \"{}\"\n\
             [routes.wait]\npaths = [\"/wait\"]\nupstream = \"a\"\n\
             [routes.wait.policies.authorize]\nurl = \"http://{authz}/check\"\ntimeout = \"2s\"\n",
            upstream_table("a", &[up.addr]),
            authz_tls.addr.port(),
            ca_file.display()
        )),
        &[
            &format!("HTTP_PROXY={proxy}"),
            &format!("HTTPS_PROXY={proxy}"),
            &format!("ALL_PROXY={proxy}"),
        ],
    );
    // the policy's CA, not the gateway's (system) roots; no proxy from the environment
    assert_eq!(raw(gw.addr, &get("/tls/1", "")).await.status, 200);
    assert_eq!(authz_tls.count(), 1);
    // the call's 2 s, not the gateway's 100 ms default: the 300 ms answer arrives
    let r = raw(gw.addr, &get("/wait/1", "authorization: Bearer wait\r\n")).await;
    assert_eq!(r.status, 200);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn body_buffer_total_applies_on_reload() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start_program(
        &example("json_body"),
        &server_table_admin(&format!(
            "[server.limits]\nbody_buffer_total = \"64KiB\"\n{}\
             [routes.r]\npaths = [\"/r\"]\nupstream = \"a\"\n\
             [routes.r.policies.json_body]\nremove = [\"debug\"]\n",
            upstream_table("a", &[up.addr])
        )),
        &[],
    );
    let r = raw(gw.addr, &post("/r/1", &json_of(100_000))).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "overloaded");
    let full = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&gw.config, full.replace("\"64KiB\"", "\"1MiB\"")).unwrap();
    gw.signal("HUP");
    assert!(reloaded(&gw, 1).await, "no reload");
    // CROSSCUTTING.md rule 4.2: a new request gets the new total
    let r = raw(gw.addr, &post("/r/2", &json_of(100_000))).await;
    assert_eq!(r.status, 200);
}

/// `examples/quickstart.toml` as the README runs it, on free ports: the demo upstream
/// and the demo OpenID Connect provider of `examples/demo_upstream.rs`, and the
/// OIDC-protected route `/me`, and the cached route `/catalog`.
#[tokio::test]
async fn the_quickstart_serves_its_routes_and_an_oidc_protected_one() {
    let up = Upstream::start("demo").await;
    let idp = tollgate_tests::idp::demo_provider("127.0.0.1:0").await;
    let n = format!("{}{}", std::process::id(), fastid());
    let toml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/quickstart.toml"
    ))
    .unwrap()
    .replace("127.0.0.1:8080", "127.0.0.1:0")
    .replace("127.0.0.1:9901", "127.0.0.1:0")
    .replace("localhost:9001", &up.addr.to_string())
    .replace("ip_family = \"v4\"\n", "")
    .replace("http://127.0.0.1:9002", &idp.issuer())
    .replace(
        "/tmp/tollgate-quickstart.pid",
        &format!("/tmp/tollgate-qs-{n}.pid"),
    )
    .replace(
        "/tmp/tollgate-quickstart.sock",
        &format!("/tmp/tollgate-qs-{n}.sock"),
    );
    let gw = Gateway::start(bin(), &toml);
    let r = client().get(gw.url("/hello/world")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let token = client()
        .get(idp.url("/token"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            let r = client().get(gw.url("/me")).bearer_auth(&token).send().await;
            r.is_ok_and(|r| r.status() == 200)
        })
        .await,
        "the OIDC route never accepted the demo token"
    );
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-consumer-name"), Some("alice"));
    assert_eq!(seen.header("x-user-email"), Some("alice@example.com"));
    assert_eq!(
        client().get(gw.url("/me")).send().await.unwrap().status(),
        401
    );
    // the cached route: a miss, then a hit the upstream never sees
    let before = up.count();
    let cache = async || {
        let r = client().get(gw.url("/catalog/shoes")).send().await.unwrap();
        r.headers()["x-cache-status"].to_str().unwrap().to_string()
    };
    assert_eq!(cache().await, "MISS");
    assert_eq!(cache().await, "HIT");
    assert_eq!(up.count(), before + 1);
    // the body route: validated at the edge, trimmed, and as XML for an XML client
    let pets = || {
        client()
            .post(gw.url("/pets"))
            .header("content-type", "application/json")
    };
    let r = pets().body(r#"{"age":-1}"#).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j["error"], "validation_failed");
    assert_eq!(j["details"].as_array().map(Vec::len), Some(2), "{j}");
    let r = pets().body(r#"{"name":"rex"}"#).send().await.unwrap();
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j["served_by"], "tollgate");
    assert_eq!(j["method"], "POST");
    assert!(j.get("headers").is_none(), "trimmed by keep: {j}");
    let r = client()
        .get(gw.url("/pets"))
        .header("accept", "application/xml")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/xml; charset=utf-8"
    );
    let xml = r.text().await.unwrap();
    assert!(
        xml.starts_with("<?xml") && xml.contains("<served_by>tollgate</served_by>"),
        "{xml}"
    );
}
