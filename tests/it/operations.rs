//! Operations: graceful upgrade, access-log reopening, span export to a collector.

use std::time::Duration;

use crate::support::*;

fn fixed_port_config(port: std::net::SocketAddr, body: &str) -> String {
    let n = format!("{}-{}", std::process::id(), port.port());
    format!(
        "[server]\nlisten = [\"{port}\"]\nthreads = 1\naccess_log = \"off\"\n\
         pid_file = \"/tmp/tollgate-upgrade-{n}.pid\"\nupgrade_sock = \"/tmp/tollgate-upgrade-{n}.sock\"\n\
         grace_period = \"1s\"\ngraceful_shutdown_timeout = \"2s\"\n{body}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_fails_no_request_and_the_old_process_exits() {
    let up = Upstream::start("a").await;
    let toml = fixed_port_config(
        closed_port(),
        &format!(
            "{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n",
            upstream_table("a", &[up.addr])
        ),
    );
    let old = Gateway::start(bin(), &toml);
    let load = Load::start(&old.url("/load"), 4);
    assert!(
        eventually(Duration::from_secs(10), async || up.count() > 50).await,
        "the load did not get going"
    );

    // the new process waits for the sockets on upgrade_sock; the old one sends them on
    // SIGQUIT, keeps serving a few seconds, then drains and exits
    let new_toml = toml.clone();
    let new = tokio::task::spawn_blocking(move || Gateway::start_upgrade(bin(), &new_toml));
    old.signal("QUIT");
    let new = new.await.expect("new instance started");
    assert_eq!(
        new.addr, old.addr,
        "the new instance serves the same socket"
    );
    assert_ne!(new.pid(), old.pid());

    let mut old = old;
    let status = tokio::task::spawn_blocking(move || old.wait_exit(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the old process exited after draining");
    assert!(status.success(), "old process: {status:?}");

    // only the new process is left to answer, and it does
    let served = up.count();
    assert!(
        eventually(Duration::from_secs(10), async || up.count() > served + 50).await,
        "the new instance did not take the load over"
    );
    let (ok, failed, why) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} requests failed across the upgrade ({ok} succeeded): {why:?}"
    );
}

#[tokio::test]
async fn sigusr1_reopens_the_access_log_after_rotation() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let gw = Gateway::start(
        bin(),
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\naccess_log = {:?}\n{}\
             [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n",
            log.display().to_string(),
            upstream_table("a", &[up.addr])
        ),
    );
    let lines = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|s| s.lines().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(get_json(&gw.url("/first")).await.0, 200);
    assert!(eventually(Duration::from_secs(5), async || lines(&log).len() == 1).await);

    // rotate: move the file away; until told, the gateway keeps writing to it
    std::fs::rename(&log, &rotated).unwrap();
    assert_eq!(get_json(&gw.url("/second")).await.0, 200);
    assert!(
        eventually(Duration::from_secs(5), async || lines(&rotated).len() == 2).await,
        "lines before the reopen go to the moved file"
    );
    assert!(!log.exists());

    gw.signal("USR1");
    let mut sent = 0;
    let reopened = eventually(Duration::from_secs(10), async || {
        sent += 1;
        get_json(&gw.url("/third")).await;
        !lines(&log).is_empty()
    })
    .await;
    assert!(reopened, "no new access.log after SIGUSR1");
    assert!(
        eventually(Duration::from_secs(5), async || {
            lines(&log).len() + lines(&rotated).len() == 2 + sent
        })
        .await,
        "a line was lost or duplicated: {} + {} lines for {} requests",
        lines(&rotated).len(),
        lines(&log).len(),
        2 + sent
    );
    let last: serde_json::Value = serde_json::from_str(&lines(&log)[0]).unwrap();
    assert_eq!(last["path"], "/third");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn spans_reach_the_otlp_collector_as_children_of_the_callers_span() {
    let up = Upstream::start("a").await;
    let collector = OtlpCollector::start().await;
    let gw = gateway(&format!(
        "[server.tracing]\notlp_endpoint = \"http://{}\"\nservice_name = \"edge\"\n\
         {}[routes.orders]\npaths = [\"/orders\"]\nupstream = \"a\"\n",
        collector.addr,
        upstream_table("a", &[up.addr])
    ));
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    // an unsampled trace is propagated but not exported
    raw(
        gw.addr,
        &get(
            "/orders/1",
            &format!("traceparent: 00-{unsampled}-b7ad6b7169203331-00\r\n"),
        ),
    )
    .await;
    let r = raw(
        gw.addr,
        &get(
            "/orders/7?x=1",
            &format!("traceparent: 00-{trace}-00f067aa0ba902b7-01\r\n"),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let upstream_parent = up
        .last()
        .unwrap()
        .header("traceparent")
        .unwrap()
        .split('-')
        .nth(2)
        .unwrap()
        .to_string();
    raw(gw.addr, &get("/nowhere", "")).await; // a 404 starts its own trace

    assert!(
        eventually(Duration::from_secs(10), async || collector.received().len()
            >= 2)
        .await,
        "spans did not arrive: {:?}",
        collector.received()
    );
    let spans = collector.received();
    assert!(
        spans.iter().all(|(_, s)| hex(&s.trace_id) != unsampled),
        "an unsampled trace was exported"
    );
    let (service, span) = spans
        .iter()
        .find(|(_, s)| hex(&s.trace_id) == trace)
        .expect("the request's span");
    assert_eq!(service, "edge");
    assert_eq!(span.name, "GET orders");
    assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(
        hex(&span.span_id),
        upstream_parent,
        "the upstream's parent is the gateway's span"
    );
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano && span.start_time_unix_nano > 0);
    let attr = |k: &str| {
        span.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone()?.value)
            .map(|v| format!("{v:?}"))
    };
    assert_eq!(
        attr("url.path").as_deref(),
        Some("StringValue(\"/orders/7\")")
    );
    assert_eq!(
        attr("http.response.status_code").as_deref(),
        Some("IntValue(200)")
    );
    assert_eq!(
        attr("server.address"),
        Some(format!("StringValue(\"{}\")", up.addr))
    );
    let (_, miss) = spans
        .iter()
        .find(|(_, s)| hex(&s.trace_id) != trace)
        .expect("the 404's span");
    assert!(
        miss.parent_span_id.is_empty(),
        "a started trace has no parent"
    );
    assert_eq!(miss.name, "GET");
}

#[tokio::test]
async fn an_unreachable_collector_fails_no_request_and_counts_dropped_spans() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "[server.tracing]\notlp_endpoint = \"http://{}\"\n{}\
         [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n",
        closed_port(),
        upstream_table("a", &[up.addr])
    ));
    let c = client();
    for i in 0..50 {
        let r = c.get(gw.url(&format!("/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }
    let dropped = eventually(Duration::from_secs(10), async || {
        metrics_text(&gw).await.lines().any(|l| {
            l.strip_prefix("tollgate_trace_spans_dropped_total ")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= 1)
        })
    })
    .await;
    assert!(dropped, "{}", metrics_text(&gw).await);
    let m = metrics_text(&gw).await;
    assert!(m.contains("tollgate_access_log_dropped_total 0"), "{m}");
}

#[tokio::test]
async fn an_unwritable_access_log_counts_its_losses_and_serving_goes_on() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(
        bin(),
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n\
             access_log = \"/dev/full\"\n{}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n",
            upstream_table("a", &[up.addr])
        ),
    );
    for i in 0..20 {
        assert_eq!(get_json(&gw.url(&format!("/{i}"))).await.0, 200);
    }
    let counted = eventually(Duration::from_secs(10), async || {
        metrics_text(&gw).await.lines().any(|l| {
            l.strip_prefix("tollgate_access_log_dropped_total ")
                .and_then(|n| n.parse::<u64>().ok())
                == Some(20)
        })
    })
    .await;
    assert!(counted, "{}", metrics_text(&gw).await);
    assert!(
        gw.stderr_lines()
            .iter()
            .any(|l| l.contains("access log write failed")),
        "the failure was not reported"
    );
}
