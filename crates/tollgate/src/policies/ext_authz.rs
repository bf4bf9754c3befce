//! `ext_authz`: ask an external authorization service about every request of a route
//! (identity.md §10): forward-auth (`mode = "forward"`: a plain HTTP request whose 2xx
//! allows) or an OPA-compatible data API (`mode = "opa"`: a JSON `input` document).
//!
//! # Config
//!
//! ```toml
//! [routes.orders.policies.ext_authz]
//! url = "http://127.0.0.1:9191/authz"      # required
//! mode = "forward"                         # forward | opa
//! include_headers = ["x-tenant"]           # client headers passed to the service
//! include_body = false                     # true: the body goes too (max_body, default 1MiB)
//! upstream_headers = ["x-user-id"]         # headers the service may set on the proxied request
//! client_headers = ["content-type", "location", "www-authenticate"]   # of a relayed denial
//! deny_response = "service"                # service | forbidden
//! timeout = "1s"                           # one call, "10ms".."60s"
//! on_error = "deny"                        # deny: 503 identity_unavailable | allow
//! ca_file = "certs/authz-ca.pem"           # optional, https only
//! cache_ttl = "0s"                         # decisions cached this long (<= 1h); 0s: none
//! cache_size = 10000                       # 1..1000000
//! max_in_flight = 64                       # calls in progress, 1..10000 (beyond: 503 whatever on_error)
//! ```
//!
//! Runs after `acl`. Fails closed: errors are 503 unless `on_error = "allow"`, an
//! undefined OPA decision denies, a 5xx is an error, and reaching `max_in_flight` is 503
//! even with `on_error = "allow"`.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use pingora::proxy::Session;
use pingora::Result;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::policy::answers::{Answers, Turn};
use crate::policy::identity::{self, Claims};
use crate::policy::{
    BuildCtx, BuildError, Call, CounterVec, Flow, HistogramVec, HttpClient, Policy, PolicyConfig,
    Reply, RequestCtx, Stage, Truncated,
};
use crate::reply::ErrorCode;
use crate::units::{ConfigDuration, ConfigSize};

/// Largest answer body read from the service.
const MAX_ANSWER: usize = 64 * 1024;
/// Largest `max_body`.
const MAX_BODY: u64 = 64 << 20;
/// Largest decision kept in the cache.
const MAX_CACHED: usize = 8 * 1024;
/// Longest OPA `reason` used as a message.
const MAX_REASON: usize = 1024;

// === Config ===

/// `ext_authz` config. See the [module docs](self).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzConfig {
    /// The service's URL (`http` or `https`), used exactly as written.
    pub url: Option<String>,
    /// `forward` (default) or `opa`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Client request headers passed to the service.
    #[serde(default)]
    pub include_headers: Vec<String>,
    /// Send the request body too.
    #[serde(default)]
    pub include_body: bool,
    /// Largest body sent (with `include_body`). Default `1MiB`.
    pub max_body: Option<ConfigSize>,
    /// Headers the service may set on the proxied request.
    #[serde(default)]
    pub upstream_headers: Vec<String>,
    /// Headers of a relayed denial that reach the client.
    pub client_headers: Option<Vec<String>>,
    /// `service` (default) or `forbidden`.
    #[serde(default = "default_deny_response")]
    pub deny_response: String,
    /// One call. Default `1s`.
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// `deny` (default): 503 on an error; `allow`: let it through.
    #[serde(default = "default_on_error")]
    pub on_error: String,
    /// CAs (PEM) trusted for an `https` service instead of the platform's.
    pub ca_file: Option<String>,
    /// How long decisions are cached. Default `0s` (none).
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: ConfigDuration,
    /// Cache entries. Default 10000.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    /// Calls in progress at most. Default 64.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
}

fn default_mode() -> String {
    "forward".into()
}
fn default_deny_response() -> String {
    "service".into()
}
fn default_timeout() -> ConfigDuration {
    ConfigDuration::new(Duration::from_secs(1))
}
fn default_on_error() -> String {
    "deny".into()
}
fn default_cache_ttl() -> ConfigDuration {
    ConfigDuration::new(Duration::ZERO)
}
fn default_cache_size() -> usize {
    10_000
}
fn default_max_in_flight() -> usize {
    64
}

