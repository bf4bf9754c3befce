//! Loading and validating the TOML configuration.
//!
//! Loading is two layers: [`file`] mirrors the TOML with serde (unknown keys rejected),
//! then `compile` resolves names, parses addresses, CIDRs and regexes, builds the
//! policies through the [`Registry`] and produces a [`Snapshot`]. Every error found is
//! reported, each with file, line, column and dotted key path; see [`ConfigError`].

pub mod diagnostic;
pub(crate) mod file;

mod compile;
pub(crate) mod dns;
pub(crate) mod health_check;
pub mod limits;
pub(crate) mod outbound;
mod redact;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use diagnostic::{ConfigError, ConfigErrors};

use crate::policy::Registry;
use crate::runtime::Snapshot;

/// Polls a future once; for work that completes on its first poll (static discovery).
pub(crate) fn now_or_never<F: std::future::Future>(f: F) -> Option<F::Output> {
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    /// Standard output.
    Stdout,
    /// Not written.
    Off,
    /// Appended to this file.
    File(PathBuf),
}

/// The `[server]` table, validated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerSettings {
    /// Plain HTTP listeners. Default: `127.0.0.1:8080`.
    pub listen: Vec<SocketAddr>,
    /// The admin listener, if any.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token for `/admin/*`, if any.
    pub admin_token: Option<String>,
    /// Worker threads per listener service. Default: 1.
    pub threads: usize,
    /// Socket for graceful upgrades. Default: `/tmp/tollgate.sock`.
    pub upgrade_sock: String,
    /// PID file. Default: `/tmp/tollgate.pid`.
    pub pid_file: String,
    /// How long a draining instance keeps accepting. Default: 5 s.
    pub grace_period: Duration,
    /// How long a draining instance waits for in-flight requests. Default: 10 s.
    pub graceful_shutdown_timeout: Duration,
    /// Whether a file with no routes is meant (else it is an error: a truncated write
    /// must not become "404 for everything"). Default: false.
    pub allow_empty: bool,
    /// Access log destination. Default: stdout.
    pub access_log: AccessLog,
    /// TLS listeners (`[[server.tls]]`).
    pub(crate) tls: Vec<crate::tls::TlsListener>,
    /// OTLP span export (`[server.tracing]`), if configured.
    pub(crate) tracing: Option<crate::otlp::TracingSettings>,
    /// Request-head limits and connection deadlines (`[server.limits]`).
    pub limits: limits::Limits,
    /// `[server.dns]`: how backend names are looked up.
    pub(crate) dns: crate::dns::Settings,
    /// `[server.outbound]`: the policies' HTTP client.
    pub(crate) outbound: crate::policy::outbound::Settings,
    /// `[server.cache]`: the response store's bounds (applied on reload).
    pub(crate) cache: crate::cache::Settings,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            admin_listen: None,
            admin_token: None,
            threads: 1,
            upgrade_sock: "/tmp/tollgate.sock".into(),
            pid_file: "/tmp/tollgate.pid".into(),
            grace_period: Duration::from_secs(5),
            graceful_shutdown_timeout: Duration::from_secs(10),
            allow_empty: false,
            access_log: AccessLog::Stdout,
            tls: Vec::new(),
            tracing: None,
            limits: limits::Limits::default(),
            dns: crate::dns::Settings::default(),
            outbound: Default::default(),
            cache: crate::cache::Settings::default(),
        }
    }
}

