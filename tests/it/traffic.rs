//! Traffic policies end to end: body_limit, rate_limit, concurrency_limit, cors.

use crate::support::*;

fn chunked(path: &str, chunks: &[usize]) -> Vec<u8> {
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").into_bytes();
    for n in chunks {
        req.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        req.extend(std::iter::repeat_n(b'x', *n));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

#[tokio::test]
async fn body_limit_refuses_declared_and_streamed_bodies_past_the_limit() {
    let up = Upstream::start("a").await;
    let gw = gateway(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.body_limit]\nmax = \"1KiB\"\n",
        upstream_table("a", &[up.addr])
    ));
    // declared too large: refused before the upstream is contacted
    let body = "x".repeat(2000);
    let r = raw(
        gw.addr,
        format!("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{body}").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "payload_too_large");
    assert_eq!(up.count(), 0);

    // within the limit, both framings pass whole
    let r = raw(gw.addr, &chunked("/small", &[300, 300, 300])).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().unwrap().body_len, 900);

    // chunked past the limit: cut, and the upstream never receives it whole
    let r = raw(gw.addr, &chunked("/big", &[600, 600, 600])).await;
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    let seen = up.seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|s| s.body_len < 1800),
        "the upstream received the whole oversized body"
    );
}

#[tokio::test]
async fn rate_limit_admits_exactly_the_budget_per_key_with_headers() {
    let up = Upstream::start("a").await;
    let gw = gateway(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
         [routes.r.policies.rate_limit]\nrequests = 5\nwindow = \"1m\"\nby = \"header:x-user\"\n",
        upstream_table("a", &[up.addr])
    ));
    for user in ["ann", "ben"] {
        for i in 1..=5u64 {
            let r = raw(gw.addr, &get("/", &format!("x-user: {user}\r\n"))).await;
            assert_eq!(r.status, 200, "{user} request {i}");
            assert_eq!(r.header("ratelimit-limit"), Some("5"));
            assert_eq!(
                r.header("ratelimit-remaining"),
                Some((5 - i).to_string().as_str())
            );
            let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
            assert!((1..=60).contains(&reset), "{reset}");
        }
        let r = raw(gw.addr, &get("/", &format!("x-user: {user}\r\n"))).await;
        assert_eq!(r.status, 429, "{user} got past the limit");
        assert_eq!(r.json()["error"], "rate_limited");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(retry >= 1);
        assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    }
    assert_eq!(up.count(), 10, "a refused request reached the upstream");
}

#[tokio::test]
async fn rate_limit_headers_replace_the_upstreams_and_ride_on_every_final_answer() {
    let up = Upstream::start("a").await;
    let early = RawUpstream::start().await;
    let policy =
        "[routes.{r}.policies.rate_limit]\nrequests = 50\nwindow = \"1m\"\nby = \"route\"\n";
    let gw = gateway(&format!(
        "{}{}{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n{}\
         [routes.gone]\npaths = [\"/gone\"]\nupstream = \"down\"\n{}\
         [routes.hints]\npaths = [\"/hints\"]\nupstream = \"early\"\n{}",
        upstream_table("a", &[up.addr]),
        upstream_table("down", &[closed_port()]),
        upstream_table("early", &[early.addr]),
        policy.replace("{r}", "r"),
        policy.replace("{r}", "gone"),
        policy.replace("{r}", "hints"),
    ));
    // the upstream's own RateLimit-Limit is replaced, not joined
    let r = raw(gw.addr, &get("/own-ratelimit", "")).await;
    assert_eq!(r.status, 200);
    let limits: Vec<&str> = (r.headers.iter())
        .filter(|(n, _)| n == "ratelimit-limit")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(limits, ["50"], "{:?}", r.headers);
    assert_eq!(r.header("ratelimit-remaining"), Some("49"));

    // the gateway's own answer when the upstream cannot be reached carries them too
    let r = raw(gw.addr, &get("/gone", "")).await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("ratelimit-limit"), Some("50"));
    assert_eq!(r.header("ratelimit-remaining"), Some("49"));

    // an interim 103 does not; the final answer after it does
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, &get("/hints", "x-interim: 1\r\n"))
        .await
        .unwrap();
    let bytes = read_until_closed(&mut s, std::time::Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    let (interim, last) = text.split_once("\r\n\r\n").expect("a head");
    assert!(interim.starts_with("http/1.1 103"), "{text}");
    assert!(!interim.contains("ratelimit-"), "{text}");
    let last = parse_response(last.as_bytes());
    assert_eq!(last.status, 200, "{text}");
    assert_eq!(last.header("ratelimit-limit"), Some("50"), "{text}");
}

