//! cache.md: the `cache` policy against a real upstream on loopback. Responses are
//! shaped by the upstream's `/respond` path (`status=`, `header=NAME:VALUE`, `size=`,
//! and a 304 when `If-None-Match` equals the `etag` asked for).

use std::time::Duration;

use crate::support::*;

/// A gateway whose route `r` (every path) caches with these extra `policy` lines.
fn cached(up: &Upstream, policy: &str) -> Gateway {
    gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.cache]\n{policy}",
        upstream_table("a", &[up.addr])
    ))
}

async fn fetch(gw: &Gateway, path: &str) -> Answer {
    send(client().get(gw.url(path))).await
}

#[tokio::test]
async fn a_repeated_get_is_a_hit_and_the_upstream_sees_it_once() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let first = fetch(&gw, "/items?b=2&a=1").await;
    assert_eq!((first.status, first.cache()), (200, Some("MISS")));
    // the query's parameters in another order are the same key
    let second = fetch(&gw, "/items?a=1&b=2").await;
    assert_eq!((second.status, second.cache()), (200, Some("HIT")));
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
        statuses.push(a.cache().unwrap().to_string());
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
async fn waiters_on_an_unstorable_fetch_each_go_upstream_themselves() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let url = gw.url("/delay/300/respond?header=set-cookie:s%3D1");
    let sent: Vec<_> = (0..5)
        .map(|_| {
            let r = client().get(&url);
            tokio::spawn(async move { send(r).await })
        })
        .collect();
    for s in sent {
        let a = s.await.unwrap();
        assert_eq!((a.status, a.cache()), (200, Some("MISS")));
    }
    assert_eq!(up.count(), 5, "nothing stored: every request fetched");
}

#[tokio::test]
async fn a_websocket_upgrade_on_a_cached_route_is_bypass() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, &websocket_upgrade("/ws"))
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-cache-status: bypass"),
        "{head}"
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
    assert_eq!((a.cache(), b.cache()), (Some("MISS"), Some("MISS")));
    assert_eq!(fetch(&gw, "/delay/600").await.cache(), Some("HIT"));
}

#[tokio::test]
async fn requests_that_must_not_use_the_cache_are_bypass() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let post = send(client().post(gw.url("/p"))).await;
    assert_eq!(post.cache(), Some("BYPASS"));
    let no_store = send(
        client()
            .get(gw.url("/p"))
            .header("cache-control", "no-store"),
    )
    .await;
    assert_eq!(no_store.cache(), Some("BYPASS"));
    for (h, v) in [("authorization", "Bearer x"), ("cookie", "s=1")] {
        let a = send(client().get(gw.url("/p")).header(h, v)).await;
        assert_eq!(a.cache(), Some("BYPASS"), "{h}");
    }
    // nothing was stored meanwhile: the first plain GET is a miss
    assert_eq!(fetch(&gw, "/p").await.cache(), Some("MISS"));
    assert_eq!(up.count(), 5);
    // a PURGE is an ordinary request that removes nothing
    let purge =
        send(client().request(reqwest::Method::from_bytes(b"PURGE").unwrap(), gw.url("/p"))).await;
    assert_eq!(purge.cache(), Some("BYPASS"));
    assert_eq!(fetch(&gw, "/p").await.cache(), Some("HIT"));
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
    assert_eq!((a.cache(), b.cache()), (Some("MISS"), Some("HIT")));
}

#[tokio::test]
async fn the_host_is_part_of_the_key() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let with_host = |h: &str| send(client().get(gw.url("/h")).header("host", h));
    assert_eq!(with_host("one.test").await.cache(), Some("MISS"));
    assert_eq!(with_host("two.test").await.cache(), Some("MISS"));
    assert_eq!(with_host("ONE.test:80").await.cache(), Some("HIT"));
    assert_eq!(with_host("one.test:8080").await.cache(), Some("MISS"));
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
    assert_eq!(as_("ka").await.cache(), Some("MISS"));
    assert_eq!(as_("ka").await.cache(), Some("HIT"));
    let bob = as_("kb").await;
    assert_eq!(bob.cache(), Some("MISS"), "bob never gets alice's entry");
    // a request without valid credentials is refused before the lookup
    let refused = send(client().get(gw.url("/mine")).header("apikey", "nope")).await;
    assert_eq!((refused.status, refused.cache()), (401, None));
    drop(gw);

    let gw = gateway_with_admin(&conf(true));
    let as_ = |key: &'static str| send(client().get(gw.url("/mine")).header("apikey", key));
    assert_eq!(as_("ka").await.cache(), Some("MISS"));
    assert_eq!(as_("kb").await.cache(), Some("HIT"), "shared = true");
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
        assert_eq!(fetch(&gw, &path).await.cache(), Some("MISS"), "{query}");
        assert_eq!(fetch(&gw, &path).await.cache(), Some("MISS"), "{query}");
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
    assert_eq!((first.cache(), second.cache()), (Some("MISS"), Some("HIT")));
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
            (a.status, a.body.len(), a.cache()),
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
    assert_eq!(fetch(&gw, small).await.cache(), Some("MISS"));
    let hit = fetch(&gw, small).await;
    assert_eq!((hit.cache(), hit.body.len()), (Some("HIT"), 1000));
}

