//! Balancing algorithms end to end: consistent hashing and least connections.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::support::*;

async fn backends(n: usize) -> Vec<Upstream> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(Upstream::start(&format!("b{i}")).await);
    }
    v
}

fn pool(name: &str, ups: &[Upstream], extra: &str) -> String {
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    format!(
        "{}{extra}\n[routes.r]\npaths = [\"/\"]\nupstream = \"{name}\"\n",
        upstream_table(name, &addrs)
    )
}

#[tokio::test]
async fn consistent_hash_keeps_each_key_on_one_backend() {
    let ups = backends(3).await;
    let gw = gateway(&pool(
        "p",
        &ups,
        "balance = \"consistent_hash\"\nhash_key = \"header:x-user\"",
    ));
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for u in 0..30 {
            let r = raw(gw.addr, &get("/", &format!("x-user: user-{u}\r\n"))).await;
            assert_eq!(r.status, 200);
            let backend = r.header("x-upstream").unwrap().to_string();
            let first = owner
                .entry(format!("user-{u}"))
                .or_insert_with(|| backend.clone());
            assert_eq!(*first, backend, "user-{u} moved in round {round}");
        }
    }
    let used: HashSet<_> = owner.values().collect();
    assert!(
        used.len() >= 2,
        "30 keys all hashed to one backend: {used:?}"
    );
}

#[tokio::test]
async fn least_conn_sends_new_requests_to_the_idle_backend() {
    let ups = backends(2).await;
    let gw = gateway(&pool("p", &ups, "balance = \"least_conn\""));
    let addr = gw.addr;
    let slow = tokio::spawn(async move { raw(addr, &get("/slow", "")).await });
    let busy = eventually(Duration::from_secs(5), async || {
        ups[0].count() + ups[1].count() == 1
    })
    .await;
    assert!(busy, "the slow request never arrived");
    let busy_one = if ups[0].count() == 1 { "b0" } else { "b1" };
    for i in 0..5 {
        let r = raw(gw.addr, &get(&format!("/fast/{i}"), "")).await;
        assert_eq!(r.status, 200);
        assert_ne!(
            r.header("x-upstream"),
            Some(busy_one),
            "request {i} went to the busy backend"
        );
    }
    assert_eq!(slow.await.unwrap().status, 200);
}

#[test]
fn hash_key_without_consistent_hash_is_a_config_error() {
    let out = check_fails("[upstreams.u]\nbackends = [\"127.0.0.1:1\"]\nhash_key = \"path\"\n");
    assert!(
        out.contains("g.toml:3:12: upstreams.u.hash_key: hash_key only applies"),
        "{out}"
    );
}

