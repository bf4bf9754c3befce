//! From the parsed TOML document to a [`Snapshot`], collecting every error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use pingora::lb::discovery::Static;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::{Backends, HealthRegistry, LoadBalancer};
use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::diagnostic::{join, Diagnostics};
use super::file::{BackendFile, ConsumerFile, RouteFile, ServerFile, UpstreamFile};
use super::{AccessLog, ConfigErrors, ServerSettings};
use crate::balance::{Balance, Passive, Selector};
use crate::consumer::{Consumer, Consumers, PasswordHash};
use crate::dns::HostPort;
use crate::endpoint::{
    BackendEntry, CheckHosts, Discover, EndpointSet, Endpoints, Target, UpstreamShape, Want,
};
use crate::health::PerHostCheck;
use crate::policy::outbound::Outbound;
use crate::policy::state::{StateCx, StatesBuilder};
use crate::policy::{BoxPolicy, BuildCtx, Chain, ConsumerPolicies, Failure, Registry};
use crate::request_key::RequestKey;
use crate::router::{HostMatch, PathPattern, RouteSpec, Router};
use crate::runtime::{Route, Snapshot, Upstream};
use crate::store::RedisStore;

const TOP_LEVEL: &[&str] = &["server", "upstreams", "consumers", "routes", "policies"];

type Value<'a> = Spanned<DeValue<'a>>;

struct Ctx<'a> {
    diags: Diagnostics<'a>,
    registry: &'a Registry,
    config_dir: &'a Path,
    redis: Option<Arc<RedisStore>>,
    /// The running configuration, on a reload: health state of unchanged checks carries over.
    prior: Option<&'a Snapshot>,
    /// `server.dns.ip_family`, for upstreams that do not set their own.
    dns_family: crate::dns::IpFamily,
    /// The names of every `[upstreams.*]` table, for policies that choose one.
    upstream_names: BTreeSet<String>,
    /// The policies' state, handed over from `prior`'s.
    states: StatesBuilder<'a>,
    /// The policies' HTTP client, kept across reloads while `[server.outbound]` is.
    outbound: Option<Arc<Outbound>>,
    /// Whether a `[[server.tls]]` listener asks for client certificates (true when
    /// `[server]` itself failed, so that its errors are not repeated at policies).
    client_certs: bool,
}

pub(super) fn compile(
    src: &str,
    file: &str,
    config_dir: &Path,
    registry: &Registry,
    prior: Option<&Snapshot>,
) -> Result<(ServerSettings, Snapshot), ConfigErrors> {
    compile_keeping(
        src,
        file,
        config_dir,
        registry,
        prior,
        &mut Partial::default(),
    )
}

/// What a check got to before the errors of its file: the upstreams that are valid
/// and `[server.dns]`, for `check --resolve` (fleet.md §13.7: a name that does not
/// resolve is reported with every other error of the file).
#[derive(Debug, Default)]
pub(super) struct Partial {
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// `None` when `[server]` itself is invalid.
    pub dns: Option<crate::dns::Settings>,
}

/// [`compile`], filling `partial` whether or not the file is valid.
pub(super) fn compile_keeping(
    src: &str,
    file: &str,
    config_dir: &Path,
    registry: &Registry,
    prior: Option<&Snapshot>,
    partial: &mut Partial,
) -> Result<(ServerSettings, Snapshot), ConfigErrors> {
    let (doc, syntax) = DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        let mut d = Diagnostics::new(file, src);
        syntax.iter().for_each(|e| d.toml(e, ""));
        return Err(d.into_errors());
    }
    let doc_ref: &DeTable<'_> = doc.get_ref();
    let mut cx = Ctx {
        diags: Diagnostics::new(file, src),
        registry,
        config_dir,
        redis: None,
        prior,
        dns_family: Default::default(),
        upstream_names: BTreeSet::new(),
        states: StatesBuilder::new(prior.map(|p| &p.states)),
        outbound: None,
        client_certs: false,
    };
    cx.diags.set_root(doc_ref);

    let mut sections: HashMap<&str, &Value<'_>> = HashMap::new();
    for (k, v) in doc_ref.iter() {
        let key = k.get_ref().as_ref();
        if TOP_LEVEL.contains(&key) {
            sections.insert(
                TOP_LEVEL[TOP_LEVEL.iter().position(|t| *t == key).unwrap_or(0)],
                v,
            );
        } else {
            cx.diags.at(
                k.span(),
                key,
                format!(
                    "unknown top-level table `{key}` (expected one of: {})",
                    TOP_LEVEL.join(", ")
                ),
            );
        }
    }

    let server = match sections.get("server") {
        Some(v) => server_settings(&mut cx, v),
        None => Some((ServerSettings::default(), Vec::new())),
    };
    if let Some((s, _)) = &server {
        cx.dns_family = s.dns.ip_family;
    }
    cx.client_certs = server
        .as_ref()
        .is_none_or(|(s, _)| s.tls.iter().any(|t| t.client.is_some()));
    let outbound_settings = server
        .as_ref()
        .map(|(s, _)| s.outbound.clone())
        .unwrap_or_default();
    let outbound = cx.states.shared(&outbound_settings, || {
        Outbound::new(outbound_settings.clone())
    });
    cx.outbound = Some(outbound.clone());
    let (trusted, server) = match server {
        Some((s, t)) => (t, Some(s)),
        None => (Vec::new(), None),
    };

    let upstreams = named_tables(&mut cx, sections.get("upstreams").copied(), "upstreams")
        .into_iter()
        .filter_map(|(name, v, _)| upstream(&mut cx, &name, v).map(|u| (name, Arc::new(u))))
        .collect::<BTreeMap<_, _>>();
    let upstream_names: BTreeSet<String> = named_tables_names(sections.get("upstreams").copied());
    cx.upstream_names = upstream_names.clone();
    // what policies may send a request to (`Policy::upstream_peer`)
    let all_upstreams = Arc::new(upstreams.clone());

    let (consumers, consumer_policies) = consumers(&mut cx, sections.get("consumers").copied());
    let consumer_policies = Arc::new(consumer_policies);

    let defaults = policies(
        &mut cx,
        sections.get("policies").copied(),
        "policies",
        Scope {
            route: None,
            params: &[],
            consumers: Some(&consumers),
        },
    );

    let mut specs = Vec::new();
    let mut routes = Vec::new();
    for (name, v, _) in named_tables(&mut cx, sections.get("routes").copied(), "routes") {
        if let Some((spec, route)) = route(
            &mut cx,
            &name,
            v,
            &all_upstreams,
            &upstream_names,
            &defaults,
            &consumer_policies,
            &consumers,
        ) {
            specs.push(spec);
            routes.push(Arc::new(route));
        }
    }

    // as written: an error elsewhere in [server] must not make it read as false
    let allow_empty = sections
        .get("server")
        .and_then(|v| v.get_ref().as_table()?.get("allow_empty"))
        .is_some_and(|v| matches!(v.get_ref(), DeValue::Boolean(true)));
    if named_tables_names(sections.get("routes").copied()).is_empty() && !allow_empty {
        let at = sections.get("routes").map_or(0..0, |v| v.span());
        cx.diags.at(
            at,
            "routes",
            "the file declares no routes, so every request would get 404 (a truncated \
             write?); set `[server] allow_empty = true` if that is meant",
        );
    }

    let mut h = std::collections::hash_map::DefaultHasher::new();
    src.hash(&mut h);
    let digest = format!("{:016x}", h.finish());
    partial.upstreams = upstreams.clone();
    partial.dns = server.as_ref().map(|s| s.dns.clone());
    cx.diags.finish()?;
    let server = server.unwrap_or_default();
    let mut identity_headers: Vec<http::HeaderName> = routes
        .iter()
        .flat_map(|r| r.chain.identity_headers())
        .collect();
    identity_headers.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    identity_headers.dedup();
    let snapshot = Snapshot {
        identity_headers: identity_headers.into(),
        router: Router::new(specs),
        routes,
        upstreams,
        consumers: Arc::new(consumers),
        trusted_proxies: trusted,
        digest,
        redacted: super::redact::redacted_config(src),
        loaded_at: SystemTime::now(),
        states: cx.states.finish(),
        outbound,
    };
    Ok((server, snapshot))
}

