//! `body_limit`: refuse request bodies larger than a limit, without buffering them.
//!
//! # Config
//!
//! ```toml
//! [routes.upload.policies.body_limit]
//! max = "1MiB"      # bytes, or a string with a unit
//! ```
//!
//! A request whose `Content-Length` exceeds `max` gets 413 `payload_too_large` before
//! anything is sent upstream. A chunked (or otherwise unsized) body is counted as it
//! streams; when it grows past `max` the request is aborted: the client gets 413 (if no
//! response has started) and the upstream connection is closed, so the upstream never
//! receives the whole body. A body that policies read whole (to decode or rewrite it) is
//! held to `max` as the client sent it, before any policy changes it.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use serde::Deserialize;

use crate::context::RequestCtx;
use crate::policy::{BuildCtx, BuildError, Flow, Policy, PolicyConfig, Stage};
use crate::reply::{ErrorCode, Reply};
use crate::units::ConfigSize;

// === Config ===

/// `body_limit` config. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyLimitConfig {
    /// Largest request body accepted, in bytes (`"1MiB"`, `1048576`). Required.
    pub max: ConfigSize,
}

impl PolicyConfig for BodyLimitConfig {
    type Policy = BodyLimit;
    fn build(self, _cx: &BuildCtx<'_>) -> Result<BodyLimit, BuildError> {
        Ok(BodyLimit {
            max: self.max.bytes(),
        })
    }
}

// === Policy ===

/// Refuses oversized request bodies.
#[derive(Debug)]
pub struct BodyLimit {
    max: u64,
}

/// Bytes of body seen so far on this request.
#[derive(Debug, Clone, Copy, Default)]
struct Seen(u64);

#[async_trait]
impl Policy for BodyLimit {
    fn stage(&self) -> Stage {
        Stage::Body
    }

    fn request_body_max(&self) -> Option<usize> {
        Some(usize::try_from(self.max).unwrap_or(usize::MAX))
    }

    async fn request_filter(&self, session: &mut Session, _cx: &mut RequestCtx) -> Result<Flow> {
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        Ok(match declared {
            Some(n) if n > self.max => Flow::Respond(Reply::refuse_with(
                ErrorCode::PayloadTooLarge,
                format!(
                    "request body of {n} bytes exceeds the limit of {} bytes",
                    self.max
                ),
            )),
            _ => Flow::Continue,
        })
    }

    fn request_body_filter(
        &self,
        cx: &mut RequestCtx,
        body: &mut Option<Bytes>,
        _end: bool,
    ) -> Result<()> {
        // a body read whole was held to this limit as the client sent it; what goes
        // upstream now (a decoded or rewritten body) is not the client's
        if cx.request_body().is_some() {
            return Ok(());
        }
        let len = body.as_ref().map_or(0, |b| b.len() as u64);
        let seen = cx.extensions.get::<Seen>().copied().unwrap_or_default().0 + len;
        cx.extensions.insert(Seen(seen));
        if seen > self.max {
            *body = None;
            return Error::e_explain(
                ErrorType::HTTPStatus(413),
                "request body exceeds body_limit",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_units() {
        let c: BodyLimitConfig = toml::from_str("max = \"1MiB\"").unwrap();
        assert_eq!(c.max.bytes(), 1 << 20);
        assert!(toml::from_str::<BodyLimitConfig>("").is_err());
        assert!(toml::from_str::<BodyLimitConfig>("max = \"big\"").is_err());
    }

    #[test]
    fn streaming_count_refuses_past_the_limit() {
        let p = BodyLimit { max: 10 };
        let mut cx = RequestCtx::new();
        let mut chunk = Some(Bytes::from_static(b"123456"));
        assert!(p.request_body_filter(&mut cx, &mut chunk, false).is_ok());
        let mut chunk = Some(Bytes::from_static(b"7890"));
        assert!(p.request_body_filter(&mut cx, &mut chunk, false).is_ok());
        let mut chunk = Some(Bytes::from_static(b"x"));
        let e = p
            .request_body_filter(&mut cx, &mut chunk, true)
            .unwrap_err();
        assert_eq!(*e.etype(), ErrorType::HTTPStatus(413));
        assert!(
            chunk.is_none(),
            "the overflowing chunk must not be forwarded"
        );
    }
}
