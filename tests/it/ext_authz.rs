//! identity.md §10: `ext_authz` against a real authorization service on loopback that
//! speaks forward-auth and the OPA data API.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_tests::{Answer, AuthzService};

use crate::support::*;

/// A gateway with route `r` (`/api/...`) behind key_auth and `ext_authz` on `svc`
/// (extra `policy` lines), consumer alice (key `alice-key`, groups partners, ops).
async fn setup(svc: &AuthzService, up: &Upstream, path: &str, policy: &str) -> Gateway {
    gateway_with_admin(&format!(
        "{}[consumers.alice]\napi_keys = [\"alice-key\"]\ngroups = [\"partners\", \"ops\"]\n\
         [routes.r]\npaths = [\"/api/\"]\nupstream = \"a\"\n\
         [routes.r.policies.key_auth]\n\
         [routes.r.policies.ext_authz]\nurl = \"{}\"\n{policy}\
         [routes.open]\npaths = [\"/open\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr]),
        svc.url(path)
    ))
}

fn get(gw: &Gateway, path: &str) -> reqwest::RequestBuilder {
    client().get(gw.url(path)).header("apikey", "alice-key")
}

#[tokio::test]
async fn forward_mode_sends_the_request_facts_and_only_listed_headers() {
    let svc = AuthzService::start().await;
    svc.decide(|_| {
        Answer::raw(200, b"ignored")
            .header("x-user-id", "u-42")
            .header("x-other", "no")
    });
    let up = Upstream::start("a").await;
    let gw = setup(
        &svc,
        &up,
        "/authz?v=1",
        "include_headers = [\"X-Tenant\"]\nupstream_headers = [\"x-user-id\"]\n",
    )
    .await;
    let r = get(&gw, "/api/./orders//7?expand=items&b=%20")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("x-tenant", "t1")
        .header("cookie", "session=secret")
        .header("x-user-id", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let calls = svc.calls();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.method, "GET");
    assert_eq!(c.target, "/authz?v=1", "the URL exactly as written");
    assert_eq!(c.header("x-forwarded-method"), Some("GET"));
    assert_eq!(c.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        c.header("x-forwarded-host"),
        Some(gw.addr.to_string().as_str())
    );
    assert_eq!(
        c.header("x-forwarded-uri"),
        Some("/api/orders/7?expand=items&b=%20")
    );
    assert_eq!(c.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(c.header("x-consumer-name"), Some("alice"));
    assert_eq!(c.header("x-consumer-groups"), Some("partners,ops"));
    assert_eq!(c.header("x-tenant"), Some("t1"));
    assert_eq!(c.header("accept-encoding"), Some("identity"));
    assert!(c.header("user-agent").unwrap().starts_with("tollgate/"));
    // the request's trace, with a span of its own
    let tp = c.header("traceparent").unwrap();
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{tp}"
    );
    assert!(!tp.contains("b7ad6b7169203331"), "{tp}");
    assert!(c.header("x-request-id").is_some());
    for absent in ["cookie", "apikey", "x-user-id"] {
        assert_eq!(c.header(absent), None, "{absent} was sent to the service");
    }
    // the service's header replaced the client's; nothing else of the answer went on
    let seen = up.last().unwrap();
    assert_eq!(seen.header_all("x-user-id"), ["u-42"]);
    assert_eq!(seen.header("x-other"), None);
    // the upstream_headers names are identity headers on every route
    let r = client()
        .get(gw.url("/open"))
        .header("x-user-id", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().unwrap().header("x-user-id"), None);
    // a request refused by authentication makes no call
    let r = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(svc.calls().len(), 1);
}