/// Deserialises a table strictly, reporting every error in it (see [`strictly`]).
fn deser<T: DeserializeOwned>(cx: &mut Ctx<'_>, v: &Value<'_>, path: &str) -> Option<T> {
    deser_noting(cx, v, path).map(|(t, _)| t)
}

/// [`deser`], with the keys taken out for their errors: checks that relate a key to
/// one of them are skipped (its value is a default, not what the file says).
fn deser_noting<T: DeserializeOwned>(
    cx: &mut Ctx<'_>,
    v: &Value<'_>,
    path: &str,
) -> Option<(T, Vec<String>)> {
    let mut removed = Vec::new();
    let t = strictly(&mut cx.diags, v, path, &mut removed, |v| {
        T::deserialize(v.into_deserializer())
    })?;
    Some((t, removed))
}

/// Runs `parse` on a table and reports every error in it, not only the first: the
/// entry an error points at is reported, taken out, and the rest parsed again (a
/// required key taken out this way is not reported missing). Once the rest parses, its
/// value lets the caller check it further: the file is invalid anyway.
fn strictly<'a, T>(
    diags: &mut Diagnostics<'_>,
    v: &Value<'a>,
    path: &str,
    removed: &mut Vec<String>,
    mut parse: impl FnMut(Value<'a>) -> Result<T, toml::de::Error>,
) -> Option<T> {
    /// Enough for any real table; a bound for a hostile one.
    const MAX_ERRORS: usize = 64;
    let mut v = v.clone();
    for _ in 0..MAX_ERRORS {
        match parse(v.clone()) {
            Ok(t) => return Some(t),
            Err(e) => {
                let follows = removed
                    .iter()
                    .any(|k| e.message().contains(&format!("missing field `{k}`")));
                if !follows {
                    diags.toml(&e, path);
                }
                match e.span().and_then(|at| remove_entry_at(&mut v, &at)) {
                    Some(key) if !follows => removed.push(key),
                    _ => return None,
                }
            }
        }
    }
    None
}

