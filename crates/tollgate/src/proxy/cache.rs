//! The gateway's side of Pingora's cache hooks (`cache.md`): which requests use the
//! cache, their key, which responses are stored, and how each answer was made.

use std::time::SystemTime;

use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora_cache::cache_control::CacheControl;
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, CachePhase, NoCacheReason, RespCacheable};

use crate::cache::{fresh, key, CacheRules, CacheStatus};
use crate::context::RequestCtx;
use crate::metrics::CacheMetrics;
use crate::runtime::Route;

pub(crate) static X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");

/// What the cache did for one request of a cached route.
#[derive(Debug, Default)]
pub(crate) struct CacheRun {
    /// Not looked up (`cache.md` §3.2).
    pub bypass: bool,
    /// An entry was found: whether it was fresh.
    pub found: Option<bool>,
    /// The response is being stored.
    pub storing: bool,
    /// How the answer was made, once its head is known.
    pub status: Option<CacheStatus>,
    /// A Range past the end of the entry's body (its length): the answer is the 416
    /// refusal, not the entry.
    pub unsatisfiable: Option<u64>,
    /// The refusal's body, sent instead of the entry's.
    pub refusal_body: Option<bytes::Bytes>,
}

impl CacheRun {
    /// How the answer was made, from what the engine did.
    pub(crate) fn status(&mut self, phase: CachePhase) -> CacheStatus {
        if let Some(s) = self.status {
            return s;
        }
        let s = if self.bypass {
            CacheStatus::Bypass
        } else {
            match phase {
                CachePhase::Hit => CacheStatus::Hit,
                CachePhase::Stale | CachePhase::StaleUpdating => CacheStatus::Stale,
                CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => {
                    CacheStatus::Revalidated
                }
                CachePhase::Expired => CacheStatus::Expired,
                _ if self.found == Some(false) => CacheStatus::Expired,
                _ => CacheStatus::Miss,
            }
        };
        self.status = Some(s);
        s
    }
}

/// Whether `req` skips the cache (`cache.md` §3.2).
pub(crate) fn bypasses(req: &RequestHeader, rules: &CacheRules, route: &Route) -> bool {
    let method_ok = match req.method {
        http::Method::GET => rules.get,
        http::Method::HEAD => rules.head,
        _ => false,
    };
    if !method_ok {
        return true;
    }
    if CacheControl::from_req_headers(req).is_some_and(|c| c.no_store()) {
        return true;
    }
    if req.headers.contains_key(header::UPGRADE) {
        return true;
    }
    !rules.shared
        && !route.chain.has_stage(crate::policy::Stage::Authentication)
        && (req.headers.contains_key(header::AUTHORIZATION)
            || req.headers.contains_key(header::COOKIE))
}

/// Whether the client asks for revalidation (`Cache-Control: no-cache`).
pub(crate) fn wants_revalidation(req: &RequestHeader) -> bool {
    CacheControl::from_req_headers(req).is_some_and(|c| c.no_cache())
}

/// The request a key is made for: its session, context, route and `Host`.
pub(crate) struct Asked<'a> {
    pub session: &'a Session,
    pub cx: &'a RequestCtx,
    pub route: &'a Route,
    pub client_host: Option<&'a HeaderValue>,
}

impl Asked<'_> {
    /// What of the request its key is made of (`cache.md` §3.1).
    fn parts(&self) -> key::Request<'_> {
        let req = self.session.req_header();
        let authority = req.uri.authority().map(|a| a.as_str().as_bytes());
        let authenticated = self
            .route
            .chain
            .has_stage(crate::policy::Stage::Authentication);
        key::Request {
            route: &self.route.name,
            generation: self.route.chain.cache_generation(),
            https: self
                .session
                .digest()
                .is_some_and(|d| d.ssl_digest.is_some()),
            host: self
                .client_host
                .map(HeaderValue::as_bytes)
                .or(authority)
                .unwrap_or(b""),
            path: &self.cx.path,
            query: req.uri.query(),
            headers: &req.headers,
            consumer: self
                .cx
                .consumer
                .as_ref()
                .filter(|_| authenticated)
                .map(|c| c.name.as_str()),
            identity: &self.cx.identity_headers,
        }
    }

    /// The request's key.
    pub(crate) fn key(&self, rules: &CacheRules) -> CacheKey {
        CacheKey::new(key::primary(rules, &self.parts()), self.route.name.as_str())
    }

    /// Whether `resp` is stored, counting why not; a stored one carries the facts a
    /// purge selects it by.
    pub(crate) fn storable(
        &self,
        rules: &CacheRules,
        resp: &ResponseHeader,
        max_object: u64,
        metrics: &CacheMetrics,
    ) -> RespCacheable {
        match fresh::entry(rules, resp, max_object, SystemTime::now()) {
            Ok(mut meta) => {
                meta.extensions_mut()
                    .insert(key::facts(rules, &self.parts()));
                RespCacheable::Cacheable(meta)
            }
            Err(why) => {
                metrics
                    .not_stored
                    .with_label_values(&[&self.route.name, why.as_str()])
                    .inc();
                RespCacheable::Uncacheable(NoCacheReason::Custom(why.as_str()))
            }
        }
    }
}