#[tokio::test]
async fn the_store_never_holds_more_than_memory_and_counts_its_evictions() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "[server.cache]\nmemory = \"64KiB\"\nmax_object = \"8KiB\"\n{}[routes.r]\npaths = [\"/\"]\n\
         upstream = \"a\"\n[routes.r.policies.cache]\n",
        upstream_table("a", &[up.addr])
    ));
    for i in 0..40 {
        let a = fetch(&gw, &format!("/respond?size=4000&n={i}")).await;
        assert_eq!((a.status, a.body.len()), (200, 4000));
        let held = sample(&gw, "tollgate_cache_stored_bytes").await.unwrap();
        assert!(held <= 65536.0, "{held} bytes held after {i} objects");
    }
    let objects = sample(&gw, "tollgate_cache_stored_objects").await.unwrap();
    assert!((1.0..40.0).contains(&objects), "{objects} objects");
    let evicted = sample(&gw, "tollgate_cache_evictions_total").await.unwrap();
    assert!(
        evicted >= 40.0 - objects,
        "{evicted} evictions for {objects} kept of 40"
    );
}

#[tokio::test]
async fn head_uses_the_get_entry_and_a_head_miss_fetches_a_get() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let head = send(client().head(gw.url("/respond?size=300"))).await;
    assert_eq!((head.status, head.cache()), (200, Some("MISS")));
    assert!(head.body.is_empty());
    assert_eq!(
        up.last().unwrap().method,
        "GET",
        "a HEAD miss goes upstream as a GET"
    );
    let get = fetch(&gw, "/respond?size=300").await;
    assert_eq!((get.cache(), get.body.len()), (Some("HIT"), 300));
    let head = send(client().head(gw.url("/respond?size=300"))).await;
    assert_eq!(head.cache(), Some("HIT"));
    assert_eq!(head.headers.get("content-length").unwrap(), "300");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn an_expired_entry_with_a_validator_is_revalidated_and_one_without_is_refetched() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    // max-age=0: stored, stale at once
    let tagged = "/respond?header=cache-control:max-age%3D0&header=etag:%22v1%22";
    assert_eq!(fetch(&gw, tagged).await.cache(), Some("MISS"));
    let again = fetch(&gw, tagged).await;
    assert_eq!((again.status, again.cache()), (200, Some("REVALIDATED")));
    assert_eq!(up.last().unwrap().header("if-none-match"), Some("\"v1\""));
    assert!(again.headers.get("age").is_some());
    assert!(!again.body.is_empty(), "the stored body");

    let plain = "/respond?header=cache-control:max-age%3D0";
    assert_eq!(fetch(&gw, plain).await.cache(), Some("MISS"));
    assert_eq!(fetch(&gw, plain).await.cache(), Some("EXPIRED"));
}

#[tokio::test]
async fn an_expired_entry_replaced_by_an_unstorable_response_is_removed() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let path = "/respond?header=cache-control:max-age%3D0&cookie_after=1";
    assert_eq!(fetch(&gw, path).await.cache(), Some("MISS"));
    assert_eq!(
        sample(&gw, "tollgate_cache_stored_objects").await,
        Some(1.0)
    );
    let replaced = fetch(&gw, path).await;
    assert_eq!(replaced.cache(), Some("EXPIRED"));
    assert!(replaced.headers.get("set-cookie").is_some());
    assert_eq!(
        sample(&gw, "tollgate_cache_stored_objects").await,
        Some(0.0)
    );
    assert_eq!(fetch(&gw, path).await.cache(), Some("MISS"));
}

