//! Forwarding: paths, Host, X-Forwarded-*, hop-by-hop headers, request ids,
//! balancing, retries, and the 502 / 504 answers.

use std::collections::HashMap;

use crate::support::*;

/// An upstream named "a" and a gateway with `routes` in front of it.
async fn with_upstream_a(routes: &str) -> (Upstream, Gateway) {
    let up = Upstream::start("a").await;
    let gw = gateway(&format!("{}{routes}", upstream_table("a", &[up.addr])));
    (up, gw)
}

fn route(name: &str, path: &str, upstream: &str, extra: &str) -> String {
    format!("[routes.{name}]\npaths = [\"{path}\"]\nupstream = \"{upstream}\"\n{extra}\n")
}

#[tokio::test]
async fn proxies_to_the_upstream_with_strip_prefix() {
    let (_up, gw) = with_upstream_a(&route("r", "/api/orders", "a", "strip_prefix = true")).await;
    let (status, headers, body) = get_json(&gw.url("/api/orders/7?x=1")).await;
    assert_eq!(status, 200);
    assert_eq!(body["target"], "/7?x=1");
    assert_eq!(headers["x-upstream"], "a");
    let (_, _, body) = get_json(&gw.url("/api/orders")).await;
    assert_eq!(body["target"], "/");
}

#[tokio::test]
async fn rewrite_applies_after_strip_prefix_and_keeps_the_query() {
    let (_up, gw) = with_upstream_a(&route(
        "r",
        "/api",
        "a",
        "rewrite = { regex = \"^/api/(.*)\", to = \"/v1/$1\" }",
    ))
    .await;
    let (_, _, body) = get_json(&gw.url("/api/orders/7?q=a%20b")).await;
    assert_eq!(body["target"], "/v1/orders/7?q=a%20b");
}