impl ServerSettings {
    /// The `[server]` keys whose value differs in `new` and that a running gateway applies
    /// only at a restart or upgrade (listeners, threads, files opened at start, the
    /// limits and timeouts its services were built with), as dotted paths. Everything
    /// else of a file (routes, upstreams, consumers, policies, `trusted_proxies`,
    /// `redis`, `allow_empty`) is applied by a reload.
    pub fn needs_restart(&self, new: &ServerSettings) -> Vec<&'static str> {
        let tls = |s: &ServerSettings| -> Vec<_> {
            s.tls
                .iter()
                .map(|t| {
                    let client = t.client.as_ref().map(|c| (c.ca_pem.clone(), c.optional));
                    (t.addr, t.files.clone(), client)
                })
                .collect()
        };
        [
            ("server.listen", self.listen != new.listen),
            ("server.admin_listen", self.admin_listen != new.admin_listen),
            ("server.admin_token", self.admin_token != new.admin_token),
            ("server.threads", self.threads != new.threads),
            ("server.upgrade_sock", self.upgrade_sock != new.upgrade_sock),
            ("server.pid_file", self.pid_file != new.pid_file),
            ("server.grace_period", self.grace_period != new.grace_period),
            (
                "server.graceful_shutdown_timeout",
                self.graceful_shutdown_timeout != new.graceful_shutdown_timeout,
            ),
            ("server.access_log", self.access_log != new.access_log),
            ("server.tls", tls(self) != tls(new)),
            ("server.tracing", self.tracing != new.tracing),
            // body_buffer_total and compress_streams apply to new requests on reload
            // (CROSSCUTTING.md 4.2)
            (
                "server.limits",
                limits::Limits {
                    body_buffer_total: new.limits.body_buffer_total,
                    compress_streams: new.limits.compress_streams,
                    ..self.limits
                } != new.limits,
            ),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}

/// A loaded, fully validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `[server]` table.
    pub server: ServerSettings,
    /// The file it was loaded from, if any.
    pub path: Option<PathBuf>,
    pub(crate) snapshot: Arc<Snapshot>,
}

/// What [`Config::load_resolving`] found.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Resolution {
    /// `N routes, N upstreams, N consumers` when the file is valid and every name
    /// resolves.
    pub summary: Option<String>,
    /// Every error of the file, then every name that does not resolve:
    /// `FILE:LINE:COL: upstreams.X.backends[I]: "NAME:PORT" does not resolve: CAUSE`.
    pub errors: Vec<String>,
    /// One line per name entry that resolved:
    /// `upstreams.X.backends[I]: NAME:PORT -> ADDR, …` (SRV addresses with
    /// `(priority P, weight W)`).
    pub resolved: Vec<String>,
}

