//! Policies enabled from TOML through the registry: `request_headers`,
//! `response_headers`, top-level defaults and route overrides.

use crate::support::*;

#[tokio::test]
async fn header_policies_edit_both_directions_and_route_entries_replace_defaults() {
    let up = Upstream::start("a").await;
    let gw = gateway(&format!(
        "{}\
         [policies.response_headers]\nset = {{ \"x-served-by\" = \"tollgate\" }}\n\
         [routes.plain]\npaths = [\"/plain\"]\nupstream = \"a\"\n\
         [routes.edited]\npaths = [\"/edited\"]\nupstream = \"a\"\n\
         [routes.edited.policies.request_headers]\nset = {{ \"x-env\" = \"prod\" }}\nadd = {{ \"x-via\" = \"tollgate\" }}\nremove = [\"x-debug\"]\n\
         [routes.edited.policies.response_headers]\nset = {{ \"x-route\" = \"edited\" }}\nremove = [\"x-upstream\"]\n",
        upstream_table("a", &[up.addr])
    ));
    let c = client();
    let r = c.get(gw.url("/plain")).send().await.unwrap();
    assert_eq!(
        r.headers()["x-served-by"],
        "tollgate",
        "top-level default applies"
    );
    assert_eq!(r.headers()["x-upstream"], "a");

    let r = c
        .get(gw.url("/edited"))
        .header("x-env", "dev")
        .header("x-debug", "1")
        .header("x-via", "client")
        .send()
        .await
        .unwrap();
    assert!(
        r.headers().get("x-served-by").is_none(),
        "the route's own entry replaces the default"
    );
    assert_eq!(r.headers()["x-route"], "edited");
    assert!(r.headers().get("x-upstream").is_none());
    let seen = up.last().unwrap();
    assert_eq!(seen.header_all("x-env"), ["prod"]);
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(seen.header_all("x-via"), ["client", "tollgate"]);
}

#[tokio::test]
async fn response_headers_apply_to_the_gateways_own_refusals_on_the_route() {
    let gw = gateway(&format!(
        "{}[routes.r]\npaths = [\"/r\"]\nupstream = \"dead\"\n\
         [routes.r.policies.response_headers]\nset = {{ \"x-policy\" = \"yes\" }}\n",
        upstream_table("dead", &[closed_port()])
    ));
    let r = raw(
        gw.addr,
        b"GET /r HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-policy"), Some("yes"));
}
