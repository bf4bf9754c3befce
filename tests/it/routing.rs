//! Route matching through the real binary: specificity, hosts, methods, headers,
//! 404/405 answers, and paths that try to reach a route by another spelling.

use crate::support::*;

struct Three {
    public: Upstream,
    admin: Upstream,
    other: Upstream,
    gw: Gateway,
}

async fn three() -> Three {
    let public = Upstream::start("public").await;
    let admin = Upstream::start("admin").await;
    let other = Upstream::start("other").await;
    let gw = gateway(&format!(
        "{}{}{}\
         [routes.public]\npaths = [\"/public\"]\nupstream = \"public\"\n\
         [routes.admin]\npaths = [\"/admin\"]\nupstream = \"admin\"\n\
         [routes.users]\npaths = [\"/users/{{id}}\", \"=/exact\"]\nmethods = [\"GET\", \"PUT\"]\nupstream = \"other\"\n\
         [routes.me]\npaths = [\"/users/me\"]\nupstream = \"public\"\n\
         [routes.v2]\npaths = [\"/users/{{id}}\"]\nheaders = {{ \"x-api-version\" = \"2\" }}\nmethods = [\"GET\"]\nupstream = \"admin\"\n\
         [routes.hosted]\npaths = [\"/h\"]\nhosts = [\"api.example.com\"]\nupstream = \"admin\"\n\
         [routes.wild]\npaths = [\"/h\"]\nhosts = [\"*.example.com\"]\nupstream = \"other\"\n",
        upstream_table("public", &[public.addr]),
        upstream_table("admin", &[admin.addr]),
        upstream_table("other", &[other.addr]),
    ));
    Three {
        public,
        admin,
        other,
        gw,
    }
}

fn req(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn dot_segments_cannot_reach_a_route_by_another_spelling() {
    let t = three().await;
    for spelling in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/./../admin",
        "//admin",
        "/%61dmin",
        "/public/.%2E/admin/",
    ] {
        let r = raw(t.gw.addr, &req(spelling, "")).await;
        assert_eq!(r.status, 200, "{spelling}");
        assert_eq!(
            r.header("x-upstream"),
            Some("admin"),
            "{spelling} must be routed as /admin"
        );
    }
    assert_eq!(
        t.public.count(),
        0,
        "the public route's upstream saw an admin path"
    );
    let seen = t.admin.last().unwrap();
    assert!(
        seen.target.starts_with("/admin"),
        "forwarded path is the normalised one: {}",
        seen.target
    );
}

#[tokio::test]
async fn ambiguous_paths_are_400_and_never_forwarded() {
    let t = three().await;
    for bad in [
        "/../admin",
        "/public/../../admin",
        "/admin%2fx",
        "/public%2F..%2Fadmin",
        "/a%00b",
        "/a%zz",
    ] {
        let r = raw(t.gw.addr, &req(bad, "")).await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["error"], "bad_request", "{bad}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(t.public.count() + t.admin.count() + t.other.count(), 0);
}

#[tokio::test]
async fn most_specific_route_wins() {
    let t = three().await;
    let (_, h, _) = get_json(&t.gw.url("/users/7")).await;
    assert_eq!(h["x-upstream"], "other");
    let (_, h, _) = get_json(&t.gw.url("/users/me")).await;
    assert_eq!(h["x-upstream"], "public", "literal beats {{param}}");
    let r = client()
        .get(t.gw.url("/users/7"))
        .header("x-api-version", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-upstream"], "admin", "header constraint wins");
    let (s, h, _) = get_json(&t.gw.url("/exact")).await;
    assert_eq!((s, h["x-upstream"].to_str().unwrap()), (200, "other"));
    let (s, _, _) = get_json(&t.gw.url("/exact/more")).await;
    assert_eq!(s, 404, "=/exact matches only exactly");
    let (s, _, _) = get_json(&t.gw.url("/publicity")).await;
    assert_eq!(s, 404, "prefixes match on segment boundaries");
}

#[tokio::test]
async fn hosts_match_case_insensitively_without_port_and_by_wildcard() {
    let t = three().await;
    let r = raw(
        t.gw.addr,
        &req("/h", "").replace_host("API.Example.COM:8080"),
    )
    .await;
    assert_eq!(r.header("x-upstream"), Some("admin"));
    let r = raw(t.gw.addr, &req("/h", "").replace_host("a.b.example.com")).await;
    assert_eq!(r.header("x-upstream"), Some("other"));
    let r = raw(t.gw.addr, &req("/h", "").replace_host("example.com")).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn unknown_path_is_404_no_route_and_wrong_method_is_405_with_allow() {
    let t = three().await;
    let r = raw(t.gw.addr, &req("/nowhere", "X-Request-Id: trace-me-1\r\n")).await;
    assert_eq!(r.status, 404);
    let body = r.json();
    assert_eq!(body["error"], "no_route");
    assert_eq!(body["request_id"], "trace-me-1");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(r.header("x-request-id"), Some("trace-me-1"));

    let r = raw(
        t.gw.addr,
        b"DELETE /users/7 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"], "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, PUT"));
    assert_eq!(t.other.count(), 0);
}

trait ReplaceHost {
    fn replace_host(self, host: &str) -> Vec<u8>;
}

impl ReplaceHost for Vec<u8> {
    fn replace_host(self, host: &str) -> Vec<u8> {
        String::from_utf8(self)
            .unwrap()
            .replace("Host: test", &format!("Host: {host}"))
            .into_bytes()
    }
}
