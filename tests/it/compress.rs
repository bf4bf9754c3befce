//! cache.md §12: the `compress` policy against a real upstream on loopback; bodies are
//! decoded with the codecs' own crates, as clients do.

use crate::support::*;
use tollgate_tests::{decode, gzip};

/// A gateway whose route `r` (every path) compresses with these extra `policy` lines.
fn compressing(up: &Upstream, policy: &str) -> Gateway {
    gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.compress]\n{policy}",
        upstream_table("a", &[up.addr])
    ))
}

/// Whether `a` has `Accept-Encoding` in its `Vary`.
fn varies_on_accept_encoding(a: &Answer) -> bool {
    a.headers
        .get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .any(|n| n.trim().eq_ignore_ascii_case("accept-encoding"))
}

fn get(gw: &Gateway, path: &str, accept: &str) -> reqwest::RequestBuilder {
    client().get(gw.url(path)).header("accept-encoding", accept)
}

/// A compressible JSON body of `size` bytes, as the upstream sends it (`/respond`).
const BIG: &str = "/respond?size=5000";

#[tokio::test]
async fn accept_encoding_picks_the_coding_and_the_body_decodes_to_the_original() {
    let up = Upstream::start("a").await;
    let gw = compressing(&up, "");
    let plain = send(client().get(gw.url(BIG))).await;
    assert_eq!(plain.body.len(), 5000);
    assert!(
        plain.header("content-encoding").is_none(),
        "no Accept-Encoding: as it is"
    );
    assert_eq!(plain.header("content-length"), Some("5000"));
    assert!(
        varies_on_accept_encoding(&plain),
        "Vary even when not compressed"
    );
    for (accept, coding) in [
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip, br", "br"),
        ("br;q=0.5, gzip", "gzip"),
        ("zstd;q=0, *", "br"),
    ] {
        let a = send(get(&gw, BIG, accept)).await;
        assert_eq!(
            (a.status, a.header("content-encoding")),
            (200, Some(coding)),
            "{accept}"
        );
        assert!(
            a.header("content-length").is_none(),
            "{accept}: no Content-Length"
        );
        assert!(varies_on_accept_encoding(&a));
        assert_eq!(
            decode(coding, &a.body).as_deref(),
            Some(&plain.body[..]),
            "{accept}"
        );
        assert!(a.body.len() < 200, "{accept}: {} bytes", a.body.len());
    }
    for accept in ["identity, gzip;q=0.5", "*;q=0", "deflate"] {
        let a = send(get(&gw, BIG, accept)).await;
        assert!(a.header("content-encoding").is_none(), "{accept}");
        assert_eq!(a.body.len(), 5000);
    }
    assert_eq!(
        sample(
            &gw,
            "tollgate_compress_responses_total{algorithm=\"zstd\",route=\"r\"}"
        )
        .await,
        Some(1.0)
    );
    let bytes_in = sample(
        &gw,
        "tollgate_compress_bytes_in_total{algorithm=\"gzip\",route=\"r\"}",
    )
    .await;
    assert_eq!(bytes_in, Some(5000.0));
    let out = sample(
        &gw,
        "tollgate_compress_bytes_out_total{algorithm=\"gzip\",route=\"r\"}",
    )
    .await;
    assert!(out.is_some_and(|n| n > 0.0 && n < 200.0), "{out:?}");
    assert_eq!(
        sample(
            &gw,
            "tollgate_compress_skipped_total{reason=\"not_accepted\",route=\"r\"}"
        )
        .await,
        Some(4.0),
        "no header, identity preferred, *;q=0, deflate"
    );
    let log = access_log(&gw, 8).await;
    assert!(log[0]["compress"].is_null());
    assert_eq!(log[1]["compress"], "zstd");
    assert!(log.iter().all(|l| l["decompress"].is_null()));
}

