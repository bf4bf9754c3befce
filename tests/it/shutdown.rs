//! Graceful shutdown and upgrade (GATEWAY.md §7): SIGTERM keeps accepting for
//! `grace_period`, then gives requests in flight up to `graceful_shutdown_timeout`,
//! then exits 0; a SIGQUIT hand-over drains the old process the same way.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A gateway config on `listen` with the given grace period and shutdown timeout, one
/// route `/` to `up`.
fn config(listen: &str, grace: &str, timeout: &str, up: std::net::SocketAddr) -> String {
    let n = format!("{}{}", std::process::id(), fastid());
    format!(
        "[server]\nlisten = [\"{listen}\"]\nthreads = 1\naccess_log = \"off\"\n\
         pid_file = \"/tmp/tollgate-drain-{n}.pid\"\nupgrade_sock = \"/tmp/tollgate-drain-{n}.sock\"\n\
         grace_period = \"{grace}\"\ngraceful_shutdown_timeout = \"{timeout}\"\n{}\
         [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up])
    )
}

/// Waits (in a blocking thread) for the gateway to exit; returns its status and when.
async fn exit_of(mut gw: Gateway, deadline: Duration) -> (std::process::ExitStatus, Instant) {
    tokio::task::spawn_blocking(move || {
        let status = gw.wait_exit(deadline).expect("the gateway exited");
        (status, Instant::now())
    })
    .await
    .expect("join")
}

/// Whether the gateway logs a line with `needle` within 5 s.
async fn logged(gw: &Gateway, needle: &str) -> bool {
    eventually(Duration::from_secs(5), async || {
        gw.stderr_lines().iter().any(|l| l.contains(needle))
    })
    .await
}

/// GETs `path` on a kept-alive HTTP/1.1 connection: the status, whether the answer
/// says `Connection: close`, and when it was complete.
async fn get_kept_alive(addr: std::net::SocketAddr, path: String) -> (u16, bool, Instant) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let answer = parse_response(&read_until_closed(&mut s, Duration::from_secs(15)).await);
    let close = answer
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    (answer.status, close, Instant::now())
}