#[tokio::test]
async fn a_forward_denial_is_relayed_with_only_its_client_headers() {
    let svc = AuthzService::start().await;
    svc.decide(|s| {
        if s.header("x-forwarded-uri")
            .is_some_and(|u| u.contains("login"))
        {
            Answer::raw(302, b"<a href=/login>login</a>")
                .header("location", "https://sso.example/login")
                .header("set-cookie", "sso=1")
                .header("content-type", "text/html")
        } else {
            Answer::raw(401, b"who are you").header("www-authenticate", "Bearer realm=\"sso\"")
        }
    });
    let up = Upstream::start("a").await;
    let gw = setup(&svc, &up, "/authz", "").await;
    let r = get(&gw, "/api/login").send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "https://sso.example/login");
    assert_eq!(r.headers()["content-type"], "text/html");
    assert!(
        r.headers().get("set-cookie").is_none(),
        "not listed in client_headers"
    );
    assert!(r.headers().get("x-request-id").is_some());
    assert_eq!(r.text().await.unwrap(), "<a href=/login>login</a>");
    let r = get(&gw, "/api/orders").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"sso\"");
    assert_eq!(r.text().await.unwrap(), "who are you");
    assert_eq!(
        up.count(),
        0,
        "a refused request never reaches the upstream"
    );
    let m = metrics_text(&gw).await;
    assert!(
        m.contains(r#"tollgate_refusals_total{reason="forbidden",route="r"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"tollgate_refusals_total{reason="unauthorized",route="r"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"tollgate_ext_authz_requests_total{result="deny",route="r"} 2"#),
        "{m}"
    );
    assert!(
        m.contains("tollgate_ext_authz_duration_seconds_count{route=\"r\"} 2"),
        "{m}"
    );
    let lines = gw.stdout_lines();
    assert!(
        lines.iter().any(|l| l.contains("\"authz\":\"deny\"")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn deny_response_forbidden_hides_the_services_answer() {
    let svc = AuthzService::start().await;
    svc.decide(|_| Answer::raw(401, b"secret details").header("www-authenticate", "Basic"));
    let up = Upstream::start("a").await;
    let gw = setup(&svc, &up, "/authz", "deny_response = \"forbidden\"\n").await;
    let r = get(&gw, "/api/x").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("www-authenticate").is_none());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "forbidden");
}

#[tokio::test]
async fn errors_fail_closed_unless_on_error_allow_and_max_in_flight_is_503_regardless() {
    let svc = AuthzService::start().await;
    svc.decide(|_| Answer::raw(500, b"boom"));
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "{}[routes.closed]\npaths = [\"/closed\"]\nupstream = \"a\"\n\
         [routes.closed.policies.ext_authz]\nurl = \"{url}\"\n\
         [routes.open]\npaths = [\"/open\"]\nupstream = \"a\"\n\
         [routes.open.policies.ext_authz]\nurl = \"{url}\"\non_error = \"allow\"\nmax_in_flight = 1\ntimeout = \"300ms\"\n",
        upstream_table("a", &[up.addr]),
        url = svc.url("/authz")
    ));
    let r = client().get(gw.url("/closed")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "identity_unavailable");
    assert_eq!(
        client().get(gw.url("/open")).send().await.unwrap().status(),
        200
    );
    // a slow service: a timeout is an error; the one call slot taken, another is 503
    svc.decide(|_| Answer::raw(204, b"").delayed(Duration::from_millis(800)));
    let url = gw.url("/open");
    let first =
        tokio::spawn(async move { client().get(url).send().await.unwrap().status().as_u16() });
    assert!(eventually(Duration::from_secs(5), async || svc.calls().len() == 3).await);
    let r = client().get(gw.url("/open")).send().await.unwrap();
    assert_eq!(
        r.status(),
        503,
        "max_in_flight is 503 even with on_error = allow"
    );
    assert_eq!(
        first.await.unwrap(),
        200,
        "the timeout was let through (on_error = allow)"
    );
    let lines = access_log(&gw, 4).await;
    let authz: Vec<Value> = lines.iter().map(|v| v["authz"].clone()).collect();
    assert!(authz.contains(&json!("error_allowed")), "{authz:?}");
    assert!(authz.contains(&json!("error")), "{authz:?}");
    let m = metrics_text(&gw).await;
    assert!(
        m.contains(r#"tollgate_ext_authz_requests_total{result="error",route="closed"} 1"#),
        "{m}"
    );
    assert!(gw
        .stderr_lines()
        .iter()
        .any(|l| l.contains("ext_authz") && l.contains("status 500")));
}