#[tokio::test]
async fn responses_that_are_not_compressed_say_why() {
    let up = Upstream::start("a").await;
    let gw = compressing(&up, "");
    let any = "gzip";
    let head = send(client().head(gw.url(BIG)).header("accept-encoding", any)).await;
    assert_eq!(
        (
            head.header("content-encoding"),
            head.header("content-length")
        ),
        (None, Some("5000"))
    );
    assert!(varies_on_accept_encoding(&head));
    let range = send(get(&gw, BIG, any).header("range", "bytes=0-9")).await;
    assert!(range.header("content-encoding").is_none());
    let asks = send(get(&gw, BIG, any).header("cache-control", "no-transform")).await;
    assert!(asks.header("content-encoding").is_none());
    let cases = [
        ("/respond?size=5000&status=204", "status"),
        (
            "/respond?size=5000&header=content-encoding:identity",
            "encoded",
        ),
        (
            "/respond?size=5000&header=cache-control:no-transform",
            "no_transform",
        ),
        ("/respond?size=5000&header=content-type:image/png", "type"),
        ("/respond?size=1000", "size"),
    ];
    for (path, _) in cases {
        let a = send(get(&gw, path, any)).await;
        assert!(a.header("content-encoding") != Some("gzip"), "{path}");
    }
    for (reason, n) in [
        ("head", 1.0),
        ("range", 1.0),
        ("no_transform", 2.0),
        ("status", 1.0),
        ("encoded", 1.0),
        ("type", 1.0),
        ("size", 1.0),
    ] {
        let series = format!("tollgate_compress_skipped_total{{reason=\"{reason}\",route=\"r\"}}");
        assert_eq!(sample(&gw, &series).await, Some(n), "{series}");
    }
    // 4xx and 5xx of the upstream are compressed like 200
    let failed = send(get(&gw, "/respond?size=5000&status=500", any)).await;
    assert_eq!(
        (failed.status, failed.header("content-encoding")),
        (500, Some("gzip"))
    );
}

#[tokio::test]
async fn a_strong_etag_is_weakened_and_other_representation_headers_go() {
    let up = Upstream::start("a").await;
    let gw = compressing(&up, "");
    let path = "/respond?size=5000&header=etag:%22v1%22&header=accept-ranges:bytes&header=digest:sha-256%3Dx";
    let a = send(get(&gw, path, "gzip")).await;
    assert_eq!(a.header("etag"), Some("W/\"v1\""));
    assert!(a.header("accept-ranges").is_none() && a.header("digest").is_none());
    let weak = "/respond?size=5000&header=etag:W/%22v2%22";
    assert_eq!(
        send(get(&gw, weak, "gzip")).await.header("etag"),
        Some("W/\"v2\"")
    );
    let plain = send(get(&gw, path, "identity")).await;
    assert_eq!(
        plain.header("etag"),
        Some("\"v1\""),
        "uncompressed: unchanged"
    );
}

#[tokio::test]
async fn the_gateways_own_answers_are_never_compressed() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "{}[consumers.c]\napi_keys = [\"k\"]\n[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
         [routes.r.policies.key_auth]\n[routes.r.policies.compress]\nmin_size = 1\n",
        upstream_table("a", &[up.addr])
    ));
    let refused = send(get(&gw, BIG, "gzip")).await;
    assert_eq!(refused.status, 401);
    assert!(refused.header("content-encoding").is_none() && !varies_on_accept_encoding(&refused));
    let ok = send(get(&gw, BIG, "gzip").header("apikey", "k")).await;
    assert_eq!(ok.header("content-encoding"), Some("gzip"));
}

#[tokio::test]
async fn one_cache_entry_serves_each_client_its_own_coding() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.cache]\n\
         [routes.r.policies.compress]\nupstream_identity = true\n",
        upstream_table("a", &[up.addr])
    ));
    let gz = send(get(&gw, BIG, "gzip")).await;
    assert_eq!(
        (gz.header("x-cache-status"), gz.header("content-encoding")),
        (Some("MISS"), Some("gzip"))
    );
    assert_eq!(
        up.last().unwrap().header("accept-encoding"),
        Some("identity")
    );
    let zs = send(get(&gw, BIG, "zstd")).await;
    assert_eq!(
        (zs.header("x-cache-status"), zs.header("content-encoding")),
        (Some("HIT"), Some("zstd"))
    );
    assert_eq!(decode("zstd", &zs.body), decode("gzip", &gz.body));
    let plain = send(get(&gw, BIG, "identity")).await;
    assert_eq!(
        (
            plain.header("x-cache-status"),
            plain.header("content-length")
        ),
        (Some("HIT"), Some("5000"))
    );
    assert!(varies_on_accept_encoding(&plain) && plain.header("age").is_some());
    assert_eq!(up.count(), 1, "one entry for every coding");
    // a range of the entry is the uncompressed body's, never compressed
    let part = send(get(&gw, BIG, "gzip").header("range", "bytes=0-9")).await;
    assert_eq!(
        (
            part.status,
            part.body.len(),
            part.header("content-encoding")
        ),
        (206, 10, None)
    );
}