/// Hop-by-hop names (and `content-length`): never passed on by name.
fn hop_by_hop(n: &str) -> bool {
    matches!(
        n,
        "content-length"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Hop-by-hop names, and names the gateway sets on the call.
fn set_on_call(n: &str) -> bool {
    hop_by_hop(n)
        || matches!(
            n,
            "host" | "forwarded" | "x-request-id" | "traceparent" | "tracestate"
        )
        || n.starts_with("x-forwarded-")
        || n.starts_with("x-consumer-")
}

/// Checks a list of header names: valid, no `_`, none twice, at most `max`, none that
/// `refused` says no to.
fn names(
    field: &str,
    list: &[String],
    max: usize,
    refused: impl Fn(&str) -> Option<String>,
) -> Result<Vec<HeaderName>, BuildError> {
    if list.len() > max {
        return Err(BuildError::field(field, format!("at most {max} names")));
    }
    let mut out: Vec<HeaderName> = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let lower = raw.to_ascii_lowercase();
        let name = HeaderName::from_bytes(lower.as_bytes())
            .map_err(|_| BuildError::field(&at, format!("{raw:?} is not a valid header name")))?;
        if lower.contains('_') {
            return Err(BuildError::field(
                at,
                format!("{raw:?}: header names with `_` are refused"),
            ));
        }
        if let Some(why) = refused(&lower) {
            return Err(BuildError::field(at, why));
        }
        if out.contains(&name) {
            return Err(BuildError::field(at, format!("{raw:?} is listed twice")));
        }
        out.push(name);
    }
    Ok(out)
}

impl PolicyConfig for ExtAuthzConfig {
    type Policy = ExtAuthz;

    fn build(self, cx: &BuildCtx<'_>) -> Result<ExtAuthz, BuildError> {
        let url = self
            .url
            .clone()
            .ok_or_else(|| BuildError::field("url", "the service's url is required"))?;
        identity::check_url("url", &url)?;
        if url.contains('#') {
            return Err(BuildError::field(
                "url",
                "a fragment is not allowed in the URL",
            ));
        }
        let opa = BuildError::choose("mode", &self.mode, &[("forward", false), ("opa", true)])?;
        let allow_on_error = BuildError::choose(
            "on_error",
            &self.on_error,
            &[("deny", false), ("allow", true)],
        )?;
        let relay = BuildError::choose(
            "deny_response",
            &self.deny_response,
            &[("service", true), ("forbidden", false)],
        )?;
        let include_headers = names("include_headers", &self.include_headers, 64, |n| {
            set_on_call(n).then(|| format!("{n:?} is a header the gateway sets on the call"))
        })?;
        let upstream_headers = names("upstream_headers", &self.upstream_headers, 32, |n| {
            identity::header_name(n).err()
        })?;
        let default_client = ["content-type", "location", "www-authenticate"].map(String::from);
        let client_headers = names(
            "client_headers",
            self.client_headers.as_deref().unwrap_or(&default_client),
            32,
            |n| (hop_by_hop(n) || n == "x-request-id").then(|| format!("{n:?} cannot be relayed")),
        )?;
        let max_body = match (self.include_body, self.max_body) {
            (false, Some(_)) => {
                return Err(BuildError::field(
                    "max_body",
                    "only with include_body = true",
                ))
            }
            (true, Some(m)) if m.bytes() == 0 || m.bytes() > MAX_BODY => {
                return Err(BuildError::field("max_body", "between 1 byte and 64MiB"))
            }
            (true, Some(m)) => Some(m.bytes() as usize),
            (true, None) => Some(1 << 20),
            (false, None) => None,
        };
        let timeout = self.timeout.get();
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&timeout) {
            return Err(BuildError::field("timeout", "between 10ms and 60s"));
        }
        if self.cache_ttl.get() > Duration::from_secs(3600) {
            return Err(BuildError::field("cache_ttl", "at most 1h"));
        }
        if !(1..=1_000_000).contains(&self.cache_size) {
            return Err(BuildError::field("cache_size", "between 1 and 1000000"));
        }
        if !(1..=10_000).contains(&self.max_in_flight) {
            return Err(BuildError::field("max_in_flight", "between 1 and 10000"));
        }
        let client = identity::service_client(cx, "url", &url, "ca_file", self.ca_file.as_deref())?;
        let size = NonZeroUsize::new(self.cache_size).unwrap_or(NonZeroUsize::MIN);
        // the cache is kept while the whole table is (identity.md §10.3.7)
        let cache = cx.state(|| Answers::new(size));
        cache.resize(size);
        let host = reqwest::Url::parse(&url)
            .ok()
            .and_then(|u| {
                let h = u.host_str()?.to_string();
                Some(match u.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h,
                })
            })
            .unwrap_or_default();
        let metrics = cx.metrics();
        Ok(ExtAuthz {
            url,
            host,
            opa,
            include_headers,
            max_body,
            upstream_headers,
            client_headers,
            relay,
            timeout,
            allow_on_error,
            client,
            cache_ttl: self.cache_ttl.get(),
            cache,
            permits: Semaphore::new(self.max_in_flight),
            route: cx.instance_route().to_string(),
            last_warning: Mutex::new(None),
            metrics: Metrics {
                calls: metrics.counter(
                    "tollgate_ext_authz_requests_total",
                    "Calls to the authorization service, by route and result.",
                    &["route", "result"],
                ),
                duration: metrics.histogram(
                    "tollgate_ext_authz_duration_seconds",
                    "One call to the authorization service, to its decision or error.",
                    &["route"],
                ),
                lookups: metrics.counter(
                    "tollgate_ext_authz_cache_total",
                    "ext_authz decision cache look-ups, by route and result.",
                    &["route", "result"],
                ),
            },
        })
    }
}

