//! identity.md §3.3: `oauth2_introspection` against a real RFC 7662 endpoint on
//! loopback: client authentication, the cache, shared calls, the bound on calls,
//! errors, audience and scopes.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tollgate_tests::Answer;

use crate::support::*;

const SECRET_ENV: &str = "TOLLGATE_INTROSPECTION_SECRET=s3cr:et";

/// A gateway with route `/p` behind `oauth2_introspection` (extra `policy` lines) on
/// `idp`, consumers `alice` (subject `alice-sub`) and `partners`.
async fn setup(idp: &IdentityProvider, up: &Upstream, policy: &str) -> Gateway {
    gateway_with_env(
        &format!(
            "{}[consumers.alice]\njwt_subject = \"alice-sub\"\n[consumers.partners]\n\
             [routes.p]\npaths = [\"/p\"]\nupstream = \"a\"\n\
             [routes.p.policies.oauth2_introspection]\nendpoint = \"{}\"\nclient_id = \"gate way\"\n\
             client_secret_env = \"TOLLGATE_INTROSPECTION_SECRET\"\n{policy}",
            upstream_table("a", &[up.addr]),
            idp.url("/introspect")
        ),
        &[SECRET_ENV],
    )
}

fn active(sub: &str, extra: Value) -> Answer {
    let mut v =
        json!({"active": true, "sub": sub, "exp": jsonwebtoken::get_current_timestamp() + 600});
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    Answer::json(&v)
}

