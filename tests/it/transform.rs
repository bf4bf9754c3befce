//! transform.md §3.2 to §3.6: `request_body` and `response_body` against a real upstream
//! on loopback (it records what it received; `/respond?body=…&coding=…` answers with a
//! given body).

use crate::support::*;
use tollgate_tests::decode;

/// A gateway whose route `r` (`/orders/{id}` and `/`) has these policy tables.
fn transforming(up: &Upstream, policies: &str) -> Gateway {
    transforming_with(up, "", policies)
}

/// [`transforming`] with `server` lines added to `[server]` (a `[server.limits]` table).
fn transforming_with(up: &Upstream, server: &str, policies: &str) -> Gateway {
    gateway_with_admin(&format!(
        "{server}\n{}[routes.r]\npaths = [\"/orders/{{id}}\", \"/\"]\nupstream = \"a\"\n{policies}",
        upstream_table("a", &[up.addr])
    ))
}

fn post(gw: &Gateway, path: &str, ctype: &str, body: &str) -> reqwest::RequestBuilder {
    client()
        .post(gw.url(path))
        .header("content-type", ctype)
        .body(body.to_string())
}

/// The body the upstream received last, as text.
fn received(up: &Upstream) -> String {
    String::from_utf8(up.last().expect("a request reached the upstream").body).unwrap()
}