/// Takes out the deepest table entry whose key or value holds `at`; returns its key.
fn remove_entry_at(v: &mut Value<'_>, at: &Range<usize>) -> Option<String> {
    let inside = |s: Range<usize>| s.start <= at.start && at.end <= s.end && s.start < s.end;
    let DeValue::Table(t) = v.get_mut() else {
        return None;
    };
    let mut hit = None;
    for (k, val) in t.iter_mut() {
        // a table opened by a `[a.b]` header has the header's span, not its contents'
        if inside(val.span()) || matches!(val.get_ref(), DeValue::Table(_)) {
            if let Some(deeper) = remove_entry_at(val, at) {
                return Some(deeper);
            }
        }
        if inside(k.span()) || inside(val.span()) {
            hit = Some(k.get_ref().to_string());
            break;
        }
    }
    let key = hit?;
    t.remove(key.as_str());
    Some(key)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn named_tables_names(v: Option<&Value<'_>>) -> BTreeSet<String> {
    v.and_then(|v| v.get_ref().as_table())
        .map(|t| t.iter().map(|(k, _)| k.get_ref().to_string()).collect())
        .unwrap_or_default()
}

/// The entries of `[section.NAME]` tables, in file order, with valid names.
fn named_tables<'v, 'a>(
    cx: &mut Ctx<'_>,
    v: Option<&'v Value<'a>>,
    section: &str,
) -> Vec<(String, &'v Value<'a>, Range<usize>)> {
    let Some(v) = v else { return Vec::new() };
    let Some(t) = v.get_ref().as_table() else {
        cx.diags.at(
            v.span(),
            section,
            format!("`{section}` must be a table of named tables"),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, val) in t.iter() {
        let name = k.get_ref().to_string();
        let path = join(section, &name);
        if !valid_name(&name) {
            cx.diags.at(
                k.span(),
                &path,
                format!("invalid name {name:?}: names must match [A-Za-z0-9_-]+"),
            );
            continue;
        }
        // CROSSCUTTING.md 5.2: label values of the gateway's own
        if name == crate::metrics::NO_ROUTE || name == "_global" {
            cx.diags.at(
                k.span(),
                &path,
                format!(
                    "the name {name:?} is reserved (a metric label value of the gateway's own)"
                ),
            );
            continue;
        }
        if val.get_ref().as_table().is_none() {
            cx.diags
                .at(val.span(), &path, format!("`{path}` must be a table"));
            continue;
        }
        out.push((name, val, k.span()));
    }
    out
}

/// Splits `policies` out of a table value so the rest can be deserialised strictly.
fn split_policies<'a>(v: &Value<'a>) -> (Value<'a>, Option<Value<'a>>) {
    let span = v.span();
    let mut table = v.get_ref().as_table().cloned().unwrap_or_default();
    let policies = table.remove("policies");
    (Spanned::new(span, DeValue::Table(table)), policies)
}

fn server_settings(cx: &mut Ctx<'_>, v: &Value<'_>) -> Option<(ServerSettings, Vec<IpNet>)> {
    let f: ServerFile = deser(cx, v, "server")?;
    let mut s = ServerSettings::default();
    let mut ok = true;
    let addr = |cx: &mut Ctx<'_>, a: &Spanned<String>, path: &str| -> Option<SocketAddr> {
        let parsed = a.get_ref().parse::<SocketAddr>().ok();
        if parsed.is_none() {
            let msg = format!("invalid listen address {:?}: expected IP:PORT", a.get_ref());
            cx.diags.at(a.span(), path, msg);
        }
        parsed
    };
    let errors_before = cx.diags.len();
    if !f.listen.is_empty() {
        s.listen = f
            .listen
            .iter()
            .filter_map(|a| addr(cx, a, "server.listen"))
            .collect();
    }
    if let Some(a) = &f.admin_listen {
        s.admin_listen = addr(cx, a, "server.admin_listen");
    }
    s.admin_token = f.admin_token;
    if let Some(t) = &f.threads {
        if *t.get_ref() == 0 {
            cx.diags
                .at(t.span(), "server.threads", "threads must be at least 1");
            ok = false;
        }
        s.threads = *t.get_ref();
    }
    if let Some(u) = f.upgrade_sock {
        s.upgrade_sock = u;
    }
    if let Some(p) = f.pid_file {
        s.pid_file = p;
    }
    s.allow_empty = f.allow_empty.unwrap_or(false);
    if let Some(g) = f.grace_period {
        s.grace_period = g.get();
    }
    if let Some(g) = f.graceful_shutdown_timeout {
        s.graceful_shutdown_timeout = g.get();
    }
    if let Some(a) = &f.access_log {
        s.access_log = match a.get_ref().as_str() {
            "stdout" => AccessLog::Stdout,
            "off" => AccessLog::Off,
            "" => {
                cx.diags.at(
                    a.span(),
                    "server.access_log",
                    r#"expected "stdout", "off" or a file path"#,
                );
                ok = false;
                AccessLog::Off
            }
            p => AccessLog::File(cx.config_dir.join(p)),
        };
    }
    let mut trusted = Vec::new();
    for t in &f.trusted_proxies {
        match crate::units::parse_net(t.get_ref()) {
            Some(n) => trusted.push(n),
            None => {
                cx.diags.at(
                    t.span(),
                    "server.trusted_proxies",
                    format!(
                        "invalid CIDR {:?}: expected an address or ADDRESS/PREFIX",
                        t.get_ref()
                    ),
                );
                ok = false;
            }
        }
    }
    if let Some(l) = &f.limits {
        match l.get_ref().resolve() {
            Ok(limits) => s.limits = limits,
            Err(errors) => {
                for (key, span, msg) in errors {
                    cx.diags.at(span, format!("server.limits.{key}"), msg);
                }
                ok = false;
            }
        }
    }
    if let Some(c) = &f.cache {
        let c = c.get_ref();
        let d = crate::cache::Settings::default();
        let memory = c.memory.as_ref().map_or(d.memory, |m| m.get_ref().bytes());
        let max_object = c
            .max_object
            .as_ref()
            .map_or(d.max_object, |m| m.get_ref().bytes());
        if let Some(m) = c.memory.as_ref().filter(|_| memory == 0) {
            cx.diags
                .at(m.span(), "server.cache.memory", "must not be 0");
            ok = false;
        }
        if let Some(m) = &c.max_object {
            if max_object == 0 {
                cx.diags
                    .at(m.span(), "server.cache.max_object", "must not be 0");
                ok = false;
            } else if max_object > memory {
                cx.diags.at(
                    m.span(),
                    "server.cache.max_object",
                    format!("must be at most memory ({memory} bytes)"),
                );
                ok = false;
            }
        }
        s.cache = crate::cache::Settings { memory, max_object };
    }
    // a sub-table's settings, or every error in it at `server.TABLE.KEY`
    let dir = cx.config_dir;
    let mut sub = |table: &str, errors: Vec<(&str, Range<usize>, String)>| {
        for (key, span, msg) in errors {
            cx.diags.at(span, format!("server.{table}.{key}"), msg);
        }
        ok = false;
    };
    if let Some(o) = &f.outbound {
        match o.get_ref().resolve(dir) {
            Ok(settings) => s.outbound = settings,
            Err(errors) => sub("outbound", errors),
        }
    }
    if let Some(d) = &f.dns {
        match d.get_ref().resolve(dir) {
            Ok(settings) => s.dns = settings,
            Err(errors) => sub("dns", errors),
        }
    }
    for (i, t) in f.tls.iter().enumerate() {
        let t = t.get_ref();
        let path = format!("server.tls[{i}]");
        let Some(addr) = addr(cx, &t.listen, &format!("{path}.listen")) else {
            continue;
        };
        let pairs: Vec<(String, String)> = t
            .certs
            .get_ref()
            .iter()
            .map(|p| {
                let file = |f: &str| cx.config_dir.join(f).display().to_string();
                (file(&p.cert), file(&p.key))
            })
            .collect();
        let optional = match t
            .client_auth
            .as_ref()
            .map(|a| (a.get_ref().as_str(), a.span()))
        {
            None | Some(("required", _)) => false,
            Some(("optional", _)) => true,
            Some((other, span)) => {
                cx.diags.at(
                    span,
                    format!("{path}.client_auth"),
                    format!("unknown client_auth {other:?} (expected required or optional)"),
                );
                ok = false;
                false
            }
        };
        let client = match (&t.client_ca, &t.client_auth) {
            (None, Some(a)) => {
                cx.diags.at(
                    a.span(),
                    format!("{path}.client_auth"),
                    "only with client_ca",
                );
                ok = false;
                None
            }
            (None, None) => None,
            (Some(ca), _) => {
                let file = cx.config_dir.join(ca.get_ref());
                let loaded = std::fs::read(&file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))
                    .and_then(|pem| crate::tls::ClientAuth::load(&pem, optional));
                match loaded {
                    Ok(c) => Some(c),
                    Err(msg) => {
                        cx.diags.at(ca.span(), format!("{path}.client_ca"), msg);
                        ok = false;
                        None
                    }
                }
            }
        };
        match crate::tls::SniResolver::load(&pairs) {
            Ok(r) => s.tls.push(crate::tls::TlsListener {
                addr,
                resolver: Arc::new(r),
                files: pairs,
                client,
            }),
            Err((j, msg)) => {
                cx.diags
                    .at(t.certs.span(), format!("{path}.certs[{j}]"), msg);
                ok = false;
            }
        }
    }
    if let Some(r) = &f.redis {
        let r = r.get_ref();
        let timeout = r.timeout.map_or(Duration::from_millis(100), |t| t.get());
        match RedisStore::new(r.url.get_ref(), timeout) {
            Ok(store) => cx.redis = Some(Arc::new(store)),
            Err(msg) => {
                cx.diags.at(r.url.span(), "server.redis.url", msg);
                ok = false;
            }
        }
    }
    if let Some(t) = &f.tracing {
        let t = t.get_ref();
        let endpoint = t.otlp_endpoint.get_ref();
        match crate::otlp::TracingSettings::check_endpoint(endpoint) {
            Ok(()) => {
                s.tracing = Some(crate::otlp::TracingSettings {
                    endpoint: endpoint.clone(),
                    service_name: t.service_name.clone().unwrap_or_else(|| "tollgate".into()),
                    timeout: t.timeout.map_or(Duration::from_secs(2), |d| d.get()),
                });
            }
            Err(msg) => {
                cx.diags
                    .at(t.otlp_endpoint.span(), "server.tracing.otlp_endpoint", msg);
                ok = false;
            }
        }
    }
    (ok && cx.diags.len() == errors_before).then_some((s, trusted))
}