#[tokio::test]
async fn the_clients_no_cache_revalidates_a_fresh_entry() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let tagged = "/respond?header=etag:%22v1%22";
    assert_eq!(fetch(&gw, tagged).await.cache(), Some("MISS"));
    assert_eq!(fetch(&gw, tagged).await.cache(), Some("HIT"));
    let revalidated = send(
        client()
            .get(gw.url(tagged))
            .header("cache-control", "no-cache"),
    )
    .await;
    assert_eq!(revalidated.cache(), Some("REVALIDATED"));
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn vary_headers_and_the_upstreams_vary_make_variants() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "vary_headers = [\"Accept-Language\"]\n");
    let lang = |l: &'static str| send(client().get(gw.url("/v")).header("accept-language", l));
    assert_eq!(lang("en").await.cache(), Some("MISS"));
    assert_eq!(lang("fr").await.cache(), Some("MISS"));
    assert_eq!(lang("en").await.cache(), Some("HIT"));

    let path = "/respond?header=vary:x-variant";
    let variant = |v: &'static str| send(client().get(gw.url(path)).header("x-variant", v));
    assert_eq!(variant("1").await.cache(), Some("MISS"));
    assert_eq!(variant("2").await.cache(), Some("MISS"));
    assert_eq!(variant("1").await.cache(), Some("HIT"));
    assert_eq!(variant("2").await.cache(), Some("HIT"));
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
    assert_eq!(fetch(&gw, &format!("/c/{own}")).await.cache(), Some("MISS"));
    assert_eq!(
        fetch(&gw, &format!("/q/{own}")).await.cache(),
        Some("upstream")
    );
    assert_eq!(
        fetch(&gw, &format!("/p/{own}")).await.cache(),
        Some("upstream")
    );
    let plain = fetch(&gw, "/p/x").await;
    assert!(plain.cache().is_none() && plain.headers.get("age").is_none());
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
    assert_eq!(fetch(&gw, "/k").await.cache(), Some("MISS"));
    assert_eq!(fetch(&gw, "/c").await.cache(), Some("MISS"));
    let conf = std::fs::read_to_string(&gw.config).unwrap();
    // another path for `keep` (its rules unchanged), another ttl for `change`
    let changed = conf
        .replace("paths = [\"/k\"]", "paths = [\"/k\", \"/k2\"]")
        .replace("ttl = \"60s\"", "ttl = \"61s\"");
    std::fs::write(&gw.config, changed).unwrap();
    assert_eq!(admin_reload(&gw).await.0, 200);
    assert_eq!(fetch(&gw, "/k").await.cache(), Some("HIT"));
    assert_eq!(fetch(&gw, "/c").await.cache(), Some("MISS"));
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
    assert_eq!(fetch(&gw, "/k").await.cache(), Some("MISS"));
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
    assert_eq!(primed.cache(), Some("MISS"));
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
         [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.cache]\nttl = \"1500ms\"\nlock_timeout = \"61s\"\n\
         [routes.s]\npaths = [\"/s\"]\nupstream = \"a\"\n[routes.s.policies.cache]\nstatuses = [206]\n",
    );
    for expected in [
        "g.toml:3:14: server.cache.max_object:",
        "consumers.c.policies.cache: `cache` cannot be overridden per consumer",
        "routes.r.policies.cache.ttl: must be whole seconds",
        "routes.r.policies.cache.lock_timeout: must be between",
        "routes.s.policies.cache.statuses[0]:",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[tokio::test]
async fn an_expired_entry_is_served_stale_when_the_upstream_fails_within_stale_if_error() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "stale_if_error = \"60s\"\n");
    let path = "/respond?header=cache-control:max-age%3D0&fail_after=1&size=7";
    assert_eq!(fetch(&gw, path).await.cache(), Some("MISS"));
    let stale = fetch(&gw, path).await;
    assert_eq!(
        (stale.status, stale.cache(), stale.body.len()),
        (200, Some("STALE"), 7),
        "the upstream's 500 is hidden by the entry"
    );
    // the upstream gone altogether: a connection error is a failure too
    drop(up);
    let stale = fetch(&gw, path).await;
    assert_eq!((stale.status, stale.cache()), (200, Some("STALE")));
}

#[tokio::test]
async fn without_a_stale_window_a_failure_passes_on_and_the_entry_is_kept() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let path = "/respond?header=cache-control:max-age%3D0&header=etag:%22e%22&fail_after=1";
    assert_eq!(fetch(&gw, path).await.cache(), Some("MISS"));
    let failed = fetch(&gw, path).await;
    assert_eq!((failed.status, failed.cache()), (500, Some("EXPIRED")));
    assert_eq!(
        sample(&gw, "tollgate_cache_stored_objects").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn within_stale_while_revalidate_the_entry_is_served_at_once_and_refreshed_behind() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    // the upstream's own window; the entry is stale at once
    let path = "/respond?header=cache-control:max-age%3D0,stale-while-revalidate%3D60";
    assert_eq!(fetch(&gw, path).await.cache(), Some("MISS"));
    let stale = fetch(&gw, path).await;
    assert_eq!((stale.status, stale.cache()), (200, Some("STALE")));
    assert!(
        eventually(Duration::from_secs(5), async || up.count() == 2).await,
        "one background request refreshed the entry"
    );
    assert_eq!(fetch(&gw, path).await.cache(), Some("STALE"));
    assert!(eventually(Duration::from_secs(5), async || up.count() == 3).await);
    let lines = access_log(&gw, 3).await;
    assert_eq!(
        lines.len(),
        3,
        "background refreshes write no line: {lines:?}"
    );
}