#[tokio::test]
async fn opa_mode_posts_the_input_document_and_reads_the_result() {
    let svc = AuthzService::start().await;
    svc.decide(|s| {
        let doc: Value = serde_json::from_slice(&s.body).unwrap_or_default();
        let path = doc["input"]["path"].as_str().unwrap_or_default().to_string();
        let result = match path.as_str() {
            "/api/allowed" => json!({"result": true}),
            "/api/headers" => json!({"result": {"allow": true, "headers": {"X-User-Roles": "admin", "x-not-listed": "1", "x-user-n": 5}}}),
            "/api/false" => json!({"result": false}),
            "/api/undefined" => json!({}),
            "/api/why" => json!({"result": {"allow": false, "status": 401, "reason": "token revoked",
                "headers": {"www-authenticate": "Bearer", "content-type": "text/plain"}}}),
            _ => json!({"result": "maybe"}),
        };
        Answer::json(&result)
    });
    let up = Upstream::start("a").await;
    let gw = setup(
        &svc,
        &up,
        "/v1/data/http/authz",
        "mode = \"opa\"\ninclude_headers = [\"x-tenant\"]\nupstream_headers = [\"x-user-roles\", \"x-user-n\"]\n",
    )
    .await;
    let r = get(&gw, "/api/allowed?tag=a&tag=b+c&flag")
        .header("x-tenant", "t1")
        .header("x-tenant", "t2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let c = svc.calls().remove(0);
    assert_eq!(c.method, "POST");
    assert_eq!(c.header("content-type"), Some("application/json"));
    assert_eq!(
        c.header("x-tenant"),
        None,
        "no client header as a header of the call"
    );
    let doc: Value = serde_json::from_slice(&c.body).unwrap();
    let input = &doc["input"];
    let mut keys: Vec<&str> = input
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "claims",
            "client_ip",
            "consumer",
            "groups",
            "headers",
            "host",
            "method",
            "path",
            "path_segments",
            "query",
            "route",
            "scheme"
        ]
    );
    assert_eq!(input["method"], "GET");
    assert_eq!(input["scheme"], "http");
    assert_eq!(input["host"], "127.0.0.1");
    assert_eq!(input["path_segments"], json!(["api", "allowed"]));
    assert_eq!(input["query"], json!({"tag": ["a", "b c"], "flag": [""]}));
    assert_eq!(input["headers"], json!({"x-tenant": "t1, t2"}));
    assert_eq!(input["consumer"], "alice");
    assert_eq!(input["groups"], json!(["partners", "ops"]));
    assert_eq!(input["route"], "r");
    assert!(input["claims"].is_null());

    assert_eq!(get(&gw, "/api/headers").send().await.unwrap().status(), 200);
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-user-roles"), Some("admin"));
    assert_eq!(
        seen.header("x-user-n"),
        None,
        "a value that is not a string is ignored"
    );
    assert_eq!(seen.header("x-not-listed"), None);
    for (path, status) in [("/api/false", 403), ("/api/undefined", 403)] {
        let r = get(&gw, path).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "forbidden");
    }
    let r = get(&gw, "/api/why").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        r.headers()["content-type"],
        "application/json",
        "content-type is the gateway's"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["message"], "token revoked");
    // a result of another type is an error: 503
    assert_eq!(get(&gw, "/api/garbage").send().await.unwrap().status(), 503);
}

