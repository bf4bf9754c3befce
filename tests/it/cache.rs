//! cache.md: the `cache` policy against a real upstream on loopback. Responses are
//! shaped by the upstream's `/respond` path (`status=`, `header=NAME:VALUE`, `size=`,
//! and a 304 when `If-None-Match` equals the `etag` asked for).

use std::time::Duration;

use reqwest::header::HeaderMap;

use crate::support::*;

/// A gateway whose route `r` (every path) caches with these extra `policy` lines.
fn cached(up: &Upstream, policy: &str) -> Gateway {
    gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.cache]\n{policy}",
        upstream_table("a", &[up.addr])
    ))
}

/// One answer: status, `X-Cache-Status`, headers, body.
struct Answer {
    status: u16,
    cache: Option<String>,
    headers: HeaderMap,
    body: Vec<u8>,
}

async fn send(r: reqwest::RequestBuilder) -> Answer {
    let r = r.send().await.expect("request");
    let headers = r.headers().clone();
    Answer {
        status: r.status().as_u16(),
        cache: headers
            .get("x-cache-status")
            .map(|v| v.to_str().unwrap_or_default().to_string()),
        body: r.bytes().await.expect("body").to_vec(),
        headers,
    }
}

async fn fetch(gw: &Gateway, path: &str) -> Answer {
    send(client().get(gw.url(path))).await
}

#[tokio::test]
async fn a_repeated_get_is_a_hit_and_the_upstream_sees_it_once() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let first = fetch(&gw, "/items?b=2&a=1").await;
    assert_eq!((first.status, first.cache.as_deref()), (200, Some("MISS")));
    // the query's parameters in another order are the same key
    let second = fetch(&gw, "/items?a=1&b=2").await;
    assert_eq!((second.status, second.cache.as_deref()), (200, Some("HIT")));
    assert_eq!(first.body, second.body, "the stored body");
    assert_eq!(up.count(), 1, "the upstream saw one request");
    assert!(second.headers.get("age").is_some(), "a hit carries Age");
    let (id1, id2) = (
        first.headers.get("x-request-id").unwrap(),
        second.headers.get("x-request-id").unwrap(),
    );
    assert_ne!(id1, id2, "each answer has its own request id");
    let log = access_log(&gw, 2).await;
    assert_eq!(log[0]["cache"], "MISS");
    assert_eq!(log[1]["cache"], "HIT");
    assert!(log[1]["upstream"].is_null() && log[1]["upstream_ms"].is_null());
    assert_eq!(
        sample(
            &gw,
            "tollgate_cache_lookups_total{route=\"r\",status=\"hit\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        sample(&gw, "tollgate_cache_stored_objects").await,
        Some(1.0)
    );
    assert!(sample(&gw, "tollgate_cache_stored_bytes").await.unwrap() > 0.0);
}