#[tokio::test]
async fn conditional_requests_are_answered_304_from_the_entry_and_on_a_miss() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let path = "/respond?header=etag:%22v7%22&header=last-modified:Tue,%2001%20Dec%202026%2000:00:00%20GMT";
    let conditional =
        |h: &'static str, v: &'static str| send(client().get(gw.url(path)).header(h, v));
    // a miss stores the whole response and checks the client's validator against it
    let miss = conditional("if-none-match", "W/\"v7\"").await;
    assert_eq!((miss.status, miss.cache()), (304, Some("MISS")));
    assert!(
        up.last().unwrap().header("if-none-match").is_none(),
        "the upstream got no validator"
    );
    let hit = conditional("if-none-match", "\"other\", \"v7\"").await;
    assert_eq!((hit.status, hit.cache()), (304, Some("HIT")));
    assert_eq!(hit.headers.get("etag").unwrap(), "\"v7\"");
    assert!(hit.body.is_empty());
    let star = conditional("if-none-match", "*").await;
    assert_eq!(star.status, 304);
    let since = conditional("if-modified-since", "Wed, 02 Dec 2026 00:00:00 GMT").await;
    assert_eq!(since.status, 304);
    let older = conditional("if-modified-since", "Mon, 30 Nov 2026 00:00:00 GMT").await;
    assert_eq!((older.status, older.cache()), (200, Some("HIT")));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn one_range_of_an_entry_is_206_and_a_range_past_the_end_is_416() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let path = "/respond?size=100&header=etag:%22r%22";
    let ranged = |r: &'static str| send(client().get(gw.url(path)).header("range", r));
    // a Range that misses gets the whole body; its entry serves the later ranges
    let miss = ranged("bytes=0-9").await;
    assert_eq!(
        (miss.status, miss.body.len(), miss.cache()),
        (200, 100, Some("MISS"))
    );
    assert!(
        up.last().unwrap().header("range").is_none(),
        "the whole object was asked for"
    );
    let part = ranged("bytes=10-19").await;
    assert_eq!((part.status, part.body.len()), (206, 10));
    assert_eq!(
        part.headers.get("content-range").unwrap(),
        "bytes 10-19/100"
    );
    let tail = ranged("bytes=-5").await;
    assert_eq!(
        tail.headers.get("content-range").unwrap(),
        "bytes 95-99/100"
    );
    let open = ranged("bytes=90-").await;
    assert_eq!((open.status, open.body.len()), (206, 10));
    let several = ranged("bytes=0-1,5-6").await;
    assert_eq!((several.status, several.body.len()), (200, 100));
    let past = ranged("bytes=100-").await;
    assert_eq!((past.status, past.cache()), (416, Some("HIT")));
    assert_eq!(past.headers.get("content-range").unwrap(), "bytes */100");
    let v: serde_json::Value = serde_json::from_slice(&past.body).unwrap();
    assert_eq!(v["error"], "range_not_satisfiable");
    let weak = send(
        client()
            .get(gw.url(path))
            .header("range", "bytes=0-9")
            .header("if-range", "W/\"r\""),
    )
    .await;
    assert_eq!(
        (weak.status, weak.body.len()),
        (200, 100),
        "a weak If-Range never matches"
    );
    let strong = send(
        client()
            .get(gw.url(path))
            .header("range", "bytes=0-9")
            .header("if-range", "\"r\""),
    )
    .await;
    assert_eq!(strong.status, 206);
    assert_eq!(up.count(), 1);
    assert_eq!(
        sample(
            &gw,
            "tollgate_refusals_total{reason=\"range_not_satisfiable\",route=\"r\"}"
        )
        .await,
        Some(1.0)
    );
}

/// `DELETE /admin/cache?query` with `token`: (status, JSON body, headers).
async fn purge(
    gw: &Gateway,
    method: &str,
    query: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let mut r = client().request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        gw.admin_url(&format!("/admin/cache?{query}")),
    );
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, r.json().await.unwrap_or_default(), headers)
}