fn upstream(cx: &mut Ctx<'_>, name: &str, v: &Value<'_>) -> Option<Upstream> {
    let path = join("upstreams", name);
    let (f, removed): (UpstreamFile, _) = deser_noting(cx, v, &path)?;
    let taken_out = |key: &str| removed.iter().any(|k| k == key);
    let mut ok = true;
    let bpath = format!("{path}.backends");
    if f.backends.get_ref().is_empty() {
        cx.diags.at(
            f.backends.span(),
            &bpath,
            "an upstream needs at least one backend",
        );
        ok = false;
    }
    let mut entries: Vec<BackendEntry> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, b) in f.backends.get_ref().iter().enumerate() {
        let bp = format!("{bpath}[{i}]");
        match backend_entry(b.get_ref()) {
            Ok(entry) => {
                // the same address, name and port, or SRV name twice (fleet.md §13.3)
                let key = match &entry.target {
                    Target::Ip(a) => format!("ip {a}"),
                    Target::Host(h, p) => format!("host {}:{p}", crate::dns::normal(h)),
                    Target::Srv(n) => format!("srv {}", crate::dns::normal(n)),
                };
                if !seen.insert(key) {
                    let what = &entry.written;
                    cx.diags
                        .at(b.span(), &bp, format!("duplicate backend {what:?}"));
                    ok = false;
                    continue;
                }
                entries.push(BackendEntry {
                    place: cx.diags.place(&b.span()),
                    path: bp,
                    ..entry
                });
            }
            Err(msg) => {
                cx.diags.at(b.span(), &bp, msg);
                ok = false;
            }
        }
    }
    let balance = f
        .balance
        .as_ref()
        .map_or(Balance::RoundRobin, |b| *b.get_ref());
    let hash_key = match &f.hash_key {
        Some(h) if balance != Balance::ConsistentHash && !taken_out("balance") => {
            cx.diags.at(
                h.span(),
                format!("{path}.hash_key"),
                "hash_key only applies to balance = \"consistent_hash\"",
            );
            ok = false;
            RequestKey::default()
        }
        Some(h) => match RequestKey::parse(h.get_ref()) {
            Ok(k) => k,
            Err(msg) => {
                cx.diags.at(h.span(), format!("{path}.hash_key"), msg);
                ok = false;
                RequestKey::default()
            }
        },
        None => RequestKey::default(),
    };
    // passive checks share the active check's threshold; without active checks a backend
    // is taken out for 10 s after 3 consecutive connect failures
    let (passive_threshold, passive_cooldown) = match &f.health_check {
        Some(hc) => (
            hc.get_ref().unhealthy_after.unwrap_or(2) as u32,
            hc.get_ref()
                .interval
                .map_or(Duration::from_secs(1), |d| d.get()),
        ),
        None => (3, Duration::from_secs(10)),
    };
    let tls_on = f.tls.on();
    let mut ca = None;
    if let Some(file) = &f.ca_file {
        if !tls_on && !taken_out("tls") {
            cx.diags.at(
                file.span(),
                format!("{path}.ca_file"),
                "ca_file only applies with tls = true",
            );
            ok = false;
        } else {
            match crate::tls::load_ca_file(&cx.config_dir.join(file.get_ref())) {
                Ok(c) => ca = Some(c),
                Err(msg) => {
                    cx.diags.at(file.span(), format!("{path}.ca_file"), msg);
                    ok = false;
                }
            }
        }
    }
    let mut client_cert = None;
    if let crate::config::file::UpstreamTls::On(t) = &f.tls {
        let span = v.span();
        match (&t.client_cert, &t.client_key) {
            (Some(c), Some(k)) => {
                let (c, k) = (cx.config_dir.join(c), cx.config_dir.join(k));
                match crate::tls::load_client_cert(&c, &k) {
                    Ok(ck) => client_cert = Some(ck),
                    Err((key, msg)) => {
                        cx.diags.at(span.clone(), format!("{path}.tls.{key}"), msg);
                        ok = false;
                    }
                }
            }
            (Some(_), None) => {
                cx.diags.at(
                    span.clone(),
                    format!("{path}.tls.client_key"),
                    "client_cert needs client_key",
                );
                ok = false;
            }
            (None, Some(_)) => {
                cx.diags.at(
                    span.clone(),
                    format!("{path}.tls.client_cert"),
                    "client_key needs client_cert",
                );
                ok = false;
            }
            (None, None) => {}
        }
    }
    // what tells this upstream's TLS from another's: its CAs and its certificate
    let trust_key = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for c in ca.iter().flat_map(|certs| certs.iter()) {
            c.borrow_raw_cert().hash(&mut h);
        }
        if let Some(ck) = &client_cert {
            ck.leaf().borrow_raw_cert().hash(&mut h);
        }
        if ca.is_some() || client_cert.is_some() {
            h.finish() | 1
        } else {
            0
        }
    };
    let peer_tls = crate::tls::PeerTls {
        on: tls_on,
        ca: ca.clone(),
        client_cert: client_cert.clone(),
    };
    let mut health = None;
    let mut fingerprint = String::new();
    if let Some(hc) = &f.health_check {
        let host = f.sni.clone().unwrap_or_else(|| "localhost".into());
        // an upstream with names checks each address with its own Host and SNI: a
        // different check, which reads the map of them (`check_hosts`) it was made with
        let names = entries.iter().any(BackendEntry::is_name);
        fingerprint = format!("{:?}|{host}|{tls_on}|{trust_key}|{names}", hc.get_ref());
        match hc.get_ref().build(&host, &host, &peer_tls) {
            Ok(built) => health = Some(built),
            Err((key, msg)) => {
                cx.diags
                    .at(hc.span(), format!("{path}.health_check.{key}"), msg);
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    // An unchanged check of an upstream that stays keeps its registry: backends that
    // stay keep their health, new ones start healthy, as at startup.
    let prior = cx.prior.and_then(|p| p.upstreams.get(name));
    let (check, registry, schedule) = match health {
        Some((c, s)) => match prior
            .and_then(|u| u.health_registry.as_ref())
            .filter(|(fp, _)| *fp == fingerprint)
        {
            Some((_, r)) => (None, r.clone(), Some(s)),
            None => (Some(c), by_address(), Some(s)),
        },
        None => (None, by_address(), None),
    };
    // a kept registry keeps its check, and so the Host and SNI map that check reads
    let kept_hosts = match (&check, schedule.is_some()) {
        (None, true) => prior.and_then(|u| u.check_hosts.clone()),
        _ => None,
    };
    let health_registry = schedule.is_some().then(|| (fingerprint, registry.clone()));
    let shape = UpstreamShape {
        entries: &entries,
        tls: tls_on,
        sni: f.sni.as_deref().unwrap_or(""),
    };
    let has_names = entries.iter().any(BackendEntry::is_name);
    // IP entries are in force at once; an upstream with names gets the addresses of
    // its names from the DNS table once it is looked up (`crate::dns`)
    let ip_wants: Vec<Want> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e.target {
            Target::Ip(addr) => Some(Want::ip(addr, e.weight, i)),
            _ => None,
        })
        .collect();
    // CROSSCUTTING.md §7.4: a backend that stays keeps its counters (passive health,
    // in-flight requests); an upstream with names gets its names' at its first install
    let prior_endpoints = prior.map(|u| u.endpoints.current());
    let priors: Vec<&Endpoints> = prior_endpoints.iter().map(|c| &**c).collect();
    let endpoints = Endpoints::build(&shape, &ip_wants, &priors);
    let seed = prior.and_then(|u| match &u.endpoints {
        EndpointSet::Dns(s) => Some(s.load_full()),
        EndpointSet::Fixed(_) => None,
    });
    let check_hosts: Option<CheckHosts> = match kept_hosts {
        Some(kept) => Some(kept),
        None => (has_names && check.is_some()).then(Default::default),
    };
    // the IP entries' pairs at once; names' as they resolve (`Upstream::install`)
    if let Some(hosts) = &check_hosts {
        hosts.store(Arc::new(endpoints.check_pairs()));
    }
    let check = match (check, &check_hosts, &f.health_check) {
        (Some(_), Some(hosts), Some(hc)) => {
            let (config, tls) = (hc.get_ref().clone(), peer_tls.clone());
            let thresholds = config.thresholds();
            // an address not in the map yet: as an IP entry of this upstream is checked
            let sni = f.sni.clone().unwrap_or_default();
            let host = if sni.is_empty() {
                "localhost".to_string()
            } else {
                sni.clone()
            };
            let fallback = (host, sni);
            let build =
                move |host: &str, sni: &str| config.build(host, sni, &tls).ok().map(|b| b.0);
            Some(Box::new(PerHostCheck::new(
                build,
                thresholds,
                hosts.clone(),
                fallback,
            )) as Box<dyn HealthCheck + Send + Sync>)
        }
        (c, _, _) => c,
    };
    let endpoints = if has_names {
        EndpointSet::Dns(Arc::new(ArcSwap::from_pointee(endpoints)))
    } else {
        EndpointSet::Fixed(endpoints)
    };
    let backends_lb = || match &endpoints {
        EndpointSet::Dns(swap) => {
            Backends::new_with_health_registry(Box::new(Discover(swap.clone())), registry.clone())
        }
        EndpointSet::Fixed(e) => {
            Backends::new_with_health_registry(Static::new(e.backend_set()), registry.clone())
        }
    };
    let selector = match balance {
        Balance::RoundRobin => {
            Selector::RoundRobin(ready(LoadBalancer::from_backends(backends_lb()), check))
        }
        Balance::Random => {
            Selector::Random(ready(LoadBalancer::from_backends(backends_lb()), check))
        }
        Balance::ConsistentHash => Selector::Consistent(
            ready(LoadBalancer::from_backends(backends_lb()), check),
            hash_key,
        ),
        Balance::LeastConn => {
            Selector::LeastConn(ready(LoadBalancer::from_backends(backends_lb()), check))
        }
    };
    let sni = f.sni.clone().unwrap_or_default();
    Some(Upstream {
        name: name.to_string(),
        selector,
        entries,
        endpoints,
        ip_family: f.ip_family.unwrap_or(cx.dns_family),
        balance,
        tls: tls_on,
        sni,
        http2: f.http2,
        trust_key,
        ca,
        client_cert,
        connect_timeout: f
            .connect_timeout
            .map_or(Duration::from_secs(5), |d| d.get()),
        read_timeout: f.read_timeout.map_or(Duration::from_secs(30), |d| d.get()),
        retries: f.retries.unwrap_or(1),
        passive: match prior {
            Some(p) => Passive::new(passive_threshold, passive_cooldown).since(&p.passive),
            None => Passive::new(passive_threshold, passive_cooldown),
        },
        seed: std::sync::Mutex::new(seed),
        health: schedule,
        health_registry,
        check_hosts,
    })
}

/// A health registry that keys health by address alone: an address keeps its health
/// when its weight changes (fleet.md §13.5).
fn by_address() -> Arc<HealthRegistry> {
    Arc::new(HealthRegistry::with_equivalence(|b| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        b.addr.hash(&mut h);
        h.finish()
    }))
}