// === Decisions and their cache ===

/// What the service decided.
#[derive(Debug, Clone)]
enum Decision {
    /// Allowed, with the headers to set on the proxied request.
    Allow(Vec<(HeaderName, HeaderValue)>),
    /// Denied: what the client receives.
    Deny(Denial),
}

/// A denial as the client receives it.
#[derive(Debug, Clone)]
struct Denial {
    status: StatusCode,
    /// The service's body, relayed (forward mode with `deny_response = "service"`), or
    /// `None`: the gateway's JSON refusal with `message`.
    body: Option<Bytes>,
    message: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Decision {
    fn size(&self) -> usize {
        let h = |v: &[(HeaderName, HeaderValue)]| -> usize {
            v.iter().map(|(n, v)| n.as_str().len() + v.len()).sum()
        };
        match self {
            Self::Allow(v) => h(v),
            Self::Deny(d) => {
                h(&d.headers) + d.body.as_ref().map_or(0, Bytes::len) + d.message.len()
            }
        }
    }
}

type Outcome = std::result::Result<Decision, String>;

// === Policy ===

struct Metrics {
    calls: CounterVec,
    duration: HistogramVec,
    lookups: CounterVec,
}

/// Asks an external authorization service. See the [module docs](self).
pub struct ExtAuthz {
    url: String,
    /// The authority of `url` (the call's `Host`).
    host: String,
    opa: bool,
    include_headers: Vec<HeaderName>,
    max_body: Option<usize>,
    upstream_headers: Vec<HeaderName>,
    client_headers: Vec<HeaderName>,
    relay: bool,
    timeout: Duration,
    allow_on_error: bool,
    client: HttpClient,
    cache_ttl: Duration,
    cache: Arc<Answers<Decision>>,
    permits: Semaphore,
    route: String,
    last_warning: Mutex<Option<Instant>>,
    metrics: Metrics,
}

impl std::fmt::Debug for ExtAuthz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtAuthz")
            .field("url", &self.url)
            .field("opa", &self.opa)
            .finish_non_exhaustive()
    }
}

/// Why no decision came.
enum NoDecision {
    /// The call failed (its reason is logged where it failed).
    Error,
    /// `max_in_flight` calls are in progress.
    Busy,
}

/// A header value the service may set upstream: no control character but HTAB, at most
/// 4 KiB.
fn settable(v: &HeaderValue) -> bool {
    v.len() <= identity::MAX_IDENTITY_VALUE
        && v.as_bytes()
            .iter()
            .all(|b| *b == b'\t' || !b.is_ascii_control())
}

/// The `query` member of an OPA input: each name → its values, form-decoded.
fn query_map(query: Option<&str>) -> Value {
    let mut m: Map<String, Value> = Map::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let list = m
            .entry(k.into_owned())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = list {
            a.push(Value::String(v.into_owned()));
        }
    }
    Value::Object(m)
}