#[tokio::test]
async fn fifty_concurrent_misses_reach_the_upstream_once() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let url = gw.url("/delay/300");
    let sent: Vec<_> = (0..50)
        .map(|_| {
            let r = client().get(&url);
            tokio::spawn(async move { send(r).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for s in sent {
        let a = s.await.unwrap();
        assert_eq!(a.status, 200);
        statuses.push(a.cache.unwrap());
    }
    assert_eq!(up.count(), 1, "one fetch for fifty requests");
    assert_eq!(statuses.iter().filter(|s| *s == "MISS").count(), 1);
    assert_eq!(statuses.iter().filter(|s| *s == "HIT").count(), 49);
    let waited = sample(&gw, "tollgate_cache_lock_wait_seconds_count{route=\"r\"}").await;
    assert!(
        waited.unwrap_or(0.0) >= 1.0,
        "lock waits observed: {waited:?}"
    );
}

#[tokio::test]
async fn a_request_that_waited_lock_timeout_goes_upstream_itself() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "lock_timeout = \"50ms\"\n");
    let url = gw.url("/delay/600");
    let a = tokio::spawn(send(client().get(&url)));
    // the second request starts once the first holds the key's lock
    assert!(eventually(Duration::from_secs(5), async || up.count() == 1).await);
    let b = send(client().get(&url)).await;
    let a = a.await.unwrap();
    assert_eq!(up.count(), 2, "the waiter fetched for itself");
    assert_eq!(
        (a.cache.as_deref(), b.cache.as_deref()),
        (Some("MISS"), Some("MISS"))
    );
    assert_eq!(fetch(&gw, "/delay/600").await.cache.as_deref(), Some("HIT"));
}

#[tokio::test]
async fn requests_that_must_not_use_the_cache_are_bypass() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let post = send(client().post(gw.url("/p"))).await;
    assert_eq!(post.cache.as_deref(), Some("BYPASS"));
    let no_store = send(
        client()
            .get(gw.url("/p"))
            .header("cache-control", "no-store"),
    )
    .await;
    assert_eq!(no_store.cache.as_deref(), Some("BYPASS"));
    for (h, v) in [("authorization", "Bearer x"), ("cookie", "s=1")] {
        let a = send(client().get(gw.url("/p")).header(h, v)).await;
        assert_eq!(a.cache.as_deref(), Some("BYPASS"), "{h}");
    }
    // nothing was stored meanwhile: the first plain GET is a miss
    assert_eq!(fetch(&gw, "/p").await.cache.as_deref(), Some("MISS"));
    assert_eq!(up.count(), 5);
    // a PURGE is an ordinary request that removes nothing
    let purge =
        send(client().request(reqwest::Method::from_bytes(b"PURGE").unwrap(), gw.url("/p"))).await;
    assert_eq!(purge.cache.as_deref(), Some("BYPASS"));
    assert_eq!(fetch(&gw, "/p").await.cache.as_deref(), Some("HIT"));
    assert_eq!(
        sample(
            &gw,
            "tollgate_cache_lookups_total{route=\"r\",status=\"bypass\"}"
        )
        .await,
        Some(5.0)
    );
}

#[tokio::test]
async fn shared_lets_credentialed_requests_use_the_cache_on_an_open_route() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "shared = true\n");
    let a = send(client().get(gw.url("/s")).header("cookie", "s=1")).await;
    let b = send(
        client()
            .get(gw.url("/s"))
            .header("authorization", "Bearer y"),
    )
    .await;
    assert_eq!(
        (a.cache.as_deref(), b.cache.as_deref()),
        (Some("MISS"), Some("HIT"))
    );
}

#[tokio::test]
async fn the_host_is_part_of_the_key() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let with_host = |h: &str| send(client().get(gw.url("/h")).header("host", h));
    assert_eq!(with_host("one.test").await.cache.as_deref(), Some("MISS"));
    assert_eq!(with_host("two.test").await.cache.as_deref(), Some("MISS"));
    assert_eq!(with_host("ONE.test:80").await.cache.as_deref(), Some("HIT"));
    assert_eq!(
        with_host("one.test:8080").await.cache.as_deref(),
        Some("MISS")
    );
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn consumers_of_an_authenticated_route_never_share_entries() {
    let up = Upstream::start("a").await;
    let conf = |shared: bool| {
        format!(
            "{}[consumers.alice]\napi_keys = [\"ka\"]\n[consumers.bob]\napi_keys = [\"kb\"]\n\
             [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.key_auth]\n\
             [routes.r.policies.cache]\nshared = {shared}\n",
            upstream_table("a", &[up.addr])
        )
    };
    let gw = gateway_with_admin(&conf(false));
    let as_ = |key: &'static str| send(client().get(gw.url("/mine")).header("apikey", key));
    assert_eq!(as_("ka").await.cache.as_deref(), Some("MISS"));
    assert_eq!(as_("ka").await.cache.as_deref(), Some("HIT"));
    let bob = as_("kb").await;
    assert_eq!(
        bob.cache.as_deref(),
        Some("MISS"),
        "bob never gets alice's entry"
    );
    // a request without valid credentials is refused before the lookup
    let refused = send(client().get(gw.url("/mine")).header("apikey", "nope")).await;
    assert_eq!((refused.status, refused.cache.as_deref()), (401, None));
    drop(gw);

    let gw = gateway_with_admin(&conf(true));
    let as_ = |key: &'static str| send(client().get(gw.url("/mine")).header("apikey", key));
    assert_eq!(as_("ka").await.cache.as_deref(), Some("MISS"));
    assert_eq!(
        as_("kb").await.cache.as_deref(),
        Some("HIT"),
        "shared = true"
    );
}