/// A backend entry's form (fleet.md §13.3, §13.7), without its place in the file.
fn backend_entry(b: &BackendFile) -> Result<BackendEntry, String> {
    let entry = |written: &str, target, weight| BackendEntry {
        written: Arc::from(written),
        target,
        weight,
        path: String::new(),
        place: String::new(),
    };
    match (&b.addr, &b.srv) {
        (Some(_), Some(_)) => Err("a backend has `addr` or `srv`, not both".into()),
        (None, None) => Err("a backend table needs `addr` or `srv`".into()),
        (None, Some(srv)) => {
            if b.weight.is_some() {
                return Err("an SRV backend takes no `weight`: its records give weights".into());
            }
            if srv.contains(':') {
                return Err(format!(
                    "{srv:?}: an SRV name has no port: its records give ports"
                ));
            }
            if !crate::dns::valid_name(srv) {
                return Err(format!("{srv:?} is not a DNS name"));
            }
            Ok(entry(srv, Target::Srv(srv.clone()), 1))
        }
        (Some(addr), None) => {
            let weight = b.weight.unwrap_or(1);
            if weight == 0 {
                return Err("weight must be at least 1".into());
            }
            let target = match crate::dns::parse_host_port(addr) {
                Ok(HostPort::Ip(a)) => Target::Ip(a),
                Ok(HostPort::Name(h, p)) => Target::Host(h, p),
                Err(why) => return Err(format!("invalid backend address {addr:?}: {why}")),
            };
            Ok(entry(addr, target, weight))
        }
    }
}