impl ExtAuthz {
    /// The call this request makes: its method, headers and body.
    fn call_for(
        &self,
        session: &Session,
        cx: &RequestCtx,
        body: Option<&Bytes>,
    ) -> (http::Method, Vec<(HeaderName, HeaderValue)>, Bytes) {
        let req = session.req_header();
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(16);
        let mut add = |n: &'static str, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                headers.push((HeaderName::from_static(n), v));
            }
        };
        add(
            "user-agent",
            concat!("tollgate/", env!("CARGO_PKG_VERSION")),
        );
        if let Some(t) = &cx.trace {
            add("traceparent", &t.child());
        }
        add("x-request-id", &cx.request_id);
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        if self.opa {
            add("content-type", "application/json");
            add("accept", "application/json");
            let input = self.opa_input(session, cx, body, tls);
            let doc = json!({ "input": input });
            return (http::Method::POST, headers, Bytes::from(doc.to_string()));
        }
        add("accept-encoding", "identity");
        add("x-forwarded-method", req.method.as_str());
        add("x-forwarded-proto", if tls { "https" } else { "http" });
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri.authority().map(|a| a.to_string()));
        if let Some(h) = host {
            add("x-forwarded-host", &h);
        }
        let uri = match visible_query(req.uri.query(), cx) {
            Some(q) => format!("{}?{q}", cx.path),
            None => cx.path.clone(),
        };
        add("x-forwarded-uri", &uri);
        if let Some(ip) = cx.client_ip {
            add("x-forwarded-for", &ip.to_string());
        }
        if let Some(c) = &cx.consumer {
            add("x-consumer-name", &c.name);
            if !c.groups.is_empty() {
                add("x-consumer-groups", &c.groups.join(","));
            }
        }
        for name in &self.include_headers {
            for v in req.headers.get_all(name) {
                headers.push((name.clone(), v.clone()));
            }
        }
        match body {
            Some(b) => {
                if let Some(ct) = req.headers.get(http::header::CONTENT_TYPE) {
                    headers.push((http::header::CONTENT_TYPE, ct.clone()));
                }
                (http::Method::POST, headers, b.clone())
            }
            None => (http::Method::GET, headers, Bytes::new()),
        }
    }

    /// The OPA `input` document (identity.md §10.3.3).
    fn opa_input(
        &self,
        session: &Session,
        cx: &RequestCtx,
        body: Option<&Bytes>,
        tls: bool,
    ) -> Value {
        let req = session.req_header();
        let host = req
            .uri
            .host()
            .map(str::to_string)
            .or_else(|| {
                let h = req.headers.get(http::header::HOST)?.to_str().ok()?;
                Some(strip_port(h).to_string())
            })
            .map(|h| h.to_ascii_lowercase());
        let segments: Vec<&str> = cx.path.strip_prefix('/').map_or(Vec::new(), |p| {
            if p.is_empty() {
                Vec::new()
            } else {
                p.split('/').collect()
            }
        });
        let mut included: Map<String, Value> = Map::new();
        for name in &self.include_headers {
            let values: Vec<&str> = req
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if !values.is_empty() {
                included.insert(name.as_str().to_string(), Value::String(values.join(", ")));
            }
        }
        let mut input = json!({
            "method": req.method.as_str(),
            "scheme": if tls { "https" } else { "http" },
            "host": host,
            "path": cx.path,
            "path_segments": segments,
            "query": query_map(visible_query(req.uri.query(), cx).as_deref()),
            "headers": included,
            "client_ip": cx.client_ip.map(|ip| ip.to_string()),
            "route": cx.route_name(),
            "consumer": cx.consumer.as_ref().map(|c| c.name.clone()),
            "groups": cx.consumer.as_ref().map_or(Vec::new(), |c| c.groups.clone()),
            "claims": cx.extensions.get::<Claims>().map(|c| Value::Object((*c.0).clone())),
        });
        if let (Some(b), Some(m)) = (body, input.as_object_mut()) {
            match std::str::from_utf8(b) {
                Ok(text) => {
                    m.insert("body".into(), Value::String(text.to_string()));
                }
                Err(_) => {
                    use base64::Engine;
                    let b64 = base64::engine::general_purpose::STANDARD.encode(b);
                    m.insert("body_base64".into(), Value::String(b64));
                }
            }
            let json_type = req
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .map(|t| t.trim().to_ascii_lowercase())
                .is_some_and(|t| {
                    t == "application/json"
                        || (t.starts_with("application/") && t.ends_with("+json"))
                });
            let identity_encoded = req
                .headers
                .get(http::header::CONTENT_ENCODING)
                .is_none_or(|e| e.as_bytes().eq_ignore_ascii_case(b"identity"));
            if json_type && identity_encoded {
                if let Ok(v) = serde_json::from_slice::<Value>(b) {
                    m.insert("parsed_body".into(), v);
                }
            }
        }
        input
    }

    /// The decision for this call: cached, shared with a call in progress, or asked.
    async fn decide(
        &self,
        method: http::Method,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
        route: &str,
    ) -> std::result::Result<Decision, NoDecision> {
        let mut h = Sha256::new();
        h.update(method.as_str());
        h.update([0]);
        h.update(&self.url);
        for (n, v) in &headers {
            if n == "x-request-id" || n == "traceparent" {
                continue;
            }
            h.update([0]);
            h.update(n.as_str());
            h.update([b':']);
            h.update(v.as_bytes());
        }
        h.update([0, 0]);
        h.update(&body);
        let digest: [u8; 32] = h.finalize().into();
        let caching = !self.cache_ttl.is_zero();
        if caching {
            if let Some(d) = self.cache.get(&digest) {
                self.metrics.lookups.inc(&[route, "hit"]);
                return Ok(d);
            }
            self.metrics.lookups.inc(&[route, "miss"]);
        }
        // without a cache every request makes its own call
        let leader = if caching {
            match self.cache.turn(digest, self.timeout).await {
                Turn::Shared(shared) => return shared.map_err(|()| NoDecision::Error),
                Turn::Lead(leader) => Some(leader),
            }
        } else {
            None
        };
        let Ok(_permit) = self.permits.try_acquire() else {
            return Err(NoDecision::Busy);
        };
        let start = Instant::now();
        let outcome = self.call(method, headers, body).await;
        self.metrics
            .duration
            .observe(&[route], start.elapsed().as_secs_f64());
        let result = match &outcome {
            Ok(Decision::Allow(_)) => "allow",
            Ok(Decision::Deny(_)) => "deny",
            Err(_) => "error",
        };
        self.metrics.calls.inc(&[route, result]);
        if let Err(reason) = &outcome {
            self.warn(route, reason);
        }
        let outcome = outcome.map_err(|_| ());
        if let Some(leader) = leader {
            if let Ok(d) = &outcome {
                if d.size() <= MAX_CACHED {
                    self.cache
                        .put(digest, d.clone(), Instant::now() + self.cache_ttl);
                }
            }
            leader.finish(outcome.clone());
        }
        outcome.map_err(|()| NoDecision::Error)
    }

    /// At most one warning line per second per policy.
    fn warn(&self, route: &str, reason: &str) {
        let mut last = self
            .last_warning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!("ext_authz: route {route}: {}: {reason}", self.url);
    }

    /// One call.
    async fn call(
        &self,
        method: http::Method,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Outcome {
        let mut req = http::Request::builder().method(method).uri(&self.url);
        if let Ok(h) = HeaderValue::from_str(&self.host) {
            req = req.header(http::header::HOST, h);
        }
        for (n, v) in headers {
            req = req.header(n, v);
        }
        let req = req.body(body).map_err(|e| format!("bad request: {e}"))?;
        let mut call = Call::default().timeout(self.timeout).max_body(MAX_ANSWER);
        if !self.opa {
            // the body of an allow is ignored, whatever its size; a denial's is checked
            call = call.truncate_body();
        }
        let resp = self
            .client
            .send_with(req, call)
            .await
            .map_err(|e| match e {
                crate::policy::OutboundError::Timeout(_) => "timeout".to_string(),
                crate::policy::OutboundError::TooLarge(_) => "answer over 64 KiB".to_string(),
                crate::policy::OutboundError::Failed(m) => format!("connect: {m}"),
            })?;
        if self.opa {
            self.opa_decision(&resp)
        } else {
            self.forward_decision(&resp)
        }
    }

    /// Reads a service's answer of `status` with `body` (for the fuzz target): whether
    /// it is a decision.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn read_answer(&self, status: u16, body: &[u8]) -> bool {
        let mut resp = http::Response::new(Bytes::copy_from_slice(body));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        let decided = if self.opa {
            self.opa_decision(&resp)
        } else {
            self.forward_decision(&resp)
        };
        decided.is_ok()
    }

    fn forward_decision(&self, resp: &http::Response<Bytes>) -> Outcome {
        let status = resp.status();
        if status.is_success() {
            return Ok(Decision::Allow(self.upstream_values(resp.headers())));
        }
        if status.is_server_error() || status.is_informational() {
            return Err(format!("status {}", status.as_u16()));
        }
        if resp.extensions().get::<Truncated>().is_some() {
            return Err("a denial's body over 64 KiB".into());
        }
        if !self.relay {
            return Ok(Decision::Deny(forbidden()));
        }
        let mut headers: Vec<(HeaderName, HeaderValue)> = self
            .client_headers
            .iter()
            .flat_map(|n| {
                resp.headers()
                    .get_all(n)
                    .iter()
                    .map(move |v| (n.clone(), v.clone()))
            })
            .collect();
        if !resp.body().is_empty() {
            if let Some(e) = resp.headers().get(http::header::CONTENT_ENCODING) {
                headers.push((http::header::CONTENT_ENCODING, e.clone()));
            }
        }
        Ok(Decision::Deny(Denial {
            status,
            body: Some(resp.body().clone()),
            message: String::new(),
            headers,
        }))
    }

    fn opa_decision(&self, resp: &http::Response<Bytes>) -> Outcome {
        if resp.status() != StatusCode::OK {
            return Err(format!("status {}", resp.status().as_u16()));
        }
        let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(resp.body()) else {
            return Err("invalid result: not a JSON object".into());
        };
        let result = match doc.get("result") {
            None | Some(Value::Bool(false)) => return Ok(Decision::Deny(forbidden())),
            Some(Value::Bool(true)) => return Ok(Decision::Allow(Vec::new())),
            Some(Value::Object(r)) => r,
            Some(_) => return Err("invalid result".into()),
        };
        let headers = match result.get("headers") {
            None => Map::new(),
            Some(Value::Object(h)) => h.clone(),
            Some(_) => return Err("invalid result: headers is not an object".into()),
        };
        let named =
            |allowed: &[HeaderName], skip_content_type: bool| -> Vec<(HeaderName, HeaderValue)> {
                headers
                    .iter()
                    .filter_map(|(k, v)| {
                        let n = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok()?;
                        if !allowed.contains(&n)
                            || (skip_content_type && n == http::header::CONTENT_TYPE)
                        {
                            return None;
                        }
                        Some((n, HeaderValue::from_str(v.as_str()?).ok()?))
                    })
                    .collect()
            };
        match result.get("allow") {
            Some(Value::Bool(true)) => {
                let set = named(&self.upstream_headers, false);
                Ok(Decision::Allow(
                    set.into_iter().filter(|(_, v)| settable(v)).collect(),
                ))
            }
            Some(Value::Bool(false)) => {
                if !self.relay {
                    return Ok(Decision::Deny(forbidden()));
                }
                let status = result
                    .get("status")
                    .and_then(Value::as_u64)
                    .filter(|s| (300..=499).contains(s))
                    .and_then(|s| StatusCode::from_u16(s as u16).ok())
                    .unwrap_or(StatusCode::FORBIDDEN);
                let message = result
                    .get("reason")
                    .and_then(Value::as_str)
                    .filter(|r| {
                        !r.is_empty() && r.len() <= MAX_REASON && !r.chars().any(char::is_control)
                    })
                    .unwrap_or("denied by external authorization")
                    .to_string();
                Ok(Decision::Deny(Denial {
                    status,
                    body: None,
                    message,
                    headers: named(&self.client_headers, true),
                }))
            }
            _ => Err("invalid result: no boolean allow".into()),
        }
    }

    /// The `upstream_headers` an allowing answer carries.
    fn upstream_values(&self, answer: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        self.upstream_headers
            .iter()
            .filter_map(|n| {
                answer
                    .get(n)
                    .filter(|v| settable(v))
                    .map(|v| (n.clone(), v.clone()))
            })
            .collect()
    }

    /// Acts on the decision (or its absence).
    fn apply(
        &self,
        decided: std::result::Result<Decision, NoDecision>,
        cx: &mut RequestCtx,
    ) -> Flow {
        match decided {
            Ok(Decision::Allow(headers)) => {
                cx.set_log_field("authz", "allow");
                for (n, v) in headers {
                    cx.set_identity_header(n, v);
                }
                Flow::Continue
            }
            Ok(Decision::Deny(d)) => {
                cx.set_log_field("authz", "deny");
                let code = if d.status == StatusCode::UNAUTHORIZED {
                    ErrorCode::Unauthorized
                } else {
                    ErrorCode::Forbidden
                };
                let mut reply = match d.body {
                    Some(body) => Reply::relay(d.status, code, body),
                    None => {
                        let mut r = Reply::refuse_with(code, d.message);
                        r.status = d.status;
                        r
                    }
                };
                reply.headers.extend(d.headers);
                Flow::Respond(reply)
            }
            Err(NoDecision::Busy) => {
                cx.set_log_field("authz", "error");
                Flow::Respond(identity::unavailable(
                    "too many authorization calls in progress",
                ))
            }
            Err(NoDecision::Error) if self.allow_on_error => {
                cx.set_log_field("authz", "error_allowed");
                Flow::Continue
            }
            Err(NoDecision::Error) => {
                cx.set_log_field("authz", "error");
                Flow::Respond(identity::unavailable(
                    "the authorization service is unavailable",
                ))
            }
        }
    }

    async fn run(&self, session: &Session, cx: &mut RequestCtx, body: Option<&Bytes>) -> Flow {
        let (method, headers, payload) = self.call_for(session, cx, body);
        let route = cx.route_name().unwrap_or(&self.route).to_string();
        let decided = self.decide(method, headers, payload, &route).await;
        self.apply(decided, cx)
    }
}

