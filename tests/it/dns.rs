//! Backends named by DNS (fleet.md §13), against a real DNS server on loopback
//! (`tollgate_tests::DnsServer`, UDP and TCP) answering with loopback addresses
//! 127.0.0.2, 127.0.0.3, … where real upstreams listen.

use std::time::Duration;

use crate::support::*;

const SOON: Duration = Duration::from_secs(10);

/// `[server.dns]` asking `dns` only, with short TTL bounds so tests see changes soon.
fn dns_table(dns: &DnsServer, extra: &str) -> String {
    format!(
        "[server.dns]\nresolvers = [\"{}\"]\nhosts_file = \"\"\nmin_ttl = \"100ms\"\n\
         negative_ttl = \"100ms\"\ntimeout = \"300ms\"\nattempts = 1\n{extra}\n",
        dns.addr()
    )
}

/// `[server.dns]`, upstream `u` with `upstream` as its body, and a route to it.
fn config(dns: &DnsServer, dns_extra: &str, upstream: &str) -> String {
    format!(
        "{}[upstreams.u]\n{upstream}\n[routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n",
        dns_table(dns, dns_extra)
    )
}

/// Two upstreams on 127.0.0.2 and 127.0.0.3, on one port (a name has one port).
async fn pair() -> (Upstream, Upstream, u16) {
    let a = Upstream::start_on("127.0.0.2:0", "b2").await;
    let port = a.addr.port();
    let b = Upstream::start_on(&format!("127.0.0.3:{port}"), "b3").await;
    (a, b, port)
}

/// Which upstream answered `GET /` (its name), or the refusal's status and error.
async fn who(gw: &Gateway) -> String {
    let (status, _, v) = get_json(&gw.url("/")).await;
    match v["upstream"].as_str() {
        Some(name) if status == 200 => name.to_string(),
        _ => format!("{status} {}", v["error"].as_str().unwrap_or("")),
    }
}

async fn status(gw: &Gateway) -> serde_json::Value {
    get_json(&gw.admin_url("/admin/status")).await.2
}

#[tokio::test]
async fn every_address_of_a_name_is_a_backend_from_the_first_request() {
    let dns = DnsServer::start();
    let (b2, b3, port) = pair().await;
    dns.set_a("svc.test", &["127.0.0.3", "127.0.0.2"], 30);
    let gw = gateway_with_admin(&config(
        &dns,
        "",
        &format!("backends = [\"svc.test:{port}\"]"),
    ));
    // the names were looked up before the listeners opened
    assert_eq!(who(&gw).await.len(), 2, "the first request is served");
    for _ in 0..9 {
        assert!(who(&gw).await.starts_with('b'));
    }
    assert!(
        b2.count() >= 3 && b3.count() >= 3,
        "{} / {}",
        b2.count(),
        b3.count()
    );
    // ip_family "any": A and AAAA were both asked (the NODATA of AAAA again after
    // negative_ttl; the A answer lives its TTL)
    assert_eq!(dns.query_count("svc.test", "A"), 1);
    assert!(dns.query_count("svc.test", "AAAA") >= 1);
    let host = format!("svc.test:{port}");
    assert_eq!(b2.last().unwrap().header("host"), Some(host.as_str()));

    let st = status(&gw).await;
    let u = &st["upstreams"]["u"];
    let addrs: Vec<&str> = u["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["addr"].as_str().unwrap())
        .collect();
    let (a2, a3) = (format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}"));
    assert_eq!(addrs, [a2.as_str(), a3.as_str()]);
    assert_eq!(u["backends"][0]["name"], host.as_str());
    assert_eq!(u["backends"][0]["weight"], 1);
    let name = &u["names"][0];
    assert_eq!(name["name"], host.as_str());
    assert_eq!(name["type"], "host");
    assert_eq!(name["source"], "dns");
    assert_eq!(name["result"], "ok", "{name}");
    assert_eq!(name["stale"], false);
    assert_eq!(name["addresses"], serde_json::json!([a2, a3]));
    assert!(name["resolved_at"].is_string() && name["expires_at"].is_string());
    assert!(name["error"].is_null());

    // the access log names the address connected to and the entry it came from
    assert!(
        eventually(SOON, async || gw.stdout_lines().iter().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            v["upstream_name"] == host.as_str() && v["upstream"] == a2.as_str()
        }))
        .await,
        "{:?}",
        gw.stdout_lines()
    );
    // metrics: the address is the backend label, the name never a label value
    let text = metrics_text(&gw).await;
    assert!(!text.contains("svc.test"), "a name became a label value");
    assert_eq!(
        sample(&gw, "tollgate_upstream_backends{upstream=\"u\"}").await,
        Some(2.0)
    );
    assert_eq!(
        sample(&gw, "tollgate_dns_stale_names{upstream=\"u\"}").await,
        Some(0.0)
    );
    let ok = "tollgate_dns_resolutions_total{result=\"ok\",upstream=\"u\"}";
    assert!(sample(&gw, ok).await >= Some(1.0), "{text}");
    let healthy = format!("tollgate_upstream_backend_healthy{{backend=\"{a3}\",upstream=\"u\"}}");
    assert_eq!(sample(&gw, &healthy).await, Some(1.0), "{text}");
}