#[tokio::test]
async fn responses_that_must_not_be_stored_are_not_and_say_why() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    for (query, reason) in [
        ("header=set-cookie:s%3D1", "set_cookie"),
        ("header=cache-control:private", "private"),
        ("header=cache-control:no-store", "no_store"),
        ("header=vary:*", "vary_star"),
        ("status=500", "status"),
    ] {
        let path = format!("/respond?{query}");
        assert_eq!(
            fetch(&gw, &path).await.cache.as_deref(),
            Some("MISS"),
            "{query}"
        );
        assert_eq!(
            fetch(&gw, &path).await.cache.as_deref(),
            Some("MISS"),
            "{query}"
        );
        let series = format!("tollgate_cache_not_stored_total{{reason=\"{reason}\",route=\"r\"}}");
        assert_eq!(sample(&gw, &series).await, Some(2.0), "{series}");
    }
    assert_eq!(
        sample(&gw, "tollgate_cache_stored_objects").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn strip_set_cookie_stores_the_response_and_no_answer_carries_the_cookie() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "strip_set_cookie = true\n");
    let path = "/respond?header=set-cookie:s%3D1&header=x-kept:1";
    let first = fetch(&gw, path).await;
    let second = fetch(&gw, path).await;
    assert_eq!(
        (first.cache.as_deref(), second.cache.as_deref()),
        (Some("MISS"), Some("HIT"))
    );
    for a in [&first, &second] {
        assert!(a.headers.get("set-cookie").is_none());
        assert_eq!(a.headers.get("x-kept").unwrap(), "1");
    }
}

#[tokio::test]
async fn a_response_over_max_object_is_served_whole_and_not_stored() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "[server.cache]\nmax_object = \"1KiB\"\n{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
         [routes.r.policies.cache]\n",
        upstream_table("a", &[up.addr])
    ));
    for _ in 0..2 {
        let a = fetch(&gw, "/respond?size=5000").await;
        assert_eq!(
            (a.status, a.body.len(), a.cache.as_deref()),
            (200, 5000, Some("MISS"))
        );
    }
    assert_eq!(
        sample(
            &gw,
            "tollgate_cache_not_stored_total{reason=\"too_large\",route=\"r\"}"
        )
        .await,
        Some(2.0)
    );
    let small = "/respond?size=1000";
    assert_eq!(fetch(&gw, small).await.cache.as_deref(), Some("MISS"));
    let hit = fetch(&gw, small).await;
    assert_eq!((hit.cache.as_deref(), hit.body.len()), (Some("HIT"), 1000));
}