#[tokio::test]
async fn a_consumer_override_gets_its_own_budget() {
    let up = Upstream::start("a").await;
    let gw = gateway(&format!(
        "{}[consumers.gold]\napi_keys = [\"k-gold\"]\n[consumers.gold.policies.rate_limit]\nrequests = 4\nwindow = \"1m\"\nby = \"consumer\"\n\
         [consumers.plain]\napi_keys = [\"k-plain\"]\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.key_auth]\n\
         [routes.r.policies.rate_limit]\nrequests = 2\nwindow = \"1m\"\nby = \"consumer\"\n",
        upstream_table("a", &[up.addr])
    ));
    let admitted = async |key: &str| {
        let mut n = 0;
        for _ in 0..6 {
            if raw(gw.addr, &get("/", &format!("apikey: {key}\r\n")))
                .await
                .status
                == 200
            {
                n += 1;
            }
        }
        n
    };
    assert_eq!(admitted("k-plain").await, 2);
    assert_eq!(admitted("k-gold").await, 4);
}

#[tokio::test]
async fn concurrency_limit_refuses_while_the_slot_is_held_and_frees_it_after() {
    let up = Upstream::start("a").await;
    let gw = gateway(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
         [routes.r.policies.concurrency_limit]\nmax = 1\nby = \"route\"\n",
        upstream_table("a", &[up.addr])
    ));
    let addr = gw.addr;
    let slow = tokio::spawn(async move { raw(addr, &get("/slow", "")).await.status });
    let held = eventually(std::time::Duration::from_secs(5), async || up.count() == 1).await;
    assert!(held, "the slow request never reached the upstream");
    let r = raw(gw.addr, &get("/fast", "")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(
        raw(gw.addr, &get("/fast", "")).await.status,
        200,
        "the slot was not released"
    );
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn cors_headers_ride_on_the_gateways_own_refusals_too() {
    // a browser script can read a 401 only when it carries Access-Control-Allow-Origin
    let up = Upstream::start("a").await;
    let gw = gateway(&format!(
        "{}[consumers.c]\napi_keys = [\"k-0123456789\"]\n\
         [routes.api]\npaths = [\"/api\"]\nupstream = \"a\"\n\
         [routes.api.policies.key_auth]\n\
         [routes.api.policies.cors]\nallow_origins = [\"https://app.example.com\"]\nallow_credentials = true\n",
        upstream_table("a", &[up.addr])
    ));
    let origin = "Origin: https://app.example.com\r\n";
    let r = raw(gw.addr, &get("/api/x", origin)).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = raw(
        gw.addr,
        &get("/api/x", &format!("{origin}apikey: k-0123456789\r\n")),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let r = raw(
        gw.addr,
        &get("/api/x", "Origin: https://evil.example.com\r\n"),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn cors_preflights_are_answered_by_the_gateway_and_actual_responses_labelled() {
    let up = Upstream::start("a").await;
    let gw = gateway(&format!(
        "{}[routes.api]\npaths = [\"/api\"]\nmethods = [\"GET\", \"POST\"]\nupstream = \"a\"\n\
         [routes.api.policies.cors]\nallow_origins = [\"https://app.example.com\"]\nallow_methods = [\"GET\", \"POST\"]\n\
         allow_headers = [\"content-type\", \"x-api-key\"]\nexpose_headers = [\"x-request-id\"]\nmax_age = \"10m\"\nallow_credentials = true\n",
        upstream_table("a", &[up.addr])
    ));
    let preflight = |origin: &str, method: &str, headers: &str| {
        format!(
            "OPTIONS /api/items HTTP/1.1\r\nHost: h\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: {method}\r\n\
             Access-Control-Request-Headers: {headers}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes()
    };
    let r = raw(
        gw.addr,
        &preflight("https://app.example.com", "POST", "Content-Type, X-Api-Key"),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type, x-api-key")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));

    // a method the route itself does not accept: the route's own 405, without CORS headers
    let r = raw(
        gw.addr,
        &preflight("https://app.example.com", "DELETE", "content-type"),
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("access-control-allow-origin"), None);
    for (origin, method, headers) in [
        ("https://evil.example.com", "POST", "content-type"),
        ("https://app.example.com", "POST", "x-secret"),
    ] {
        let r = raw(gw.addr, &preflight(origin, method, headers)).await;
        assert_eq!(r.status, 204, "{origin} {method} {headers}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            None,
            "{origin} {method} {headers}"
        );
    }
    assert_eq!(up.count(), 0, "a preflight reached the upstream");

    let r = raw(
        gw.addr,
        &get("/api/items", "Origin: https://app.example.com\r\n"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = raw(
        gw.addr,
        &get("/api/items", "Origin: https://evil.example.com\r\n"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    // a plain OPTIONS (not a preflight) on a GET/POST route is still 405
    let r = raw(
        gw.addr,
        b"OPTIONS /api HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 405);
}

fn redis_route(redis: &RedisServer, up: &Upstream, on_error: &str) -> String {
    format!(
        "[server.redis]\nurl = \"{}\"\ntimeout = \"200ms\"\n{}\
         [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
         [routes.r.policies.rate_limit]\nrequests = 5\nwindow = \"1h\"\nby = \"route\"\nstore = \"redis\"\non_store_error = \"{on_error}\"\n",
        redis.url(),
        upstream_table("a", &[up.addr])
    )
}

#[tokio::test]
async fn two_gateways_sharing_redis_admit_exactly_the_budget_in_total() {
    let redis = RedisServer::start();
    let up = Upstream::start("a").await;
    let one = gateway(&redis_route(&redis, &up, "deny"));
    let two = gateway(&redis_route(&redis, &up, "deny"));
    let mut admitted = 0;
    for i in 0..12 {
        let gw = if i % 2 == 0 { &one } else { &two };
        let r = raw(gw.addr, &get("/", "")).await;
        match r.status {
            200 => admitted += 1,
            429 => assert!(r.header("retry-after").is_some()),
            s => panic!(
                "unexpected status {s}: {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }
    assert_eq!(
        admitted, 5,
        "the two instances together admitted {admitted}"
    );
    assert_eq!(up.count(), 5);
}

#[tokio::test]
async fn an_unreachable_redis_allows_or_denies_as_configured() {
    let mut redis = RedisServer::start();
    let up = Upstream::start("a").await;
    let allow = gateway(&redis_route(&redis, &up, "allow"));
    let deny = gateway(&redis_route(&redis, &up, "deny"));
    assert_eq!(raw(allow.addr, &get("/", "")).await.status, 200);
    assert_eq!(raw(deny.addr, &get("/", "")).await.status, 200);
    redis.stop();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let r = raw(allow.addr, &get("/", "")).await;
        assert_eq!(r.status, 200, "on_store_error = allow");
        let r = raw(deny.addr, &get("/", "")).await;
        assert_eq!(r.status, 503, "on_store_error = deny");
        assert_eq!(r.json()["error"], "overloaded");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "a dead store stalled requests"
        );
    }
}

#[tokio::test]
async fn rate_limit_counts_survive_a_reload_that_changes_its_table() {
    let up = Upstream::start("a").await;
    let routes = |requests: u64| {
        format!(
            "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
             [routes.r.policies.rate_limit]\nrequests = {requests}\nwindow = \"1h\"\nby = \"route\"\n",
            upstream_table("a", &[up.addr])
        )
    };
    let gw = gateway_with_admin(&routes(3));
    for _ in 0..3 {
        assert_eq!(raw(gw.addr, &get("/", "")).await.status, 200);
    }
    assert_eq!(raw(gw.addr, &get("/", "")).await.status, 429);
    // CROSSCUTTING.md rule 7.5: the counts are kept (the 4 requests already counted),
    // whatever else of the table changes; only the new budget applies
    let full = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&gw.config, full.replace("requests = 3", "requests = 6")).unwrap();
    assert_eq!(admin_reload(&gw).await.0, 200);
    let r = raw(gw.addr, &get("/", "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit-remaining"),
        Some("1"),
        "counted from zero again"
    );
    assert_eq!(raw(gw.addr, &get("/", "")).await.status, 200);
    assert_eq!(raw(gw.addr, &get("/", "")).await.status, 429);
}
