//! `oauth2_introspection`: authenticate opaque bearer tokens with an OAuth 2.0 token
//! introspection endpoint (RFC 7662), with a bounded cache.
//!
//! # Config
//!
//! ```toml
//! [routes.reports.policies.oauth2_introspection]
//! endpoint = "https://login.example.com/introspect"   # required
//! client_id = "tollgate"                 # required
//! client_secret_env = "TOLLGATE_INTROSPECTION_SECRET" # required: the variable holding the secret
//! auth_method = "client_secret_basic"    # or client_secret_post
//! token_type_hint = "access_token"       # "" sends none
//! timeout = "2s"                         # one call, "100ms".."60s"
//! ca_file = "certs/idp-ca.pem"           # optional, https only
//! cache_ttl = "1m"                       # active answers, until min(now + ttl, exp); "0s": off
//! negative_cache_ttl = "10s"             # inactive answers; "0s": off
//! cache_size = 10000                     # entries, 1..1000000
//! max_in_flight = 64                     # calls in progress, 1..10000
//! on_error = "unavailable"               # unavailable: 503 | deny: 401
//! claim = "sub"                          # the answer member naming the consumer (jwt_subject)
//! anonymous = "partners"                 # optional
//! scopes = ["reports:read"]              # optional
//! audience = "reports-api"               # optional, string or list
//! claims_to_headers = { sub = "x-user-id" }   # optional
//! hide_credentials = true                # default
//! ```
//!
//! The cache is keyed by the token's SHA-256 digest; raw tokens are never kept.
//! Concurrent misses for one token share one call; at most `max_in_flight` calls are in
//! progress, and a miss beyond that is 503 `identity_unavailable` without a call.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use base64::Engine;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::policy::answers::{Answers, Turn};
use crate::policy::identity::{self, Audience, ClaimHeaders, Scopes};
use crate::policy::{
    BuildCtx, BuildError, Bytes, Call, Consumers, CounterVec, Flow, GaugeVec, HttpClient, Policy,
    PolicyConfig, Reply, RequestCtx, Stage,
};
use crate::reply::ErrorCode;
use crate::units::ConfigDuration;

/// Largest bearer token accepted.
const MAX_TOKEN: usize = 8 * 1024;

/// Largest introspection answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// Most scope or audience values kept of one answer.
const MAX_VALUES: usize = 64;

// === Config ===

/// `oauth2_introspection` config. See the [module docs](self).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint (`http` or `https`).
    pub endpoint: Option<String>,
    /// The gateway's client id at the authorization server.
    pub client_id: Option<String>,
    /// The name of the environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default = "default_auth_method")]
    pub auth_method: String,
    /// Sent as `token_type_hint`; `""` sends none. Default `access_token`.
    #[serde(default = "default_hint")]
    pub token_type_hint: String,
    /// One call, the whole exchange. Default `2s`.
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// CAs (PEM) trusted instead of the platform's, for an `https` endpoint.
    pub ca_file: Option<String>,
    /// How long an active answer is kept (at most until its `exp`). Default `1m`.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: ConfigDuration,
    /// How long an inactive answer is kept. Default `10s`.
    #[serde(default = "default_negative_ttl")]
    pub negative_cache_ttl: ConfigDuration,
    /// Cache entries. Default 10000.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    /// Calls in progress at most. Default 64.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// `unavailable` (default): 503 on an error; `deny`: 401.
    #[serde(default = "default_on_error")]
    pub on_error: String,
    /// The answer member naming the consumer. Default `sub`.
    #[serde(default = "default_claim")]
    pub claim: String,
    /// The consumer an active token naming no consumer authenticates as.
    pub anonymous: Option<String>,
    /// Scopes the answer must grant.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Accepted audiences: the answer's `aud` must contain one.
    pub audience: Option<Audience>,
    /// Answer members sent upstream as headers.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Remove `Authorization` before forwarding. Default `true`.
    #[serde(default = "crate::policies::default_true")]
    pub hide_credentials: bool,
}