#[tokio::test]
async fn addresses_follow_the_answers_without_a_reload() {
    let dns = DnsServer::start();
    let (b2, b3, port) = pair().await;
    dns.set_a("svc.test", &["127.0.0.2"], 0);
    let gw = gateway_logging(
        &config(&dns, "", &format!("backends = [\"svc.test:{port}\"]")),
        "info",
    );
    assert_eq!(who(&gw).await, "b2");
    // a new pod: it gets traffic
    dns.set_a("svc.test", &["127.0.0.2", "127.0.0.3"], 0);
    assert!(eventually(SOON, async || who(&gw).await == "b3").await);
    // a removed one: it stops getting traffic
    dns.set_a("svc.test", &["127.0.0.3"], 0);
    let a2 = format!("127.0.0.2:{port}");
    let healthy2 = format!("tollgate_upstream_backend_healthy{{backend=\"{a2}\",upstream=\"u\"}}");
    assert!(
        eventually(SOON, async || {
            status(&gw).await["upstreams"]["u"]["backends"]
                .as_array()
                .unwrap()
                .len()
                == 1
        })
        .await
    );
    let before = b2.count();
    for _ in 0..10 {
        assert_eq!(who(&gw).await, "b3");
    }
    assert_eq!(b2.count(), before, "the removed address got requests");
    assert_eq!(
        sample(&gw, &healthy2).await,
        None,
        "its series stays after it left"
    );
    assert!(b3.count() >= 10);
    let changed = |l: &String| l.contains("svc.test") && l.contains("addresses changed");
    assert!(
        eventually(SOON, async || gw
            .stderr_lines()
            .iter()
            .filter(|l| changed(l))
            .count()
            >= 3)
        .await,
        "{:?}",
        gw.stderr_lines()
    );
}