#[tokio::test]
async fn head_uses_the_get_entry_and_a_head_miss_fetches_a_get() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let head = send(client().head(gw.url("/respond?size=300"))).await;
    assert_eq!((head.status, head.cache.as_deref()), (200, Some("MISS")));
    assert!(head.body.is_empty());
    assert_eq!(
        up.last().unwrap().method,
        "GET",
        "a HEAD miss goes upstream as a GET"
    );
    let get = fetch(&gw, "/respond?size=300").await;
    assert_eq!((get.cache.as_deref(), get.body.len()), (Some("HIT"), 300));
    let head = send(client().head(gw.url("/respond?size=300"))).await;
    assert_eq!(head.cache.as_deref(), Some("HIT"));
    assert_eq!(head.headers.get("content-length").unwrap(), "300");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn an_expired_entry_with_a_validator_is_revalidated_and_one_without_is_refetched() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    // max-age=0: stored, stale at once
    let tagged = "/respond?header=cache-control:max-age%3D0&header=etag:%22v1%22";
    assert_eq!(fetch(&gw, tagged).await.cache.as_deref(), Some("MISS"));
    let again = fetch(&gw, tagged).await;
    assert_eq!(
        (again.status, again.cache.as_deref()),
        (200, Some("REVALIDATED"))
    );
    assert_eq!(up.last().unwrap().header("if-none-match"), Some("\"v1\""));
    assert!(again.headers.get("age").is_some());
    assert!(!again.body.is_empty(), "the stored body");

    let plain = "/respond?header=cache-control:max-age%3D0";
    assert_eq!(fetch(&gw, plain).await.cache.as_deref(), Some("MISS"));
    assert_eq!(fetch(&gw, plain).await.cache.as_deref(), Some("EXPIRED"));
}

#[tokio::test]
async fn the_clients_no_cache_revalidates_a_fresh_entry() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let tagged = "/respond?header=etag:%22v1%22";
    assert_eq!(fetch(&gw, tagged).await.cache.as_deref(), Some("MISS"));
    assert_eq!(fetch(&gw, tagged).await.cache.as_deref(), Some("HIT"));
    let revalidated = send(
        client()
            .get(gw.url(tagged))
            .header("cache-control", "no-cache"),
    )
    .await;
    assert_eq!(revalidated.cache.as_deref(), Some("REVALIDATED"));
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn vary_headers_and_the_upstreams_vary_make_variants() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "vary_headers = [\"Accept-Language\"]\n");
    let lang = |l: &'static str| send(client().get(gw.url("/v")).header("accept-language", l));
    assert_eq!(lang("en").await.cache.as_deref(), Some("MISS"));
    assert_eq!(lang("fr").await.cache.as_deref(), Some("MISS"));
    assert_eq!(lang("en").await.cache.as_deref(), Some("HIT"));

    let path = "/respond?header=vary:x-variant";
    let variant = |v: &'static str| send(client().get(gw.url(path)).header("x-variant", v));
    assert_eq!(variant("1").await.cache.as_deref(), Some("MISS"));
    assert_eq!(variant("2").await.cache.as_deref(), Some("MISS"));
    assert_eq!(variant("1").await.cache.as_deref(), Some("HIT"));
    assert_eq!(variant("2").await.cache.as_deref(), Some("HIT"));
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn x_cache_status_is_the_gateways_on_cached_routes_only() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/c\"]\nupstream = \"a\"\n[routes.r.policies.cache]\n\
         [routes.quiet]\npaths = [\"/q\"]\nupstream = \"a\"\n[routes.quiet.policies.cache]\n\
         status_header = false\n\
         [routes.plain]\npaths = [\"/p\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr])
    ));
    let own = "respond?header=x-cache-status:upstream";
    assert_eq!(
        fetch(&gw, &format!("/c/{own}")).await.cache.as_deref(),
        Some("MISS")
    );
    assert_eq!(
        fetch(&gw, &format!("/q/{own}")).await.cache.as_deref(),
        Some("upstream")
    );
    assert_eq!(
        fetch(&gw, &format!("/p/{own}")).await.cache.as_deref(),
        Some("upstream")
    );
    let plain = fetch(&gw, "/p/x").await;
    assert!(plain.cache.is_none() && plain.headers.get("age").is_none());
    let log = access_log(&gw, 4).await;
    assert_eq!(log[1]["cache"], "MISS", "logged without the header");
    assert!(log[2]["cache"].is_null() && log[3]["cache"].is_null());
}

