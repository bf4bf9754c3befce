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
//!
//! [routes.store.policies.validate]           # or: an OpenAPI 3.0 / 3.1 document
//! openapi = "openapi.yaml"                  # .json, .yaml or .yml; instead of `methods`
//! unmatched = "reject"                      # reject | pass: a request no operation describes
//! validate_responses = false                # watch responses against the operation
//! ```
//!
//! Schemas are compiled when the configuration is loaded, by the `jsonschema` crate with
//! linear-time patterns and no remote references. Validation never changes the request.

mod input;
mod openapi;
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
    /// An OpenAPI 3.0 / 3.1 document (`.json`, `.yaml`, `.yml`), instead of `methods`.
    pub openapi: Option<String>,
    /// `reject` (default) or `pass` a request that no operation describes (OpenAPI).
    pub unmatched: Option<String>,
    /// Watch responses against the operation (OpenAPI; default false).
    pub validate_responses: Option<bool>,
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
    let at = file.as_deref().unwrap_or_default();
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
        for (key, set) in [
            ("unmatched", self.unmatched.is_some()),
            ("validate_responses", self.validate_responses.is_some()),
        ] {
            if set && self.openapi.is_none() {
                errors.push(BuildError::field(key, format!("{key} goes with openapi")));
            }
        }
        let pass_unmatched = BuildError::choose(
            "unmatched",
            self.unmatched.as_deref().unwrap_or("reject"),
            &[("reject", false), ("pass", true)],
        )
        .map_err(|e| errors.push(e))
        .unwrap_or(false);
        let mut rules = Vec::new();
        let mode = match (&self.methods, &self.openapi) {
            (Some(_), Some(_)) | (None, None) => {
                errors.push(BuildError::new(
                    "validate needs exactly one of methods and openapi",
                ));
                Mode::Methods(Vec::new())
            }
            (None, Some(file)) => match openapi::load(cx.config_dir, file) {
                Ok(doc) => {
                    rules = doc.rules;
                    Mode::OpenApi {
                        paths: doc.paths,
                        pass_unmatched,
                        watch: self.validate_responses.unwrap_or(false),
                    }
                }
                Err(es) => {
                    for e in es {
                        errors.push(BuildError::field("openapi", e));
                    }
                    Mode::Methods(Vec::new())
                }
            },
            (Some(tables), None) => {
                let mut methods = Vec::new();
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
                    let body = one("body_schema", &m.body_schema, false);
                    let r = Rules {
                        path: None,
                        query: one("query_schema", &m.query_schema, true),
                        headers: one("headers_schema", &m.headers_schema, true),
                        body: body.map(|schema| BodyRule::Schema {
                            schema,
                            required: m.body_required.unwrap_or(true),
                        }),
                        responses: match one("response_schema", &m.response_schema, false) {
                            Some(s) => Responses::Success(s),
                            None => Responses::None,
                        },
                        comma: Vec::new(),
                    };
                    if let Some(h) = r.headers.as_ref() {
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
                    methods.push((method, rules.len()));
                    rules.push(r);
                }
                Mode::Methods(methods)
            }
        };
        BuildError::all(errors)?;
        let code = ErrorCode::custom(status, "validation_failed")
            .map_err(|e| BuildError::field("status", e.to_string()))?;
        Ok(Validate {
            mode,
            rules,
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
    mode: Mode,
    rules: Vec<Rules>,
    code: ErrorCode,
    verbose: bool,
    max_details: usize,
    enforce: bool,
    max_body: usize,
    max_depth: usize,
    counts: CounterVec,
    response_failures: CounterVec,
}

/// How requests find their rules.
#[derive(Debug)]
enum Mode {
    /// By method: an index into `rules`.
    Methods(Vec<(http::Method, usize)>),
    /// By method and forwarded path, from an OpenAPI document.
    OpenApi {
        paths: Vec<openapi::PathTemplate>,
        pass_unmatched: bool,
        watch: bool,
    },
}

/// One method's (or operation's) schemas.
#[derive(Debug)]
pub(crate) struct Rules {
    path: Option<Schema>,
    query: Option<Schema>,
    headers: Option<Schema>,
    body: Option<BodyRule>,
    responses: Responses,
    /// Query parameters written comma-separated (`explode: false`).
    comma: Vec<String>,
}

/// The entries of an OpenAPI `content` table: media range, and the schema of a JSON one.
pub(crate) type Content = Vec<(String, Option<Schema>)>;

/// The path parameters of the operation a request matched.
type PathParams = serde_json::Map<String, serde_json::Value>;

/// What a request body is checked against.
#[derive(Debug)]
pub(crate) enum BodyRule {
    /// `body_schema`: JSON bodies only.
    Schema { schema: Schema, required: bool },
    /// An OpenAPI `requestBody`: an entry per media type, JSON ones with a schema.
    OpenApi { required: bool, content: Content },
}

/// What responses are watched against.
#[derive(Debug)]
pub(crate) enum Responses {
    None,
    /// `response_schema`: every 2xx JSON response.
    Success(Schema),
    /// An OpenAPI operation's `responses`: by status, range, `default`.
    ByStatus(Vec<(String, Content)>),
}

/// The failures found before the body, waiting for it.
#[derive(Debug, Clone)]
struct Pending(Vec<Detail>);

/// The rules of this request (an index into `rules`) and, for a body read, the schema
/// (for OpenAPI, the index of its `content` entry).
#[derive(Debug, Clone, Copy)]
struct Method(usize, usize);

/// A HEAD request: its response has no body to watch.
#[derive(Debug, Clone, Copy)]
struct HeadRequest;

/// Which response schema applies (for OpenAPI: the status entry and its media entry).
#[derive(Debug, Clone, Copy)]
struct Watched(usize, usize);

/// A response being copied for its check ([`RequestCtx::keep`]).
#[derive(Debug)]
struct Watching(BodyBuffer);

/// Why a request is refused otherwise than by its schema.
enum Refusal {
    Reply(Reply),
    Details(Vec<Detail>),
}

impl Validate {
    fn rules(&self, cx: &RequestCtx) -> Option<&Rules> {
        cx.extensions.get::<Method>().map(|m| &self.rules[m.0])
    }

    /// The body schema of this request, once chosen.
    fn body_schema(&self, cx: &RequestCtx) -> Option<&Schema> {
        let m = cx.extensions.get::<Method>()?;
        match self.rules[m.0].body.as_ref()? {
            BodyRule::Schema { schema, .. } => Some(schema),
            BodyRule::OpenApi { content, .. } => content.get(m.1)?.1.as_ref(),
        }
    }

    /// The rules for this request and its path parameters; `Err` is the verdict when
    /// none applies (`None`: not validated, `Some`: an unmatched request).
    fn find(
        &self,
        cx: &mut RequestCtx,
        method: &http::Method,
    ) -> std::result::Result<(usize, Option<PathParams>), Option<Flow>> {
        match &self.mode {
            Mode::Methods(ms) => ms
                .iter()
                .find(|(m, _)| m == method)
                .map(|(_, i)| (*i, None))
                .ok_or(None),
            Mode::OpenApi {
                paths,
                pass_unmatched,
                ..
            } => {
                let forwarded = cx.forwarded_path();
                let segs: Vec<&str> = forwarded.split('/').filter(|s| !s.is_empty()).collect();
                let mut best: Option<(&openapi::PathTemplate, usize, _)> = None;
                for t in paths {
                    let Some(params) = t.matches(&segs) else {
                        continue;
                    };
                    let Some((_, i)) = t.ops.iter().find(|(m, _)| m == method) else {
                        continue;
                    };
                    if best.as_ref().is_none_or(|(b, _, _)| t.beats(b)) {
                        best = Some((t, *i, params));
                    }
                }
                match best {
                    Some((_, i, params)) => Ok((i, Some(params))),
                    None if *pass_unmatched => {
                        self.count(cx, "unmatched");
                        Err(Some(Flow::Continue))
                    }
                    None => {
                        let d = vec![Detail::new(
                            "path",
                            "",
                            "no operation matches this method and path",
                        )];
                        Err(Some(self.decide(cx, Some(Refusal::Details(d)))))
                    }
                }
            }
        }
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
            input::coerce(&mut q, s, |n| rules.comma.iter().any(|c| c == n));
            details.extend(s.check(&serde_json::Value::Object(q), "query"));
        }
        if let Some(s) = &rules.headers {
            let mut h = input::header_object(&req.headers);
            input::coerce(&mut h, s, |_| true);
            details.extend(s.check(&serde_json::Value::Object(h), "header"));
        }
        Ok(details)
    }
}

