//! `validate`: check requests against JSON Schema (draft 2020-12) at the edge, with
//! field-level errors, and watch responses (`transform.md` §3.8).
//!
//! # Config
//!
//! ```toml
//! [routes.pets.policies.validate]
//! status = 400              # 400 | 422: the status of a validation refusal
//! verbose = true            # the refusal lists `details`
//! max_details = 10          # 1..=100
//! enforce = true            # false: validate, log and count, let the request through
//! max_body = "1MiB"         # at most "64MiB"; larger bodies get 413
//! max_depth = 64            # 1..=128
//!
//! [routes.pets.policies.validate.methods.POST]
//! body_schema = "schemas/pet.json"          # a .json file or an inline table
//! body_required = true
//! query_schema = { type = "object", properties = { limit = { type = "integer", maximum = 100 } } }
//! headers_schema = "schemas/headers.json"   # lower-case property names
//! response_schema = "schemas/pet-out.json"  # 2xx JSON responses: logged and counted only
//! ```
//!
//! Schemas are compiled when the configuration is loaded, by the `jsonschema` crate with
//! linear-time patterns and no remote references. Validation never changes the request.

mod input;
mod schema;

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde::Deserialize;

use self::schema::{Detail, Schema};
use super::default_true;
use super::json_body::{max_body_of, max_depth_of};
use crate::context::RequestCtx;
use crate::media::MediaType;
use crate::policy::{
    BodyBuffer, BuildCtx, BuildError, CounterVec, Flow, Hold, Policy, PolicyConfig, Stage,
};
use crate::reply::{ErrorCode, Reply};
use crate::units::ConfigSize;

/// `validate` config. See the [module docs](self).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// The status of a validation refusal: 400 (default) or 422.
    pub status: Option<u16>,
    /// List `details` in the refusal (default true).
    #[serde(default = "default_true")]
    pub verbose: bool,
    /// At most this many details (default 10, 1..=100).
    pub max_details: Option<i64>,
    /// Refuse failing requests (default true); false: log, count, let through.
    #[serde(default = "default_true")]
    pub enforce: bool,
    /// Largest body read (default `"1MiB"`).
    pub max_body: Option<ConfigSize>,
    /// JSON nesting limit (default 64).
    pub max_depth: Option<i64>,
    /// One table per method (upper case).
    pub methods: Option<BTreeMap<String, MethodConfig>>,
    /// Only inside `methods`: reported when written here.
    pub response_schema: Option<toml::Value>,
    /// Only inside `methods`: reported when written here.
    pub body_required: Option<bool>,
}

/// What one method's requests are checked against.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodConfig {
    /// The body's schema (a `.json` file or an inline table).
    pub body_schema: Option<toml::Value>,
    /// An empty body fails validation (default true).
    pub body_required: Option<bool>,
    /// The query object's schema.
    pub query_schema: Option<toml::Value>,
    /// The header object's schema (lower-case property names).
    pub headers_schema: Option<toml::Value>,
    /// The schema 2xx JSON responses are watched against.
    pub response_schema: Option<toml::Value>,
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
];

/// Loads, checks and compiles the schema at `field`; every problem is an error.
fn schema_at(
    cx: &BuildCtx<'_>,
    field: &str,
    v: &toml::Value,
    top_object: bool,
    errors: &mut Vec<BuildError>,
) -> Option<Schema> {
    let (doc, file) = match schema::load(cx.config_dir, v) {
        Ok(loaded) => loaded,
        Err(e) => {
            errors.push(BuildError::field(field, e));
            return None;
        }
    };
    let at = schema::source_name(file.as_deref());
    let mut problems = schema::problems(&doc);
    if top_object && doc.get("type").and_then(|t| t.as_str()) != Some("object") {
        problems
            .push("#/type: the top type of a query or headers schema must be \"object\"".into());
    }
    let before = errors.len();
    for p in problems {
        errors.push(BuildError::field(field, format!("{at}{p}")));
    }
    if errors.len() > before {
        return None;
    }
    match Schema::compile(doc) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(BuildError::field(field, format!("{at}#: {e}")));
            None
        }
    }
}

impl PolicyConfig for ValidateConfig {
    type Policy = Validate;

