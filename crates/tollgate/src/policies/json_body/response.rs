//! `response_body` (`transform.md` §3.6).

use async_trait::async_trait;
use bytes::Bytes;
use indexmap::IndexMap;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::Result;
use serde::Deserialize;

use super::{transforms, Limits, Ops, OpsFile, Rendered};
use crate::compress::Coding;
use crate::context::RequestCtx;
use crate::policy::template::Facts;
use crate::policy::{
    body_length_changes, BodyBuffer, BuildCtx, BuildError, CounterVec, Flow, Hold, Policy,
    PolicyConfig, Stage,
};
use crate::units::ConfigSize;

/// `response_body` config. See the [module docs](super).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseBodyConfig {
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
    /// `remove` (the default) or `weaken` the `ETag` of a transformed response.
    pub etag: Option<String>,
    /// Largest body transformed (default `"1MiB"`); larger ones pass unmodified.
    pub max_body: Option<ConfigSize>,
    /// JSON nesting limit (default 64).
    pub max_depth: Option<i64>,
}

impl PolicyConfig for ResponseBodyConfig {
    type Policy = ResponseBody;

    fn build(self, cx: &BuildCtx<'_>) -> Result<ResponseBody, BuildError> {
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
        let etag = self.etag.as_deref().unwrap_or("remove");
        let weaken = BuildError::choose("etag", etag, &[("remove", false), ("weaken", true)])
            .map_err(|e| errors.push(e))
            .unwrap_or(false);
        BuildError::all(errors)?;
        Ok(ResponseBody {
            ops,
            limits,
            weaken,
            counts: transforms(cx),
        })
    }
}

/// Edits JSON response bodies before they reach the client.
#[derive(Debug)]
pub struct ResponseBody {
    ops: Ops,
    limits: Limits,
    weaken: bool,
    counts: CounterVec,
}

/// The values for this request's response (templates read the request's facts).
#[derive(Debug, Clone)]
struct Pending(Rendered);

/// A candidate response being collected ([`RequestCtx::keep`]).
#[derive(Debug)]
struct Collected {
    buf: BodyBuffer,
    coding: Option<Coding>,
}

impl ResponseBody {
    fn count(&self, cx: &mut RequestCtx, outcome: &'static str) {
        let route = cx.route_name().unwrap_or_default().to_string();
        self.counts.inc(&[&route, "response", outcome]);
        cx.set_log_field("response_body", outcome);
    }

    /// The head's checks (§3.6), in order; `Ok` is the coding of a candidate, `Err` the
    /// outcome to count (`None`: not counted).
    fn candidate(
        &self,
        resp: &ResponseHeader,
    ) -> std::result::Result<Option<Coding>, Option<&'static str>> {
        let s = resp.status.as_u16();
        if resp.status.is_informational() || matches!(s, 204 | 206 | 304) {
            return Err(None);
        }
        // a body that ends in trailers has no end to hold it to
        if resp.headers.contains_key(http::header::TRAILER) {
            return Err(None);
        }
        let sse = crate::media::MediaType::of(&resp.headers)
            .is_some_and(|m| m.essence == "text/event-stream");
        if sse || !self.limits.matches_type(&resp.headers) {
            return Err(Some("skipped_type"));
        }
        let coding = Coding::of(&resp.headers).ok_or(Some("encoding"))?;
        Ok(coding)
    }

    /// The body to send for the whole upstream body `whole`.
    fn finish(&self, cx: &mut RequestCtx, whole: Bytes, coding: Option<Coding>) -> Bytes {
        if whole.is_empty() {
            return whole;
        }
        let max = self.limits.max_body;
        let decoded = match coding {
            None => Ok(whole.clone()),
            Some(c) => {
                // decoded within max_body and the process's buffers: decoding stops there
                match BodyBuffer::start(cx, None, max) {
                    Err(_) => Err("too_large"),
                    Ok(mut out) => {
                        let mut fits = true;
                        let done = c.decode(&whole, &mut |piece| {
                            fits = matches!(out.push(piece), Hold::Held);
                            fits
                        });
                        match done {
                            Ok(true) => Ok(out.take()),
                            Ok(false) => Err("too_large"),
                            Err(_) => Err("invalid"),
                        }
                    }
                }
            }
        };
        let outcome = decoded.and_then(|body| {
            let mut doc =
                crate::json::parse(&body, self.limits.max_depth).map_err(|_| "invalid")?;
            let Some(Pending(values)) = cx.extensions.get::<Pending>() else {
                return Ok(None);
            };
            Ok(self.ops.apply(&mut doc, values).then(|| doc.write()))
        });
        // the new body is held too until it is sent (body_buffer_total counts bytes held)
        let outcome = outcome.and_then(|changed| match changed {
            Some(out) if BodyBuffer::start(cx, Some(out.len()), out.len()).is_err() => {
                Err("too_large")
            }
            other => Ok(other),
        });
        match outcome {
            Ok(changed) => {
                self.count(cx, "applied");
                match (changed, coding) {
                    (None, _) => whole,
                    (Some(out), None) => Bytes::from(out),
                    (Some(out), Some(c)) => Bytes::from(c.encode(&out)),
                }
            }
            Err(why) => {
                if why == "invalid" {
                    tracing::warn!(
                        "response_body: route {}: request {}: the response body is not valid JSON (or its coding does not decode); forwarded unmodified",
                        cx.route_name().unwrap_or_default(),
                        cx.request_id
                    );
                }
                self.count(cx, why);
                whole
            }
        }
    }
}