#[tokio::test]
async fn empty_algorithms_turn_response_compression_off() {
    let up = Upstream::start("a").await;
    let gw = compressing(&up, "algorithms = []\nupstream_identity = true\n");
    let a = send(get(&gw, BIG, "gzip")).await;
    assert!(a.header("content-encoding").is_none() && !varies_on_accept_encoding(&a));
    assert_eq!(
        up.last().unwrap().header("accept-encoding"),
        Some("gzip"),
        "upstream_identity has no effect"
    );
}

/// `n` bytes that do not compress (a linear congruential sequence).
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

async fn post(gw: &Gateway, coding: Option<&str>, body: Vec<u8>) -> Answer {
    let mut r = client()
        .post(gw.url("/in"))
        .header("content-type", "application/json");
    if let Some(c) = coding {
        r = r.header("content-encoding", c);
    }
    send(r.body(body)).await
}

#[tokio::test]
async fn gzip_request_bodies_are_decoded_before_they_go_upstream() {
    let up = Upstream::start("a").await;
    let gw = compressing(
        &up,
        "decompress_requests = true\ndecompress_max_size = \"1MiB\"\ndecompress_max_ratio = 20\n",
    );
    let original = br#"{"order": 42, "items": ["a", "b"]}"#.to_vec();
    let ok = post(&gw, Some("gzip"), gzip(&original)).await;
    assert_eq!(ok.status, 200);
    let seen = up.last().unwrap();
    assert_eq!(seen.body, original);
    assert_eq!(
        seen.header("content-length"),
        Some(original.len().to_string().as_str())
    );
    assert!(seen.header("content-encoding").is_none());
    assert_eq!(seen.header("content-type"), Some("application/json"));
    // concatenated members decode as one body; x-gzip is gzip
    let two = [gzip(b"first,"), gzip(b"second")].concat();
    assert_eq!(post(&gw, Some("X-GZIP"), two).await.status, 200);
    assert_eq!(up.last().unwrap().body, b"first,second");
    // identity and no coding pass untouched
    assert_eq!(
        post(&gw, Some("identity"), b"raw".to_vec()).await.status,
        200
    );
    assert_eq!(
        up.last().unwrap().header("content-encoding"),
        Some("identity")
    );
    let before = up.count();
    let refusals = [
        (Some("br"), b"x".to_vec(), 415, "unsupported_media_type"),
        (
            Some("gzip, gzip"),
            gzip(b"x"),
            415,
            "unsupported_media_type",
        ),
        (
            Some("gzip"),
            b"not gzip at all".to_vec(),
            400,
            "bad_request",
        ),
        (
            Some("gzip"),
            gzip(&original)[..20].to_vec(),
            400,
            "bad_request",
        ),
        (
            Some("gzip"),
            [gzip(b"x"), b"junk".to_vec()].concat(),
            400,
            "bad_request",
        ),
        // over decompress_max_size (incompressible, so the ratio is not what stops it)
        (
            Some("gzip"),
            gzip(&noise((1 << 20) + 1)),
            413,
            "payload_too_large",
        ),
    ];
    for (coding, body, status, error) in refusals {
        let a = post(&gw, coding, body).await;
        assert_eq!(a.status, status, "{coding:?}");
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["error"], error, "{coding:?}");
        if status == 415 {
            assert_eq!(a.header("accept-encoding"), Some("gzip"));
        }
    }
    assert_eq!(
        up.count(),
        before,
        "a refused request never reaches the upstream"
    );
    for (outcome, n) in [
        ("decoded", 2.0),
        ("unsupported", 2.0),
        ("invalid", 3.0),
        ("too_large", 1.0),
    ] {
        let series =
            format!("tollgate_decompress_requests_total{{outcome=\"{outcome}\",route=\"r\"}}");
        assert_eq!(sample(&gw, &series).await, Some(n), "{series}");
    }
    let log = access_log(&gw, 1).await;
    assert_eq!(log[0]["decompress"], "gzip");
}

#[tokio::test]
async fn body_limit_counts_the_body_as_the_client_sent_it() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.body_limit]\nmax = 200\n\
         [routes.r.policies.compress]\ndecompress_requests = true\n",
        upstream_table("a", &[up.addr])
    ));
    let decoded = vec![b'a'; 5000];
    let encoded = gzip(&decoded);
    assert!(encoded.len() < 200);
    let a = post(&gw, Some("gzip"), encoded).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(up.last().unwrap().body_len, 5000);
    let over = post(&gw, Some("gzip"), gzip(&noise(1000))).await;
    assert_eq!(over.status, 413, "over the limit as sent");
}

