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