#[tokio::test]
async fn host_is_the_backend_unless_preserve_host() {
    let (up, gw) = with_upstream_a(
        &[
            route("plain", "/plain", "a", ""),
            route("kept", "/kept", "a", "preserve_host = true"),
        ]
        .concat(),
    )
    .await;
    raw(
        gw.addr,
        b"GET /plain HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    let seen = up.last().unwrap();
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(seen.header("x-forwarded-host"), Some("api.example.com"));
    raw(
        gw.addr,
        b"GET /kept HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(up.last().unwrap().header("host"), Some("api.example.com"));
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_removed() {
    let (up, gw) = with_upstream_a(&route("r", "/", "a", "")).await;
    let r = raw(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\
          Connection: close, x-private\r\nX-Private: secret\r\nKeep-Alive: timeout=9\r\nProxy-Connection: keep-alive\r\n\
          TE: gzip\r\nX-Consumer-Name: admin\r\nX-Consumer-Groups: root\r\nX-Other: kept\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last().unwrap();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(
        seen.header("x-forwarded-proto"),
        Some("http"),
        "a client cannot claim https"
    );
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-connection",
        "te",
        "x-consumer-name",
        "x-consumer-groups",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(seen.header("x-other"), Some("kept"));
    assert_eq!(
        r.header("keep-alive"),
        None,
        "upstream's hop-by-hop header reached the client"
    );
    // the upstream's `Connection` and what it names stop here; the client's connection
    // gets its own
    let r = raw(
        gw.addr,
        b"GET /hop-named HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-secret"),
        None,
        "a header the upstream's Connection named"
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.header("x-upstream"), Some("a"));
}

#[tokio::test]
async fn request_ids_are_kept_when_valid_generated_otherwise_and_propagated() {
    let (up, gw) = with_upstream_a(&route("r", "/", "a", "")).await;
    let r = client()
        .get(gw.url("/"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    assert_eq!(up.last().unwrap().header("x-request-id"), Some("abc-123"));

    let r = client()
        .get(gw.url("/"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(up.last().unwrap().header("x-request-id"), Some(id.as_str()));
    assert_eq!(up.last().unwrap().header_all("x-request-id").len(), 1);

    let r = client().get(gw.url("/")).send().await.unwrap();
    let other = r.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(other, id);
}

#[tokio::test]
async fn round_robin_honours_weights() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = gateway(&format!(
        "[upstreams.ab]\nbackends = [\"{}\", {{ addr = \"{}\", weight = 3 }}]\n{}",
        a.addr,
        b.addr,
        route("r", "/", "ab", "")
    ));
    let c = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let r = c.get(gw.url("/")).send().await.unwrap();
        *counts
            .entry(r.headers()["x-upstream"].to_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&30), "{counts:?}");
}

#[tokio::test]
async fn refused_connection_is_502_bad_gateway() {
    let dead = closed_port();
    let gw = gateway(&format!(
        "{}retries = 0\n{}",
        upstream_table("dead", &[dead]),
        route("r", "/", "dead", "")
    ));
    let r = raw(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: h\r\nX-Request-Id: r502\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 502);
    let body = r.json();
    assert_eq!(body["error"], "bad_gateway");
    assert_eq!(body["request_id"], "r502");
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn slow_upstream_is_504_gateway_timeout() {
    let up = Upstream::start("slow").await;
    let gw = gateway(&format!(
        "{}read_timeout = \"300ms\"\n{}",
        upstream_table("slow", &[up.addr]),
        route("r", "/", "slow", "")
    ));
    let started = std::time::Instant::now();
    let r = raw(
        gw.addr,
        b"GET /slow HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "gateway_timeout");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1900),
        "answered only after the upstream"
    );
}

#[tokio::test]
async fn failed_connect_is_retried_on_another_backend() {
    let live = Upstream::start("live").await;
    let dead = closed_port();
    let gw = gateway(&format!(
        "[upstreams.mixed]\nbackends = [\"{dead}\", \"{}\"]\nretries = 1\n{}",
        live.addr,
        route("r", "/", "mixed", "")
    ));
    let c = client();
    for i in 0..10 {
        let r = c.get(gw.url(&format!("/{i}"))).send().await.unwrap();
        assert_eq!(
            r.status(),
            200,
            "request {i} failed although a live backend exists"
        );
    }
    assert_eq!(live.count(), 10);
}

#[tokio::test]
async fn post_bodies_are_forwarded() {
    let (up, gw) = with_upstream_a(&route("r", "/", "a", "")).await;
    let r = client()
        .post(gw.url("/upload"))
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().unwrap().body_len, 100_000);
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (up, gw) = with_upstream_a(&route("r", "/", "a", "")).await;
    let c = client();
    for i in 0..20 {
        let r = c.get(gw.url(&format!("/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert_eq!(up.count(), 20);
    assert_eq!(
        up.connections(),
        1,
        "20 sequential requests opened {} upstream connections",
        up.connections()
    );
}

#[tokio::test]
async fn traceparent_is_propagated_with_a_new_span_or_started() {
    let (up, gw) = with_upstream_a(&route("r", "/", "a", "")).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    raw(
        gw.addr,
        &get(
            "/t",
            &format!("traceparent: {incoming}\r\ntracestate: vendor=1\r\n"),
        ),
    )
    .await;
    let seen = up.last().unwrap();
    let out = seen.header("traceparent").unwrap().to_string();
    let parts: Vec<&str> = out.split('-').collect();
    assert_eq!(parts.len(), 4, "{out}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    );
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the upstream hop needs its own span id"
    );
    assert_eq!(parts[2].len(), 16);
    assert_eq!(seen.header("tracestate"), Some("vendor=1"));

    let mut traces = std::collections::HashSet::new();
    for bad in [
        "",
        "traceparent: garbage\r\n",
        "traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01\r\n",
    ] {
        raw(gw.addr, &get("/t", bad)).await;
        let started = up
            .last()
            .unwrap()
            .header("traceparent")
            .unwrap()
            .to_string();
        let p: Vec<&str> = started.split('-').collect();
        assert_eq!(p.len(), 4, "{started}");
        assert_eq!(p[1].len(), 32);
        assert_ne!(p[1], "00000000000000000000000000000000");
        traces.insert(p[1].to_string());
    }
    assert_eq!(
        traces.len(),
        3,
        "each request without a valid trace starts its own"
    );
}
