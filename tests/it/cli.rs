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
    assert!(lines[0].ends_with("gateway.toml:3:1: server.thredas: unknown field `thredas`, expected one of `listen`, `admin_listen`, `admin_token`, `threads`, `upgrade_sock`, `pid_file`, `grace_period`, `graceful_shutdown_timeout`, `trusted_proxies`, `access_log`, `limits`, `tls`, `redis`, `tracing`"), "{}", lines[0]);
    assert!(lines[1].ends_with(r#"gateway.toml:10:12: routes.orders.upstream: unknown upstream "order" (known: orders)"#), "{}", lines[1]);
    assert!(
        lines[2]
            .contains("gateway.toml:13:10: routes.users.paths: path \"users\" must start with '/'"),
        "{}",
        lines[2]
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
            "[server]\nlisten = [\"{addr}\"]\npid_file = \"/tmp/tg-busy-{n}.pid\"\nupgrade_sock = \"/tmp/tg-busy-{n}.sock\"\n"
        ),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot listen on {addr}")));
}