#[tokio::test]
async fn a_decompression_bomb_stops_at_the_ratio_after_64_kib() {
    let up = Upstream::start("a").await;
    // the size cap would let it through; the ratio does not
    let gw = compressing(
        &up,
        "decompress_requests = true\ndecompress_max_size = \"64MiB\"\n",
    );
    let bomb = gzip(&vec![0u8; 32 << 20]);
    assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
    let a = post(&gw, Some("gzip"), bomb).await;
    assert_eq!(a.status, 413);
    assert_eq!(
        sample(
            &gw,
            "tollgate_decompress_requests_total{outcome=\"ratio\",route=\"r\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(up.count(), 0);
}

#[test]
fn check_refuses_every_bad_compress_setting_in_one_run() {
    let err = check_fails(
        "[server.limits]\ncompress_streams = 0\n\
         [upstreams.a]\nbackends = [\"127.0.0.1:1\"]\n\
         [consumers.c]\napi_keys = [\"k\"]\n[consumers.c.policies.compress]\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.compress]\nalgorithms = [\"zstd\", \"lz4\"]\ntypes = [\"*/*\"]\n\
         [routes.s]\npaths = [\"/s\"]\nupstream = \"a\"\n[routes.s.policies.compress]\nlevel = { br = 12 }\n",
    );
    for expected in [
        "server.limits.compress_streams: must be at least 1",
        "consumers.c.policies.compress: `compress` cannot be overridden per consumer",
        "routes.r.policies.compress.algorithms[1]: unknown algorithm \"lz4\" (known: zstd, br, gzip)",
        "routes.s.policies.compress.level.br:",
        "routes.r.policies.compress.types[0]:",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

/// An upstream that answers one request with a chunked `text/event-stream` head, then
/// writes each piece it is sent on `pieces` as one chunk; `None` ends the body properly,
/// a dropped sender closes the connection mid-body.
async fn event_stream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedSender<Option<&'static str>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<&'static str>>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).await.unwrap();
            head.extend_from_slice(&b[..n]);
        }
        s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
        while let Some(piece) = rx.recv().await {
            match piece {
                Some(p) => {
                    let chunk = format!("{:x}\r\n{p}\r\n", p.len());
                    s.write_all(chunk.as_bytes()).await.unwrap();
                }
                None => {
                    s.write_all(b"0\r\n\r\n").await.unwrap();
                    return;
                }
            }
        }
        // the sender went away: the body breaks off
    });
    (addr, tx)
}

/// What of `sent` (a gzip stream so far) decodes already.
fn decoded_so_far(sent: &[u8]) -> String {
    String::from_utf8_lossy(&tollgate_tests::gunzip_so_far(sent)).into_owned()
}

#[tokio::test]
async fn with_streaming_each_event_can_be_decoded_as_soon_as_the_upstream_sends_it() {
    let (addr, events) = event_stream().await;
    let gw = gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.compress]\n\
         algorithms = [\"gzip\"]\nstreaming = true\n",
        upstream_table("a", &[addr])
    ));
    let mut r = get(&gw, "/events", "gzip").send().await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let mut sent = Vec::new();
    for event in ["data: one\n\n", "data: two\n\n"] {
        events.send(Some(event)).unwrap();
        while !decoded_so_far(&sent).ends_with(event) {
            let piece = tokio::time::timeout(std::time::Duration::from_secs(5), r.chunk())
                .await
                .expect("the event arrives while the stream is open")
                .unwrap()
                .expect("more body");
            sent.extend_from_slice(&piece);
        }
    }
    events.send(None).unwrap();
    while let Some(piece) = r.chunk().await.unwrap() {
        sent.extend_from_slice(&piece);
    }
    assert_eq!(
        decode("gzip", &sent).unwrap(),
        b"data: one\n\ndata: two\n\n"
    );
}

#[tokio::test]
async fn without_streaming_an_event_stream_is_not_compressed() {
    let (addr, events) = event_stream().await;
    let gw = compressing_at(addr, "");
    events.send(Some("data: x\n\n")).unwrap();
    events.send(None).unwrap();
    let a = send(get(&gw, "/events", "gzip")).await;
    assert!(a.header("content-encoding").is_none());
    assert_eq!(a.body, b"data: x\n\n");
}