/// The request's query without the credentials an authentication policy hides
/// (`key_auth`'s key with `hide_credentials`, CROSSCUTTING.md 9.4).
fn visible_query(query: Option<&str>, cx: &RequestCtx) -> Option<String> {
    let q = query?;
    let hidden = cx.hidden_query_parameters();
    if hidden.is_empty() {
        return Some(q.to_string());
    }
    let kept = identity::without_query_parameters(q, hidden);
    (!kept.is_empty()).then_some(kept)
}

/// The gateway's own 403.
fn forbidden() -> Denial {
    Denial {
        status: StatusCode::FORBIDDEN,
        body: None,
        message: "denied by external authorization".into(),
        headers: Vec::new(),
    }
}

/// `host` without its `:port` (an IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[async_trait]
impl Policy for ExtAuthz {
    fn stage(&self) -> Stage {
        Stage::Authorization
    }

    async fn request_filter(&self, session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        if self.max_body.is_some() {
            // decided in `request_body`, with the body
            return Ok(Flow::Continue);
        }
        Ok(self.run(session, cx, None).await)
    }

    fn request_body_limit(&self) -> Option<usize> {
        self.max_body
    }

    async fn request_body(
        &self,
        session: &mut Session,
        cx: &mut RequestCtx,
        body: &mut Bytes,
    ) -> Result<Flow> {
        let b = body.clone();
        Ok(self.run(session, cx, Some(&b)).await)
    }

    fn identity_headers(&self) -> Vec<HeaderName> {
        self.upstream_headers.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_form_decoded_into_lists() {
        assert_eq!(
            query_map(Some("expand=items&tag=a&tag=b+c&flag&x=%C3%A9")),
            json!({"expand": ["items"], "tag": ["a", "b c"], "flag": [""], "x": ["é"]})
        );
        assert_eq!(query_map(None), json!({}));
    }

    #[test]
    fn ports_are_stripped_but_ipv6_brackets_kept() {
        assert_eq!(strip_port("api.example.com:8443"), "api.example.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("example"), "example");
    }

    #[test]
    fn header_values_over_4_kib_are_not_set_but_tabs_are_fine() {
        assert!(settable(&HeaderValue::from_static("a\tb")));
        // (the http crate refuses other control characters in a value already)
        assert!(HeaderValue::from_bytes(b"a\x01b").is_err());
        assert!(!settable(
            &HeaderValue::from_str(&"x".repeat(5000)).unwrap()
        ));
    }
}
