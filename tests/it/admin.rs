//! The admin listener: health, metrics with bounded label sets, status, and SIGHUP reload.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn healthz_and_metrics_with_route_labels_from_config_only() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "{}[routes.orders]\npaths = [\"/orders\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr])
    ));
    let r = client().get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().trim(), "ok");

    let c = client();
    c.get(gw.url("/orders/1")).send().await.unwrap();
    for i in 0..1000 {
        let path = format!("/random-{i}-{}", i * 7919 % 1013);
        let method = if i % 2 == 0 { "GET" } else { "BREW" };
        let _ = raw(
            gw.addr,
            format!("{method} {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
    }
    let text = metrics_text(&gw).await;
    assert!(
        text.contains(r#"tollgate_requests_total{method="GET",route="orders",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tollgate_requests_total{method="GET",route="_none",status="404"} 500"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tollgate_requests_total{method="OTHER",route="_none",status="404"} 500"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tollgate_refusals_total{reason="no_route",route="_none"} 1000"#),
        "{text}"
    );
    assert!(text.contains("tollgate_request_duration_seconds_bucket{route=\"orders\""));
    assert!(text.contains("tollgate_upstream_duration_seconds_count{upstream=\"a\"} 1"));
    assert!(!text.contains("random-"), "a client path became a label");
    assert!(text.len() < 20_000, "metrics grew to {} bytes", text.len());
}

#[tokio::test]
async fn status_lists_upstreams_and_digest() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr])
    ));
    let (s, _, v) = get_json(&gw.admin_url("/admin/status")).await;
    assert_eq!(s, 200);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        v["upstreams"]["a"]["backends"][0]["addr"],
        up.addr.to_string()
    );
    assert!(v["config_digest"].as_str().is_some_and(|d| d.len() == 16));
}

#[tokio::test]
async fn sighup_reloads_a_valid_file_and_keeps_serving_on_an_invalid_one() {
    let up = Upstream::start("a").await;
    let base = format!(
        "{}[routes.one]\npaths = [\"/one\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr])
    );
    let gw = gateway_with_admin(&base);
    let full = std::fs::read_to_string(&gw.config).unwrap();
    assert_eq!(get_json(&gw.url("/two")).await.0, 404);

    let reload_with = |route: &str, upstream: &str| {
        let extra =
            format!("[routes.{route}]\npaths = [\"/{route}\"]\nupstream = \"{upstream}\"\n");
        std::fs::write(&gw.config, format!("{full}{extra}")).unwrap();
        gw.signal("HUP");
    };
    reload_with("two", "a");
    let url = gw.url("/two");
    assert!(
        eventually(Duration::from_secs(10), async || get_json(&url).await.0
            == 200)
        .await,
        "reload did not add /two"
    );

    reload_with("three", "missing");
    let murl = gw.admin_url("/metrics");
    let counted = eventually(Duration::from_secs(10), async || {
        let t = client()
            .get(&murl)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        t.contains(r#"tollgate_config_reloads_total{result="error"} 1"#)
    })
    .await;
    assert!(counted, "failed reload was not counted");
    assert_eq!(
        get_json(&gw.url("/two")).await.0,
        200,
        "an invalid reload changed the running config"
    );
    assert_eq!(get_json(&gw.url("/one")).await.0, 200);
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let up = Upstream::start("a").await;
    let mut gw = gateway(&format!(
        "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr])
    ));
    assert_eq!(get_json(&gw.url("/")).await.0, 200);
    gw.signal("TERM");
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .expect("exited after SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn admin_reload_over_http_needs_the_token_and_reports_errors() {
    let up = Upstream::start("a").await;
    let base = format!(
        "admin_token = \"t0ken-secret\"\n{}[consumers.c]\napi_keys = [\"k-very-secret\"]\n\
         [routes.one]\npaths = [\"/one\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr])
    );
    // admin_token belongs to [server]: put it right after the generated [server] table
    let gw = gateway_with_admin(&base);
    let full = std::fs::read_to_string(&gw.config).unwrap();
    let c = client();
    let reload = || c.post(gw.admin_url("/admin/reload"));

    let r = reload().send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = reload().bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);

    std::fs::write(
        &gw.config,
        format!("{full}[routes.two]\npaths = [\"/two\"]\nupstream = \"a\"\n"),
    )
    .unwrap();
    let r = reload().bearer_auth("t0ken-secret").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["config_digest"].as_str().is_some_and(|d| d.len() == 16));
    assert_eq!(get_json(&gw.url("/two")).await.0, 200);

    std::fs::write(
        &gw.config,
        format!("{full}[routes.bad]\npaths = [\"/bad\"]\nupstream = \"nope\"\n"),
    )
    .unwrap();
    let r = reload().bearer_auth("t0ken-secret").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .as_str()
            .unwrap()
            .contains("routes.bad.upstream: unknown upstream \"nope\""),
        "{v}"
    );
    assert_eq!(
        get_json(&gw.url("/two")).await.0,
        200,
        "the invalid reload changed the running config"
    );
    assert_eq!(get_json(&gw.url("/bad")).await.0, 404);

    let r = c
        .get(gw.admin_url("/admin/config"))
        .bearer_auth("t0ken-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("t0ken-secret") && !text.contains("k-very-secret"),
        "{text}"
    );
    assert!(text.contains("\"***\""));
}