/// Sends `n` requests and returns which backends answered.
async fn answered_by(gw: &Gateway, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for i in 0..n {
        let r = raw(gw.addr, &get(&format!("/{i}"), "")).await;
        let who = r
            .header("x-upstream")
            .map_or_else(|| format!("status {}", r.status), str::to_string);
        *m.entry(who).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn an_unhealthy_backend_stops_receiving_traffic_and_comes_back() {
    let ups = backends(2).await;
    let gw = gateway_with_admin(&pool(
        "p",
        &ups,
        "[upstreams.p.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\nunhealthy_after = 2\nhealthy_after = 1",
    ));
    assert_eq!(
        answered_by(&gw, 4).await.len(),
        2,
        "both backends serve while healthy"
    );

    ups[1].set_healthy(false);
    let out = eventually(Duration::from_secs(5), async || {
        answered_by(&gw, 6).await.keys().all(|k| k == "b0")
    })
    .await;
    assert!(out, "b1 kept receiving traffic after failing its checks");
    let metrics = metrics_text(&gw).await;
    let gauge = format!(
        "tollgate_upstream_backend_healthy{{backend=\"{}\",upstream=\"p\"}} 0",
        ups[1].addr
    );
    assert!(metrics.contains(&gauge), "{metrics}");
    let (_, _, status) = get_json(&gw.admin_url("/admin/status")).await;
    let b1 = status["upstreams"]["p"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == ups[1].addr.to_string())
        .cloned();
    assert_eq!(b1.unwrap()["healthy"], false);

    ups[1].set_healthy(true);
    let back = eventually(Duration::from_secs(5), async || {
        answered_by(&gw, 6).await.contains_key("b1")
    })
    .await;
    assert!(back, "b1 did not come back after recovering");
}

#[tokio::test]
async fn health_checks_a_reload_adds_run_at_once() {
    let ups = backends(2).await;
    let gw = gateway(&pool("p", &ups, ""));
    ups[1].set_healthy(false);
    assert_eq!(
        answered_by(&gw, 4).await.len(),
        2,
        "without checks both backends serve"
    );
    // an hour between checks: only the first, due at once, can run within the test
    let checked = pool(
        "p",
        &ups,
        "[upstreams.p.health_check]\npath = \"/healthz\"\ninterval = \"1h\"\nunhealthy_after = 1",
    );
    std::fs::write(&gw.config, checked).unwrap();
    gw.signal("HUP");
    let out = eventually(Duration::from_secs(5), async || {
        answered_by(&gw, 6).await.keys().all(|k| k == "b0")
    })
    .await;
    assert!(out, "the check the reload added did not run");
}

#[tokio::test]
async fn every_backend_unhealthy_is_503_at_once() {
    let ups = backends(2).await;
    let gw = gateway(&pool(
        "p",
        &ups,
        "[upstreams.p.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\nunhealthy_after = 1",
    ));
    ups[0].set_healthy(false);
    ups[1].set_healthy(false);
    let down = eventually(Duration::from_secs(5), async || {
        raw(gw.addr, &get("/", "")).await.status == 503
    })
    .await;
    assert!(down, "never answered 503");
    let started = std::time::Instant::now();
    let r = raw(gw.addr, &get("/x", "")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_healthy_upstream");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the refusal was not immediate"
    );
}

#[tokio::test]
async fn tcp_checks_mark_a_dead_backend_unhealthy() {
    let live = Upstream::start("live").await;
    let dead = closed_port();
    let gw = gateway_with_admin(&format!(
        "[upstreams.p]\nbackends = [\"{}\", \"{dead}\"]\nretries = 0\n\
         [upstreams.p.health_check]\nkind = \"tcp\"\ninterval = \"100ms\"\nunhealthy_after = 1\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"p\"\n",
        live.addr
    ));
    let url = gw.admin_url("/admin/status");
    let marked = eventually(Duration::from_secs(5), async || {
        let (_, _, s) = get_json(&url).await;
        s["upstreams"]["p"]["backends"]
            .as_array()
            .is_some_and(|b| b.iter().any(|x| x["healthy"] == false))
    })
    .await;
    assert!(marked, "the closed port was never marked unhealthy");
    let m = answered_by(&gw, 6).await;
    assert_eq!(m.get("live"), Some(&6), "{m:?}");
}

#[tokio::test]
async fn connect_failures_take_a_backend_out_passively() {
    let live = Upstream::start("live").await;
    let dead = closed_port();
    let gw = gateway(&format!(
        "[upstreams.p]\nbackends = [\"{}\", \"{dead}\"]\nretries = 0\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"p\"\n",
        live.addr
    ));
    let m = answered_by(&gw, 20).await;
    let failed = m.get("status 502").copied().unwrap_or(0);
    assert!(failed <= 3, "the dead backend kept getting requests: {m:?}");
    assert_eq!(m.get("live").copied().unwrap_or(0), 20 - failed, "{m:?}");
}

#[tokio::test]
async fn a_passively_ejected_backend_shows_unhealthy_in_status_and_metrics() {
    let dead = closed_port();
    let gw = gateway_with_admin(&format!(
        "[upstreams.p]\nbackends = [\"{dead}\"]\nretries = 0\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"p\"\n"
    ));
    // three connect failures take it out (for 10 s)
    for _ in 0..3 {
        assert_eq!(get_json(&gw.url("/")).await.0, 502);
    }
    let (status, _, body) = get_json(&gw.url("/")).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "no_healthy_upstream");
    let (_, _, v) = get_json(&gw.admin_url("/admin/status")).await;
    assert_eq!(
        v["upstreams"]["p"]["backends"][0]["healthy"], false,
        "status shows the state that decides traffic: {v}"
    );
    let gauge = format!("tollgate_upstream_backend_healthy{{backend=\"{dead}\",upstream=\"p\"}} 0");
    let text = metrics_text(&gw).await;
    assert!(text.contains(&gauge), "{gauge} not in:\n{text}");
}

/// Reads one HTTP/1.1 answer with a Content-Length body off a kept-alive connection;
/// the status, or `None` when none comes within `wait`.
async fn answer_on(s: &mut tokio::net::TcpStream, wait: Duration) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let read_head = async {
        while !buf.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            buf.push(byte[0]);
        }
        Some(())
    };
    tokio::time::timeout(wait, read_head).await.ok()??;
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tokio::time::timeout(wait, s.read_exact(&mut body))
        .await
        .ok()?
        .ok()?;
    head.split(' ').nth(1)?.parse().ok()
}

