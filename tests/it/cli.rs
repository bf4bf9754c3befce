//! The command line: `--version`, `check`, and `run` refusing invalid configs.

use std::process::Command;

use crate::support::*;

/// Runs `tollgate SUBCOMMAND --config FILE` on `toml` written to a temp file.
fn tollgate(subcommand: &str, toml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gateway.toml");
    std::fs::write(&p, toml).unwrap();
    Command::new(bin())
        .args([subcommand, "--config"])
        .arg(&p)
        .output()
        .unwrap()
}

fn check(toml: &str) -> (i32, String, String) {
    let out = tollgate("check", toml);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_prints_the_version() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_accepts_a_valid_file_with_a_summary() {
    let (code, out, _) = check(
        "[upstreams.a]\nbackends = [\"127.0.0.1:9001\"]\n[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n",
    );
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "ok: 1 route, 1 upstream, 0 consumers");
}

#[test]
fn check_reports_every_error_with_line_and_column() {
    let (code, out, err) = check(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\nthredas = 2\n\n[upstreams.orders]\nbackends = [\"127.0.0.1:9001\"]\n\n\
         [routes.orders]\npaths = [\"/api/orders\"]\nupstream = \"order\"\n\n[routes.users]\npaths = [\"users\"]\nupstream = \"orders\"\n",
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty());
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].ends_with("gateway.toml:3:1: server.thredas: unknown field `thredas`, expected one of `listen`, `admin_listen`, `admin_token`, `threads`, `upgrade_sock`, `pid_file`, `grace_period`, `graceful_shutdown_timeout`, `allow_empty`, `trusted_proxies`, `access_log`, `limits`, `tls`, `redis`, `tracing`, `dns`, `outbound`, `cache`"), "{}", lines[0]);
    assert!(lines[1].ends_with(r#"gateway.toml:10:12: routes.orders.upstream: unknown upstream "order" (known: orders)"#), "{}", lines[1]);
    assert!(
        lines[2]
            .contains("gateway.toml:13:10: routes.users.paths: path \"users\" must start with '/'"),
        "{}",
        lines[2]
    );
}

const ONE_ROUTE: &str =
    "[upstreams.a]\nbackends = [\"127.0.0.1:9001\"]\n[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n";

#[test]
fn one_limit_set_alone_is_valid_and_a_conflict_names_the_key_written() {
    let (code, out, err) = check(&format!(
        "[server.limits]\nmax_header_bytes = \"4KiB\"\n{ONE_ROUTE}"
    ));
    assert_eq!(
        (code, out.trim()),
        (0, "ok: 1 route, 1 upstream, 0 consumers"),
        "{err}"
    );
    // both written and in conflict: the dependent key, where it is written
    let (code, _, err) = check(&format!(
        "[server.limits]\nmax_header_bytes = \"4KiB\"\nmax_uri_bytes = \"8KiB\"\n{ONE_ROUTE}"
    ));
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("gateway.toml:3:17: server.limits.max_uri_bytes: must be at most max_header_bytes (4096 bytes)"),
        "{err}"
    );
}

#[test]
fn check_reports_every_error_of_one_route_table_in_one_pass() {
    let (code, _, err) = check(
        "[upstreams.a]\nbackends = [\"127.0.0.1:9001\"]\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"b\"\ncolour = \"red\"\nweight = 2\n",
    );
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].contains("gateway.toml:5:12: routes.r.upstream: unknown upstream \"b\""),
        "{err}"
    );
    assert!(
        lines[1].contains("gateway.toml:6:1: routes.r.colour: unknown field `colour`"),
        "{err}"
    );
    assert!(
        lines[2].contains("gateway.toml:7:1: routes.r.weight: unknown field `weight`"),
        "{err}"
    );
}

#[test]
fn a_file_with_no_routes_fails_check_and_run_unless_allow_empty() {
    for toml in ["", "[server]\nlisten = [\"127.0.0.1:0\"]\n"] {
        let (code, _, err) = check(toml);
        assert_eq!(code, 1, "{toml:?}");
        assert!(err.contains("routes: the file declares no routes"), "{err}");
        let out = tollgate("run", toml);
        assert_eq!(out.status.code(), Some(1));
        assert!(!String::from_utf8_lossy(&out.stderr).contains("listening on"));
    }
    let (code, out, err) = check("[server]\nallow_empty = true\n");
    assert_eq!(
        (code, out.trim()),
        (0, "ok: 0 routes, 0 upstreams, 0 consumers"),
        "{err}"
    );
}

#[test]
fn check_on_a_missing_file_exits_2() {
    let out = Command::new(bin())
        .args(["check", "--config", "/nonexistent/tollgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tollgate.toml: cannot read")
    );
}

#[test]
fn run_with_an_invalid_config_never_starts() {
    let out = tollgate(
        "run",
        "[routes.r]\npaths = [\"/\"]\nupstream = \"missing\"\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes.r.upstream: unknown upstream \"missing\""),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
}

#[test]
fn bundled_examples_pass_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(bin())
                .args(["check", "--config"])
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn run_reports_a_busy_port_and_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let n = std::process::id();
    let out = tollgate(
        "run",
        &format!(
            "[server]\nlisten = [\"{addr}\"]\npid_file = \"/tmp/tg-busy-{n}.pid\"\nupgrade_sock = \"/tmp/tg-busy-{n}.sock\"\n{ONE_ROUTE}"
        ),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot listen on {addr}")));
}