#[tokio::test]
async fn reloads_under_load_fail_no_request() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "{}[routes.r]\npaths = [\"/load\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr])
    ));
    let full = std::fs::read_to_string(&gw.config).unwrap();
    let load = Load::start(&gw.url("/load"), 4);
    let c = client();
    for i in 0..10 {
        let variant =
            format!("{full}[routes.extra{i}]\npaths = [\"/extra{i}\"]\nupstream = \"a\"\n");
        std::fs::write(&gw.config, variant).unwrap();
        let r = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
        assert_eq!(r.status(), 200, "reload {i}");
        assert_eq!(get_json(&gw.url(&format!("/extra{i}"))).await.0, 200);
        if i > 0 {
            let gone = get_json(&gw.url(&format!("/extra{}", i - 1))).await.0;
            assert_eq!(gone, 404, "reload {i} did not remove the previous route");
        }
    }
    let (ok, failed, why) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} requests failed across 10 reloads ({ok} succeeded): {why:?}"
    );
    assert!(ok > 40, "the clients barely ran: {ok}");
    let m = metrics_text(&gw).await;
    assert!(
        m.contains("tollgate_config_reloads_total{result=\"ok\"} 10"),
        "{m}"
    );
}

#[tokio::test]
async fn a_reload_applies_what_it_can_and_lists_the_server_keys_that_need_a_restart() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "{}[routes.one]\npaths = [\"/one\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr])
    ));
    let full = std::fs::read_to_string(&gw.config).unwrap();
    let free = closed_port();
    // a new listener and thread count (need a restart) and a new route (applied)
    let changed = full
        .replacen(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"{free}\"]"),
            1,
        )
        .replacen("threads = 1", "threads = 2", 1)
        + "[routes.two]\npaths = [\"/two\"]\nupstream = \"a\"\n";
    assert_ne!(changed, full);
    std::fs::write(&gw.config, changed).unwrap();
    let (status, v) = reload(&gw).await;
    assert_eq!(status, 200);
    assert_eq!(
        v["needs_restart"],
        serde_json::json!(["server.listen", "server.threads"]),
        "{v}"
    );
    assert_eq!(
        get_json(&gw.url("/two")).await.0,
        200,
        "the route was applied"
    );
    assert!(
        tokio::net::TcpStream::connect(free).await.is_err(),
        "the new listener is not opened by a reload"
    );
    assert!(
        eventually(Duration::from_secs(5), async || gw
            .stderr_lines()
            .iter()
            .any(|l| l.contains(
                "not applied until a restart or upgrade: server.listen, server.threads"
            )))
        .await,
        "the keys were not logged"
    );

    // the keys stay listed on every reload until the process restarts; back to the
    // running values, nothing is
    let (_, v) = reload(&gw).await;
    assert_eq!(
        v["needs_restart"],
        serde_json::json!(["server.listen", "server.threads"]),
        "still not applied: {v}"
    );
    std::fs::write(&gw.config, full).unwrap();
    let (_, v) = reload(&gw).await;
    assert_eq!(v["needs_restart"], serde_json::json!([]), "{v}");
}

#[tokio::test]
async fn a_truncated_file_is_refused_by_a_reload_and_serving_goes_on() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "{}[routes.one]\npaths = [\"/one\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr])
    ));
    let full = std::fs::read_to_string(&gw.config).unwrap();
    // a non-atomic write caught half way: the tables before the routes
    let cut = &full[..full.find("[routes.one]").unwrap()];
    for truncated in [cut, ""] {
        std::fs::write(&gw.config, truncated).unwrap();
        let (status, v) = reload(&gw).await;
        assert_eq!(status, 400, "{truncated:?}");
        assert!(
            v["errors"][0]
                .as_str()
                .is_some_and(|e| e.contains("routes: the file declares no routes")),
            "{v}"
        );
        assert_eq!(get_json(&gw.url("/one")).await.0, 200, "still serving");
    }
}

/// `POST /admin/reload` (no token): the status and the JSON answer.
async fn reload(gw: &Gateway) -> (u16, serde_json::Value) {
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}