/// GETs `url` and returns the status and the time the answer was complete.
async fn get_at(client: reqwest::Client, url: String) -> Result<(u16, Instant), String> {
    let resp = client.get(&url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, Instant::now()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_h1_and_h2_then_exits_0() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(bin(), &config("127.0.0.1:0", "1s", "5s", up.addr));
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2c client");
    let one = tokio::spawn(get_kept_alive(gw.addr, "/delay/2000/h1".into()));
    let two = tokio::spawn(get_at(h2, gw.url("/delay/2000/h2")));
    assert!(
        eventually(Duration::from_secs(5), async || up.count() == 2).await,
        "both requests reached the upstream"
    );
    let term = Instant::now();
    gw.signal("TERM");

    // a kept-alive HTTP/1.1 request in flight when the drain began: answered, and told
    // to close its connection (read to its end: the gateway closes it after the answer)
    let (status, close, done) = one.await.expect("join");
    assert_eq!(status, 200, "HTTP/1.1");
    assert!(close, "the answer did not say Connection: close");
    assert!(done - term < Duration::from_secs(4), "HTTP/1.1");
    let (status, done) = two
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("the HTTP/2 request in flight was cut: {e}"));
    assert_eq!(status, 200, "HTTP/2");
    assert!(done - term < Duration::from_secs(4), "HTTP/2");
    let (status, exited) = exit_of(gw, Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status:?}");
    // answered after ~2 s, exited once drained: before the 1 s + 5 s allowed
    assert!(
        exited - term < Duration::from_secs(5),
        "{:?}",
        exited - term
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slower_than_the_shutdown_timeout_is_cut_at_it_and_the_process_exits_0() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(bin(), &config("127.0.0.1:0", "500ms", "1s", up.addr));
    let req = tokio::spawn(get_at(client(), gw.url("/delay/20000")));
    assert!(
        eventually(Duration::from_secs(5), async || up.count() == 1).await,
        "the request reached the upstream"
    );
    let term = Instant::now();
    gw.signal("TERM");
    let (status, exited) = exit_of(gw, Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status:?}");
    let took = exited - term;
    // 500 ms of grace and 1 s for the request in flight: no sooner, and not much later
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM"
    );
    let answer = req.await.expect("join");
    assert!(
        answer.is_err(),
        "the request was cut, not answered: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_during_the_grace_period_is_served_with_connection_close() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start_logging(bin(), &config("127.0.0.1:0", "3s", "1s", up.addr), "info");
    let term = Instant::now();
    gw.signal("TERM");
    assert!(
        logged(&gw, "draining").await,
        "the gateway did not start draining"
    );
    let resp = raw(gw.addr, b"GET /new HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(resp.status, 200, "a new connection during the grace period");
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(
        term.elapsed() < Duration::from_secs(3),
        "served within the grace period"
    );
    let (status, exited) = exit_of(gw, Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        exited - term >= Duration::from_millis(2900),
        "kept accepting for the whole grace period: exited after {:?}",
        exited - term
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tunnel_lives_until_the_shutdown_timeout_then_closes() {
    let up = Upstream::start("ws").await;
    let gw = Gateway::start_logging(
        bin(),
        &config("127.0.0.1:0", "300ms", "1500ms", up.addr),
        "info",
    );
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(&websocket_upgrade("/ws"))
        .await
        .expect("handshake");
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101"));
    let term = Instant::now();
    gw.signal("TERM");
    assert!(
        logged(&gw, "stopped accepting").await,
        "the grace period did not end"
    );
    // past the grace period, the tunnel still carries frames both ways
    s.write_all(b"still here").await.expect("write");
    let mut got = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("the tunnel carries frames after the grace period");
    assert_eq!(&got, b"still here");
    // then it is closed at the timeout
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the tunnel was not closed");
    let (status, exited) = exit_of(gw, Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        exited - term >= Duration::from_millis(1700),
        "the tunnel got the whole timeout: exited after {:?}",
        exited - term
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_lets_a_long_request_on_the_old_process_finish() {
    let up = Upstream::start("a").await;
    // longer than Pingora's own 5 s hand-over pause plus the grace period, after which
    // Pingora alone would cut it
    let toml = config(&closed_port().to_string(), "1s", "10s", up.addr);
    let old = Gateway::start(bin(), &toml);
    let req = tokio::spawn(get_at(client(), old.url("/delay/7000")));
    assert!(
        eventually(Duration::from_secs(5), async || up.count() == 1).await,
        "the request reached the upstream"
    );
    let new_toml = toml.clone();
    let new = tokio::task::spawn_blocking(move || Gateway::start_upgrade(bin(), &new_toml));
    old.signal("QUIT");
    let new = new.await.expect("the new instance started");
    assert_eq!(new.addr, old.addr);

    let (status, _) = req
        .await
        .expect("join")
        .expect("the request in flight on the old process was answered");
    assert_eq!(status, 200);
    let (exit, _) = exit_of(old, Duration::from_secs(20)).await;
    assert!(exit.success(), "old process: {exit:?}");
    let (status, _) = get_at(client(), new.url("/after"))
        .await
        .expect("the new process serves");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_at_once_even_during_a_drain() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start_logging(bin(), &config("127.0.0.1:0", "10s", "10s", up.addr), "info");
    let _req = tokio::spawn(get_at(client(), gw.url("/delay/20000")));
    assert!(
        eventually(Duration::from_secs(5), async || up.count() == 1).await,
        "the request reached the upstream"
    );
    gw.signal("TERM");
    assert!(logged(&gw, "draining").await, "the drain did not start");
    let int = Instant::now();
    gw.signal("INT");
    let (_, exited) = exit_of(gw, Duration::from_secs(15)).await;
    assert!(
        exited - int < Duration::from_secs(3),
        "SIGINT did not end the 10 s grace period at once: exited after {:?}",
        exited - int
    );
}