async fn send(gw: &Gateway, token: &str) -> reqwest::Response {
    client()
        .get(gw.url("/p"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_pairs(std::str::from_utf8(body).unwrap())
}

fn form_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3A", ":").replace('+', " ")))
        .collect()
}

#[tokio::test]
async fn an_active_token_authenticates_and_its_answer_is_cached() {
    let idp = IdentityProvider::start().await;
    idp.set(|s| {
        s.introspection.insert(
            "tok-alice".into(),
            active("alice-sub", json!({"client_id": "app"})),
        );
    });
    let up = Upstream::start("a").await;
    let gw = setup(
        &idp,
        &up,
        "claims_to_headers = { client_id = \"x-client-id\" }\n",
    )
    .await;
    let r = send(&gw, "tok-alice").await;
    assert_eq!(r.status(), 200);
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-consumer-name"), Some("alice"));
    assert_eq!(seen.header("x-client-id"), Some("app"));
    assert_eq!(seen.header("authorization"), None, "hide_credentials");
    // the call: a form POST with Basic client credentials, each form-urlencoded first
    let calls = idp.requests("/introspect");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.method, "POST");
    assert_eq!(
        call.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let expected = base64::engine::general_purpose::STANDARD.encode("gate+way:s3cr%3Aet");
    assert_eq!(
        call.header("authorization"),
        Some(format!("Basic {expected}").as_str())
    );
    assert_eq!(
        form(&call.body),
        [
            ("token".to_string(), "tok-alice".to_string()),
            ("token_type_hint".to_string(), "access_token".to_string())
        ]
    );
    // cached: no second call (the scheme is case-insensitive)
    let r = client()
        .get(gw.url("/p"))
        .header("authorization", "BEARER tok-alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(idp.hits("/introspect"), 1);
    // an inactive token: 401 invalid_token, cached as negative
    for _ in 0..2 {
        let r = send(&gw, "tok-revoked").await;
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
    }
    assert_eq!(idp.hits("/introspect"), 2);
    let m = metrics_text(&gw).await;
    for line in [
        r#"tollgate_introspection_requests_total{result="active",route="p"} 1"#,
        r#"tollgate_introspection_requests_total{result="inactive",route="p"} 1"#,
        r#"tollgate_introspection_cache_total{result="hit",route="p"} 1"#,
        r#"tollgate_introspection_cache_total{result="negative_hit",route="p"} 1"#,
        r#"tollgate_introspection_cache_total{result="miss",route="p"} 2"#,
        r#"tollgate_introspection_cache_entries{route="p"} 2"#,
    ] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }
    // the secret never reaches a log line
    assert!(!gw.stderr_lines().iter().any(|l| l.contains("s3cr")));
    assert!(!gw
        .stdout_lines()
        .iter()
        .any(|l| l.contains("s3cr") || l.contains("tok-alice")));
}

#[tokio::test]
async fn client_secret_post_puts_the_credentials_in_the_form_and_no_hint_when_empty() {
    let idp = IdentityProvider::start().await;
    idp.set(|s| {
        s.introspection
            .insert("t".into(), active("alice-sub", json!({})));
    });
    let up = Upstream::start("a").await;
    let gw = setup(
        &idp,
        &up,
        "auth_method = \"client_secret_post\"\ntoken_type_hint = \"\"\n",
    )
    .await;
    assert_eq!(send(&gw, "t").await.status(), 200);
    let call = idp.requests("/introspect").remove(0);
    assert_eq!(call.header("authorization"), None);
    assert_eq!(
        form(&call.body),
        [
            ("token".to_string(), "t".to_string()),
            ("client_id".to_string(), "gate way".to_string()),
            ("client_secret".to_string(), "s3cr:et".to_string())
        ]
    );
}

#[tokio::test]
async fn concurrent_misses_for_one_token_share_one_call() {
    let idp = IdentityProvider::start().await;
    idp.set(|s| {
        s.introspection.insert(
            "shared".into(),
            active("alice-sub", json!({})).delayed(Duration::from_millis(400)),
        );
    });
    let up = Upstream::start("a").await;
    let gw = setup(&idp, &up, "").await;
    let requests = (0..10)
        .map(|_| client().get(gw.url("/p")).bearer_auth("shared"))
        .collect();
    assert_eq!(statuses_at_once(requests).await, [200; 10]);
    assert_eq!(idp.hits("/introspect"), 1);
}

#[tokio::test]
async fn beyond_max_in_flight_a_miss_is_503_without_a_call() {
    let idp = IdentityProvider::start().await;
    idp.set(|s| {
        s.introspection_override =
            Some(active("alice-sub", json!({})).delayed(Duration::from_millis(800)));
    });
    let up = Upstream::start("a").await;
    let gw = setup(&idp, &up, "max_in_flight = 1\n").await;
    let url = gw.url("/p");
    let slow = tokio::spawn(async move {
        client()
            .get(url)
            .bearer_auth("first")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert!(
        eventually(Duration::from_secs(5), async || idp.hits("/introspect")
            == 1)
        .await
    );
    let r = send(&gw, "second").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(idp.hits("/introspect"), 1, "the refused miss made no call");
}

#[tokio::test]
async fn errors_are_503_or_401_by_on_error_and_never_cached() {
    let idp = IdentityProvider::start().await;
    idp.set(|s| s.introspection_override = Some(Answer::raw(500, b"oops")));
    let up = Upstream::start("a").await;
    let gw = gateway_with_env(
        &format!(
            "{}[consumers.alice]\njwt_subject = \"alice-sub\"\n\
             [routes.p]\npaths = [\"/p\"]\nupstream = \"a\"\n\
             [routes.p.policies.oauth2_introspection]\nendpoint = \"{url}\"\nclient_id = \"gw\"\n\
             client_secret_env = \"TOLLGATE_INTROSPECTION_SECRET\"\n\
             [routes.deny]\npaths = [\"/deny\"]\nupstream = \"a\"\n\
             [routes.deny.policies.oauth2_introspection]\nendpoint = \"{url}\"\nclient_id = \"gw\"\n\
             client_secret_env = \"TOLLGATE_INTROSPECTION_SECRET\"\non_error = \"deny\"\n",
            upstream_table("a", &[up.addr]),
            url = idp.url("/introspect")
        ),
        &[SECRET_ENV],
    );
    let r = send(&gw, "t").await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "identity_unavailable");
    let r = client()
        .get(gw.url("/deny"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    // garbage of other kinds is an error too
    for bad in [&b"{\"active\": \"yes\"}"[..], b"not json", b"[]"] {
        idp.set(|s| s.introspection_override = Some(Answer::raw(200, bad)));
        assert_eq!(send(&gw, "t").await.status(), 503);
    }
    // the endpoint recovers: errors were not cached
    idp.set(|s| s.introspection_override = Some(active("alice-sub", json!({}))));
    assert_eq!(send(&gw, "t").await.status(), 200);
    let m = metrics_text(&gw).await;
    assert!(
        m.contains(r#"tollgate_introspection_requests_total{result="error",route="p"} 4"#),
        "{m}"
    );
    assert!(gw
        .stderr_lines()
        .iter()
        .any(|l| l.contains("oauth2_introspection") && l.contains("status 500")));
}

#[tokio::test]
async fn audience_scopes_anonymous_and_malformed_tokens() {
    let idp = IdentityProvider::start().await;
    idp.set(|s| {
        s.introspection.insert(
            "good".into(),
            active(
                "alice-sub",
                json!({"aud": ["x", "reports-api"], "scope": "reports:read"}),
            ),
        );
        s.introspection.insert(
            "other-api".into(),
            active(
                "alice-sub",
                json!({"aud": "billing", "scope": "reports:read"}),
            ),
        );
        s.introspection.insert(
            "no-scope".into(),
            active("alice-sub", json!({"aud": "reports-api"})),
        );
        s.introspection.insert(
            "stranger".into(),
            active(
                "nobody",
                json!({"aud": "reports-api", "scope": "reports:read"}),
            ),
        );
    });
    let up = Upstream::start("a").await;
    let gw = setup(
        &idp,
        &up,
        "audience = \"reports-api\"\nscopes = [\"reports:read\"]\nanonymous = \"partners\"\n",
    )
    .await;
    assert_eq!(send(&gw, "good").await.status(), 200);
    let r = send(&gw, "other-api").await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("www-authenticate").is_none());
    let r = send(&gw, "no-scope").await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"insufficient_scope\", scope=\"reports:read\""
    );
    assert_eq!(send(&gw, "stranger").await.status(), 200);
    assert_eq!(
        up.last().unwrap().header("x-consumer-name"),
        Some("partners")
    );
    let calls = idp.hits("/introspect");
    // malformed tokens are refused without a call
    for bad in ["a,b", &"a".repeat(9000)] {
        let r = send(&gw, bad).await;
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
    }
    let r = client().get(gw.url("/p")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(idp.hits("/introspect"), calls);
}

#[test]
fn check_refuses_bad_introspection_options_each_at_its_key() {
    let route = |name: &str, extra: &str| {
        format!(
            "[routes.{name}]\npaths = [\"/{name}\"]\nupstream = \"a\"\n\
             [routes.{name}.policies.oauth2_introspection]\nclient_id = \"gw\"\n{extra}\n"
        )
    };
    let env = "client_secret_env = \"PATH\"";
    let err = check_fails(&format!(
        "[upstreams.a]\nbackends = [\"127.0.0.1:1\"]\n{}{}{}{}{}{}{}",
        route(
            "unset",
            "endpoint = \"https://idp/i\"\nclient_secret_env = \"TOLLGATE_SURELY_UNSET\""
        ),
        route(
            "userinfo",
            &format!("endpoint = \"https://u:p@idp/i\"\n{env}")
        ),
        route(
            "method",
            &format!("endpoint = \"https://idp/i\"\n{env}\nauth_method = \"private_key_jwt\"")
        ),
        route(
            "ca",
            &format!("endpoint = \"http://idp/i\"\n{env}\nca_file = \"ca.pem\"")
        ),
        route(
            "size",
            &format!("endpoint = \"https://idp/i\"\n{env}\ncache_size = 0")
        ),
        route(
            "aud",
            &format!("endpoint = \"https://idp/i\"\n{env}\naudience = []")
        ),
        route(
            "ttl",
            &format!("endpoint = \"https://idp/i\"\n{env}\ncache_ttl = \"25h\"")
        ),
    ));
    for expected in [
        "routes.unset.policies.oauth2_introspection.client_secret_env: environment variable TOLLGATE_SURELY_UNSET is not set",
        "routes.userinfo.policies.oauth2_introspection.endpoint: user info",
        "routes.method.policies.oauth2_introspection.auth_method: unknown auth_method",
        "routes.ca.policies.oauth2_introspection.ca_file: only for https",
        "routes.size.policies.oauth2_introspection.cache_size:",
        "routes.aud.policies.oauth2_introspection.audience:",
        "routes.ttl.policies.oauth2_introspection.cache_ttl: at most 24h",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[tokio::test]
async fn a_reload_keeps_the_cache_while_route_endpoint_and_client_id_stay() {
    let idp = IdentityProvider::start().await;
    idp.set(|s| {
        s.introspection
            .insert("t".into(), active("alice-sub", json!({})));
    });
    let up = Upstream::start("a").await;
    let gw = setup(&idp, &up, "cache_ttl = \"1h\"\n").await;
    assert_eq!(send(&gw, "t").await.status(), 200);
    assert_eq!(idp.hits("/introspect"), 1);
    // another option changes: the cache stays
    let toml = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(
        &gw.config,
        toml.replace("cache_ttl = \"1h\"", "cache_ttl = \"2h\""),
    )
    .unwrap();
    assert_eq!(admin_reload(&gw).await.0, 200);
    assert_eq!(send(&gw, "t").await.status(), 200);
    assert_eq!(idp.hits("/introspect"), 1, "answered from the kept cache");
    // another client id: a new cache
    let toml = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(
        &gw.config,
        toml.replace("client_id = \"gate way\"", "client_id = \"other\""),
    )
    .unwrap();
    assert_eq!(admin_reload(&gw).await.0, 200);
    assert_eq!(send(&gw, "t").await.status(), 200);
    assert_eq!(idp.hits("/introspect"), 2);
}