    fn build(self, cx: &BuildCtx<'_>) -> Result<Validate, BuildError> {
        let mut errors = Vec::new();
        let status = self.status.unwrap_or(400);
        if status != 400 && status != 422 {
            errors.push(BuildError::field(
                "status",
                format!("status {status} is not 400 or 422"),
            ));
        }
        let max_details = self.max_details.unwrap_or(10);
        if !(1..=100).contains(&max_details) {
            errors.push(BuildError::field(
                "max_details",
                format!("max_details {max_details} is out of range (1..=100)"),
            ));
        }
        for (key, set) in [
            ("response_schema", self.response_schema.is_some()),
            ("body_required", self.body_required.is_some()),
        ] {
            if set {
                errors.push(BuildError::field(
                    key,
                    format!("{key} belongs in a methods.METHOD table"),
                ));
            }
        }
        let max_body = max_body_of(self.max_body, &mut errors);
        let max_depth = max_depth_of(self.max_depth, &mut errors);
        let mut methods = Vec::new();
        match &self.methods {
            None => errors.push(BuildError::new("validate needs a methods table")),
            Some(tables) => {
                for (name, m) in tables {
                    let at = |k: &str| format!("methods.{name}.{k}");
                    let Ok(method) = http::Method::from_bytes(name.as_bytes()) else {
                        continue;
                    };
                    if !METHODS.contains(&name.as_str()) {
                        errors.push(BuildError::field(
                            format!("methods.{name}"),
                            format!("{name:?} is not one of {}", METHODS.join(", ")),
                        ));
                        continue;
                    }
                    let schemas = [
                        &m.body_schema,
                        &m.query_schema,
                        &m.headers_schema,
                        &m.response_schema,
                    ];
                    if schemas.iter().all(|s| s.is_none()) {
                        errors.push(BuildError::field(
                            format!("methods.{name}"),
                            "a method table needs at least one of body_schema, query_schema, headers_schema, response_schema",
                        ));
                        continue;
                    }
                    let mut one = |key: &str, v: &Option<toml::Value>, object: bool| {
                        v.as_ref()
                            .and_then(|v| schema_at(cx, &at(key), v, object, &mut errors))
                    };
                    let rules = Rules {
                        body: one("body_schema", &m.body_schema, false),
                        query: one("query_schema", &m.query_schema, true),
                        headers: one("headers_schema", &m.headers_schema, true),
                        response: one("response_schema", &m.response_schema, false),
                        body_required: m.body_required.unwrap_or(true),
                    };
                    if let Some(h) = rules.headers.as_ref() {
                        let props = h.doc.get("properties").and_then(|p| p.as_object());
                        for p in props.into_iter().flat_map(|p| p.keys()) {
                            if p.chars().any(|c| c.is_ascii_uppercase()) {
                                errors.push(BuildError::field(
                                    at("headers_schema"),
                                    format!("header property {p:?} must be lower case"),
                                ));
                            }
                        }
                    }
                    methods.push((method, rules));
                }
            }
        }
        BuildError::all(errors)?;
        let code = ErrorCode::custom(status, "validation_failed")
            .map_err(|e| BuildError::field("status", e.to_string()))?;
        Ok(Validate {
            methods,
            code,
            verbose: self.verbose,
            max_details: usize::try_from(max_details).unwrap_or(10),
            enforce: self.enforce,
            max_body,
            max_depth,
            counts: cx.metrics().counter(
                "tollgate_validation_total",
                "Requests validated, by outcome",
                &["route", "outcome"],
            ),
            response_failures: cx.metrics().counter(
                "tollgate_validation_response_failures_total",
                "Responses that failed their schema (watched, never changed)",
                &["route"],
            ),
        })
    }
}

/// Checks requests (and watches responses) against JSON Schemas.
#[derive(Debug)]
pub struct Validate {
    methods: Vec<(http::Method, Rules)>,
    code: ErrorCode,
    verbose: bool,
    max_details: usize,
    enforce: bool,
    max_body: usize,
    max_depth: usize,
    counts: CounterVec,
    response_failures: CounterVec,
}

/// One method's schemas.
#[derive(Debug)]
struct Rules {
    body: Option<Schema>,
    body_required: bool,
    query: Option<Schema>,
    headers: Option<Schema>,
    response: Option<Schema>,
}

/// The failures found before the body, waiting for it.
#[derive(Debug, Clone)]
struct Pending(Vec<Detail>);

/// Which method's rules apply to this request (an index into `methods`).
#[derive(Debug, Clone, Copy)]
struct Method(usize);

/// A response being copied for its check.
#[derive(Debug, Clone)]
struct Watching(std::sync::Arc<std::sync::Mutex<BodyBuffer>>);

/// Why a request is refused otherwise than by its schema.
enum Refusal {
    Reply(Reply),
    Details(Vec<Detail>),
}