/// Looks every name of `upstreams` up once: (resolved lines, unresolved errors).
fn resolve_upstreams(
    upstreams: std::collections::BTreeMap<String, Arc<crate::runtime::Upstream>>,
    dns: &crate::dns::Settings,
) -> (Vec<String>, Vec<String>) {
    if !upstreams.values().any(|u| u.has_names()) {
        return (Vec::new(), Vec::new());
    }
    let snap = Arc::new(Snapshot {
        identity_headers: Box::default(),
        router: crate::router::Router::new(Vec::new()),
        routes: Vec::new(),
        upstreams,
        consumers: Arc::default(),
        trusted_proxies: Vec::new(),
        digest: String::new(),
        redacted: serde_json::Value::Null,
        loaded_at: std::time::SystemTime::now(),
        states: Default::default(),
        outbound: Default::default(),
    });
    let discovery = Arc::new(crate::discovery::Discovery::new(
        dns,
        crate::metrics::Metrics::new(),
    ));
    // every lookup ends within its own bound; the hour only bounds the wait
    if let Err(e) = discovery.prepare_blocking(snap.clone(), Duration::from_secs(3600)) {
        return (Vec::new(), vec![format!("the lookups could not run: {e}")]);
    }
    let reports: Vec<_> = snap
        .upstreams
        .values()
        .filter(|u| u.has_names())
        .flat_map(|u| discovery.report(u))
        .collect();
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for r in reports {
        if r.addresses.is_empty() {
            let cause = match (r.result, r.srv.is_some()) {
                ("ok", true) => "no target resolves".to_string(),
                ("ok", false) => "no usable address".to_string(),
                ("pending", _) => "TIMEOUT".to_string(),
                (other, _) => other.to_uppercase(),
            };
            errors.push(format!(
                "{}: {}: {:?} does not resolve: {cause}",
                r.place, r.path, r.name
            ));
            continue;
        }
        let addrs: Vec<String> = r
            .detail
            .iter()
            .map(|(a, priority, weight)| match priority {
                Some(p) => format!("{a} (priority {p}, weight {weight})"),
                None => a.to_string(),
            })
            .collect();
        ok.push(format!("{}: {} -> {}", r.path, r.name, addrs.join(", ")));
    }
    (ok, errors)
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is invalid.
    #[error("{0}")]
    Invalid(#[source] ConfigErrors),
    /// A library policy was registered under a built-in policy's name (any file is
    /// refused with such a registry).
    #[error("policy name {} is reserved for a built-in policy; register the policy under another name", .0.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "))]
    ReservedName(Vec<String>),
}

/// Refuses a registry that was asked to register a reserved name.
fn check_registry(registry: &Registry) -> Result<(), LoadError> {
    match registry.reserved_taken() {
        [] => Ok(()),
        taken => Err(LoadError::ReservedName(taken.to_vec())),
    }
}

impl Config {
    /// Reads and validates a file with the built-in policies.
    ///
    /// # Errors
    /// [`LoadError::Unreadable`] or [`LoadError::Invalid`] with every error found.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        Self::load_with(path, &Registry::with_builtins())
    }

    /// Reads and validates a file, building policies from `registry`.
    ///
    /// # Errors
    /// [`LoadError::Unreadable`] or [`LoadError::Invalid`] with every error found.
    pub fn load_with(path: impl AsRef<Path>, registry: &Registry) -> Result<Self, LoadError> {
        Self::reload_from(path.as_ref(), registry, None)
    }

    /// `tollgate check --config FILE --resolve` (fleet.md §13.7): checks the file as
    /// [`Config::load_with`] does and looks every backend name up once, with
    /// `[server.dns]` and as `run` would (hosts file, search list, `ip_family`, blocked
    /// ranges). A name that yields no usable address is an error at its entry, beside
    /// every other error of the file. Blocks until every lookup has ended (each is
    /// bounded by `timeout` × `attempts` × resolvers per search candidate).
    ///
    /// # Errors
    /// [`LoadError::Unreadable`]; every other error is in the [`Resolution`].
    pub fn load_resolving(
        path: impl AsRef<Path>,
        registry: &Registry,
    ) -> Result<Resolution, LoadError> {
        check_registry(registry)?;
        let path = path.as_ref();
        let src = std::fs::read_to_string(path).map_err(|source| LoadError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut partial = compile::Partial::default();
        let file = path.display().to_string();
        let compiled = compile::compile_keeping(&src, &file, dir, registry, None, &mut partial);
        let mut out = Resolution::default();
        match compiled {
            Ok((server, snapshot)) => {
                let config = Self {
                    server,
                    path: Some(path.to_path_buf()),
                    snapshot: Arc::new(snapshot),
                };
                out.summary = Some(config.summary());
            }
            Err(errors) => out.errors = errors.errors().iter().map(|e| e.to_string()).collect(),
        }
        if let Some(dns) = &partial.dns {
            let (resolved, unresolved) = resolve_upstreams(partial.upstreams, dns);
            out.resolved = resolved;
            out.errors.extend(unresolved);
        }
        if !out.errors.is_empty() {
            out.summary = None;
        }
        Ok(out)
    }

    /// Like [`Config::load_with`], for a reload of `prior`: active health state of
    /// upstreams whose check is unchanged carries over.
    pub(crate) fn reload_from(
        path: &Path,
        registry: &Registry,
        prior: Option<&Snapshot>,
    ) -> Result<Self, LoadError> {
        check_registry(registry)?;
        let src = std::fs::read_to_string(path).map_err(|source| LoadError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let (server, snapshot) =
            compile::compile(&src, &path.display().to_string(), dir, registry, prior)
                .map_err(LoadError::Invalid)?;
        let mut config = Self {
            server,
            path: None,
            snapshot: Arc::new(snapshot),
        };
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Validates configuration text. `file` names it in errors; relative paths in the
    /// config are resolved against `config_dir`.
    ///
    /// ```
    /// use std::path::Path;
    /// use tollgate::{policy::Registry, Config};
    ///
    /// let ok = "[upstreams.a]\nbackends = [\"127.0.0.1:9001\"]\n\
    ///           [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n";
    /// let config = Config::parse(ok, "g.toml", Path::new("."), &Registry::with_builtins()).unwrap();
    /// assert_eq!(config.summary(), "1 route, 1 upstream, 0 consumers");
    ///
    /// let bad = "[routes.r]\npaths = [\"/\"]\nupstream = \"missing\"\n";
    /// let errors = Config::parse(bad, "g.toml", Path::new("."), &Registry::with_builtins())
    ///     .unwrap_err();
    /// assert!(errors.to_string().starts_with("g.toml:3:12: routes.r.upstream:"));
    /// ```
    ///
    /// # Errors
    /// Every error found, in file order.
    pub fn parse(
        src: &str,
        file: &str,
        config_dir: &Path,
        registry: &Registry,
    ) -> Result<Self, ConfigErrors> {
        let (server, snapshot) = compile::compile(src, file, config_dir, registry, None)?;
        Ok(Self {
            server,
            path: None,
            snapshot: Arc::new(snapshot),
        })
    }

    /// The compiled routes, upstreams and consumers.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// `N routes, N upstreams, N consumers`.
    pub fn summary(&self) -> String {
        let s = &self.snapshot;
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        format!(
            "{}, {}, {}",
            plural(s.routes.len(), "route"),
            plural(s.upstreams.len(), "upstream"),
            plural(s.consumers.len(), "consumer")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_that_took_a_built_in_name_loads_no_file() {
        #[derive(serde::Deserialize)]
        struct Mine {}
        struct P;
        impl crate::policy::Policy for P {}
        impl crate::policy::PolicyConfig for Mine {
            type Policy = P;
            fn build(
                self,
                _: &crate::policy::BuildCtx<'_>,
            ) -> Result<P, crate::policy::BuildError> {
                Ok(P)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(
            &path,
            "[upstreams.u]\nbackends = [\"127.0.0.1:1\"]\n[routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n\
             [routes.r.policies.rate_limit]\nrequests = 1\n",
        )
        .unwrap();
        let mut r = Registry::with_builtins();
        r.register::<Mine>("mine")
            .register::<Mine>("rate_limit")
            .register::<Mine>("cache");
        let e = Config::load_with(&path, &r).unwrap_err();
        assert_eq!(
            e.to_string(),
            "policy name `rate_limit`, `cache` is reserved for a built-in policy; \
             register the policy under another name"
        );
        // the built-in stays what the name means
        assert!(r.names().any(|n| n == "mine"));
        let r = Registry::with_builtins();
        assert!(Config::load_with(&path, &r).is_ok());
    }

    fn parse(src: &str) -> Result<Config, ConfigErrors> {
        Config::parse(src, "gw.toml", Path::new("."), &Registry::with_builtins())
    }

    /// `src` with one route more (a file needs one), in tables of its own at the end.
    fn with_route(src: &str) -> String {
        format!("{src}\n[upstreams.zz]\nbackends = [\"127.0.0.1:1\"]\n[routes.zz]\npaths = [\"/zz\"]\nupstream = \"zz\"\n")
    }

    fn errors(src: &str) -> Vec<String> {
        parse(src)
            .unwrap_err()
            .errors()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    const OK: &str = r#"
[server]
listen = ["127.0.0.1:8080"]
trusted_proxies = ["10.0.0.0/8", "192.168.1.1"]

[upstreams.orders]
backends = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 3 }]
connect_timeout = "250ms"

[upstreams.users]
backends = ["127.0.0.1:9003"]

[consumers.alice]
api_keys = ["k-alice-1"]
groups = ["partners"]

[routes.orders]
paths = ["/api/orders", "=/orders"]
methods = ["get", "POST"]
hosts = ["api.example.com", "*.example.com"]
headers = { "x-api-version" = "2" }
upstream = "orders"
strip_prefix = true
rewrite = { regex = "^/(.*)", to = "/v1/$1" }

[routes.orders.policies.request_headers]
set = { "x-env" = "prod" }

[policies.response_headers]
remove = ["server"]
"#;

    #[test]
    fn valid_config_compiles() {
        let c = parse(OK).unwrap();
        assert_eq!(c.summary(), "1 route, 2 upstreams, 1 consumer");
        let route = &c.snapshot.routes[0];
        assert_eq!(
            route.chain.names().collect::<Vec<_>>(),
            ["request_headers", "response_headers"]
        );
        assert_eq!(route.upstream.connect_timeout, Duration::from_millis(250));
        let second = &route.upstream.entries[1];
        assert_eq!((&*second.written, second.weight), ("127.0.0.1:9002", 3));
    }

    #[test]
    fn reports_every_error_with_line_column_and_path() {
        let src = r#"[upstreams.orders]
backends = ["127.0.0.1:9001"]

[upstreams.users]
backends = ["nope"]

[routes.a]
paths = ["/a"]
upstream = "order"

[routes.b]
paths = ["/b"]
upstream = "orders"
colour = "red"
"#;
        let e = errors(src);
        assert_eq!(e.len(), 3, "{e:#?}");
        assert_eq!(
            e[0],
            r#"gw.toml:5:13: upstreams.users.backends[0]: invalid backend address "nope": missing port: expected HOST:PORT"#
        );
        assert_eq!(
            e[1],
            r#"gw.toml:9:12: routes.a.upstream: unknown upstream "order" (known: orders, users)"#
        );
        assert!(
            e[2].starts_with("gw.toml:14:1: routes.b.colour: unknown field `colour`"),
            "{}",
            e[2]
        );
    }

    #[test]
    fn every_error_of_one_table_is_reported_unknown_keys_and_values_alike() {
        let src = "[upstreams.u]\nbackends = [\"127.0.0.1:1\"]\n\
                   [routes.r]\npaths = [\"/\"]\nupstream = \"nope\"\ncolour = \"red\"\nsize = 3\n\
                   [routes.r.policies.rate_limit]\nrequests = 5\nwindw = \"1s\"\nbi = \"route\"\n";
        let e = errors(src);
        assert_eq!(e.len(), 5, "{e:#?}");
        // in file order
        assert_eq!(
            e[0],
            r#"gw.toml:5:12: routes.r.upstream: unknown upstream "nope" (known: u)"#
        );
        assert!(
            e[1].starts_with("gw.toml:6:1: routes.r.colour: unknown field `colour`"),
            "{}",
            e[1]
        );
        assert!(
            e[2].starts_with("gw.toml:7:1: routes.r.size: unknown field `size`"),
            "{}",
            e[2]
        );
        assert!(
            e[3].contains("routes.r.policies.rate_limit.windw: unknown field `windw`"),
            "{}",
            e[3]
        );
        assert!(
            e[4].contains("routes.r.policies.rate_limit.bi: unknown field `bi`"),
            "{}",
            e[4]
        );
    }

    #[test]
    fn a_key_taken_out_for_its_error_raises_no_error_about_its_default() {
        // balance misspelt: hash_key must not be reported as needing consistent_hash;
        // tls of the wrong type: ca_file must not be reported as needing tls
        let src = "[upstreams.u]\nbackends = [\"127.0.0.1:1\"]\nbalance = \"consistent_hsh\"\n\
                   hash_key = \"client_ip\"\n[routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n";
        let e = errors(src);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].contains("upstreams.u.balance"), "{}", e[0]);
        // an error elsewhere in [server] does not hide allow_empty
        let e = errors("[server]\nallow_empty = true\nthredas = 2\n");
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].contains("server.thredas: unknown field"), "{}", e[0]);
    }

    #[test]
    fn a_missing_required_key_is_reported_beside_a_bad_one() {
        let src = "[upstreams.u]\nbackends = [\"127.0.0.1:1\"]\n[routes.r]\npaths = \"/\"\n";
        let e = errors(src);
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e.iter().any(|l| l.contains("routes.r.paths")), "{e:#?}");
        assert!(
            e.iter()
                .any(|l| l.contains("routes.r: missing field `upstream`")),
            "{e:#?}"
        );
    }

    #[test]
    fn a_required_key_with_a_bad_value_is_reported_once_not_also_as_missing() {
        let src = "[upstreams.u]\nbackends = [\"127.0.0.1:1\"]\n\
                   [routes.r]\npaths = 5\nupstream = \"u\"\nextra = 1\n";
        let e = errors(src);
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].contains("routes.r.paths"), "{}", e[0]);
        assert!(!e.iter().any(|l| l.contains("missing field")), "{e:#?}");
        assert!(
            e[1].contains("routes.r.extra: unknown field `extra`"),
            "{}",
            e[1]
        );
    }

    #[test]
    fn policy_errors_point_inside_the_policy_table() {
        let src = "[upstreams.u]\nbackends = [\"127.0.0.1:1\"]\n[routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n\
                   [routes.r.policies.request_headers]\nsett = {}\n[routes.r.policies.nope]\n";
        let e = errors(src);
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e[0].starts_with(
                "gw.toml:7:1: routes.r.policies.request_headers.sett: unknown field `sett`"
            ),
            "{}",
            e[0]
        );
        assert!(
            e[1].starts_with("gw.toml:8:20: routes.r.policies.nope: unknown policy `nope` (known:"),
            "{}",
            e[1]
        );
    }

    #[test]
    fn build_errors_point_at_the_field() {
        let src = "[upstreams.u]\nbackends = [\"127.0.0.1:1\"]\n[routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n\
                   [routes.r.policies.request_headers]\nset = { \"bad name\" = \"x\" }\n";
        let e = errors(src);
        assert_eq!(
            e,
            [
                r#"gw.toml:7:1: routes.r.policies.request_headers.set: invalid header name "bad name""#
            ]
        );
    }

    #[test]
    fn syntax_errors_are_located() {
        let e = errors("[server\nlisten = 1");
        assert!(e[0].starts_with("gw.toml:1:"), "{e:?}");
    }

    #[test]
    fn rejects_bad_values() {
        let e = errors(
            "[server]\nlisten = [\"localhost\"]\nthreads = 0\ntrusted_proxies = [\"10.0.0.0/33\"]\n\
             [upstreams.u]\nbackends = []\nconnect_timeout = 5\n[upstreams.\"bad name\"]\nbackends = [\"127.0.0.1:1\"]\n\
             [routes.r]\npaths = [\"api\"]\nmethods = [\"G T\"]\nhosts = [\"a.com:80\"]\nupstream = \"u\"\nrewrite = { regex = \"(\", to = \"\" }\n\
             [nonsense]\n",
        );
        let joined = e.join("\n");
        for needle in [
            "server.listen: invalid listen address \"localhost\"",
            "server.threads: threads must be at least 1",
            "server.trusted_proxies: invalid CIDR",
            "upstreams.u.connect_timeout: durations need a unit",
            "invalid name \"bad name\"",
            "nonsense: unknown top-level table",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn route_value_errors_are_all_reported() {
        let e = errors(
            "[upstreams.u]\nbackends = [\"127.0.0.1:1\"]\n[routes.r]\npaths = [\"api\"]\nmethods = [\"G T\"]\n\
             hosts = [\"a.com:80\"]\nupstream = \"u\"\nrewrite = { regex = \"(\", to = \"\" }\n",
        );
        let joined = e.join("\n");
        for needle in [
            "routes.r.paths",
            "routes.r.methods",
            "routes.r.hosts",
            "routes.r.rewrite.regex: invalid regex",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn a_file_with_no_routes_is_an_error_unless_it_says_it_is_meant() {
        for src in [
            "",
            "[server]\nlisten = [\"127.0.0.1:8080\"]\n",
            "[upstreams.u]\nbackends = [\"127.0.0.1:1\"]\n",
        ] {
            let e = errors(src);
            assert_eq!(e.len(), 1, "{src:?}: {e:#?}");
            assert!(
                e[0].starts_with("gw.toml:1:1: routes: the file declares no routes"),
                "{}",
                e[0]
            );
        }
        let c = parse("[server]\nallow_empty = true\n").expect("an empty gateway, as meant");
        assert_eq!(c.summary(), "0 routes, 0 upstreams, 0 consumers");
        assert!(c.server.allow_empty);
    }

    #[test]
    fn unsupported_features_are_errors_not_silently_ignored() {
        let e = errors(&with_route("[server.limits]\nmax_headers = 1000\n"));
        assert!(
            e[0].starts_with("gw.toml:2:15: server.limits.max_headers: must be between 1 and 256"),
            "{e:?}"
        );
    }

    fn reparse(src: &str, prior: &Snapshot) -> Snapshot {
        compile::compile(
            src,
            "gw.toml",
            Path::new("."),
            &Registry::with_builtins(),
            Some(prior),
        )
        .unwrap()
        .1
    }

    fn health_of(s: &Snapshot) -> Vec<(String, bool)> {
        s.upstreams["u"]
            .backend_health()
            .into_iter()
            .map(|b| (b.addr.to_string(), b.healthy))
            .collect()
    }

    #[test]
    fn a_reload_keeps_the_counters_of_backends_that_stay() {
        // CROSSCUTTING.md §7.4: passive health and in-flight counts follow the address
        let src = |backends: &str| {
            format!(
                "[upstreams.u]\nbackends = [{backends}]\nbalance = \"least_conn\"\n\
                 [routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n"
            )
        };
        let first = parse(&src("\"10.0.0.1:80\", \"10.0.0.2:80\"")).unwrap();
        let before = &first.snapshot.upstreams["u"];
        let stats = |u: &crate::runtime::Upstream, a: &str| {
            u.endpoints.current().by_addr[&a.parse::<SocketAddr>().unwrap()]
                .stats
                .clone()
        };
        before.passive.failed(&stats(before, "10.0.0.1:80"));
        let second = reparse(&src("\"10.0.0.1:80\", \"10.0.0.3:80\""), &first.snapshot);
        let after = &second.upstreams["u"];
        assert!(Arc::ptr_eq(
            &stats(before, "10.0.0.1:80"),
            &stats(after, "10.0.0.1:80")
        ));
        assert_eq!(
            stats(after, "10.0.0.1:80")
                .fails
                .load(std::sync::atomic::Ordering::Acquire),
            1
        );
        assert_eq!(
            stats(after, "10.0.0.3:80")
                .fails
                .load(std::sync::atomic::Ordering::Acquire),
            0,
            "a new backend starts afresh"
        );
    }

    #[tokio::test]
    async fn a_reload_keeps_the_health_of_backends_that_stay_under_an_unchanged_check() {
        // a port nothing listens on: bound, then closed
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let live_addr = live.local_addr().unwrap();
        let src = |backends: &str, kind: &str| {
            format!(
                "[upstreams.u]\nbackends = [{backends}]\n[upstreams.u.health_check]\n\
                 kind = \"{kind}\"\nunhealthy_after = 1\n\
                 [routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n"
            )
        };
        let first = parse(&src(&format!("\"{dead}\""), "tcp")).unwrap();
        let s1 = first.snapshot();
        s1.upstreams["u"]
            .selector
            .backends()
            .run_health_check(false)
            .await;
        assert_eq!(health_of(s1), [(dead.to_string(), false)]);

        // same check, one more backend: the dead one stays unhealthy, the new one starts healthy
        let both = src(&format!("\"{dead}\", \"{live_addr}\""), "tcp");
        let s2 = reparse(&both, s1);
        let mut h = health_of(&s2);
        h.sort();
        let mut want = vec![(dead.to_string(), false), (live_addr.to_string(), true)];
        want.sort();
        assert_eq!(h, want);

        // a changed check starts from scratch
        let s3 = reparse(&src(&format!("\"{dead}\""), "http"), &s2);
        assert_eq!(health_of(&s3), [(dead.to_string(), true)]);
        drop(live);
    }

    #[test]
    fn key_material_must_be_a_small_regular_file() {
        let e = errors(
            "[upstreams.u]\nbackends = [\"127.0.0.1:1\"]\n[routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n\
             [routes.r.policies.jwt_auth]\nalgorithms = [\"RS256\"]\npublic_key_file = \"/dev/zero\"\n",
        );
        assert!(e[0].contains("/dev/zero is not a regular file"), "{e:?}");
        let e = errors(&with_route("[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{ cert = \"/dev/zero\", key = \"/dev/null\" }]\n"));
        assert!(e[0].contains("not a regular file"), "{e:?}");
    }

    #[test]
    fn tracing_needs_a_plain_http_collector() {
        let c = parse(&with_route(
            "[server.tracing]\notlp_endpoint = \"http://127.0.0.1:4317\"\n",
        ))
        .unwrap();
        let t = c.server.tracing.unwrap();
        assert_eq!(t.service_name, "tollgate");
        assert_eq!(t.timeout, std::time::Duration::from_secs(2));
        let e = errors(&with_route(
            "[server.tracing]\notlp_endpoint = \"https://c:4317\"\n",
        ));
        assert!(
            e[0].starts_with("gw.toml:2:17: server.tracing.otlp_endpoint: https"),
            "{e:?}"
        );
        let e = errors(&with_route("[server.tracing]\nservice_name = \"x\"\n"));
        assert!(e[0].contains("otlp_endpoint"), "{e:?}");
    }

    #[test]
    fn duplicate_api_keys_are_refused() {
        let e = errors(&with_route(
            "[consumers.a]\napi_keys = [\"k\"]\n[consumers.b]\napi_keys = [\"k\"]\n",
        ));
        assert!(e[0].contains("already given to consumer \"a\""), "{e:?}");
        assert!(
            !e[0].contains("\"k\""),
            "the key itself must not be echoed: {e:?}"
        );
    }

    #[test]
    fn routes_keep_declaration_order() {
        let c = parse(
            "[upstreams.u]\nbackends = [\"127.0.0.1:1\"]\n[routes.zeta]\npaths = [\"/\"]\nupstream = \"u\"\n\
             [routes.alpha]\npaths = [\"/\"]\nupstream = \"u\"\n",
        )
        .unwrap();
        assert_eq!(
            c.snapshot.route_names().collect::<Vec<_>>(),
            ["zeta", "alpha"]
        );
    }

    #[test]
    fn every_example_config_compiles() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                Config::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 1);
    }
}