fn ready<S>(
    mut lb: LoadBalancer<S>,
    check: Option<Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync>>,
) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    if let Some(c) = check {
        lb.set_health_check(c);
    }
    let _ = super::now_or_never(lb.update());
    lb
}

/// The consumers, and their own policies.
fn consumers(cx: &mut Ctx<'_>, v: Option<&Value<'_>>) -> (Consumers, ConsumerPolicies) {
    let mut out = Consumers::default();
    let mut own = ConsumerPolicies::default();
    for (name, v, _) in named_tables(cx, v, "consumers") {
        let path = join("consumers", &name);
        let (rest, policies) = split_policies(v);
        let overrides = consumer_policies(cx, policies.as_ref(), &format!("{path}.policies"));
        let Some(f) = deser::<ConsumerFile>(cx, &rest, &path) else {
            continue;
        };
        own.insert(&name, overrides);
        let consumer = out.insert(Consumer::new(name.clone(), f.groups));
        for k in &f.api_keys {
            let kpath = format!("{path}.api_keys");
            if k.get_ref().is_empty() {
                cx.diags.at(k.span(), kpath, "an API key cannot be empty");
            } else if let Some(other) = out.add_api_key(&consumer, k.get_ref()) {
                cx.diags.at(
                    k.span(),
                    kpath,
                    format!("this API key is already given to consumer {:?}", other.name),
                );
            }
        }
        if let Some(b) = &f.basic {
            let bpath = format!("{path}.basic");
            let basic = b.get_ref();
            match PasswordHash::parse(&basic.password_hash) {
                Err(msg) => cx.diags.at(b.span(), format!("{bpath}.password_hash"), msg),
                Ok(_) if basic.username.is_empty() || basic.username.contains(':') => cx.diags.at(
                    b.span(),
                    format!("{bpath}.username"),
                    "a user name is non-empty and has no ':'",
                ),
                Ok(h) => {
                    if let Some(other) = out.add_basic(&consumer, &basic.username, h) {
                        cx.diags.at(
                            b.span(),
                            format!("{bpath}.username"),
                            format!(
                                "user name {:?} is already used by consumer {:?}",
                                basic.username, other.name
                            ),
                        );
                    }
                }
            }
        }
        if let Some(m) = &f.mtls {
            let mpath = format!("{path}.mtls");
            let mtls = m.get_ref();
            match (&mtls.san, &mtls.cn) {
                (Some(san), None) => {
                    for v in san.values() {
                        let at = format!("{mpath}.san");
                        if v.is_empty() {
                            cx.diags.at(m.span(), at, "a SAN value cannot be empty");
                        } else if let Some(other) = out.add_mtls_san(&consumer, v) {
                            cx.diags.at(
                                m.span(),
                                at,
                                format!("SAN {v:?} is already used by consumer {:?}", other.name),
                            );
                        }
                    }
                }
                (None, Some(cn)) if cn.is_empty() => {
                    cx.diags.at(
                        m.span(),
                        format!("{mpath}.cn"),
                        "a Common Name cannot be empty",
                    );
                }
                (None, Some(cn)) => {
                    if let Some(other) = out.add_mtls_cn(&consumer, cn) {
                        cx.diags.at(
                            m.span(),
                            format!("{mpath}.cn"),
                            format!(
                                "Common Name {cn:?} is already used by consumer {:?}",
                                other.name
                            ),
                        );
                    }
                }
                _ => cx
                    .diags
                    .at(m.span(), mpath, "give exactly one of `san` and `cn`"),
            }
        }
        if let Some(s) = &f.jwt_subject {
            if let Some(other) = out.add_subject(&consumer, s.get_ref()) {
                cx.diags.at(
                    s.span(),
                    format!("{path}.jwt_subject"),
                    format!(
                        "subject {:?} is already mapped to consumer {:?}",
                        s.get_ref(),
                        other.name
                    ),
                );
            }
        }
    }
    (out, own)
}