fn default_auth_method() -> String {
    "client_secret_basic".into()
}
fn default_hint() -> String {
    "access_token".into()
}
fn default_timeout() -> ConfigDuration {
    ConfigDuration::new(Duration::from_secs(2))
}
fn default_cache_ttl() -> ConfigDuration {
    ConfigDuration::new(Duration::from_secs(60))
}
fn default_negative_ttl() -> ConfigDuration {
    ConfigDuration::new(Duration::from_secs(10))
}
fn default_cache_size() -> usize {
    10_000
}
fn default_max_in_flight() -> usize {
    64
}
fn default_on_error() -> String {
    "unavailable".into()
}
fn default_claim() -> String {
    "sub".into()
}

impl PolicyConfig for IntrospectionConfig {
    type Policy = Introspection;

    fn build(self, cx: &BuildCtx<'_>) -> Result<Introspection, BuildError> {
        let endpoint = self.endpoint.clone().ok_or_else(|| {
            BuildError::field("endpoint", "the introspection endpoint is required")
        })?;
        let client_id = match self.client_id.as_deref() {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => return Err(BuildError::field("client_id", "a client id is required")),
        };
        let Some(var) = self.client_secret_env.as_deref() else {
            return Err(BuildError::field(
                "client_secret_env",
                "the name of the environment variable holding the client secret is required",
            ));
        };
        let secret = match std::env::var(var) {
            Ok(v) if !v.is_empty() => v,
            _ => {
                return Err(BuildError::field(
                    "client_secret_env",
                    format!("environment variable {var} is not set"),
                ))
            }
        };
        let basic = BuildError::choose(
            "auth_method",
            &self.auth_method,
            &[("client_secret_basic", true), ("client_secret_post", false)],
        )?;
        let deny_on_error = BuildError::choose(
            "on_error",
            &self.on_error,
            &[("unavailable", false), ("deny", true)],
        )?;
        let timeout = self.timeout.get();
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&timeout) {
            return Err(BuildError::field("timeout", "between 100ms and 60s"));
        }
        let day = Duration::from_secs(24 * 3600);
        for (key, d) in [
            ("cache_ttl", self.cache_ttl.get()),
            ("negative_cache_ttl", self.negative_cache_ttl.get()),
        ] {
            if d > day {
                return Err(BuildError::field(key, "at most 24h"));
            }
        }
        if !(1..=1_000_000).contains(&self.cache_size) {
            return Err(BuildError::field("cache_size", "between 1 and 1000000"));
        }
        if !(1..=10_000).contains(&self.max_in_flight) {
            return Err(BuildError::field("max_in_flight", "between 1 and 10000"));
        }
        if self.claim.is_empty() {
            return Err(BuildError::field("claim", "the claim name cannot be empty"));
        }
        let audience = match &self.audience {
            Some(Audience(list)) if list.is_empty() || list.iter().any(String::is_empty) => {
                return Err(BuildError::field(
                    "audience",
                    "give at least one non-empty audience",
                ))
            }
            Some(Audience(list)) => list.clone(),
            None => Vec::new(),
        };
        let scopes = Scopes::new("scopes", &self.scopes)?;
        let claim_headers = ClaimHeaders::new("claims_to_headers", &self.claims_to_headers)?;
        let anonymous = match &self.anonymous {
            Some(a) => Some(cx.consumer("anonymous", a)?),
            None => None,
        };
        let client = identity::service_client(
            cx,
            "endpoint",
            &endpoint,
            "ca_file",
            self.ca_file.as_deref(),
        )?;
        let size = NonZeroUsize::new(self.cache_size).unwrap_or(NonZeroUsize::MIN);
        // members of an answer worth keeping: the consumer, scopes, audience, headers
        let mut keep: Vec<String> = vec![
            self.claim.clone(),
            "scope".into(),
            "scp".into(),
            "aud".into(),
        ];
        keep.extend(self.claims_to_headers.keys().cloned());
        // answers keep only these members: a reload that reads others starts afresh
        let cache = cx.state_keyed(&(&endpoint, &client_id, &keep), || Answers::new(size));
        cache.resize(size);
        let metrics = cx.metrics();
        let route = cx.instance_route().to_string();
        Ok(Introspection {
            endpoint,
            client,
            auth: Auth {
                basic,
                id: client_id,
                secret,
            },
            hint: self.token_type_hint,
            timeout,
            cache_ttl: self.cache_ttl.get(),
            negative_ttl: self.negative_cache_ttl.get(),
            cache,
            permits: Semaphore::new(self.max_in_flight),
            deny_on_error,
            claim: self.claim,
            keep,
            anonymous,
            scopes,
            audience,
            claim_headers,
            hide: self.hide_credentials,
            metrics: Metrics {
                requests: metrics.counter(
                    "tollgate_introspection_requests_total",
                    "Calls to the introspection endpoint, by route and result.",
                    &["route", "result"],
                ),
                lookups: metrics.counter(
                    "tollgate_introspection_cache_total",
                    "Introspection cache look-ups, by route and result.",
                    &["route", "result"],
                ),
                entries: metrics.gauge(
                    "tollgate_introspection_cache_entries",
                    "Entries in the introspection cache.",
                    &["route"],
                ),
            },
            route,
        })
    }
}

