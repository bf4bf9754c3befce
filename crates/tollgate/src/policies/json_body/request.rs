//! `request_body` (`transform.md` §3.5).

use async_trait::async_trait;
use bytes::Bytes;
use indexmap::IndexMap;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde::Deserialize;

use super::{transforms, Limits, Ops, OpsFile};
use crate::context::RequestCtx;
use crate::policy::template::Facts;
use crate::policy::{BuildCtx, BuildError, CounterVec, Flow, Policy, PolicyConfig, Stage};
use crate::reply::{ErrorCode, Reply};
use crate::units::ConfigSize;

/// `request_body` config. See the [module docs](super).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestBodyConfig {
    /// Allow-list of pointers (default: keep everything).
    #[serde(default)]
    pub keep: Vec<String>,
    /// Pointers to remove, in order.
    #[serde(default)]
    pub remove: Vec<String>,
    /// FROM = TO moves.
    #[serde(default)]
    pub rename: IndexMap<String, String>,
    /// Values placed (replacing), their strings templates.
    #[serde(default)]
    pub set: IndexMap<String, toml::Value>,
    /// Values placed where nothing is.
    #[serde(default)]
    pub add: IndexMap<String, toml::Value>,
    /// The media types transformed (default `application/json`, `application/*+json`).
    pub content_types: Option<Vec<String>>,
    /// Refuse non-empty bodies of other types with 415 (default false).
    #[serde(default)]
    pub strict: bool,
    /// `reject` (400, the default) or `pass` for a body that is not valid JSON.
    pub on_error: Option<String>,
    /// Largest body transformed (default `"1MiB"`); larger ones get 413.
    pub max_body: Option<ConfigSize>,
    /// JSON nesting limit (default 64).
    pub max_depth: Option<i64>,
}

impl PolicyConfig for RequestBodyConfig {
    type Policy = RequestBody;

    fn build(self, cx: &BuildCtx<'_>) -> Result<RequestBody, BuildError> {
        let mut errors = Vec::new();
        let ops = Ops::build(
            OpsFile {
                keep: &self.keep,
                remove: &self.remove,
                rename: &self.rename,
                set: &self.set,
                add: &self.add,
            },
            cx,
            &mut errors,
        );
        let limits = Limits::build(
            self.content_types.as_deref(),
            self.max_body,
            self.max_depth,
            &mut errors,
        );
        let on_error = self.on_error.as_deref().unwrap_or("reject");
        let pass_invalid =
            BuildError::choose("on_error", on_error, &[("reject", false), ("pass", true)])
                .map_err(|e| errors.push(e))
                .unwrap_or(false);
        BuildError::all(errors)?;
        Ok(RequestBody {
            ops,
            limits,
            strict: self.strict,
            pass_invalid,
            counts: transforms(cx),
        })
    }
}

/// Edits JSON request bodies before they go upstream.
#[derive(Debug)]
pub struct RequestBody {
    ops: Ops,
    limits: Limits,
    strict: bool,
    pass_invalid: bool,
    counts: CounterVec,
}

/// This request's body is a candidate: it is read whole.
#[derive(Debug, Clone, Copy)]
struct Candidate;

/// The body the upstream receives is not the client's.
#[derive(Debug, Clone, Copy)]
struct Changed;

impl RequestBody {
    fn is_candidate(&self, req: &RequestHeader) -> bool {
        self.limits.matches_type(&req.headers) && crate::media::identity_encoding(&req.headers)
    }

    fn count(&self, cx: &mut RequestCtx, outcome: &'static str) {
        let route = cx.route_name().unwrap_or_default().to_string();
        self.counts.inc(&[&route, "request", outcome]);
        cx.set_log_field("request_body", outcome);
    }
}

#[async_trait]
impl Policy for RequestBody {
    fn stage(&self) -> Stage {
        Stage::Body
    }

    fn request_body_limit(&self) -> Option<usize> {
        Some(self.limits.max_body)
    }

    async fn request_filter(&self, session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        if session.is_body_empty() {
            return Ok(Flow::Continue);
        }
        let req = session.req_header();
        if !self.is_candidate(req) {
            self.count(cx, "skipped_type");
            if self.strict {
                return Ok(Flow::Respond(Reply::refuse_with(
                    ErrorCode::UnsupportedMediaType,
                    "the request body's Content-Type (or Content-Encoding) is not one this route transforms",
                )));
            }
            return Ok(Flow::Continue);
        }
        if let Some(r) = super::declared_over(&req.headers, self.limits.max_body) {
            self.count(cx, "too_large");
            return Ok(Flow::Respond(r));
        }
        cx.extensions.insert(Candidate);
        Ok(Flow::Continue)
    }

    fn wants_request_body(&self, _session: &Session, cx: &RequestCtx) -> bool {
        cx.extensions.get::<Candidate>().is_some()
    }

    async fn request_body(
        &self,
        session: &mut Session,
        cx: &mut RequestCtx,
        body: &mut Bytes,
    ) -> Result<Flow> {
        if body.is_empty() {
            // a chunked body without a chunk: forwarded as it is
            return Ok(Flow::Continue);
        }
        let mut doc = match crate::json::parse(body, self.limits.max_depth) {
            Ok(doc) => doc,
            Err(e) => {
                self.count(cx, "invalid");
                if self.pass_invalid {
                    return Ok(Flow::Continue);
                }
                return Ok(Flow::Respond(Reply::refuse_with(
                    ErrorCode::BadRequest,
                    format!("the request body is not valid JSON: {e}"),
                )));
            }
        };
        let values = self.ops.render(Facts {
            request: session.req_header(),
            cx,
        });
        if self.ops.apply(&mut doc, &values) {
            *body = Bytes::from(doc.write());
            cx.extensions.insert(Changed);
        }
        self.count(cx, "applied");
        Ok(Flow::Continue)
    }

    fn upstream_request_filter(&self, cx: &mut RequestCtx, req: &mut RequestHeader) -> Result<()> {
        if cx.extensions.get::<Changed>().is_some() {
            for gone in ["content-md5", "digest"] {
                req.remove_header(gone);
            }
        }
        Ok(())
    }

    fn logging(&self, cx: &RequestCtx, _error: Option<&pingora::Error>) {
        // a chunked candidate that grew past max_body was refused while it was read
        if cx.extensions.get::<Candidate>().is_some()
            && cx.refusal() == Some(ErrorCode::PayloadTooLarge)
            && !cx.log_field_set("request_body")
        {
            let route = cx.route_name().unwrap_or_default();
            self.counts.inc(&[route, "request", "too_large"]);
        }
    }
}