#[tokio::test]
async fn decisions_are_cached_by_the_question_and_concurrent_misses_share_one_call() {
    let svc = AuthzService::start().await;
    svc.decide(|_| {
        Answer::raw(200, b"")
            .header("x-user-id", "u1")
            .delayed(Duration::from_millis(300))
    });
    let up = Upstream::start("a").await;
    let gw = setup(
        &svc,
        &up,
        "/authz",
        "cache_ttl = \"1m\"\nupstream_headers = [\"x-user-id\"]\n",
    )
    .await;
    let requests = (0..5).map(|_| get(&gw, "/api/same")).collect();
    assert_eq!(statuses_at_once(requests).await, [200; 5]);
    assert_eq!(svc.calls().len(), 1, "five concurrent misses, one call");
    // a hit keeps the headers the service set
    assert_eq!(get(&gw, "/api/same").send().await.unwrap().status(), 200);
    assert_eq!(up.last().unwrap().header("x-user-id"), Some("u1"));
    assert_eq!(svc.calls().len(), 1);
    // another question: another call
    assert_eq!(get(&gw, "/api/other").send().await.unwrap().status(), 200);
    assert_eq!(svc.calls().len(), 2);
    let m = metrics_text(&gw).await;
    assert!(
        m.contains(r#"tollgate_ext_authz_cache_total{result="hit",route="r"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"tollgate_ext_authz_cache_total{result="miss",route="r"} 6"#),
        "{m}"
    );
}

#[tokio::test]
async fn include_body_sends_the_body_and_refuses_one_over_max_body_without_a_call() {
    let svc = AuthzService::start().await;
    svc.decide(|s| {
        if s.body == b"{\"qty\":2}" {
            Answer::raw(204, b"")
        } else {
            Answer::raw(403, b"no")
        }
    });
    let up = Upstream::start("a").await;
    let gw = setup(
        &svc,
        &up,
        "/authz",
        "include_body = true\nmax_body = \"16B\"\n",
    )
    .await;
    let r = client()
        .post(gw.url("/api/orders"))
        .header("apikey", "alice-key")
        .header("content-type", "application/json")
        .body("{\"qty\":2}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let c = svc.calls().remove(0);
    assert_eq!(c.method, "POST");
    assert_eq!(c.header("content-type"), Some("application/json"));
    assert_eq!(c.header("content-length"), Some("9"));
    assert_eq!(
        up.last().unwrap().body,
        b"{\"qty\":2}",
        "the upstream gets the body unchanged"
    );
    let r = client()
        .post(gw.url("/api/orders"))
        .header("apikey", "alice-key")
        .body("x".repeat(17))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(svc.calls().len(), 1, "no call for a body over max_body");
}

#[test]
fn check_refuses_bad_ext_authz_options_each_at_its_key() {
    let route = |name: &str, extra: &str| {
        format!(
            "[routes.{name}]\npaths = [\"/{name}\"]\nupstream = \"a\"\n\
             [routes.{name}.policies.ext_authz]\n{extra}\n"
        )
    };
    let url = "url = \"http://127.0.0.1:9191/authz\"";
    let err = check_fails(&format!(
        "[upstreams.a]\nbackends = [\"127.0.0.1:1\"]\n{}{}{}{}{}{}{}{}[consumers.c]\n[consumers.c.policies.ext_authz]\n{url}\n",
        route("mode", &format!("{url}\nmode = \"grpc\"")),
        route("nourl", ""),
        route("userinfo", "url = \"http://u:p@127.0.0.1/x\""),
        route("inc", &format!("{url}\ninclude_headers = [\"x-forwarded-for\"]")),
        route("up", &format!("{url}\nupstream_headers = [\"authorization\"]")),
        route("dup", &format!("{url}\nclient_headers = [\"location\", \"Location\"]")),
        route("mb", &format!("{url}\nmax_body = \"1KiB\"")),
        route("ca", &format!("{url}\nca_file = \"ca.pem\"")),
    ));
    for expected in [
        "routes.mode.policies.ext_authz.mode: unknown mode \"grpc\" (expected forward or opa)",
        "routes.nourl.policies.ext_authz.url:",
        "routes.userinfo.policies.ext_authz.url: user info",
        "routes.inc.policies.ext_authz.include_headers[0]:",
        "routes.up.policies.ext_authz.upstream_headers[0]:",
        "routes.dup.policies.ext_authz.client_headers[1]:",
        "routes.mb.policies.ext_authz.max_body: only with include_body = true",
        "routes.ca.policies.ext_authz.ca_file: only for https",
        "consumers.c.policies.ext_authz: `ext_authz` cannot be overridden per consumer",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(
        !err.contains("u:p@"),
        "the url's user info was repeated: {err}"
    );
}

#[tokio::test]
async fn a_hidden_query_key_never_reaches_the_service() {
    let svc = AuthzService::start().await;
    let up = Upstream::start("a").await;
    let gw = setup(&svc, &up, "/authz", "").await;
    let r = client()
        .get(gw.url("/api/x?apikey=alice-key&expand=items"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let c = svc.calls().remove(0);
    assert_eq!(c.header("x-forwarded-uri"), Some("/api/x?expand=items"));
    assert_eq!(up.last().unwrap().target, "/api/x?expand=items");
}

#[tokio::test]
async fn a_reload_keeps_the_decisions_of_an_unchanged_table_only() {
    let svc = AuthzService::start().await;
    let up = Upstream::start("a").await;
    let gw = setup(&svc, &up, "/authz", "cache_ttl = \"1h\"\n").await;
    assert_eq!(get(&gw, "/api/x").send().await.unwrap().status(), 200);
    assert_eq!(svc.calls().len(), 1);
    // a reload that changes another route: this policy keeps its decisions
    let toml = std::fs::read_to_string(&gw.config).unwrap();
    let grown = toml.replace(
        "[routes.open]",
        "[routes.more]\npaths = [\"/more\"]\nupstream = \"a\"\n[routes.open]",
    );
    std::fs::write(&gw.config, &grown).unwrap();
    let (code, body) = admin_reload(&gw).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(&gw, "/api/x").send().await.unwrap().status(), 200);
    assert_eq!(svc.calls().len(), 1, "the decision was kept");
    // a change to the policy's table: an empty cache
    std::fs::write(
        &gw.config,
        grown.replace("cache_ttl = \"1h\"", "cache_ttl = \"30m\""),
    )
    .unwrap();
    assert_eq!(admin_reload(&gw).await.0, 200);
    assert_eq!(get(&gw, "/api/x").send().await.unwrap().status(), 200);
    assert_eq!(svc.calls().len(), 2);
}

#[tokio::test]
async fn an_identity_header_in_include_headers_sends_nothing() {
    let svc = AuthzService::start().await;
    let up = Upstream::start("a").await;
    let gw = setup(
        &svc,
        &up,
        "/authz",
        "include_headers = [\"x-user-id\"]\nupstream_headers = [\"x-user-id\"]\n",
    )
    .await;
    let r = get(&gw, "/api/x")
        .header("x-user-id", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(svc.calls()[0].header("x-user-id"), None);
}

#[tokio::test]
async fn the_body_of_an_allow_is_ignored_whatever_its_size_but_a_denials_is_bounded() {
    let svc = AuthzService::start().await;
    let page = vec![b'x'; 100 * 1024];
    let p2 = page.clone();
    svc.decide(move |s| {
        let status = if s
            .header("x-forwarded-uri")
            .is_some_and(|u| u.ends_with("/deny"))
        {
            403
        } else {
            200
        };
        Answer::raw(status, &p2)
    });
    let up = Upstream::start("a").await;
    let gw = setup(&svc, &up, "/authz", "").await;
    assert_eq!(get(&gw, "/api/ok").send().await.unwrap().status(), 200);
    let r = get(&gw, "/api/deny").send().await.unwrap();
    assert_eq!(r.status(), 503, "a denial's body over 64 KiB is an error");
    drop(page);
}

#[tokio::test]
async fn the_routes_body_limit_bounds_what_is_read_for_the_service() {
    let svc = AuthzService::start().await;
    let up = Upstream::start("a").await;
    let gw = setup(
        &svc,
        &up,
        "/authz",
        "include_body = true\n[routes.r.policies.body_limit]\nmax = \"16B\"\n",
    )
    .await;
    let r = client()
        .post(gw.url("/api/orders"))
        .header("apikey", "alice-key")
        .body("x".repeat(20))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "max_body is 1 MiB, body_limit.max 16 B");
    assert!(svc.calls().is_empty(), "no call for a body over body_limit");
    let r = client()
        .post(gw.url("/api/orders"))
        .header("apikey", "alice-key")
        .body("x".repeat(16))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(svc.calls().len(), 1);
}

#[tokio::test]
async fn opa_include_body_sends_the_text_the_base64_or_the_parsed_json() {
    let svc = AuthzService::start().await;
    svc.decide(|_| Answer::json(&json!({"result": true})));
    let up = Upstream::start("a").await;
    let gw = setup(
        &svc,
        &up,
        "/v1/data/authz",
        "mode = \"opa\"\ninclude_body = true\n",
    )
    .await;
    let post = |body: Vec<u8>, ct: &'static str| {
        client()
            .post(gw.url("/api/orders"))
            .header("apikey", "alice-key")
            .header("content-type", ct)
            .body(body)
    };
    assert_eq!(
        post(b"{\"qty\":2}".to_vec(), "application/json")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post(vec![0xff, 0xfe], "application/octet-stream")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post(b"not json".to_vec(), "application/vnd.x+json")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let inputs: Vec<Value> = svc
        .calls()
        .iter()
        .map(|c| serde_json::from_slice::<Value>(&c.body).unwrap()["input"].clone())
        .collect();
    assert_eq!(inputs[0]["body"], "{\"qty\":2}");
    assert_eq!(inputs[0]["parsed_body"], json!({"qty": 2}));
    assert!(inputs[1].get("body").is_none());
    assert_eq!(inputs[1]["body_base64"], "//4=");
    assert!(inputs[1].get("parsed_body").is_none());
    assert_eq!(inputs[2]["body"], "not json");
    assert!(
        inputs[2].get("parsed_body").is_none(),
        "invalid JSON has no parsed_body"
    );
}