// === The cache ===

/// An introspection answer that decides.
#[derive(Debug)]
enum Answer {
    /// `active: true`, with the members the policy reads.
    Active(Map<String, Value>),
    /// `active: false`.
    Inactive,
}

/// What one call ended with: an answer, or an error (its reason, for the log).
type Outcome = std::result::Result<Arc<Answer>, String>;

// === Policy ===

struct Auth {
    basic: bool,
    id: String,
    secret: String,
}

struct Metrics {
    requests: CounterVec,
    lookups: CounterVec,
    entries: GaugeVec,
}

/// Authenticates opaque bearer tokens with an introspection endpoint.
pub struct Introspection {
    endpoint: String,
    client: HttpClient,
    auth: Auth,
    hint: String,
    timeout: Duration,
    cache_ttl: Duration,
    negative_ttl: Duration,
    cache: Arc<Answers<Arc<Answer>>>,
    permits: Semaphore,
    deny_on_error: bool,
    claim: String,
    /// The answer members kept in the cache.
    keep: Vec<String>,
    anonymous: Option<Arc<str>>,
    scopes: Scopes,
    audience: Vec<String>,
    claim_headers: ClaimHeaders,
    hide: bool,
    metrics: Metrics,
    /// The instance's route (`_global` for a top-level policy).
    route: String,
}

impl fmt::Debug for Introspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // never the secret
        f.debug_struct("Introspection")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.auth.id)
            .finish_non_exhaustive()
    }
}

/// Whether `t` is an RFC 6750 `b64token`: `A-Z a-z 0-9 - . _ ~ + /`, then `=`s.
fn b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

fn invalid_token(message: &str) -> Reply {
    Reply::refuse_with(ErrorCode::Unauthorized, message).header(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    )
}