#[tokio::test]
async fn a_reload_keeps_entries_of_unchanged_rules_and_drops_changed_ones() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "{}[routes.keep]\npaths = [\"/k\"]\nupstream = \"a\"\n[routes.keep.policies.cache]\n\
         [routes.change]\npaths = [\"/c\"]\nupstream = \"a\"\n[routes.change.policies.cache]\n\
         ttl = \"60s\"\n",
        upstream_table("a", &[up.addr])
    ));
    assert_eq!(fetch(&gw, "/k").await.cache.as_deref(), Some("MISS"));
    assert_eq!(fetch(&gw, "/c").await.cache.as_deref(), Some("MISS"));
    let conf = std::fs::read_to_string(&gw.config).unwrap();
    // another path for `keep` (its rules unchanged), another ttl for `change`
    let changed = conf
        .replace("paths = [\"/k\"]", "paths = [\"/k\", \"/k2\"]")
        .replace("ttl = \"60s\"", "ttl = \"61s\"");
    std::fs::write(&gw.config, changed).unwrap();
    assert_eq!(admin_reload(&gw).await.0, 200);
    assert_eq!(fetch(&gw, "/k").await.cache.as_deref(), Some("HIT"));
    assert_eq!(fetch(&gw, "/c").await.cache.as_deref(), Some("MISS"));
    // a new [server.cache] starts an empty store
    let conf = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(
        &gw.config,
        format!("{conf}[server.cache]\nmemory = \"32MiB\"\n"),
    )
    .unwrap();
    assert_eq!(admin_reload(&gw).await.0, 200);
    assert_eq!(
        sample(&gw, "tollgate_cache_stored_objects").await,
        Some(0.0)
    );
    assert_eq!(fetch(&gw, "/k").await.cache.as_deref(), Some("MISS"));
}

/// Reads one response (head and `Content-Length` body) from a kept-alive connection.
async fn read_one(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    let complete = |buf: &[u8]| {
        let text = String::from_utf8_lossy(buf);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")?
                    .parse()
                    .ok()
            })
            .unwrap_or(0usize);
        body.len() >= len
    };
    while !complete(&buf) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut piece))
            .await
            .expect("a response within 5 s")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&piece[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn a_get_body_is_drained_on_a_hit_never_read_as_a_request() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let primed = send(client().get(gw.url("/d")).header("host", "h")).await;
    assert_eq!(primed.cache.as_deref(), Some("MISS"));
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let with_body = format!(
        "GET /d HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut s, with_body.as_bytes())
        .await
        .unwrap();
    let first = read_one(&mut s).await;
    assert!(first.contains("x-cache-status: HIT"), "{first}");
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"GET /d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let rest = String::from_utf8_lossy(&read_until_closed(&mut s, Duration::from_secs(5)).await)
        .into_owned();
    // the body was drained and the connection serves the next request, or the
    // connection was closed after the answer: either way nothing else was answered
    if rest.is_empty() {
        assert!(
            first.to_ascii_lowercase().contains("connection: close"),
            "{first}"
        );
    } else {
        assert_eq!(rest.matches("HTTP/1.1 ").count(), 1, "{rest}");
        assert!(rest.contains("x-cache-status: HIT"), "{rest}");
    }
    assert!(
        up.seen
            .lock()
            .unwrap()
            .iter()
            .all(|s| !s.target.contains("smuggled")),
        "the body was never a request"
    );
    assert_eq!(up.count(), 1);
}

#[test]
fn check_refuses_every_bad_cache_setting_in_one_run() {
    let err = check_fails(
        "[server.cache]\nmemory = \"1MiB\"\nmax_object = \"2MiB\"\n\
         [upstreams.a]\nbackends = [\"127.0.0.1:1\"]\n\
         [consumers.c]\napi_keys = [\"k\"]\n[consumers.c.policies.cache]\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.cache]\nttl = \"1500ms\"\n\
         [routes.s]\npaths = [\"/s\"]\nupstream = \"a\"\n[routes.s.policies.cache]\nstatuses = [206]\n",
    );
    for expected in [
        "g.toml:3:14: server.cache.max_object:",
        "consumers.c.policies.cache: `cache` cannot be overridden per consumer",
        "routes.r.policies.cache.ttl: must be whole seconds",
        "routes.s.policies.cache.statuses[0]:",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}