#[tokio::test]
async fn running_out_of_descriptors_never_counts_against_a_backend() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start("live").await;
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nthreads = 1\naccess_log = \"off\"\n\
         pid_file = \"/tmp/tollgate-fds-{n}.pid\"\nupgrade_sock = \"/tmp/tollgate-fds-{n}.sock\"\n\
         [upstreams.p]\nbackends = [\"{}\"]\nretries = 0\n\
         [routes.r]\npaths = [\"/up\"]\nupstream = \"p\"\n",
        up.addr,
        n = std::process::id()
    );
    let gw = Gateway::start_with_fd_limit(bin(), &toml, 128);
    // kept-alive connections for later, each seen answered (so accepted)
    let mut kept = Vec::new();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /nowhere HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(answer_on(&mut s, Duration::from_secs(5)).await, Some(404));
        kept.push(s);
    }
    // fill the gateway's descriptor table: connections until it cannot accept one (a
    // few more wait in the backlog, to take any descriptor that comes free)
    let mut fillers = Vec::new();
    let full = || {
        gw.stderr_lines()
            .iter()
            .any(|l| l.contains("Too many open files"))
    };
    while !full() {
        assert!(
            fillers.len() < 1000,
            "the gateway never ran out of descriptors"
        );
        let s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        fillers.push(s);
        if fillers.len() % 10 == 0 {
            eventually(Duration::from_millis(200), async || full()).await;
        }
    }
    for _ in 0..5 {
        fillers.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    }
    let open = || std::fs::read_dir(format!("/proc/{}/fd", gw.pid())).map_or(0, |d| d.count());
    let table_full = open();
    // the gateway cannot open a connection to the backend: more failures than it takes
    // to eject one (3)
    for s in &mut kept[..4] {
        s.write_all(b"GET /up HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let status = answer_on(s, Duration::from_secs(5)).await;
        assert!(
            status.is_none_or(|c| c >= 500 && c != 503),
            "no connection to the backend could be opened, yet: {status:?}"
        );
        // the failed request's client connection is closed: wait until it is, and until a
        // connection of the backlog has taken its descriptor again
        read_until_closed(s, Duration::from_secs(5)).await;
        assert!(
            eventually(Duration::from_secs(5), async || open() >= table_full).await,
            "the descriptor table did not fill again"
        );
    }
    assert_eq!(up.count(), 0);
    drop(fillers);
    assert!(
        eventually(Duration::from_secs(10), async || open() + 50 < table_full).await,
        "the gateway did not close the fillers' connections"
    );
    // descriptors are free again, and the backend was never taken out
    let last = &mut kept[4];
    last.write_all(b"GET /up HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        answer_on(last, Duration::from_secs(5)).await,
        Some(200),
        "the backend was ejected for the gateway's own shortage"
    );
}