/// The form-urlencoding of one value (RFC 6749 §2.3.1 for Basic credentials).
fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Introspection {
    /// Reads an answer body as the endpoint's (for the fuzz target): whether it is an
    /// answer, and until when it would be kept.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn read_answer(&self, body: &[u8]) -> bool {
        match serde_json::from_slice(body).map(|v| self.parse(v)) {
            Ok(Ok(a)) => {
                let _ = self.keep_until(&a);
                true
            }
            _ => false,
        }
    }

    /// The answer for `token`: cached, shared with a call in progress, or called.
    async fn answer(&self, token: &str, route: &str) -> std::result::Result<Arc<Answer>, Refusal> {
        let digest = crate::consumer::digest(token.as_bytes());
        let caching = !self.cache_ttl.is_zero() || !self.negative_ttl.is_zero();
        if caching {
            if let Some(a) = self.cache.get(&digest) {
                let result = match &*a {
                    Answer::Active(_) => "hit",
                    Answer::Inactive => "negative_hit",
                };
                self.metrics.lookups.inc(&[route, result]);
                return Ok(a);
            }
            self.metrics.lookups.inc(&[route, "miss"]);
        }
        // a call for this token in progress: its answer
        let leader = match self.cache.turn(digest, self.timeout).await {
            Turn::Shared(shared) => return shared.map_err(|()| Refusal::Error),
            Turn::Lead(leader) => leader,
        };
        let Ok(_permit) = self.permits.try_acquire() else {
            return Err(Refusal::Busy);
        };
        let outcome = self.call(token).await;
        let result = match &outcome {
            Ok(a) if matches!(**a, Answer::Active(_)) => "active",
            Ok(_) => "inactive",
            Err(_) => "error",
        };
        self.metrics.requests.inc(&[route, result]);
        match &outcome {
            Ok(a) => {
                if let Some(until) = self.keep_until(a) {
                    let n = self.cache.put(digest, a.clone(), until);
                    self.metrics.entries.set(&[&self.route], n as i64);
                }
            }
            Err(reason) => tracing::warn!(
                "oauth2_introspection: route {route}: {} failed: {reason}",
                self.endpoint
            ),
        }
        let outcome = outcome.map_err(|_| ());
        leader.finish(outcome.clone());
        outcome.map_err(|()| Refusal::Error)
    }

    /// Until when an answer is cached, if at all.
    fn keep_until(&self, a: &Answer) -> Option<Instant> {
        let now = Instant::now();
        match a {
            Answer::Inactive => (!self.negative_ttl.is_zero()).then(|| now + self.negative_ttl),
            Answer::Active(m) => {
                if self.cache_ttl.is_zero() {
                    return None;
                }
                let mut keep = self.cache_ttl;
                if let Some(exp) = m.get("exp").and_then(Value::as_f64) {
                    let unix = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64());
                    if exp.is_nan() || exp <= unix {
                        return None;
                    }
                    // an `exp` far away (or absurd, 1e300) leaves cache_ttl in force
                    if let Ok(left) = Duration::try_from_secs_f64(exp - unix) {
                        keep = keep.min(left);
                    }
                }
                now.checked_add(keep)
            }
        }
    }

    /// One call to the endpoint.
    async fn call(&self, token: &str) -> Outcome {
        let req = self
            .request(token)
            .map_err(|e| format!("bad request: {e}"))?;
        let call = Call::default().timeout(self.timeout).max_body(MAX_ANSWER);
        let (v, _) = identity::fetch_json(&self.client, req, call).await?;
        self.parse(v).map(Arc::new)
    }

    /// The introspection request for `token`.
    fn request(&self, token: &str) -> http::Result<http::Request<Bytes>> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token);
        if !self.hint.is_empty() {
            form.append_pair("token_type_hint", &self.hint);
        }
        let mut req = http::Request::post(&self.endpoint)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json");
        if self.auth.basic {
            let pair = format!(
                "{}:{}",
                urlencode(&self.auth.id),
                urlencode(&self.auth.secret)
            );
            let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
            req = req.header(http::header::AUTHORIZATION, format!("Basic {b64}"));
        } else {
            form.append_pair("client_id", &self.auth.id);
            form.append_pair("client_secret", &self.auth.secret);
        }
        req.body(Bytes::from(form.finish()))
    }

    /// An answer from a JSON document, keeping only the members the policy reads.
    fn parse(&self, v: Value) -> std::result::Result<Answer, String> {
        let Value::Object(mut m) = v else {
            return Err("the answer is not a JSON object".into());
        };
        match m.get("active") {
            Some(Value::Bool(false)) => return Ok(Answer::Inactive),
            Some(Value::Bool(true)) => {}
            _ => return Err("`active` is missing or not a boolean".into()),
        }
        let typed = |k: &str, ok: fn(&Value) -> bool| m.get(k).is_none_or(ok);
        let strings = |v: &Value| match v {
            Value::String(_) => true,
            Value::Array(a) => a.iter().all(Value::is_string),
            _ => false,
        };
        if !typed("exp", Value::is_number)
            || !typed("scope", Value::is_string)
            || !typed("aud", strings)
        {
            return Err("`exp`, `scope` or `aud` has the wrong type".into());
        }
        m.retain(|k, _| k == "exp" || self.keep.iter().any(|w| w == k));
        for k in ["scp", "aud"] {
            if let Some(Value::Array(a)) = m.get_mut(k) {
                a.truncate(MAX_VALUES);
            }
        }
        Ok(Answer::Active(m))
    }

    fn audience_ok(&self, m: &Map<String, Value>) -> bool {
        if self.audience.is_empty() {
            return true;
        }
        let has = |a: &str| self.audience.iter().any(|w| w == a);
        match m.get("aud") {
            Some(Value::String(a)) => has(a),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(has),
            _ => false,
        }
    }

    fn consumer(
        &self,
        m: &Map<String, Value>,
        consumers: &Consumers,
    ) -> Option<Arc<crate::policy::Consumer>> {
        let subject = m.get(&self.claim).and_then(Value::as_str)?;
        consumers.by_subject(subject).cloned()
    }
}