/// The variant of `meta`'s response a request is (the upstream's `Vary`), or `None`
/// when it names no header.
pub(crate) fn variance(
    meta: &CacheMeta,
    req: &RequestHeader,
    cx: &RequestCtx,
) -> Option<HashBinary> {
    let mut names: Vec<String> = crate::forwarding::list_tokens(meta.headers(), &header::VARY)
        .filter(|n| *n != "*")
        .map(str::to_ascii_lowercase)
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort();
    names.dedup();
    let mut v = pingora_cache::VarianceBuilder::new();
    for name in names {
        // the headers as they go upstream: the gateway's identity values included
        let own = cx
            .identity_headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.as_bytes().to_vec());
        let value = own.or_else(|| {
            let mut values = req.headers.get_all(name.as_str()).iter();
            let first = values.next()?;
            let mut joined = first.as_bytes().to_vec();
            for more in values {
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(more.as_bytes());
            }
            Some(joined)
        });
        // an absent header is not an empty one
        let value = match value {
            Some(mut v) => {
                v.insert(0, b'=');
                v
            }
            None => b"\xff".to_vec(),
        };
        v.add_owned_name_value(name, value);
    }
    v.finalize()
}

/// Marks the answer's head with how it was made (`X-Cache-Status`, `Age` on a
/// revalidated entry) and keeps `Set-Cookie` off a response that is being stored
/// without it.
pub(crate) fn mark(
    resp: &mut ResponseHeader,
    rules: &CacheRules,
    run: &CacheRun,
    status: CacheStatus,
) -> pingora::Result<()> {
    if rules.status_header {
        resp.insert_header(X_CACHE_STATUS.clone(), status.as_str())?;
    }
    if status == CacheStatus::Revalidated && !resp.headers.contains_key(header::AGE) {
        resp.insert_header(header::AGE, "0")?;
    }
    if rules.strip_set_cookie && run.storing {
        resp.remove_header(&header::SET_COOKIE);
    }
    Ok(())
}

/// Whether the entry being served is a hit of some kind (not a fetch).
fn from_entry(phase: CachePhase) -> bool {
    matches!(
        phase,
        CachePhase::Hit
            | CachePhase::Stale
            | CachePhase::StaleUpdating
            | CachePhase::Revalidated
            | CachePhase::RevalidatedNoCache(_)
    )
}

/// The byte range a request gets from an entry (`cache.md` §3.5): one range of a 200
/// entry; several ranges, an `If-Range` that does not match strongly, or a miss get
/// the whole body; a range past the end is the 416 refusal (`run.unsatisfiable`).
pub(crate) fn range(
    req: &RequestHeader,
    resp: &mut ResponseHeader,
    phase: CachePhase,
    run: &mut CacheRun,
) -> pingora::proxy::RangeType {
    use pingora::proxy::RangeType;
    if !from_entry(phase) || !req.headers.contains_key(header::RANGE) {
        return RangeType::None;
    }
    // a weak validator never matches If-Range
    if req
        .headers
        .get(header::IF_RANGE)
        .is_some_and(|v| v.as_bytes().starts_with(b"W/"))
    {
        return RangeType::None;
    }
    let length = resp
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // at most one range: a second one makes the answer the whole body
    match pingora::proxy::range_header_filter(req, resp, Some(2)) {
        RangeType::Invalid => {
            run.unsatisfiable = length;
            RangeType::None
        }
        RangeType::Multi(_) => RangeType::None,
        r => r,
    }
}

/// The 416 refusal that answers a Range past the end of an entry of `length` bytes:
/// its head replaces the entry's, its body goes instead of the entry's.
pub(crate) fn unsatisfiable(
    resp: &mut ResponseHeader,
    length: u64,
    request_id: &str,
) -> pingora::Result<bytes::Bytes> {
    use crate::reply::{ErrorCode, Reply};
    let range = HeaderValue::from_str(&format!("bytes */{length}")).map_err(|e| {
        pingora::Error::because(pingora::ErrorType::InternalError, "content-range", e)
    })?;
    let reply = Reply::refuse(ErrorCode::RangeNotSatisfiable)
        .header(header::CONTENT_RANGE, range)
        .render(request_id);
    let mut head = ResponseHeader::build(reply.status, Some(reply.headers.len() + 4))?;
    for (n, v) in reply.headers {
        head.append_header(n, v)?;
    }
    *resp = head;
    Ok(reply.body)
}

/// Whether an expired entry may be served for `error` (`None`: while one request
/// refreshes it); the engine has checked the entry's stale windows.
pub(crate) fn serve_stale(error: Option<&pingora::Error>) -> bool {
    match error {
        None => true,
        Some(e) => {
            matches!(e.etype(), pingora::ErrorType::HTTPStatus(s) if *s >= 500)
                || matches!(e.esource(), pingora::ErrorSource::Upstream)
        }
    }
}
