//! The library's examples (`examples/*.rs`), each run on loopback against real upstreams,
//! using only the public API of the `tollgate` crate.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;

/// An example binary, built by cargo next to this test (`target/*/examples/NAME`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("examples");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: cargo test builds the examples of this package",
        path.display()
    );
    path
}

fn server_table(extra: &str) -> String {
    let n = format!("{}{}", std::process::id(), fastid());
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\naccess_log = \"off\"\n\
         pid_file = \"/tmp/tollgate-example-{n}.pid\"\nupgrade_sock = \"/tmp/tollgate-example-{n}.sock\"\n{extra}"
    )
}

/// Whether `url` answers 200 within 10 s (the program may still be starting).
async fn answers_200(url: &str) -> bool {
    eventually(Duration::from_secs(10), async || {
        client()
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await
}

/// Runs `program CONFIG` on `toml` and expects it to refuse the config: exit 1 with the
/// errors on stderr.
fn refused(program: &std::path::Path, toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gateway.toml");
    std::fs::write(&p, toml).unwrap();
    let out = std::process::Command::new(program)
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn minimal_serves_a_config_file() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start_program(
        &example("minimal"),
        &server_table(&format!(
            "admin_listen = \"127.0.0.1:0\"\n{}[routes.r]\npaths = [\"/api\"]\nupstream = \"a\"\n",
            upstream_table("a", &[up.addr])
        )),
        &[],
    );
    let (status, _, body) = get_json(&gw.url("/api/orders")).await;
    assert_eq!(status, 200);
    assert_eq!(body["upstream"], "a");
    assert_eq!(get_json(&gw.url("/other")).await.2["error"], "no_route");
    assert!(metrics_text(&gw).await.contains("route=\"r\""));
    let err = refused(
        &example("minimal"),
        "[routes.r]\npaths = [\"/\"]\nupstream = \"nope\"\n",
    );
    assert!(err.contains(":3:"), "{err}");
}

#[tokio::test]
async fn a_user_policy_is_enabled_from_toml_and_refuses_and_allows() {
    let up = Upstream::start("a").await;
    let program = example("custom_policy");
    let routes = |policy: &str| {
        format!(
            "{}[routes.orders]\npaths = [\"/orders\"]\nupstream = \"a\"\n\
             [routes.orders.policies.tenant]\n{policy}\
             [routes.open]\npaths = [\"/open\"]\nupstream = \"a\"\n",
            upstream_table("a", &[up.addr])
        )
    };
    let gw = Gateway::start_program(
        &program,
        &server_table(&routes(
            "allowed = [\"acme\", \"globex\"]\nforward_as = \"x-tenant-id\"\n",
        )),
        &[],
    );
    let r = raw(gw.addr, &get("/orders/1", "")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthorized");
    let r = raw(gw.addr, &get("/orders/1", "x-tenant: initech\r\n")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden");
    assert_eq!(up.count(), 0, "a refused request reached the upstream");

    let r = raw(gw.addr, &get("/orders/1", "x-tenant: globex\r\n")).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().unwrap().header("x-tenant-id"), Some("globex"));
    // a route without the policy is not affected by it
    assert_eq!(raw(gw.addr, &get("/open", "")).await.status, 200);

    // the policy's config errors carry line and column, like a built-in's
    let line_of = |toml: &str, start: &str| {
        1 + toml
            .lines()
            .position(|l| l.starts_with(start))
            .expect("line")
    };
    let toml = server_table(&routes("allowed = []\n"));
    let err = refused(&program, &toml);
    let want = format!(
        ":{}:1: routes.orders.policies.tenant.allowed: name at least one tenant",
        line_of(&toml, "allowed")
    );
    assert!(err.contains(&want), "{err}");
    let toml = server_table(&routes("allowed = [\"a\"]\ntenants = 1\n"));
    let err = refused(&program, &toml);
    let want = format!(
        ":{}:1: routes.orders.policies.tenant.tenants: unknown field `tenants`",
        line_of(&toml, "tenants")
    );
    assert!(err.contains(&want), "{err}");
    // the stock binary does not know the policy
    let e = check_fails(&server_table(&routes("allowed = [\"a\"]\n")));
    assert!(e.contains("tenant"), "{e}");
}

#[tokio::test]
async fn an_embedding_program_serves_its_own_proxy_beside_the_gateway() {
    let own_backend = Upstream::start("own").await;
    let gw_backend = Upstream::start("gw").await;
    let own_listen = closed_port().to_string();
    let gw = Gateway::start_program(
        &example("embed"),
        &server_table(&format!(
            "{}[routes.r]\npaths = [\"/api\"]\nupstream = \"gw\"\n",
            upstream_table("gw", &[gw_backend.addr])
        )),
        &[&own_listen, &own_backend.addr.to_string()],
    );
    let (status, _, body) = get_json(&gw.url("/api/x")).await;
    assert_eq!((status, body["upstream"].as_str()), (200, Some("gw")));
    assert_eq!(get_json(&gw.url("/elsewhere")).await.0, 404);

    let own = format!("http://{own_listen}/anything");
    assert!(
        answers_200(&own).await,
        "the program's own proxy does not answer"
    );
    let (_, _, body) = get_json(&own).await;
    assert_eq!(body["upstream"], "own");
    assert_eq!(gw_backend.count(), 1);
}

#[tokio::test]
async fn a_listener_that_cannot_bind_does_not_take_the_embedding_program_down() {
    let own_backend = Upstream::start("own").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let own_listen = closed_port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"{}\"]\naccess_log = \"off\"\n{}[routes.r]\npaths = [\"/\"]\nupstream = \"gw\"\n",
            taken.local_addr().unwrap(),
            upstream_table("gw", &[own_backend.addr])
        ),
    )
    .unwrap();
    let child = std::process::Command::new(example("embed"))
        .arg(&config)
        .args([&own_listen, &own_backend.addr.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    let own = format!("http://{own_listen}/still-here");
    assert!(
        answers_200(&own).await,
        "the program's own proxy went down with the gateway's listener"
    );
    assert!(child.0.try_wait().unwrap().is_none(), "the program exited");
    let _ = child.0.kill();
    let out = child.0.stderr.take().map(|mut e| {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut e, &mut s).unwrap();
        s
    });
    assert!(
        out.unwrap_or_default().contains("proxy: cannot listen on"),
        "the bind failure was not reported"
    );
}