/// Builds a consumer's policy overrides; authentication policies cannot be overridden.
fn consumer_policies(
    cx: &mut Ctx<'_>,
    v: Option<&Value<'_>>,
    path: &str,
) -> Vec<(Arc<str>, BoxPolicy)> {
    let built = policies(cx, v, path, Scope::default());
    let mut out = Vec::new();
    // CROSSCUTTING.md 8.3: besides what runs before the consumer is known
    const NOT_PER_CONSUMER: [&str; 5] = [
        "ext_authz",
        "cache",
        "compress",
        "adaptive_concurrency",
        "ai_proxy",
    ];
    for (name, p) in built {
        if p.stage() <= crate::policy::Stage::Authentication || NOT_PER_CONSUMER.contains(&&*name) {
            let span = v
                .and_then(|v| v.get_ref().as_table())
                .and_then(|t| t.get_key_value(&*name))
                .map_or(0..0, |(k, _)| k.span());
            cx.diags.at(
                span,
                join(path, &name),
                if NOT_PER_CONSUMER.contains(&&*name) {
                    format!("`{name}` cannot be overridden per consumer")
                } else {
                    format!("`{name}` runs before the consumer is known and cannot be overridden per consumer")
                },
            );
        } else {
            out.push((name, p));
        }
    }
    out
}

/// A hash of a policy's table as written (its values, not where they are): the key of
/// its state ([`BuildCtx::state`]).
fn table_hash(v: &Value<'_>) -> u64 {
    let text = toml::Value::deserialize(v.clone().into_deserializer())
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// What a `policies` table belongs to: a route (`None`: the top level, or a consumer's
/// own policies) and the consumers its policies may name.
#[derive(Clone, Copy, Default)]
struct Scope<'a> {
    route: Option<&'a str>,
    /// The `{name}`s of the route's paths.
    params: &'a [String],
    consumers: Option<&'a Consumers>,
}

/// Builds every policy of a `policies` table.
fn policies(
    cx: &mut Ctx<'_>,
    v: Option<&Value<'_>>,
    path: &str,
    scope: Scope<'_>,
) -> Vec<(Arc<str>, BoxPolicy)> {
    let Some(v) = v else { return Vec::new() };
    let Some(t) = v.get_ref().as_table() else {
        cx.diags.at(
            v.span(),
            path,
            format!("`{path}` must be a table of policy tables"),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, val) in t.iter() {
        let name = k.get_ref().as_ref();
        let ppath = join(path, name);
        let table = || table_hash(val);
        let bcx = BuildCtx {
            config_dir: cx.config_dir,
            path: &ppath,
            redis: cx.redis.as_ref(),
            upstreams: Some(&cx.upstream_names),
            state: Some(StateCx {
                builder: &cx.states,
                table: &table,
            }),
            outbound: cx.outbound.as_ref(),
            consumers: scope.consumers,
            route: scope.route,
            route_params: scope.params,
            client_certs: cx.client_certs,
        };
        let registry = cx.registry;
        let built = strictly(
            &mut cx.diags,
            val,
            &ppath,
            &mut Vec::new(),
            |v| match registry.build(name, v, &bcx) {
                Some(Err(Failure::Toml(e))) => Err(e),
                other => Ok(other),
            },
        );
        let Some(built) = built else { continue };
        match built {
            None => {
                let known: Vec<&str> = cx.registry.names().collect();
                cx.diags.at(
                    k.span(),
                    &ppath,
                    format!("unknown policy `{name}` (known: {})", known.join(", ")),
                );
            }
            Some(Ok(p)) => out.push((Arc::from(name), p)),
            Some(Err(Failure::Toml(_))) => {} // reported by `strictly`
            Some(Err(Failure::Build(errors))) => {
                for e in errors.each() {
                    // a nested field (`claims_to_headers.sub`, `include_headers[0]`) is at
                    // its first key; a missing key is reported at the table
                    let (span, at) = match e.field.as_deref() {
                        Some(f) => {
                            let first = f.split(['.', '[']).next().unwrap_or(f);
                            let span = field_span(val, f).unwrap_or_else(|| {
                                val.get_ref()
                                    .as_table()
                                    .and_then(|t| t.get_key_value(first))
                                    .map_or(val.span(), |(k, _)| k.span())
                            });
                            let at = if first.len() == f.len() {
                                join(&ppath, f)
                            } else {
                                format!("{}{}", join(&ppath, first), &f[first.len()..])
                            };
                            (span, at)
                        }
                        None => (val.span(), ppath.clone()),
                    };
                    cx.diags.at(span, at, e.message.clone());
                }
            }
        }
    }
    out
}

/// Where a nested field of a policy table is (`remove[1]`, `set."/a"`,
/// `methods.POST.body_schema`): an array item's value, a table entry's key. `None` when
/// the path does not lead anywhere (a missing key).
fn field_span(table: &Value<'_>, field: &str) -> Option<Range<usize>> {
    let mut at = table;
    let mut span = None;
    let mut rest = field;
    while !rest.is_empty() {
        rest = rest.strip_prefix('.').unwrap_or(rest);
        if let Some(r) = rest.strip_prefix('[') {
            let (i, after) = r.split_once(']')?;
            let item = at.get_ref().as_array()?.get(i.parse::<usize>().ok()?)?;
            span = Some(item.span());
            at = item;
            rest = after;
            continue;
        }
        let (key, after) = if let Some(q) = rest.strip_prefix('"') {
            // a quoted key, as `{key:?}` wrote it
            let end = q.find('"')?;
            let mut key = String::new();
            let mut chars = q.char_indices();
            let mut close = end;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, '"')) => key.push('"'),
                        Some((_, '\\')) => key.push('\\'),
                        Some((_, c)) => {
                            key.push('\\');
                            key.push(c);
                        }
                        None => return None,
                    },
                    '"' => {
                        close = i;
                        break;
                    }
                    c => key.push(c),
                }
            }
            (key, &q[close + 1..])
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            (rest[..end].to_string(), &rest[end..])
        };
        let (k, v) = at.get_ref().as_table()?.get_key_value(key.as_str())?;
        span = Some(k.span());
        at = v;
        rest = after;
    }
    span
}