fn compressing_at(addr: std::net::SocketAddr, policy: &str) -> Gateway {
    gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.compress]\n{policy}",
        upstream_table("a", &[addr])
    ))
}

#[tokio::test]
async fn a_body_that_breaks_off_reaches_the_client_incomplete_never_finished() {
    let (addr, events) = event_stream().await;
    let gw = compressing_at(addr, "streaming = true\n");
    let mut r = get(&gw, "/events", "gzip").send().await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    events.send(Some("data: partial\n\n")).unwrap();
    drop(events);
    let mut sent = Vec::new();
    let ended = loop {
        match r.chunk().await {
            Ok(Some(piece)) => sent.extend_from_slice(&piece),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(ended.is_err(), "the response ended as if complete");
    assert!(
        decode("gzip", &sent).is_none(),
        "a finished gzip stream was sent"
    );
}

#[tokio::test]
async fn http2_clients_get_compressed_responses_too() {
    let up = Upstream::start("a").await;
    let gw = compressing(&up, "");
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(gw.url(BIG))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.headers()["content-encoding"], "br");
    let body = r.bytes().await.unwrap();
    assert_eq!(decode("br", &body).unwrap().len(), 5000);
}

#[tokio::test]
async fn past_compress_streams_a_response_goes_uncompressed_as_busy() {
    let (addr, events) = event_stream().await;
    let up = Upstream::start("b").await;
    let gw = gateway_with_admin(&format!(
        "[server.limits]\ncompress_streams = 1\n{}{}\
         [routes.events]\npaths = [\"/events\"]\nupstream = \"a\"\n[routes.events.policies.compress]\nstreaming = true\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"b\"\n[routes.r.policies.compress]\n",
        upstream_table("a", &[addr]),
        upstream_table("b", &[up.addr])
    ));
    // one response holds the only place while it streams
    let mut held = get(&gw, "/events", "gzip").send().await.unwrap();
    assert_eq!(held.headers()["content-encoding"], "gzip");
    assert_eq!(sample(&gw, "tollgate_compress_active").await, Some(1.0));
    let busy = send(get(&gw, BIG, "gzip")).await;
    assert!(busy.header("content-encoding").is_none());
    assert_eq!(busy.body.len(), 5000);
    assert_eq!(
        sample(
            &gw,
            "tollgate_compress_skipped_total{reason=\"busy\",route=\"r\"}"
        )
        .await,
        Some(1.0)
    );
    events.send(None).unwrap();
    while held.chunk().await.unwrap().is_some() {}
    assert!(
        eventually(std::time::Duration::from_secs(5), async || sample(
            &gw,
            "tollgate_compress_active"
        )
        .await
            == Some(0.0))
        .await,
        "the place is given back at the end"
    );
    assert_eq!(
        send(get(&gw, BIG, "gzip")).await.header("content-encoding"),
        Some("gzip")
    );
}

#[tokio::test]
async fn a_304_from_an_entry_carries_the_weak_etag_a_compressed_200_would() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.cache]\n\
         [routes.r.policies.compress]\n",
        upstream_table("a", &[up.addr])
    ));
    let path = "/respond?size=5000&header=etag:%22e1%22";
    let full = send(get(&gw, path, "gzip")).await;
    assert_eq!(full.header("etag"), Some("W/\"e1\""));
    // the client revalidates with the weak tag it got: the entry matches it weakly
    let not_modified = send(get(&gw, path, "gzip").header("if-none-match", "W/\"e1\"")).await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), Some("W/\"e1\""));
    assert!(
        not_modified.header("content-encoding").is_none()
            && varies_on_accept_encoding(&not_modified)
    );
    let identity = send(get(&gw, path, "identity").header("if-none-match", "\"e1\"")).await;
    assert_eq!(
        (identity.status, identity.header("etag")),
        (304, Some("\"e1\""))
    );
}

#[tokio::test]
async fn an_http_1_0_client_gets_the_compressed_body_ended_by_the_close() {
    let up = Upstream::start("a").await;
    let gw = compressing(&up, "");
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let req = format!("GET {BIG} HTTP/1.0\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
        .await
        .unwrap();
    let all = read_until_closed(&mut s, std::time::Duration::from_secs(5)).await;
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).to_ascii_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(
        !head.contains("transfer-encoding") && !head.contains("content-length"),
        "{head}"
    );
    assert_eq!(
        decode("gzip", &all[split + 4..]).map(|b| b.len()),
        Some(5000)
    );
}