#[tokio::test]
async fn purge_removes_what_its_selectors_choose_behind_the_admin_token() {
    let up = Upstream::start("a").await;
    // the body follows the generated [server] table: the token belongs to it
    let gw = gateway_with_admin(&format!(
        "admin_token = \"t0k\"\n{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.cache]\n\
         vary_headers = [\"x-v\"]\n[routes.other]\npaths = [\"/o/\"]\nupstream = \"a\"\n\
         [routes.other.policies.cache]\n[routes.plain]\npaths = [\"/p/\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr])
    ));
    let prime = async |path: &str, v: &str, host: &str| {
        let a = send(
            client()
                .get(gw.url(path))
                .header("x-v", v)
                .header("host", host),
        )
        .await;
        a.cache().unwrap().to_string()
    };
    for (path, v, host) in [
        ("/a/b?y=2&x=1", "1", "h1"),
        ("/a/b?x=1&y=2", "2", "h2"),
        ("/a/b/c", "1", "h1"),
        ("/a/bc", "1", "h1"),
        ("/o/z", "1", "h1"),
    ] {
        assert_eq!(prime(path, v, host).await, "MISS");
    }
    assert_eq!(
        purge(&gw, "DELETE", "route=r", None).await.0,
        401,
        "the token is needed"
    );
    let t = Some("t0k");
    // url: one path and query, every variant and host
    let (status, v, _) = purge(&gw, "DELETE", "route=r&url=%2Fa%2Fb%3Fx%3D1%26y%3D2", t).await;
    assert_eq!(
        (status, v["purged"].as_u64(), v["scope"].as_str()),
        (200, Some(2), Some("instance"))
    );
    assert_eq!(prime("/a/b?x=1&y=2", "1", "h1").await, "MISS");
    // prefix on a segment boundary, with a host
    let (status, v, _) = purge(&gw, "DELETE", "route=r&prefix=/a/b&host=H1", t).await;
    assert_eq!((status, v["purged"].as_u64()), (200, Some(2)), "{v}");
    assert_eq!(prime("/a/bc", "1", "h1").await, "HIT");
    assert_eq!(
        prime("/o/z", "1", "h1").await,
        "HIT",
        "another route is untouched"
    );
    let (status, v, _) = purge(&gw, "DELETE", "route=r&prefix=/nothing", t).await;
    assert_eq!(
        (status, v["error"].as_str(), v["purged"].as_u64()),
        (404, Some("not_found"), Some(0))
    );
    assert!(v["request_id"].is_string());
    for bad in [
        "",
        "route=plain",
        "route=r&url=a",
        "route=r&url=/a&prefix=/a",
        "all=true&route=r",
        "route=r&nope=1",
    ] {
        let (status, v, _) = purge(&gw, "DELETE", bad, t).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    let (status, _, headers) = purge(&gw, "GET", "route=r", t).await;
    assert_eq!(
        (status, headers.get("allow").unwrap().to_str().unwrap()),
        (405, "DELETE")
    );
    let (status, v, _) = purge(&gw, "DELETE", "all=true", t).await;
    assert_eq!((status, v["purged"].as_u64()), (200, Some(2)), "{v}");
    assert_eq!(
        sample(&gw, "tollgate_cache_stored_objects").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn hits_count_toward_rate_limits_and_get_response_headers() {
    let up = Upstream::start("a").await;
    let gw = cached(
        &up,
        "[routes.r.policies.rate_limit]\nrequests = 2\nwindow = \"1m\"\nby = \"route\"\n\
         [routes.r.policies.response_headers]\nset = { \"x-edge\" = \"tollgate\" }\n",
    );
    let miss = fetch(&gw, "/limited").await;
    let hit = fetch(&gw, "/limited").await;
    assert_eq!((miss.cache(), hit.cache()), (Some("MISS"), Some("HIT")));
    assert_eq!(
        hit.header("x-edge"),
        Some("tollgate"),
        "response_headers run on hits"
    );
    let third = fetch(&gw, "/limited").await;
    assert_eq!(
        (third.status, third.cache()),
        (429, None),
        "a hit counted toward the limit"
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn http2_and_http1_clients_share_entries() {
    let up = Upstream::start("a").await;
    let gw = cached(&up, "");
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let first = send(h2.get(gw.url("/shared"))).await;
    assert_eq!(first.cache(), Some("MISS"));
    assert_eq!(fetch(&gw, "/shared").await.cache(), Some("HIT"));
    assert_eq!(up.count(), 1);
}
