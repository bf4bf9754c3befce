//! `concurrency_limit`: at most `max` requests in flight per client key.
//!
//! # Config
//!
//! ```toml
//! [routes.reports.policies.concurrency_limit]
//! max = 10
//! by = "consumer"       # consumer | client_ip (default) | route | "header:NAME"
//! ```
//!
//! A request over the limit gets 503 `overloaded` with `Retry-After: 1` and never
//! reaches the upstream. A request counts from the moment it passes this policy until
//! its response is finished (or it fails). Counting uses a bounded count-min sketch
//! (`pingora-limits`), so memory does not grow with the number of keys.

use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderValue;
use pingora::proxy::Session;
use pingora::Result;
use pingora_limits::inflight::{Guard, Inflight};
use serde::Deserialize;

use crate::context::RequestCtx;
use crate::policy::{BuildCtx, BuildError, Flow, Policy, PolicyConfig, Stage};
use crate::reply::{ErrorCode, Reply};
use crate::request_key::RequestKey;

// === Config ===

/// `concurrency_limit` config. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimitConfig {
    /// Requests allowed in flight per key. Required, at least 1.
    pub max: u64,
    /// What identifies a client. Default: `client_ip`.
    #[serde(default)]
    pub by: RequestKey,
}

impl PolicyConfig for ConcurrencyLimitConfig {
    type Policy = ConcurrencyLimit;
    fn build(self, _cx: &BuildCtx<'_>) -> Result<ConcurrencyLimit, BuildError> {
        if self.max == 0 {
            return Err(BuildError::field("max", "max must be at least 1"));
        }
        Ok(ConcurrencyLimit {
            max: self.max as isize,
            by: self.by,
            inflight: Inflight::new(),
        })
    }
}

// === Policy ===

/// Limits requests in flight per key.
pub struct ConcurrencyLimit {
    max: isize,
    by: RequestKey,
    inflight: Inflight,
}

impl std::fmt::Debug for ConcurrencyLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("max", &self.max)
            .field("by", &self.by)
            .finish_non_exhaustive()
    }
}

/// Held in the request's extensions while it is in flight; dropping it releases the slot.
#[derive(Debug, Clone)]
struct Slot(#[allow(dead_code)] Arc<Guard>);

impl ConcurrencyLimit {
    /// Takes a slot for `key`; `None` (and nothing held) when the limit is reached.
    fn acquire(&self, key: &[u8]) -> Option<Guard> {
        let (guard, n) = self.inflight.incr(key, 1);
        (n <= self.max).then_some(guard)
    }
}

#[async_trait]
impl Policy for ConcurrencyLimit {
    fn stage(&self) -> Stage {
        Stage::Traffic
    }

    async fn request_filter(&self, session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        let mut key = crate::request_key::KeyBuf::new();
        self.by.write(cx, &session.req_header().headers, &mut key);
        match self.acquire(&key) {
            Some(guard) => {
                cx.extensions.insert(Slot(Arc::new(guard)));
                Ok(Flow::Continue)
            }
            None => Ok(Flow::Respond(
                Reply::refuse_with(
                    ErrorCode::Overloaded,
                    format!("more than {} requests in flight", self.max),
                )
                .header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_released_when_dropped() {
        let cx = BuildCtx::new(std::path::Path::new("."), "p");
        let p = ConcurrencyLimitConfig {
            max: 2,
            by: RequestKey::Route,
        }
        .build(&cx)
        .unwrap();
        let a = p.acquire(b"k").unwrap();
        let _b = p.acquire(b"k").unwrap();
        assert!(p.acquire(b"k").is_none(), "third in flight");
        assert!(p.acquire(b"other").is_some(), "keys are independent");
        drop(a);
        assert!(
            p.acquire(b"k").is_some(),
            "a finished request frees its slot"
        );
    }

    #[test]
    fn zero_is_a_build_error() {
        let cx = BuildCtx::new(std::path::Path::new("."), "p");
        let e = ConcurrencyLimitConfig {
            max: 0,
            by: RequestKey::ClientIp,
        }
        .build(&cx)
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("max"));
    }
}