/// The `{name}`s of a route table's `paths` (those that parse; the others are reported
/// with the route).
fn path_params(route: &Value<'_>) -> Vec<String> {
    let paths = route
        .get_ref()
        .as_table()
        .and_then(|t| t.get("paths"))
        .and_then(|p| p.get_ref().as_array());
    let entries = paths
        .into_iter()
        .flatten()
        .filter_map(|p| p.get_ref().as_str());
    entries
        .filter_map(|p| PathPattern::parse(p).ok())
        .flat_map(|p| p.params.into_iter().map(|(_, n)| n))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn route(
    cx: &mut Ctx<'_>,
    name: &str,
    v: &Value<'_>,
    upstreams: &Arc<BTreeMap<String, Arc<Upstream>>>,
    upstream_names: &BTreeSet<String>,
    defaults: &[(Arc<str>, BoxPolicy)],
    consumer_policies: &Arc<ConsumerPolicies>,
    consumers: &Consumers,
) -> Option<(RouteSpec, Route)> {
    let path = join("routes", name);
    let (rest, own_policies) = split_policies(v);
    let params = path_params(&rest);
    let scope = Scope {
        route: Some(name),
        params: &params,
        consumers: Some(consumers),
    };
    let own = policies(
        cx,
        own_policies.as_ref(),
        &format!("{path}.policies"),
        scope,
    );
    let (f, removed): (RouteFile, _) = deser_noting(cx, &rest, &path)?;
    let mut ok = true;
    let mut spec = RouteSpec::default();
    // required keys: a missing one is reported here, with the route's other errors (a
    // key taken out for a bad value was reported already)
    for (key, missing) in [
        ("paths", f.paths.is_none()),
        ("upstream", f.upstream.is_none()),
    ] {
        if missing {
            if !removed.iter().any(|k| k == key) {
                cx.diags
                    .at(rest.span(), &path, format!("missing field `{key}`"));
            }
            ok = false;
        }
    }
    let no_paths = Spanned::new(rest.span(), Vec::new());
    let paths = f.paths.as_ref().unwrap_or(&no_paths);
    if f.paths.is_some() && paths.get_ref().is_empty() {
        cx.diags.at(
            paths.span(),
            format!("{path}.paths"),
            "a route needs at least one path",
        );
        ok = false;
    }
    for p in paths.get_ref() {
        match PathPattern::parse(p.get_ref()) {
            Ok(pat) => spec.paths.push(pat),
            Err(msg) => {
                cx.diags.at(p.span(), format!("{path}.paths"), msg);
                ok = false;
            }
        }
    }
    for m in f.methods.iter().flatten() {
        let upper = m.get_ref().to_ascii_uppercase();
        match Method::from_bytes(upper.as_bytes()) {
            Ok(method) if !upper.is_empty() => spec.methods.push(method),
            _ => {
                cx.diags.at(
                    m.span(),
                    format!("{path}.methods"),
                    format!("invalid method {:?}", m.get_ref()),
                );
                ok = false;
            }
        }
    }
    let mut hosts = Vec::new();
    for h in f.hosts.iter().flatten() {
        let host = h.get_ref();
        let body = host.strip_prefix("*.").unwrap_or(host);
        let valid = !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && !body.contains("..");
        if !valid {
            cx.diags.at(
                h.span(),
                format!("{path}.hosts"),
                format!("invalid host {host:?}: expected a name like api.example.com or *.example.com, without port"),
            );
            ok = false;
        } else {
            hosts.push(host.as_str());
        }
    }
    spec.hosts = HostMatch::new(hosts);
    for (k, val) in f.headers.iter().flatten() {
        let name = HeaderName::from_bytes(k.get_ref().as_bytes());
        let value = HeaderValue::from_str(val);
        match (name, value) {
            (Ok(n), Ok(v)) => spec.headers.push((n, v)),
            _ => {
                cx.diags.at(
                    k.span(),
                    format!("{path}.headers"),
                    format!("invalid header match {:?}", k.get_ref()),
                );
                ok = false;
            }
        }
    }
    let upstream = match f.upstream.as_ref().map(|u| (u, upstreams.get(u.get_ref()))) {
        Some((_, Some(u))) => Some(u.clone()),
        Some((named, None)) => {
            if !upstream_names.contains(named.get_ref()) {
                let known: Vec<&str> = upstream_names.iter().map(String::as_str).collect();
                cx.diags.at(
                    named.span(),
                    format!("{path}.upstream"),
                    format!(
                        "unknown upstream {:?} (known: {})",
                        named.get_ref(),
                        known.join(", ")
                    ),
                );
            }
            // an upstream with its own errors was already reported
            None
        }
        None => None,
    };
    let rewrite = match &f.rewrite {
        Some(r) => match regex::Regex::new(r.regex.get_ref()) {
            Ok(re) => Some((re, r.to.clone())),
            Err(e) => {
                cx.diags.at(
                    r.regex.span(),
                    format!("{path}.rewrite.regex"),
                    format!("invalid regex: {e}"),
                );
                ok = false;
                None
            }
        },
        None => None,
    };
    let upstream = upstream?;
    if !ok {
        return None;
    }
    let mut chain: Vec<(Arc<str>, BoxPolicy)> = defaults
        .iter()
        .filter(|(n, _)| !own.iter().any(|(o, _)| o == n))
        .cloned()
        .collect();
    chain.extend(own);
    let route = Route {
        name: name.to_string(),
        info: Arc::new(crate::context::RouteInfo {
            name: name.to_string(),
            upstream: upstream.name.clone(),
            // every pattern, when one has a parameter: the one that matched says
            paths: if spec.paths.iter().any(|p| !p.params.is_empty()) {
                spec.paths.clone()
            } else {
                Vec::new()
            },
            strip_prefix: f.strip_prefix,
            rewrite: rewrite.clone(),
        }),
        upstream,
        strip_prefix: f.strip_prefix,
        rewrite,
        preserve_host: f.preserve_host,
        chain: Chain::new(chain).with_consumer_policies(consumer_policies),
        upstreams: upstreams.clone(),
        metrics: Default::default(),
    };
    Some((spec, route))
}