#[async_trait]
impl Policy for ResponseBody {
    fn stage(&self) -> Stage {
        Stage::Body
    }

    async fn request_filter(&self, session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        // the client always gets the whole, transformed response: a Range is neither
        // sent upstream nor answered from a cache entry (CROSSCUTTING.md rule 10.3)
        let req = session.req_header_mut();
        req.remove_header(&http::header::RANGE);
        req.remove_header(&http::header::IF_RANGE);
        if session.req_header().method != http::Method::HEAD {
            let values = self.ops.render(Facts {
                request: session.req_header(),
                cx,
            });
            cx.extensions.insert(Pending(values));
        }
        Ok(Flow::Continue)
    }

    fn upstream_request_filter(&self, _cx: &mut RequestCtx, req: &mut RequestHeader) -> Result<()> {
        // the body must arrive unencoded or in a coding the gateway reads
        // (CROSSCUTTING.md rule 9.6)
        req.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
        Ok(())
    }

    fn response_filter(&self, cx: &mut RequestCtx, resp: &mut ResponseHeader) -> Result<()> {
        // HEAD requests have no values; the gateway's own answers are never transformed
        if cx.extensions.get::<Pending>().is_none() || cx.refusal().is_some() {
            return Ok(());
        }
        let coding = match self.candidate(resp) {
            Ok(c) => c,
            Err(Some(outcome)) => {
                self.count(cx, outcome);
                return Ok(());
            }
            Err(None) => return Ok(()),
        };
        let declared = crate::media::content_length(&resp.headers);
        if declared == Some(0) {
            return Ok(());
        }
        let Ok(buf) = BodyBuffer::start(cx, declared, self.limits.max_body) else {
            // over max_body, or no room in the process's buffers: as it comes
            self.count(cx, "too_large");
            return Ok(());
        };
        body_length_changes(resp)?;
        for gone in ["content-md5", "digest"] {
            resp.remove_header(gone);
        }
        let etag = resp.headers.get(http::header::ETAG).cloned();
        if let Some(tag) = etag {
            if self.weaken && !tag.as_bytes().starts_with(b"W/") {
                let mut weak = b"W/".to_vec();
                weak.extend_from_slice(tag.as_bytes());
                let weak = http::HeaderValue::from_bytes(&weak).unwrap_or(tag);
                resp.insert_header(http::header::ETAG, weak)?;
            } else if !self.weaken {
                resp.remove_header(&http::header::ETAG);
            }
        }
        cx.keep(Collected { buf, coding });
        Ok(())
    }

    fn response_body_filter(
        &self,
        cx: &mut RequestCtx,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<()> {
        let pushed = cx.kept(|c: &mut Collected| body.take().map(|piece| c.buf.push(&piece)));
        let Some(pushed) = pushed else {
            return Ok(());
        };
        if let Some(Hold::Release(bytes, _)) = pushed {
            // larger than max_body: what was held, then the rest as it comes
            cx.unkeep::<Collected>();
            self.count(cx, "too_large");
            *body = Some(bytes);
            return Ok(());
        }
        if end_of_stream {
            if let Some(mut c) = cx.unkeep::<Collected>() {
                let whole = c.buf.take();
                *body = Some(self.finish(cx, whole, c.coding));
            }
        }
        Ok(())
    }
}
