//! Forwarding: paths, Host, X-Forwarded-*, hop-by-hop headers, request ids,
//! balancing, and the 502 / 504 answers.

use crate::support::*;

#[tokio::test]
async fn proxies_to_the_upstream_with_strip_prefix() {
    let up = Upstream::start("a").await;
    let gw = gateway(&format!(
        "{}\n[routes.r]\npaths = [\"/api/orders\"]\nupstream = \"a\"\nstrip_prefix = true\n",
        upstream_table("a", &[up.addr])
    ));
    let (status, headers, body) = get_json(&gw.url("/api/orders/7?x=1")).await;
    assert_eq!(status, 200);
    assert_eq!(body["target"], "/7?x=1");
    assert_eq!(headers["x-upstream"], "a");
    let (_, _, body) = get_json(&gw.url("/api/orders")).await;
    assert_eq!(body["target"], "/");
}