#[tokio::test]
async fn the_last_good_addresses_serve_while_dns_fails() {
    let dns = DnsServer::start();
    let (_b2, _b3, port) = pair().await;
    dns.set_a("svc.test", &["127.0.0.2", "127.0.0.3"], 0);
    let gw = gateway_logging(
        &config(
            &dns,
            "ip_family = \"v4\"",
            &format!("backends = [\"svc.test:{port}\"]"),
        ),
        "info",
    );
    assert!(who(&gw).await.starts_with('b'));
    for (rule, result) in [(Rule::ServFail, "servfail"), (Rule::Drop, "timeout")] {
        dns.set_rule("*", rule);
        assert!(
            eventually(SOON, async || {
                status(&gw).await["upstreams"]["u"]["names"][0]["result"] == result
            })
            .await,
            "{rule:?}: {}",
            status(&gw).await
        );
        for _ in 0..6 {
            assert!(
                who(&gw).await.starts_with('b'),
                "{rule:?}: kept addresses serve"
            );
        }
        let name = &status(&gw).await["upstreams"]["u"]["names"][0];
        assert_eq!(name["stale"], true, "{name}");
        assert_eq!(name["addresses"].as_array().unwrap().len(), 2);
        assert!(
            name["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{name}"
        );
        let stale = "tollgate_dns_stale_names{upstream=\"u\"}";
        assert_eq!(sample(&gw, stale).await, Some(1.0));
        let failed =
            format!("tollgate_dns_resolutions_total{{result=\"{result}\",upstream=\"u\"}}");
        assert!(sample(&gw, &failed).await >= Some(1.0));
    }
    assert!(gw
        .stderr_lines()
        .iter()
        .any(|l| l.contains("svc.test") && l.contains("keeping its 2 addresses")));
    // the next answer ends it
    dns.set_rule("*", Rule::Answer);
    assert!(
        eventually(SOON, async || {
            status(&gw).await["upstreams"]["u"]["names"][0]["stale"] == false
        })
        .await
    );
}

#[tokio::test]
async fn a_name_without_an_address_answers_503_until_it_resolves() {
    let dns = DnsServer::start();
    let (_b2, _b3, port) = pair().await;
    let gw = gateway_logging(
        &config(&dns, "", &format!("backends = [\"late.test:{port}\"]")),
        "info",
    );
    // it starts all the same
    assert_eq!(who(&gw).await, "503 no_healthy_upstream");
    let name = &status(&gw).await["upstreams"]["u"]["names"][0];
    assert_eq!(name["result"], "nxdomain", "{name}");
    assert_eq!(name["addresses"], serde_json::json!([]));
    assert_eq!(
        sample(&gw, "tollgate_upstream_backends{upstream=\"u\"}").await,
        Some(0.0)
    );
    // it resolves: served, with no reload
    dns.set_a("late.test", &["127.0.0.3"], 0);
    assert!(eventually(SOON, async || who(&gw).await == "b3").await);
    // an NXDOMAIN removes its addresses again (an answer, not a failure)
    dns.remove("late.test");
    assert!(eventually(SOON, async || who(&gw).await == "503 no_healthy_upstream").await);
    assert!(
        gw.stderr_lines()
            .iter()
            .any(|l| l.contains("late.test") && l.contains("are removed")),
        "{:?}",
        gw.stderr_lines()
    );
}

#[tokio::test]
async fn srv_entries_take_ports_weights_and_priorities_from_dns() {
    let dns = DnsServer::start();
    let primary = Upstream::start_on("127.0.0.2:0", "primary").await;
    let backup = Upstream::start_on("127.0.0.3:0", "backup").await;
    let (p2, p3) = (primary.addr.port(), backup.addr.port());
    dns.set_srv(
        "_http._tcp.search.test",
        &[
            (10, 3, p2, "s2.test"),
            (20, 0, p3, "s3.test"),
            (5, 1, 0, "."),
            (1, 1, 80, "."),
        ],
        0,
    );
    dns.set_a("s2.test", &["127.0.0.2"], 0);
    dns.set_a("s3.test", &["127.0.0.3"], 0);
    let gw = gateway_with_admin(&config(
        &dns,
        "",
        "backends = [{ srv = \"_http._tcp.search.test\" }]\n\
         [upstreams.u.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\n\
         unhealthy_after = 1",
    ));
    for _ in 0..6 {
        assert_eq!(who(&gw).await, "primary", "the backup got a request");
    }
    let host = format!("search.test:{p2}");
    assert_eq!(primary.last().unwrap().header("host"), Some(host.as_str()));
    let st = status(&gw).await;
    let u = &st["upstreams"]["u"];
    let name = &u["names"][0];
    assert_eq!(name["type"], "srv");
    assert_eq!(name["name"], "_http._tcp.search.test");
    assert_eq!(
        name["records"].as_array().unwrap().len(),
        2,
        "port 0 and \".\" give none"
    );
    assert_eq!(name["records"][0]["target"], "s2.test");
    assert_eq!(name["records"][0]["priority"], 10);
    let weights: Vec<u64> = u["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [3, 1], "the record's weight; 0 counts as 1: {u}");
    // health checks send the Host requests get (fleet.md §13.6)
    assert!(
        eventually(SOON, async || primary.check_hosts().contains(&host)).await,
        "{:?}",
        primary.check_hosts()
    );
    let backup_host = format!("search.test:{p3}");
    assert!(
        eventually(SOON, async || backup.check_hosts().contains(&backup_host)).await,
        "backups are checked too: {:?}",
        backup.check_hosts()
    );
    // every lower-priority address down: the backup takes the requests, until one
    // is back
    primary.set_healthy(false);
    assert!(eventually(SOON, async || who(&gw).await == "backup").await);
    let host = format!("search.test:{p3}");
    assert_eq!(backup.last().unwrap().header("host"), Some(host.as_str()));
    primary.set_healthy(true);
    assert!(eventually(SOON, async || who(&gw).await == "primary").await);
    let served = backup.count();
    for _ in 0..6 {
        assert_eq!(who(&gw).await, "primary");
    }
    assert_eq!(backup.count(), served);
}

#[tokio::test]
async fn a_reload_looks_up_new_names_first_and_never_fails_for_dns() {
    let dns = DnsServer::start();
    let (_b2, _b3, port) = pair().await;
    dns.set_a("a.test", &["127.0.0.2"], 3600);
    dns.set_a("b.test", &["127.0.0.3"], 3600);
    let body = config(
        &dns,
        "ip_family = \"v4\"",
        &format!("backends = [\"a.test:{port}\"]"),
    );
    let gw = gateway_with_admin(&body);
    assert_eq!(who(&gw).await, "b2");
    let asked_a = dns.query_count("a.test", "A");
    let with_v = format!(
        "{body}[upstreams.v]\nbackends = [\"b.test:{port}\"]\n\
         [routes.v]\npaths = [\"/v\"]\nupstream = \"v\"\n"
    );
    std::fs::write(&gw.config, format!("{}\n{with_v}", server_of(&gw))).unwrap();
    let (code, body_json) = admin_reload(&gw).await;
    assert_eq!(code, 200, "{body_json}");
    // the new name answered before the new config took effect
    let (s, _, v) = get_json(&gw.url("/v")).await;
    assert_eq!((s, v["upstream"].as_str()), (200, Some("b3")));
    assert_eq!(
        dns.query_count("a.test", "A"),
        asked_a,
        "a name that stays is not asked again"
    );
    // an upstream's ip_family widened: the new record type is asked before the new
    // config takes effect
    assert_eq!(dns.query_count("b.test", "AAAA"), 0);
    let wider = with_v.replace("[upstreams.v]\n", "[upstreams.v]\nip_family = \"any\"\n");
    std::fs::write(&gw.config, format!("{}\n{wider}", server_of(&gw))).unwrap();
    assert_eq!(admin_reload(&gw).await.0, 200);
    assert_eq!(dns.query_count("b.test", "AAAA"), 1);
    assert_eq!(dns.query_count("b.test", "A"), 1, "the A answer stays");
    // DNS down, and a changed [server.dns]: every name is asked again, the reload
    // succeeds, and no name loses its addresses
    dns.set_rule("*", Rule::Drop);
    let changed = wider.replace("attempts = 1", "attempts = 2");
    std::fs::write(&gw.config, format!("{}\n{changed}", server_of(&gw))).unwrap();
    let (code, body_json) = admin_reload(&gw).await;
    assert_eq!(code, 200, "{body_json}");
    assert!(
        dns.query_count("a.test", "A") > asked_a,
        "a changed [server.dns] asks again"
    );
    assert_eq!(who(&gw).await, "b2");
    assert_eq!(get_json(&gw.url("/v")).await.2["upstream"], "b3");
}

/// The `[server]` table of `gw`'s config file (everything before `[server.dns]`).
fn server_of(gw: &Gateway) -> String {
    let text = std::fs::read_to_string(&gw.config).unwrap();
    text.split("[server.dns]").next().unwrap().to_string()
}

#[tokio::test]
async fn an_address_that_stays_keeps_its_health_and_new_ones_start_healthy() {
    let dns = DnsServer::start();
    let (b2, b3, port) = pair().await;
    b2.set_healthy(false);
    dns.set_a("svc.test", &["127.0.0.2"], 0);
    let gw = gateway_with_admin(&config(
        &dns,
        "ip_family = \"v4\"",
        &format!(
            "backends = [\"svc.test:{port}\"]\n\
             [upstreams.u.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\n\
             unhealthy_after = 1"
        ),
    ));
    let healthy = async |gw: &Gateway| -> Vec<bool> {
        status(gw).await["upstreams"]["u"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["healthy"].as_bool().unwrap())
            .collect()
    };
    assert!(eventually(SOON, async || healthy(&gw).await == [false]).await);
    assert_eq!(who(&gw).await, "503 no_healthy_upstream");
    dns.set_a("svc.test", &["127.0.0.2", "127.0.0.3"], 0);
    assert!(eventually(SOON, async || healthy(&gw).await.len() == 2).await);
    assert_eq!(
        healthy(&gw).await,
        [false, true],
        "the unhealthy address stays out"
    );
    for _ in 0..5 {
        assert_eq!(who(&gw).await, "b3");
    }
    b2.set_healthy(true);
    assert!(eventually(SOON, async || healthy(&gw).await == [true, true]).await);
    assert!(b3.count() >= 5);
}

#[tokio::test]
async fn hosts_file_search_list_blocked_ranges_and_max_addresses() {
    let dns = DnsServer::start();
    let (_b2, _b3, port) = pair().await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.3 pinned.test\n").unwrap();
    dns.set_a("pinned.test", &["127.0.0.2"], 30);
    dns.set_a(
        "orders.svc.test",
        &["169.254.169.254", "127.0.0.3", "127.0.0.2"],
        30,
    );
    let extra = format!(
        "hosts_file = \"{}\"\nsearch = [\"svc.test\"]\nndots = 1\nmax_addresses = 1\n",
        hosts.display()
    );
    let toml = config(
        &dns,
        "",
        &format!("backends = [\"pinned.test:{port}\", \"orders:{port}\"]"),
    )
    .replace("hosts_file = \"\"\n", &extra);
    let gw = gateway_logging(&toml, "info");
    let st = status(&gw).await;
    let names = &st["upstreams"]["u"]["names"];
    assert_eq!(names[0]["source"], "hosts_file", "{names}");
    assert!(names[0]["expires_at"].is_null());
    assert_eq!(
        names[0]["addresses"],
        serde_json::json!([format!("127.0.0.3:{port}")])
    );
    // blocked dropped, then the first of the rest in ascending order
    assert_eq!(
        names[1]["addresses"],
        serde_json::json!([format!("127.0.0.2:{port}")])
    );
    assert_eq!(
        dns.query_count("pinned.test", "A"),
        0,
        "hosts-file names are never asked"
    );
    assert_eq!(
        dns.query_count("orders.svc.test", "A"),
        1,
        "the search suffix was tried"
    );
    let err = gw.stderr_lines().join("\n");
    assert!(
        err.contains("169.254.169.254") && err.contains("dropped"),
        "{err}"
    );
    assert!(err.contains("only the first 1"), "{err}");
}

#[test]
fn check_stays_offline_and_check_resolve_looks_names_up() {
    let dns = DnsServer::start();
    dns.set_a("svc.test", &["127.0.0.2", "127.0.0.3"], 30);
    dns.set_srv("_http._tcp.search.test", &[(10, 2, 8081, "s1.test")], 30);
    dns.set_a("s1.test", &["127.0.0.4"], 30);
    let good = format!(
        "{}[upstreams.u]\nbackends = [\"svc.test:8080\", {{ srv = \"_http._tcp.search.test\" }}]\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n",
        dns_table(&dns, "ip_family = \"v4\"")
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.toml");
    std::fs::write(&p, &good).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(bin())
            .args(["check", "--config"])
            .arg(&p)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        dns.queries().is_empty(),
        "check asked DNS: {:?}",
        dns.queries()
    );
    let out = run(&["--resolve"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("upstreams.u.backends[0]: svc.test:8080 -> 127.0.0.2:8080, 127.0.0.3:8080"),
        "{text}"
    );
    assert!(
        text.contains(
            "upstreams.u.backends[1]: _http._tcp.search.test -> 127.0.0.4:8081 (priority 10, weight 2)"
        ),
        "{text}"
    );
    // every cause: NXDOMAIN, NODATA, TIMEOUT, no usable address, no target resolves
    dns.set_aaaa("v6only.test", &["::1"], 30);
    dns.set_a("blocked.test", &["169.254.169.254"], 30);
    dns.set_a("silent.test", &["127.0.0.2"], 30);
    dns.set_rule("silent.test", Rule::Drop);
    dns.set_srv("_http._tcp.gone.test", &[(10, 1, 8081, "nowhere.test")], 30);
    let bad = good.replace(
        "\"svc.test:8080\"",
        "\"svc.test:8080\", \"nosuch.test:80\", \"v6only.test:80\", \"silent.test:80\", \
         \"blocked.test:80\", { srv = \"_http._tcp.gone.test\" }",
    );
    std::fs::write(&p, &bad).unwrap();
    let out = run(&["--resolve"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = bad.lines().position(|l| l.contains("nosuch")).unwrap() + 1;
    let col = bad.lines().nth(line - 1).unwrap().find("\"nosuch").unwrap() + 1;
    assert!(
        err.contains(&format!(
            ":{line}:{col}: upstreams.u.backends[1]: \"nosuch.test:80\" does not resolve: NXDOMAIN"
        )),
        "{err}"
    );
    for (i, cause) in [
        (2, "\"v6only.test:80\" does not resolve: NODATA"),
        (3, "\"silent.test:80\" does not resolve: TIMEOUT"),
        (4, "\"blocked.test:80\" does not resolve: no usable address"),
        (
            5,
            "\"_http._tcp.gone.test\" does not resolve: no target resolves",
        ),
    ] {
        assert!(
            err.contains(&format!("upstreams.u.backends[{i}]: {cause}")),
            "{cause}: {err}"
        );
    }
    assert_eq!(err.lines().count(), 5, "{err}");
    // with every other error of the file, in the same pass
    let worse = bad.replace("upstream = \"u\"", "upstream = \"nosuch\"");
    std::fs::write(&p, &worse).unwrap();
    let out = run(&["--resolve"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("routes.r.upstream: unknown upstream"), "{err}");
    assert!(
        err.contains("\"nosuch.test:80\" does not resolve: NXDOMAIN"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 6, "{err}");
}

#[test]
fn check_refuses_bad_names_and_dns_settings_in_one_pass() {
    let err = check_fails(
        "[server.dns]\nresolvers = [\"10.0.0.1:0\"]\nndots = 16\nattempts = 9\n\
         ip_family = \"v5\"\nmax_ttl = \"1h\"\nmin_ttl = \"2h\"\n\
         [upstreams.u]\nbackends = [\"127.1:80\", \"a..b:80\", \"svc.test\", \"svc.test:0\",\n\
         { srv = \"_x._tcp.svc\", weight = 2 }, { srv = \"svc:80\" },\n\
         { addr = \"svc.test:80\", srv = \"_x._tcp.svc\" }, { weight = 1 },\n\
         \"svc.test:80\", \"SVC.test.:80\", { srv = \"_y._tcp.svc\" }, { srv = \"_Y._tcp.svc.\" }]\n\
         ip_family = \"ipv4\"\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n",
    );
    for want in [
        "server.dns.resolvers",
        "server.dns.ndots",
        "server.dns.attempts",
        "server.dns.ip_family",
        "server.dns.max_ttl",
        "upstreams.u.backends[0]",
        "upstreams.u.backends[1]",
        "upstreams.u.backends[2]",
        "upstreams.u.backends[3]",
        "upstreams.u.backends[4]",
        "upstreams.u.backends[5]",
        "upstreams.u.backends[6]",
        "upstreams.u.backends[7]",
        "upstreams.u.backends[9]: duplicate",
        "upstreams.u.backends[11]: duplicate",
        "upstreams.u.ip_family",
    ] {
        assert!(err.contains(want), "missing {want}:\n{err}");
    }
    assert!(
        !err.contains("backends[8]") && !err.contains("backends[10]"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_to_a_name_sends_and_verifies_that_name() {
    let dns = DnsServer::start();
    let (ca, leaf, key) = crate::tls::ca_and_leaf("secure.test");
    let up = Upstream::start_tls("secure", &leaf, &key).await;
    let port = up.addr.port();
    dns.set_a("secure.test", &["127.0.0.1"], 30);
    dns.set_a("other.test", &["127.0.0.1"], 30);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca).unwrap();
    let ca_file = dir.path().join("ca.pem");
    let gw = gateway_with_admin(&format!(
        "{}[upstreams.good]\nbackends = [\"secure.test:{port}\"]\ntls = true\nca_file = \"{ca}\"\n\
         [upstreams.bad]\nbackends = [\"other.test:{port}\"]\ntls = true\nca_file = \"{ca}\"\nretries = 0\n\
         [routes.good]\npaths = [\"/good\"]\nupstream = \"good\"\n\
         [routes.bad]\npaths = [\"/bad\"]\nupstream = \"bad\"\n",
        dns_table(&dns, "ip_family = \"v4\""),
        ca = ca_file.display()
    ));
    let r = raw(gw.addr, &get("/good", "")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let host = format!("secure.test:{port}");
    assert_eq!(up.last().unwrap().header("host"), Some(host.as_str()));
    // the same address under a name its certificate does not cover
    let r = raw(gw.addr, &get("/bad", "")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "bad_gateway");
    assert_eq!(up.count(), 1);
    // /admin/config shows [server.dns] as configured
    let config = get_json(&gw.admin_url("/admin/config")).await.2;
    assert_eq!(config["server"]["dns"]["ip_family"], "v4", "{config}");
}

#[tokio::test]
async fn a_name_listed_by_two_upstreams_is_looked_up_once_per_type() {
    let dns = DnsServer::start();
    let (_b2, _b3, port) = pair().await;
    dns.set_a("svc.test", &["127.0.0.2"], 3600);
    let gw = gateway_with_admin(&format!(
        "{}[upstreams.u]\nbackends = [\"svc.test:{port}\"]\n\
         [upstreams.w]\nbackends = [\"SVC.Test:{port}\", \"127.0.0.3:{port}\"]\n\
         [routes.u]\npaths = [\"/u\"]\nupstream = \"u\"\n\
         [routes.w]\npaths = [\"/w\"]\nupstream = \"w\"\n",
        dns_table(&dns, "ip_family = \"v4\"")
    ));
    assert_eq!(get_json(&gw.url("/u")).await.2["upstream"], "b2");
    let w: Vec<String> = status(&gw).await["upstreams"]["w"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| format!("{} {}", b["addr"].as_str().unwrap(), b["name"]))
        .collect();
    assert_eq!(
        w,
        [
            format!("127.0.0.2:{port} \"SVC.Test:{port}\""),
            format!("127.0.0.3:{port} null")
        ],
        "in entry order"
    );
    // names compare without regard to case: one lookup serves both upstreams
    assert_eq!(dns.query_count("svc.test", "A"), 1, "{:?}", dns.queries());
    for up in ["u", "w"] {
        let ok = format!("tollgate_dns_resolutions_total{{result=\"ok\",upstream=\"{up}\"}}");
        assert!(sample(&gw, &ok).await >= Some(1.0), "{up}");
    }
}

#[tokio::test]
async fn a_leaving_address_finishes_its_requests_and_its_idle_connections_close() {
    let dns = DnsServer::start();
    let (b2, b3, port) = pair().await;
    dns.set_a("svc.test", &["127.0.0.2"], 0);
    let gw = gateway_with_admin(&config(
        &dns,
        "ip_family = \"v4\"",
        &format!("backends = [\"svc.test:{port}\"]"),
    ));
    assert_eq!(who(&gw).await, "b2");
    assert_eq!(b2.open_connections(), 1, "pooled after the request");
    // a request in flight to it when it leaves
    let url = gw.url("/slow");
    let slow = tokio::spawn(async move { get_json(&url).await });
    assert!(eventually(SOON, async || b2.count() == 2).await);
    dns.set_a("svc.test", &["127.0.0.3"], 0);
    assert!(eventually(SOON, async || who(&gw).await == "b3").await);
    let (status, _, v) = slow.await.unwrap();
    assert_eq!(
        (status, v["upstream"].as_str()),
        (200, Some("b2")),
        "it finished"
    );
    for _ in 0..5 {
        assert_eq!(who(&gw).await, "b3");
    }
    assert_eq!(
        b3.connections(),
        1,
        "the address that stays keeps its pooled connection"
    );
    // the idle pooled connections of the address that left close within 5 s
    let left = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(8), async || b2.open_connections() == 0).await,
        "{} still open",
        b2.open_connections()
    );
    assert!(
        left.elapsed() < Duration::from_secs(6),
        "{:?}",
        left.elapsed()
    );
}

#[tokio::test]
async fn with_startup_wait_0s_the_gateway_serves_at_once_and_a_name_is_pending() {
    let dns = DnsServer::start();
    let (_b2, _b3, port) = pair().await;
    dns.set_a("slow.test", &["127.0.0.2"], 30);
    dns.set_rule("slow.test", Rule::Drop);
    let toml = config(
        &dns,
        "ip_family = \"v4\"\nstartup_wait = \"0s\"",
        &format!("backends = [\"slow.test:{port}\"]"),
    )
    .replace("timeout = \"300ms\"", "timeout = \"5s\"");
    let started = std::time::Instant::now();
    let gw = gateway_with_admin(&toml);
    let name = &status(&gw).await["upstreams"]["u"]["names"][0];
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it waited for DNS"
    );
    assert_eq!(name["result"], "pending", "{name}");
    assert!(name["resolved_at"].is_null() && name["expires_at"].is_null());
    assert_eq!(who(&gw).await, "503 no_healthy_upstream");
    // the answer comes in the background
    dns.set_rule("slow.test", Rule::Answer);
    assert!(eventually(SOON, async || who(&gw).await == "b2").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_looks_names_up_before_it_takes_the_sockets_over() {
    let dns = DnsServer::start();
    let (_b2, _b3, port) = pair().await;
    dns.set_a("old.test", &["127.0.0.2"], 3600);
    dns.set_a("new.test", &["127.0.0.3"], 3600);
    let n = format!("{}{}", std::process::id(), fastid());
    let toml = |name: &str| {
        format!(
            "[server]\nlisten = [\"{}\"]\nthreads = 1\naccess_log = \"off\"\n\
             pid_file = \"/tmp/tollgate-dns-{n}.pid\"\nupgrade_sock = \"/tmp/tollgate-dns-{n}.sock\"\n\
             grace_period = \"0s\"\ngraceful_shutdown_timeout = \"1s\"\n{}",
            closed_port(),
            config(&dns, "ip_family = \"v4\"", &format!("backends = [\"{name}:{port}\"]"))
        )
    };
    let old = Gateway::start(bin(), &toml("old.test"));
    assert_eq!(who(&old).await, "b2");
    let new_toml = toml("new.test");
    let new = tokio::task::spawn_blocking(move || Gateway::start_upgrade(bin(), &new_toml));
    old.signal("QUIT");
    let new = new.await.expect("the new instance started");
    assert_eq!(dns.query_count("new.test", "A"), 1);
    // the old process hands over and leaves; the first request the new one serves
    // finds the name resolved
    let mut old = old;
    tokio::task::spawn_blocking(move || old.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the old process exited");
    assert_eq!(who(&new).await, "b3");
}