impl Validate {
    fn rules(&self, cx: &RequestCtx) -> Option<&Rules> {
        cx.extensions.get::<Method>().map(|m| &self.methods[m.0].1)
    }

    fn count(&self, cx: &mut RequestCtx, outcome: &'static str) {
        let route = cx.route_name().unwrap_or_default().to_string();
        self.counts.inc(&[&route, outcome]);
        cx.set_log_field("validation", outcome);
    }

    /// The request's verdict: through, or refused (with `enforce`), or through with a
    /// warning line.
    fn decide(&self, cx: &mut RequestCtx, failed: Option<Refusal>) -> Flow {
        let Some(failed) = failed else {
            self.count(cx, "ok");
            return Flow::Continue;
        };
        if !self.enforce {
            let why = match &failed {
                Refusal::Reply(r) => r.message.clone(),
                Refusal::Details(d) => d
                    .iter()
                    .take(self.max_details)
                    .map(|d| format!("{} {}: {}", d.location, d.path, d.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            tracing::warn!(
                "validate: route {}: request {}: would be refused, forwarded (enforce = false): {why}",
                cx.route_name().unwrap_or_default(),
                cx.request_id
            );
            self.count(cx, "skipped");
            return Flow::Continue;
        }
        self.count(cx, "failed");
        Flow::Respond(match failed {
            Refusal::Reply(r) => r,
            Refusal::Details(mut d) => {
                let rank = |l: &str| {
                    ["path", "query", "header", "body"]
                        .iter()
                        .position(|x| *x == l)
                };
                d.sort_by_key(|d| rank(d.location));
                let mut r = Reply::refuse_with(self.code, "request does not match the schema");
                if self.verbose {
                    let list: Vec<serde_json::Value> =
                        d.iter().take(self.max_details).map(Detail::json).collect();
                    r = r.member("details", serde_json::Value::Array(list));
                }
                r
            }
        })
    }

    /// Checks the query and headers; `Err` is a refusal that is not a list of details.
    fn check_head(
        &self,
        rules: &Rules,
        req: &pingora::http::RequestHeader,
    ) -> std::result::Result<Vec<Detail>, Box<Reply>> {
        let mut details = Vec::new();
        if let Some(s) = &rules.query {
            let Some(mut q) = input::query_object(req.uri.query().unwrap_or_default()) else {
                return Err(Box::new(Reply::refuse_with(
                    ErrorCode::BadRequest,
                    "the query string does not decode to UTF-8",
                )));
            };
            input::coerce(&mut q, s, false);
            details.extend(s.check(&serde_json::Value::Object(q), "query"));
        }
        if let Some(s) = &rules.headers {
            let mut h = input::header_object(&req.headers);
            input::coerce(&mut h, s, true);
            details.extend(s.check(&serde_json::Value::Object(h), "header"));
        }
        Ok(details)
    }
}

/// `body`'s media type for a body schema: JSON, UTF-8, not encoded.
fn json_body(req: &pingora::http::RequestHeader) -> bool {
    let json = MediaType::of(&req.headers).is_some_and(|m| {
        m.is_utf8()
            && (m.essence == "application/json"
                || (m.essence.starts_with("application/") && m.essence.ends_with("+json")))
    });
    json && crate::media::identity_encoding(&req.headers)
}

#[async_trait]
impl Policy for Validate {
    fn stage(&self) -> Stage {
        Stage::Body
    }

    fn request_body_limit(&self) -> Option<usize> {
        Some(self.max_body)
    }

    async fn request_filter(&self, session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        let empty = session.is_body_empty();
        let req = session.req_header();
        let Some(i) = self.methods.iter().position(|(m, _)| *m == req.method) else {
            return Ok(Flow::Continue);
        };
        cx.extensions.insert(Method(i));
        let rules = &self.methods[i].1;
        let mut details = match self.check_head(rules, req) {
            Ok(d) => d,
            Err(r) => return Ok(self.decide(cx, Some(Refusal::Reply(*r)))),
        };
        if let Some(_body) = &rules.body {
            let declared = req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > self.max_body as u64) {
                // enforced in both modes: the body cannot be read
                self.count(cx, "failed");
                return Ok(Flow::Respond(Reply::refuse_with(
                    ErrorCode::PayloadTooLarge,
                    format!("the request body is larger than {} bytes", self.max_body),
                )));
            }
            if empty {
                if rules.body_required {
                    details.push(Detail::new("body", "", "a request body is required"));
                }
            } else if !json_body(req) {
                let r = Reply::refuse_with(
                    ErrorCode::UnsupportedMediaType,
                    "the request body's Content-Type (or Content-Encoding) is not JSON",
                );
                return Ok(self.decide(cx, Some(Refusal::Reply(r))));
            } else {
                cx.extensions.insert(Pending(details));
                return Ok(Flow::Continue);
            }
        }
        let failed = (!details.is_empty()).then_some(Refusal::Details(details));
        Ok(self.decide(cx, failed))
    }

    fn wants_request_body(&self, _session: &Session, cx: &RequestCtx) -> bool {
        cx.extensions.get::<Pending>().is_some()
    }

    async fn request_body(
        &self,
        _session: &mut Session,
        cx: &mut RequestCtx,
        body: &mut Bytes,
    ) -> Result<Flow> {
        let Some(Pending(mut details)) = cx.extensions.remove::<Pending>() else {
            return Ok(Flow::Continue);
        };
        let Some(Some(schema)) = self.rules(cx).map(|r| r.body.as_ref()) else {
            return Ok(Flow::Continue);
        };
        if body.is_empty() {
            if self.rules(cx).is_some_and(|r| r.body_required) {
                details.push(Detail::new("body", "", "a request body is required"));
            }
        } else {
            match crate::json::parse(body, self.max_depth) {
                Ok(doc) => details.extend(schema.check(&doc.to_serde(), "body")),
                Err(e) => {
                    let r = Reply::refuse_with(
                        ErrorCode::BadRequest,
                        format!("the request body is not valid JSON: {e}"),
                    );
                    return Ok(self.decide(cx, Some(Refusal::Reply(r))));
                }
            }
        }
        let failed = (!details.is_empty()).then_some(Refusal::Details(details));
        Ok(self.decide(cx, failed))
    }

    fn response_filter(&self, cx: &mut RequestCtx, resp: &mut ResponseHeader) -> Result<()> {
        let Some(rules) = self.rules(cx) else {
            return Ok(());
        };
        if rules.response.is_none() || cx.refusal().is_some() {
            return Ok(());
        }
        // a response from a cache entry was checked when it came from the upstream
        let cached = resp
            .headers
            .get("x-cache-status")
            .is_some_and(|v| matches!(v.as_bytes(), b"HIT" | b"STALE" | b"REVALIDATED"));
        if !resp.status.is_success() || cached {
            return Ok(());
        }
        let json = MediaType::of(&resp.headers).is_some_and(|m| {
            m.is_utf8()
                && (m.essence == "application/json"
                    || (m.essence.starts_with("application/") && m.essence.ends_with("+json")))
        });
        let declared = resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let copy = (json && crate::media::identity_encoding(&resp.headers))
            .then(|| BodyBuffer::start(cx, declared, self.max_body).ok())
            .flatten();
        match copy {
            Some(buf) => {
                cx.extensions
                    .insert(Watching(std::sync::Arc::new(std::sync::Mutex::new(buf))));
            }
            None => cx.set_log_field("validation_response", "not_checked"),
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        cx: &mut RequestCtx,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<()> {
        let Some(Watching(buf)) = cx.extensions.get::<Watching>().cloned() else {
            return Ok(());
        };
        // only this hook of this request touches it: never contended
        let mut buf = buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(piece) = body.as_ref() {
            // a copy: the piece goes on to the client as it is, now
            if let Hold::Release(..) = buf.push(piece) {
                cx.extensions.remove::<Watching>();
                cx.set_log_field("validation_response", "not_checked");
                return Ok(());
            }
        }
        if !end_of_stream {
            return Ok(());
        }
        cx.extensions.remove::<Watching>();
        let copy = buf.take();
        let Some(Some(schema)) = self.rules(cx).map(|r| r.response.as_ref()) else {
            return Ok(());
        };
        let details = match crate::json::parse(&copy, self.max_depth) {
            Ok(doc) => schema.check(&doc.to_serde(), "body"),
            Err(e) => vec![Detail::new("body", "", format!("is not valid JSON ({e})"))],
        };
        if details.is_empty() {
            cx.set_log_field("validation_response", "ok");
            return Ok(());
        }
        let route = cx.route_name().unwrap_or_default().to_string();
        self.response_failures.inc(&[&route]);
        let why: Vec<String> = details
            .iter()
            .take(self.max_details)
            .map(|d| format!("{}: {}", d.path, d.message))
            .collect();
        tracing::warn!(
            "validate: route {route}: request {}: the response does not match its schema: {}",
            cx.request_id,
            why.join("; ")
        );
        cx.set_log_field("validation_response", "failed");
        Ok(())
    }
}