#[tokio::test]
async fn request_body_applies_the_operations_in_their_fixed_order_with_templates() {
    let up = Upstream::start("a").await;
    let gw = transforming(
        &up,
        r#"[routes.r.policies.request_body]
add = { "/tags" = [], "/price" = 0 }
set = { "/meta/source" = "gateway", "/meta/who" = "${method} ${route} ${param.id} ${header.x-tag} $$5 ${request_id}", "/version" = 2 }
rename = { "/customer/id" = "/customer_id" }
remove = ["/debug", "/items/*/internal"]
keep = ["/id", "/items/*/sku", "/items/*/internal", "/customer", "/debug", "/price"]
"#,
    );
    let body = r#"{"price": 1.50, "id": 12345678901234567890, "secret": "x", "debug": true,
        "customer": {"id": 7, "name": "n"}, "items": [{"sku": "a", "internal": 1, "cost": 2}]}"#;
    let a = send(
        post(
            &gw,
            "/orders/o%201",
            "application/json; charset=UTF-8",
            body,
        )
        .header("x-tag", "a\"}{")
        .header("x-request-id", "req-1")
        .header("content-md5", "Q2hlY2sgSW50ZWdyaXR5IQ=="),
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let got = received(&up);
    // keep, then remove, rename, set, add, whatever the order in the table; numbers
    // keep their text; new members go at the end, in the order written
    assert_eq!(
        got,
        r#"{"price":1.50,"id":12345678901234567890,"customer":{"name":"n"},"items":[{"sku":"a"}],"customer_id":7,"meta":{"source":"gateway","who":"POST r o 1 a\"}{ $5 req-1"},"version":2,"tags":[]}"#
    );
    let seen = up.last().unwrap();
    assert_eq!(seen.header("content-length"), Some(&*got.len().to_string()));
    assert_eq!(
        seen.header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    assert_eq!(seen.header("content-md5"), None, "the body changed");
    let log = access_log(&gw, 1).await;
    assert_eq!(log[0]["request_body"], "applied");
    assert_eq!(log[0]["response_body"], serde_json::Value::Null);
    assert_eq!(
        sample(
            &gw,
            "tollgate_body_transforms_total{direction=\"request\",outcome=\"applied\",route=\"r\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_body_the_operations_leave_unchanged_goes_byte_for_byte() {
    let up = Upstream::start("a").await;
    let gw = transforming(
        &up,
        "[routes.r.policies.request_body]\nremove = [\"/absent\"]\nadd = { \"/a\" = 1 }\n",
    );
    let body = "{ \"a\" : 1.0e0 ,\n \"b\": [ ] }";
    let a = send(post(&gw, "/", "application/json", body).header("digest", "sha-256=x")).await;
    assert_eq!(a.status, 200);
    assert_eq!(received(&up), body);
    assert_eq!(up.last().unwrap().header("digest"), Some("sha-256=x"));
}

#[tokio::test]
async fn invalid_json_is_refused_before_the_upstream_or_passed_when_asked() {
    let up = Upstream::start("a").await;
    let gw = transforming(
        &up,
        "[routes.r.policies.request_body]\nset = { \"/x\" = 1 }\nmax_depth = 3\n",
    );
    let deep_ok = "[[{\"a\":1}]]";
    let bad = [
        r#"{"a":1,"a":2}"#,
        r#"{"s":"\ud800"}"#,
        "[[[[1]]]]",
        "{\"a\":1} x",
        "\u{feff}{}",
    ];
    for body in bad {
        let a = send(post(&gw, "/", "application/json", body)).await;
        assert_eq!(a.status, 400, "{body}");
        let j: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(j["error"], "bad_request");
        assert!(
            !j["message"].as_str().unwrap().contains("ud800"),
            "no echo of the body"
        );
    }
    assert_eq!(
        up.count(),
        0,
        "a refused request never reaches the upstream"
    );
    let a = send(post(&gw, "/", "application/json", deep_ok)).await;
    assert_eq!(a.status, 200, "depth 3 is within max_depth");
    assert_eq!(
        received(&up),
        deep_ok,
        "set on an array root places nothing"
    );
    // a depth bomb far past any stack costs one refusal
    let bomb = "[".repeat(1 << 20);
    let a = send(post(&gw, "/", "application/json", &bomb)).await;
    assert_eq!(a.status, 400);
    assert_eq!(
        sample(
            &gw,
            "tollgate_body_transforms_total{direction=\"request\",outcome=\"invalid\",route=\"r\"}"
        )
        .await,
        Some(6.0)
    );

    let up2 = Upstream::start("a").await;
    let pass = transforming(
        &up2,
        "[routes.r.policies.request_body]\nset = { \"/x\" = 1 }\non_error = \"pass\"\n",
    );
    let a = send(post(&pass, "/", "application/json", bad[0])).await;
    assert_eq!(a.status, 200);
    assert_eq!(received(&up2), bad[0], "forwarded unmodified");
    assert_eq!(access_log(&pass, 1).await[0]["request_body"], "invalid");
}

#[tokio::test]
async fn other_media_types_stream_untouched_or_get_415_when_strict() {
    let up = Upstream::start("a").await;
    let gw = transforming(
        &up,
        "[routes.r.policies.request_body]\nset = { \"/x\" = 1 }\ncontent_types = [\"application/*+json\"]\n",
    );
    for (ctype, body) in [
        ("text/plain", "{\"a\":1}"),
        ("application/json", "{\"a\":1}"),
        ("application/vnd.x+json; charset=latin1", "{\"a\":1}"),
    ] {
        let a = send(post(&gw, "/", ctype, body)).await;
        assert_eq!(a.status, 200, "{ctype}");
        assert_eq!(received(&up), body, "{ctype}: not a candidate");
    }
    let a = send(post(&gw, "/", "application/vnd.x+json", "{}")).await;
    assert_eq!(a.status, 200);
    assert_eq!(received(&up), "{\"x\":1}");
    // an encoded body is not a candidate either
    let a = send(post(&gw, "/", "application/vnd.x+json", "{}").header("content-encoding", "gzip"))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(received(&up), "{}");

    let strict = transforming(
        &up,
        "[routes.r.policies.request_body]\nset = { \"/x\" = 1 }\nstrict = true\n",
    );
    let before = up.count();
    let a = send(post(&strict, "/", "text/plain", "hello")).await;
    assert_eq!(a.status, 415);
    let j: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(j["error"], "unsupported_media_type");
    assert_eq!(up.count(), before);
    // an empty body is forwarded as it is, whatever its type
    let a = send(
        client()
            .post(strict.url("/"))
            .header("content-type", "text/plain"),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        sample(
            &strict,
            "tollgate_body_transforms_total{direction=\"request\",outcome=\"skipped_type\",route=\"r\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_body_one_byte_over_max_body_is_413_declared_or_chunked() {
    let up = Upstream::start("a").await;
    let gw = transforming(
        &up,
        "[routes.r.policies.request_body]\nset = { \"/x\" = 1 }\nmax_body = 20\n",
    );
    let exact = format!("{{\"s\":\"{}\"}}", "a".repeat(12));
    assert_eq!(exact.len(), 20);
    let a = send(post(&gw, "/", "application/json", &exact)).await;
    assert_eq!(a.status, 200);
    let over = format!("{{\"s\":\"{}\"}}", "a".repeat(13));
    let a = send(post(&gw, "/", "application/json", &over)).await;
    assert_eq!(a.status, 413);
    let r = raw(gw.addr, &post_chunked("/", over.as_bytes())).await;
    assert_eq!(r.status, 413, "chunked, refused as it grows past max_body");
    assert_eq!(up.count(), 1, "only the body within max_body went upstream");
    let r = raw(gw.addr, &post_chunked("/", b"{\"a\":2}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(received(&up), "{\"a\":2,\"x\":1}");
    assert_eq!(
        sample(
            &gw,
            "tollgate_body_transforms_total{direction=\"request\",outcome=\"too_large\",route=\"r\"}"
        )
        .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn full_body_buffers_refuse_with_503_and_retry_after() {
    let up = Upstream::start("a").await;
    let gw = transforming_with(
        &up,
        "[server.limits]\nbody_buffer_total = \"64KiB\"",
        "[routes.r.policies.request_body]\nset = { \"/x\" = 1 }\n",
    );
    let big = format!("{{\"s\":\"{}\"}}", "a".repeat(70_000));
    let a = send(post(&gw, "/", "application/json", &big)).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.header("retry-after"), Some("1"));
    let j: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(j["error"], "overloaded");
    assert_eq!(up.count(), 0);
    assert_eq!(
        sample(&gw, "tollgate_body_buffer_refusals_total{route=\"r\"}").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn response_body_transforms_json_responses_and_fixes_the_head() {
    let up = Upstream::start("a").await;
    let gw = transforming(
        &up,
        r#"[routes.r.policies.response_body]
remove = ["/internal", "/items/*/cost"]
rename = { "/id" = "/order_id" }
set = { "/request_id" = "${request_id}", "/by" = "${header.x-who}" }
"#,
    );
    let body = r#"{"id":7,"internal":{"a":1},"items":[{"sku":"a","cost":1.10}]}"#;
    let path = format!(
        "/respond?body={}&header=etag:%22v1%22&header=content-md5:abc",
        urlencode(body)
    );
    let a = send(
        client()
            .get(gw.url(&path))
            .header("x-request-id", "rid-9")
            .header("x-who", "me")
            .header("accept-encoding", "gzip, br")
            .header("range", "bytes=0-3"),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        String::from_utf8(a.body.clone()).unwrap(),
        r#"{"items":[{"sku":"a"}],"order_id":7,"request_id":"rid-9","by":"me"}"#
    );
    assert_eq!(a.header("etag"), None, "etag = remove");
    assert_eq!(a.header("content-md5"), None);
    assert_eq!(a.header("content-type"), Some("application/json"));
    let seen = up.last().unwrap();
    assert_eq!(seen.header("accept-encoding"), Some("identity"));
    assert_eq!(seen.header("range"), None, "the whole body is asked for");
    let log = access_log(&gw, 1).await;
    assert_eq!(log[0]["response_body"], "applied");

    let weak = transforming(
        &up,
        "[routes.r.policies.response_body]\nremove = [\"/internal\"]\netag = \"weaken\"\n",
    );
    let a = send(client().get(weak.url(&path))).await;
    assert_eq!(a.header("etag"), Some("W/\"v1\""));
    assert_eq!(a.header("content-length"), None, "HTTP/1.1: chunked");
}

/// `s` percent-encoded for a query value.
fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn an_encoded_response_is_decoded_transformed_and_encoded_again_in_its_coding() {
    let up = Upstream::start("a").await;
    let gw = transforming(
        &up,
        "[routes.r.policies.response_body]\nremove = [\"/secret\"]\n",
    );
    let body = r#"{"keep":"x","secret":"y"}"#;
    for coding in ["gzip", "deflate", "br"] {
        let path = format!("/respond?body={}&coding={coding}", urlencode(body));
        let a = send(
            client()
                .get(gw.url(&path))
                .header("accept-encoding", coding),
        )
        .await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-encoding"), Some(coding));
        let plain = decode(coding, &a.body).expect("a complete stream of the same coding");
        assert_eq!(plain, br#"{"keep":"x"}"#, "{coding}");
    }
}

#[tokio::test]
async fn responses_that_cannot_be_transformed_whole_arrive_exactly_as_sent() {
    let up = Upstream::start("a").await;
    let gw = transforming(
        &up,
        "[routes.r.policies.response_body]\nremove = [\"/a\"]\nmax_body = 100\n",
    );
    // larger than max_body, by Content-Length
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(200));
    let a = send(client().get(gw.url(&format!("/respond?body={}", urlencode(&big))))).await;
    assert_eq!(String::from_utf8(a.body).unwrap(), big);
    // not JSON
    let a = send(client().get(gw.url("/respond?body=%7B%22a%22%3A1%2C%22a%22%3A2%7D"))).await;
    assert_eq!(a.body, br#"{"a":1,"a":2}"#);
    // a coding that does not decode
    let a = send(client().get(gw.url("/respond?body=notgzip&header=content-encoding:gzip"))).await;
    assert_eq!(a.body, b"notgzip");
    // decoded past max_body: decoding stops there, the encoded bytes go as they came
    let path = "/respond?size=10000&coding=gzip";
    let a = send(client().get(gw.url(path)).header("accept-encoding", "gzip")).await;
    assert!(a.body.len() < 100, "the encoded body is within max_body");
    let plain = decode("gzip", &a.body).expect("the upstream's gzip stream, whole");
    assert!(plain.len() == 10_000 && plain.iter().all(|&b| b == b'x'));
    // not a candidate: another type, another coding
    let a = send(
        client().get(gw.url("/respond?body=%7B%22a%22%3A1%7D&header=content-type:text/plain")),
    )
    .await;
    assert_eq!(a.body, br#"{"a":1}"#);
    let a =
        send(client().get(gw.url("/respond?body=%7B%22a%22%3A1%7D&header=content-encoding:zstd")))
            .await;
    assert_eq!(a.body, br#"{"a":1}"#);
    for (outcome, n) in [
        ("too_large", 2.0),
        ("invalid", 2.0),
        ("skipped_type", 1.0),
        ("encoding", 1.0),
    ] {
        assert_eq!(
            sample(
                &gw,
                &format!("tollgate_body_transforms_total{{direction=\"response\",outcome=\"{outcome}\",route=\"r\"}}")
            )
            .await,
            Some(n),
            "{outcome}"
        );
    }
    let warned = eventually(std::time::Duration::from_secs(5), async || {
        gw.stderr_lines()
            .iter()
            .any(|l| l.contains("response_body: route r") && l.contains("not valid JSON"))
    })
    .await;
    assert!(warned, "a warning line names the policy and the route");
    assert!(
        !gw.stderr_lines().iter().any(|l| l.contains("\"a\":1")),
        "never body content"
    );
}

#[tokio::test]
async fn excluded_statuses_head_and_the_gateways_own_answers_are_not_transformed() {
    let up = Upstream::start("a").await;
    let gw = transforming(
        &up,
        "[routes.r.policies.response_body]\nset = { \"/x\" = 1 }\n[routes.r.policies.key_auth]\n[consumers.c]\napi_keys = [\"k\"]\n",
    );
    let a = send(client().get(gw.url("/respond?body=%7B%7D"))).await;
    assert_eq!(a.status, 401);
    let j: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert!(j.get("x").is_none(), "a refusal is the gateway's own: {j}");
    let key = |r: reqwest::RequestBuilder| r.header("apikey", "k");
    let a = send(key(client().get(gw.url("/respond?body=%7B%7D")))).await;
    assert_eq!(a.body, br#"{"x":1}"#);
    let a = send(key(client().get(gw.url("/respond?body=%7B%7D&status=206")))).await;
    assert_eq!(a.body, b"{}");
    let a = send(key(client().head(gw.url("/respond?body=%7B%7D")))).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        metrics_text(&gw)
            .await
            .lines()
            .filter(|l| l.starts_with("tollgate_body_transforms_total{"))
            .count(),
        1,
        "only the one applied response is counted"
    );
}

#[tokio::test]
async fn check_reports_each_error_at_its_place() {
    let err = check_fails(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstreams.a]\nbackends = [\"127.0.0.1:1\"]\n\
         [routes.r]\npaths = [\"/u/{id}\"]\nupstream = \"a\"\n\
         [routes.r.policies.request_body]\nremove = [\"/a\", \"items/0\"]\n\
         set = { \"/by\" = \"${consumr}\", \"/p\" = \"${param.nope}\", \"/q\" = \"${param.id}\" }\n\
         [routes.r.policies.response_body]\netag = \"strong\"\n",
    );
    for want in [
        ":9:17: routes.r.policies.request_body.remove[1]: malformed JSON Pointer \"items/0\" (must start with \"/\")",
        ":10:9: routes.r.policies.request_body.set.\"/by\": unknown template name \"consumr\" in \"${consumr}\"",
        "routes.r.policies.request_body.set.\"/p\": template name \"param.nope\": no path of this route has {nope}",
        "routes.r.policies.response_body.etag: unknown etag \"strong\" (expected remove or weaken)",
    ] {
        assert!(err.contains(want), "missing {want}\nin {err}");
    }
    assert!(
        !err.contains("\"/q\""),
        "{{id}} is a path parameter of the route: {err}"
    );
}

#[tokio::test]
async fn a_gzip_body_is_decoded_before_request_body_edits_it() {
    let up = Upstream::start("a").await;
    let gw = transforming(
        &up,
        "[routes.r.policies.compress]\ndecompress_requests = true\n\
         [routes.r.policies.request_body]\nset = { \"/x\" = 1 }\n",
    );
    let a = send(
        client()
            .post(gw.url("/"))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(tollgate_tests::gzip(br#"{"a":true}"#)),
    )
    .await;
    assert_eq!(a.status, 200);
    let seen = up.last().unwrap();
    assert_eq!(
        received(&up),
        r#"{"a":true,"x":1}"#,
        "decoded (stage 13), then edited (16)"
    );
    assert_eq!(seen.header("content-encoding"), None);
}

#[tokio::test]
async fn a_range_on_a_transforming_route_gets_the_whole_transformed_body_even_from_the_cache() {
    let up = Upstream::start("a").await;
    let gw = transforming(
        &up,
        "[routes.r.policies.cache]\nttl = \"1m\"\n[routes.r.policies.response_body]\nremove = [\"/b\"]\n",
    );
    let path = "/respond?body=%7B%22a%22%3A1%2C%22b%22%3A2%7D&header=cache-control:max-age=60";
    let first = send(client().get(gw.url(path))).await;
    assert_eq!(
        (first.status, first.body.as_slice()),
        (200, &br#"{"a":1}"#[..])
    );
    for _ in 0..2 {
        let a = send(client().get(gw.url(path)).header("range", "bytes=0-2")).await;
        assert_eq!(a.status, 200, "no 206 of the upstream's bytes");
        assert_eq!(a.body, br#"{"a":1}"#);
    }
    assert_eq!(up.count(), 1, "the later answers came from the entry");
    assert_eq!(up.last().unwrap().header("range"), None);
}

#[tokio::test]
async fn event_streams_are_skipped_x_gzip_is_read_and_client_ip_is_a_fact() {
    let up = Upstream::start("a").await;
    let gw = transforming(
        &up,
        "[routes.r.policies.response_body]\nremove = [\"/b\"]\ncontent_types = [\"application/json\", \"text/event-stream\"]\n\
         [routes.r.policies.request_body]\nset = { \"/ip\" = \"${client_ip}\" }\n",
    );
    let sse = "/respond?body=%7B%22b%22%3A1%7D&header=content-type:text/event-stream";
    let a = send(client().get(gw.url(sse))).await;
    assert_eq!(
        a.body, br#"{"b":1}"#,
        "text/event-stream is never a candidate"
    );
    let a =
        send(client().get(gw.url("/respond?body=%7B%22a%22%3A1%2C%22b%22%3A2%7D&coding=x-gzip")))
            .await;
    assert_eq!(a.header("content-encoding"), Some("x-gzip"));
    assert_eq!(
        tollgate_tests::decode("x-gzip", &a.body).unwrap(),
        br#"{"a":1}"#
    );
    let a = send(post(&gw, "/", "application/json", "{}")).await;
    assert_eq!(a.status, 200);
    assert_eq!(received(&up), r#"{"ip":"127.0.0.1"}"#);
    assert_eq!(
        sample(
            &gw,
            "tollgate_body_transforms_total{direction=\"response\",outcome=\"skipped_type\",route=\"r\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_response_that_finds_no_room_is_forwarded_as_it_came() {
    let up = Upstream::start("a").await;
    let gw = transforming_with(
        &up,
        "[server.limits]\nbody_buffer_total = \"64KiB\"",
        "[routes.r.policies.response_body]\nremove = [\"/b\"]\nmax_body = \"1MiB\"\n\
         [routes.r.policies.xml_json]\nrequest = false\nmax_body = \"1MiB\"\n",
    );
    for accept in ["application/json", "application/xml"] {
        let a = send(
            client()
                .get(gw.url("/respond?size=100000"))
                .header("accept", accept),
        )
        .await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body.len(), 100_000, "{accept}: every byte, unmodified");
        assert_eq!(
            a.header("content-type"),
            Some("application/json"),
            "{accept}"
        );
    }
    assert_eq!(
        sample(
            &gw,
            "tollgate_body_transforms_total{direction=\"response\",outcome=\"too_large\",route=\"r\"}"
        )
        .await,
        Some(2.0)
    );
    assert_eq!(
        sample(
            &gw,
            "tollgate_xml_conversions_total{direction=\"response\",outcome=\"too_large\",route=\"r\"}"
        )
        .await,
        Some(1.0),
        "decided at the head: forwarded as JSON, not aborted"
    );
}
