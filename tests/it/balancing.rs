//! Balancing algorithms end to end: consistent hashing and least connections.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::support::*;

async fn backends(n: usize) -> Vec<Upstream> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(Upstream::start(&format!("b{i}")).await);
    }
    v
}

fn pool(name: &str, ups: &[Upstream], extra: &str) -> String {
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    format!(
        "{}{extra}\n[routes.r]\npaths = [\"/\"]\nupstream = \"{name}\"\n",
        upstream_table(name, &addrs)
    )
}

#[tokio::test]
async fn consistent_hash_keeps_each_key_on_one_backend() {
    let ups = backends(3).await;
    let gw = gateway(&pool(
        "p",
        &ups,
        "balance = \"consistent_hash\"\nhash_key = \"header:x-user\"",
    ));
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for u in 0..30 {
            let r = raw(gw.addr, &get("/", &format!("x-user: user-{u}\r\n"))).await;
            assert_eq!(r.status, 200);
            let backend = r.header("x-upstream").unwrap().to_string();
            let first = owner
                .entry(format!("user-{u}"))
                .or_insert_with(|| backend.clone());
            assert_eq!(*first, backend, "user-{u} moved in round {round}");
        }
    }
    let used: HashSet<_> = owner.values().collect();
    assert!(
        used.len() >= 2,
        "30 keys all hashed to one backend: {used:?}"
    );
}

#[tokio::test]
async fn least_conn_sends_new_requests_to_the_idle_backend() {
    let ups = backends(2).await;
    let gw = gateway(&pool("p", &ups, "balance = \"least_conn\""));
    let addr = gw.addr;
    let slow = tokio::spawn(async move { raw(addr, &get("/slow", "")).await });
    let busy = eventually(Duration::from_secs(5), async || {
        ups[0].count() + ups[1].count() == 1
    })
    .await;
    assert!(busy, "the slow request never arrived");
    let busy_one = if ups[0].count() == 1 { "b0" } else { "b1" };
    for i in 0..5 {
        let r = raw(gw.addr, &get(&format!("/fast/{i}"), "")).await;
        assert_eq!(r.status, 200);
        assert_ne!(
            r.header("x-upstream"),
            Some(busy_one),
            "request {i} went to the busy backend"
        );
    }
    assert_eq!(slow.await.unwrap().status, 200);
}

#[test]
fn hash_key_without_consistent_hash_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.toml");
    std::fs::write(
        &p,
        "[upstreams.u]\nbackends = [\"127.0.0.1:1\"]\nhash_key = \"path\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("g.toml:3:12: upstreams.u.hash_key: hash_key only applies"));
}