/// Why no answer decided.
enum Refusal {
    /// The call failed.
    Error,
    /// `max_in_flight` calls are in progress.
    Busy,
}

#[async_trait]
impl Policy for Introspection {
    fn stage(&self) -> Stage {
        Stage::Authentication
    }

    async fn request_filter(&self, session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        let header = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = header.and_then(|v| {
            let (scheme, t) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| t.trim())
        });
        let Some(token) = token else {
            return Ok(Flow::Respond(
                Reply::refuse_with(ErrorCode::Unauthorized, "missing bearer token").header(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                ),
            ));
        };
        if token.len() > MAX_TOKEN || !b64token(token) {
            return Ok(Flow::Respond(invalid_token("malformed bearer token")));
        }
        let route = cx.route_name().unwrap_or(&self.route).to_string();
        let answer = match self.answer(token, &route).await {
            Ok(a) => a,
            Err(Refusal::Busy) => {
                return Ok(Flow::Respond(identity::unavailable(
                    "too many introspection calls in progress",
                )))
            }
            Err(Refusal::Error) if self.deny_on_error => {
                return Ok(Flow::Respond(invalid_token(
                    "the token could not be verified",
                )))
            }
            Err(Refusal::Error) => {
                return Ok(Flow::Respond(identity::unavailable(
                    "the introspection endpoint is unavailable",
                )))
            }
        };
        let Answer::Active(m) = &*answer else {
            return Ok(Flow::Respond(invalid_token("the token is not active")));
        };
        if !self.audience_ok(m) {
            return Ok(Flow::Respond(Reply::refuse_with(
                ErrorCode::Forbidden,
                "the token is not meant for this API",
            )));
        }
        if !self.scopes.granted(m) {
            return Ok(Flow::Respond(self.scopes.refusal()));
        }
        self.claim_headers.apply(m, cx);
        match self.consumer(m, cx.consumers()) {
            Some(c) => {
                cx.consumer = Some(c);
                Ok(Flow::Continue)
            }
            None => {
                if let Some(c) = self
                    .anonymous
                    .as_deref()
                    .and_then(|a| cx.consumers().get(a))
                {
                    cx.offer_anonymous(c.clone());
                }
                Ok(Flow::Respond(invalid_token("the token names no consumer")))
            }
        }
    }

    fn upstream_request_filter(&self, _cx: &mut RequestCtx, req: &mut RequestHeader) -> Result<()> {
        if self.hide {
            req.remove_header(&http::header::AUTHORIZATION);
        }
        Ok(())
    }

    fn identity_headers(&self) -> Vec<HeaderName> {
        self.claim_headers.names()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(extra: &str) -> Introspection {
        std::env::set_var("TOLLGATE_TEST_INTROSPECTION_SECRET", "s3cret");
        let c: IntrospectionConfig = toml::from_str(&format!(
            "endpoint = \"http://127.0.0.1:9/introspect\"\nclient_id = \"gw\"\n\
             client_secret_env = \"TOLLGATE_TEST_INTROSPECTION_SECRET\"\n{extra}"
        ))
        .unwrap();
        c.build(&BuildCtx::new(std::path::Path::new("."), "p"))
            .unwrap()
    }

    #[test]
    fn b64token_is_rfc_6750s() {
        assert!(b64token("abc-._~+/XYZ09=="));
        for bad in ["", "a b", "a,b", "ä", "===", "a=b"] {
            assert!(!b64token(bad), "{bad}");
        }
    }

    #[test]
    fn answers_of_the_wrong_shape_are_errors_and_only_read_members_are_kept() {
        let p = policy("claims_to_headers = { client_id = \"x-client\" }");
        assert!(matches!(
            p.parse(json!({"active": false, "x": 1})),
            Ok(Answer::Inactive)
        ));
        for bad in [
            json!([]),
            json!({}),
            json!({"active": "true"}),
            json!({"active": true, "exp": "soon"}),
            json!({"active": true, "scope": ["a"]}),
            json!({"active": true, "aud": [1]}),
        ] {
            assert!(p.parse(bad.clone()).is_err(), "{bad}");
        }
        let Ok(Answer::Active(m)) = p.parse(json!({"active": true, "sub": "s", "client_id": "c",
            "secret_stuff": "x", "exp": 5, "scope": "a b"}))
        else {
            panic!("active")
        };
        let mut keys: Vec<&str> = m.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["client_id", "exp", "scope", "sub"]);
    }

    #[test]
    fn active_answers_are_kept_until_the_earlier_of_ttl_and_exp() {
        let p = policy("cache_ttl = \"1m\"\nnegative_cache_ttl = \"0s\"");
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let active = |exp: u64| Answer::Active(json!({"exp": exp}).as_object().unwrap().clone());
        let soon = p.keep_until(&active(unix + 5)).unwrap();
        assert!(soon < Instant::now() + Duration::from_secs(6));
        let later = p.keep_until(&active(unix + 3600)).unwrap();
        assert!(later > Instant::now() + Duration::from_secs(50));
        assert!(
            p.keep_until(&active(unix - 1)).is_none(),
            "expired: not cached"
        );
        // an absurd exp leaves cache_ttl in force, and never panics
        let huge = Answer::Active(json!({"exp": 1e300}).as_object().unwrap().clone());
        let until = p.keep_until(&huge).unwrap();
        assert!(until <= Instant::now() + Duration::from_secs(60));
        assert!(
            p.keep_until(&Answer::Inactive).is_none(),
            "negative caching off"
        );
    }

    #[test]
    fn the_secret_never_shows_in_debug_and_an_unset_variable_is_named() {
        let p = policy("");
        assert!(!format!("{p:?}").contains("s3cret"));
        let c: IntrospectionConfig = toml::from_str(
            "endpoint = \"https://idp/i\"\nclient_id = \"gw\"\nclient_secret_env = \"TOLLGATE_TEST_UNSET_VAR\"",
        )
        .unwrap();
        let e = c
            .build(&BuildCtx::new(std::path::Path::new("."), "p"))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("client_secret_env"));
        assert_eq!(
            e.message,
            "environment variable TOLLGATE_TEST_UNSET_VAR is not set"
        );
    }
}