/// `body`'s media type for a body schema: JSON, UTF-8, not encoded.
fn json_body(req: &pingora::http::RequestHeader) -> bool {
    let json = MediaType::of(&req.headers).is_some_and(|m| m.is_utf8() && m.is_json());
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
        let (i, path_params) = match self.find(cx, &req.method) {
            Ok(found) => found,
            Err(verdict) => return Ok(verdict.unwrap_or(Flow::Continue)),
        };
        cx.extensions.insert(Method(i, 0));
        if req.method == http::Method::HEAD {
            cx.extensions.insert(HeadRequest);
        }
        let rules = &self.rules[i];
        let mut details = Vec::new();
        if let (Some(s), Some(mut p)) = (&rules.path, path_params) {
            input::coerce(&mut p, s, |_| true);
            details.extend(s.check(&serde_json::Value::Object(p), "path"));
        }
        match self.check_head(rules, req) {
            Ok(d) => details.extend(d),
            Err(r) if self.enforce => return Ok(self.decide(cx, Some(Refusal::Reply(*r)))),
            // not enforced: warned and counted once, with whatever else fails
            Err(r) => details.push(Detail::new("query", "", r.message.clone())),
        }
        let Some(body) = &rules.body else {
            let failed = (!details.is_empty()).then_some(Refusal::Details(details));
            return Ok(self.decide(cx, failed));
        };
        let required = match body {
            BodyRule::Schema { required, .. } | BodyRule::OpenApi { required, .. } => *required,
        };
        if empty {
            if required {
                details.push(Detail::new("body", "", "a request body is required"));
            }
            let failed = (!details.is_empty()).then_some(Refusal::Details(details));
            return Ok(self.decide(cx, failed));
        }
        let media = MediaType::of(&req.headers);
        let entry = match body {
            BodyRule::Schema { .. } => json_body(req).then_some(0),
            BodyRule::OpenApi { content, .. } => media
                .as_ref()
                .filter(|_| crate::media::identity_encoding(&req.headers))
                .and_then(|m| openapi::pick(content, &m.essence)),
        };
        let Some(entry) = entry else {
            let r = Reply::refuse_with(
                ErrorCode::UnsupportedMediaType,
                "the request body's Content-Type (or Content-Encoding) is not one this route accepts",
            );
            return Ok(self.decide(cx, Some(Refusal::Reply(r))));
        };
        cx.extensions.insert(Method(i, entry));
        let json = media.as_ref().is_some_and(MediaType::is_json);
        let utf8 = media.as_ref().is_some_and(MediaType::is_utf8);
        if self.body_schema(cx).is_some() && json && !utf8 {
            // a JSON entry is never skipped by its charset
            let r = Reply::refuse_with(
                ErrorCode::UnsupportedMediaType,
                "the request body's Content-Type has a charset other than utf-8",
            );
            return Ok(self.decide(cx, Some(Refusal::Reply(r))));
        }
        if self.body_schema(cx).is_none() || !json {
            // an OpenAPI media type without a JSON schema: accepted unread
            let failed = (!details.is_empty()).then_some(Refusal::Details(details));
            return Ok(self.decide(cx, failed));
        }
        if let Some(r) = super::json_body::declared_over(&req.headers, self.max_body) {
            // enforced in both modes: the body cannot be read
            self.count(cx, "failed");
            return Ok(Flow::Respond(r));
        }
        cx.extensions.insert(Pending(details));
        Ok(Flow::Continue)
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
        let Some(schema) = self.body_schema(cx) else {
            return Ok(Flow::Continue);
        };
        let required = self
            .rules(cx)
            .and_then(|r| r.body.as_ref())
            .is_some_and(|b| match b {
                BodyRule::Schema { required, .. } | BodyRule::OpenApi { required, .. } => *required,
            });
        if body.is_empty() {
            if required {
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
        let watched = match (&rules.responses, &self.mode) {
            (Responses::None, _) => false,
            (Responses::ByStatus(_), Mode::OpenApi { watch, .. }) => *watch,
            _ => true,
        };
        let bodiless = cx.extensions.get::<HeadRequest>().is_some()
            || matches!(resp.status.as_u16(), 204 | 304)
            || resp.status.is_informational();
        if !watched || cx.refusal().is_some() || bodiless {
            return Ok(());
        }
        // a response from a cache entry was checked when it came from the upstream
        let cached = resp
            .headers
            .get("x-cache-status")
            .is_some_and(|v| matches!(v.as_bytes(), b"HIT" | b"STALE" | b"REVALIDATED"));
        if cached {
            return Ok(());
        }
        let media = MediaType::of(&resp.headers);
        let schema = match &rules.responses {
            Responses::Success(_) => resp.status.is_success().then_some((0, 0)),
            Responses::ByStatus(statuses) => {
                let code = resp.status.as_u16().to_string();
                let range = format!("{}XX", &code[..1]);
                let entry = [code.as_str(), range.as_str(), "DEFAULT"]
                    .iter()
                    .find_map(|k| statuses.iter().position(|(s, _)| s == k));
                entry.and_then(|i| {
                    let j = openapi::pick(&statuses[i].1, &media.as_ref()?.essence)?;
                    statuses[i].1[j].1.as_ref().map(|_| (i, j))
                })
            }
            Responses::None => None,
        };
        let Some(schema) = schema else {
            if resp.status.is_success() || matches!(rules.responses, Responses::ByStatus(_)) {
                cx.set_log_field("validation_response", "not_checked");
            }
            return Ok(());
        };
        cx.extensions.insert(Watched(schema.0, schema.1));
        let json = media.as_ref().is_some_and(|m| m.is_utf8() && m.is_json());
        let declared = crate::media::content_length(&resp.headers);
        let copy = (json && crate::media::identity_encoding(&resp.headers))
            .then(|| BodyBuffer::start(cx, declared, self.max_body).ok())
            .flatten();
        match copy {
            Some(buf) => cx.keep(Watching(buf)),
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
        // a copy: the piece goes on to the client as it is, now
        let pushed = cx.kept(|w: &mut Watching| body.as_ref().map(|piece| w.0.push(piece)));
        let Some(pushed) = pushed else {
            return Ok(());
        };
        if let Some(Hold::Release(..)) = pushed {
            cx.unkeep::<Watching>();
            cx.set_log_field("validation_response", "not_checked");
            return Ok(());
        }
        if !end_of_stream {
            return Ok(());
        }
        let Some(Watching(mut buf)) = cx.unkeep::<Watching>() else {
            return Ok(());
        };
        let copy = buf.take();
        let schema = match (
            self.rules(cx).map(|r| &r.responses),
            cx.extensions.get::<Watched>(),
        ) {
            (Some(Responses::Success(s)), _) => s,
            (Some(Responses::ByStatus(statuses)), Some(Watched(i, j))) => {
                match statuses.get(*i).and_then(|(_, c)| c.get(*j)?.1.as_ref()) {
                    Some(s) => s,
                    None => return Ok(()),
                }
            }
            _ => return Ok(()),
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
