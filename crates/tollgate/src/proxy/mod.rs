//! `impl ProxyHttp for Gateway`: the only place that maps Pingora's phases to the
//! gateway's steps (routing, the policy chain, forwarding, refusals, metrics).

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpUpstreamRequestPolicy;
use pingora::{Error, ErrorSource, ErrorType, OkOrErr, Result};
use tokio::time::Instant;

use crate::access_log::AccessLogger;
use crate::context::RequestCtx;
use crate::forwarding;
use crate::guard::head_deadline::{Connection, PeerTracer};
use crate::metrics::{Metrics, NO_ROUTE};
use crate::policy::Flow;
use crate::reply::{ErrorCode, Reply, X_REQUEST_ID};
use crate::request_id;
use crate::router::{self, path, Lookup, RequestFacts};
use crate::runtime::{Route, Snapshot};
use crate::trace::TraceContext;

mod cache;
mod compress;
mod state;

pub use state::Exchange;
use state::{Choice, ProxyState};

/// The gateway: routes requests and runs their policies. Implements Pingora's
/// [`ProxyHttp`]; see [`crate::ListenerService`] to turn it into a Pingora service.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) state: Arc<ArcSwap<Snapshot>>,
    pub(crate) metrics: Metrics,
    pub(crate) access_log: Option<AccessLogger>,
    pub(crate) spans: Option<crate::otlp::SpanExporter>,
    /// Set when this process hands its sockets over or shuts down: answers then close
    /// their connection, so clients move to new connections (and the new process) while
    /// this one still serves, instead of finding a kept-alive connection closed under them.
    pub(crate) drain: Arc<crate::drain::Drain>,
    pub(crate) limits: crate::config::limits::Limits,
    /// The memory every whole body the policies hold may take (`body_buffer_total`).
    pub(crate) bodies: &'static crate::policy::body::Budget,
    /// The response store (`[server.cache]`) and the lock that coalesces its fetches.
    pub(crate) cache: Arc<crate::cache::Shelf>,
    /// The responses being compressed (`compress_streams`).
    pub(crate) streams: Arc<crate::compress::Streams>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("digest", &self.state.load().digest)
            .finish_non_exhaustive()
    }
}

/// Parsed names (a `&str` name is parsed on every look-up; cloning these allocates
/// nothing).
/// How long an idle pooled connection to an address from DNS is kept (fleet.md §13.5:
/// one to an address that left is closed within 5 s).
const NAMED_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

static X_FORWARDED_FOR_NAME: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST_NAME: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO_NAME: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_CONSUMER_NAME: HeaderName = HeaderName::from_static("x-consumer-name");
static TRACEPARENT_NAME: HeaderName = HeaderName::from_static("traceparent");

impl Gateway {
    /// The gateway's part of `request_filter`: the request's id, client address and
    /// trace context, the head checks that Pingora's parse leaves, and the route
    /// (the route's policies come after). `Err` is the answer to send instead.
    fn admit(
        &self,
        session: &mut Session,
        cx: &mut RequestCtx,
        st: &mut ProxyState,
    ) -> std::result::Result<Arc<Route>, Reply> {
        let head = forwarding::HeadFacts::of(&session.req_header().headers);
        if head.untrusted {
            forwarding::drop_untrusted_headers(session.req_header_mut());
        }
        if head.content_lengths > 1 {
            forwarding::collapse_content_length(session.req_header_mut());
        }
        // the longest pause in a request body (a request without one has nothing to wait for)
        if !session.is_body_empty() {
            session.set_read_timeout(Some(self.limits.body_timeout));
        }
        // the longest pause in writing the answer: a client that stops reading does not
        // hold its connection (and the upstream one behind it) for ever. Pingora arms it
        // only for a write that has to wait.
        session.set_write_timeout(Some(self.limits.send_timeout));
        let snap = self.state.load_full();
        // identity headers only the gateway sets (claims, certificate, authorization)
        if !snap.identity_headers.is_empty() {
            let req = session.req_header_mut();
            for name in snap.identity_headers.iter() {
                req.remove_header(name);
            }
        }
        let req = session.req_header();
        let client_id = head.request_id;
        let (id, header) =
            match client_id.and_then(|v| Some((request_id::valid(&v)?.to_string(), v))) {
                Some((id, v)) => (id, Some(v)),
                None => {
                    let id = request_id::generate();
                    let header = HeaderValue::from_str(&id).ok();
                    (id, header)
                }
            };
        cx.request_id = id;
        st.request_id_header = header;
        if let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let xff = head
                .forwarded_for
                .then(|| req.headers.get_all(&X_FORWARDED_FOR_NAME));
            let xff = xff.iter().flatten().filter_map(|v| v.to_str().ok());
            cx.client_ip = Some(snap.client_ip(peer, xff));
        }
        st.client_sent_xff = head.forwarded_for;
        let incoming = head.traceparent.as_ref().and_then(|v| v.to_str().ok());
        cx.trace = Some(
            incoming
                .and_then(TraceContext::parse)
                .unwrap_or_else(TraceContext::generate),
        );
        cx.consumers = Some(snap.consumers.clone());
        cx.client_cert = crate::client_cert::of_connection(session.digest());
        // the connection guard checked the head already; this catches pipelined heads
        // it did not see
        let req = session.req_header();
        let uri_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
        if uri_len > self.limits.max_uri_bytes {
            return Err(Reply::refuse(ErrorCode::UriTooLong));
        }
        if head.connection && forwarding::connection_names_protected(&req.headers) {
            return Err(Reply::refuse_with(
                ErrorCode::BadRequest,
                "Connection names a header the gateway protects",
            ));
        }
        if req.headers.len() > self.limits.max_headers {
            return Err(Reply::refuse(ErrorCode::HeadersTooLarge));
        }

        let req = session.req_header();
        let normalised = match path::normalize(req.uri.path()) {
            Ok(p) => p.into_owned(),
            Err(e) => {
                return Err(Reply::refuse_with(ErrorCode::BadRequest, e.to_string()));
            }
        };
        let host = req
            .uri
            .host()
            .or_else(|| head.host.as_ref().and_then(|h| h.to_str().ok()))
            .map(router::host_without_port);
        let facts = RequestFacts {
            method: &req.method,
            host,
            headers: &req.headers,
            path: &normalised,
        };
        let mut found = snap.router.lookup(&facts);
        // A CORS preflight is routed by the method it asks about, when that route has cors.
        if crate::policies::cors::is_preflight(req) {
            let asked = req
                .headers
                .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok());
            if let Some(asked) = asked {
                let as_asked = RequestFacts {
                    method: &asked,
                    ..facts
                };
                if let Lookup::Found {
                    route,
                    prefix_segments,
                } = snap.router.lookup(&as_asked)
                {
                    if snap
                        .routes
                        .get(route)
                        .is_some_and(|r| r.chain.has_stage(crate::policy::Stage::Cors))
                    {
                        found = Lookup::Found {
                            route,
                            prefix_segments,
                        };
                    }
                }
            }
        }
        cx.path = normalised;
        st.client_host = head.host;
        match found {
            Lookup::Found {
                route,
                prefix_segments,
            } => {
                st.route = snap.routes.get(route).cloned();
                st.prefix_segments = prefix_segments;
                cx.prefix_segments = prefix_segments;
                cx.route = st.route.as_ref().map(|r| r.info.clone());
            }
            Lookup::MethodNotAllowed(allow) => {
                let mut reply = Reply::refuse(ErrorCode::MethodNotAllowed);
                if let Ok(v) = http::HeaderValue::from_str(&allow) {
                    reply = reply.header(header::ALLOW, v);
                }
                return Err(reply);
            }
            Lookup::NotFound => {
                return Err(Reply::refuse(ErrorCode::NoRoute));
            }
        }
        st.route
            .clone()
            .ok_or_else(|| Reply::refuse(ErrorCode::NoRoute))
    }

    /// Writes a gateway-made response, running the route's `response_filter`s on it.
    async fn respond(
        &self,
        session: &mut Session,
        cx: &mut RequestCtx,
        st: &mut ProxyState,
        reply: Reply,
    ) -> Result<bool> {
        if self.drain.is_draining() {
            session.set_keepalive(None);
        }
        cx.refusal = reply.code;
        if reply.code == Some(ErrorCode::Overloaded)
            && reply.message == crate::policy::body::NO_ROOM
        {
            // CROSSCUTTING.md rule 5.6, whatever stage refused
            let route = st.route.as_ref().map_or("_none", |r| r.name.as_str());
            self.metrics.body_buffer_refusal(route);
        }
        let reply = reply.render(&cx.request_id);
        let body = reply.body;
        let extra = cx.response_headers.len();
        let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len() + extra))?;
        for (n, v) in reply.headers {
            resp.append_header(n, v)?;
        }
        for (n, v) in std::mem::take(&mut cx.response_headers) {
            resp.insert_header(n, v)?;
        }
        if let Some(route) = &st.route {
            // an answer made after the cache lookup (502, 504) says what the cache did
            if let (Some(run), Some(rules)) = (st.cache.as_mut(), route.chain.cache_rules()) {
                let status = run.status(session.cache.phase());
                cache::mark(&mut resp, rules, run, status)?;
            }
            route.chain.response_filter(cx, &mut resp)?;
        }
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(resp), head_only || body.is_empty())
            .await?;
        if !head_only && !body.is_empty() {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }

    /// Starts holding the response body for the route's policies that need it whole
    /// (its head goes without `Content-Length`), unless the response has no body, is
    /// larger than `cap`, or finds no room in `body_buffer_total` (counted; it then
    /// streams as it comes).
    fn hold_response(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        cap: usize,
        route: &Route,
        st: &mut ProxyState,
    ) -> Result<()> {
        let bodiless = resp.status.is_informational()
            || matches!(resp.status.as_u16(), 204 | 304)
            || session.req_header().method == http::Method::HEAD;
        // a response with trailers (gRPC, or announced by `Trailer`) streams: its body
        // has no end to hold it to before the trailers
        let trailers = resp.headers.contains_key(header::TRAILER)
            || resp
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
        if bodiless || trailers {
            return Ok(());
        }
        let declared = crate::media::content_length(&resp.headers);
        match crate::policy::body::BodyBuffer::start_in(self.bodies, declared, cap) {
            Ok(held) => {
                crate::policy::body_length_changes(resp)?;
                st.held_response = Some(held);
            }
            Err(why) => self.metrics.response_body_passed(&route.name, why.as_str()),
        }
        Ok(())
    }

    /// The route's chain with request decompression in its place (CROSSCUTTING.md §1,
    /// stage 13: after `body_limit`, before the body policies); `Some` is the refusal
    /// to send.
    async fn decoding_chain(
        &self,
        session: &mut Session,
        cx: &mut RequestCtx,
        st: &mut ProxyState,
        route: &Route,
        rules: &crate::compress::CompressRules,
    ) -> Result<Option<Reply>> {
        if let Flow::Respond(r) = route.chain.request_filter_first(session, cx).await? {
            return Ok(Some(r));
        }
        if let Some(r) = self.decompress(session, cx, st, route, rules).await? {
            return Ok(Some(r));
        }
        Ok(match route.chain.request_filter_rest(session, cx).await? {
            Flow::Continue => None,
            Flow::Respond(r) => Some(r),
        })
    }

    /// Decodes the request body of a route with `decompress_requests` (`cache.md`
    /// §12.7); `Some` is the refusal to send.
    async fn decompress(
        &self,
        session: &mut Session,
        cx: &mut RequestCtx,
        st: &mut ProxyState,
        route: &Route,
        rules: &crate::compress::CompressRules,
    ) -> Result<Option<Reply>> {
        let max = usize::try_from(rules.decompress_max_size).unwrap_or(usize::MAX);
        // an incompressible body grows a little when encoded
        let encoded_cap = max.saturating_add(max / 100 + 1024);
        let read_cap = route
            .chain
            .request_body_max_for(cx)
            .map_or(encoded_cap, |m| m.min(encoded_cap));
        let done = compress::decompress_request(
            session,
            cx,
            rules,
            self.bodies,
            read_cap,
            self.metrics.compress(),
            &route.name,
        )
        .await?;
        Ok(match done {
            compress::Decoding::Untouched => None,
            compress::Decoding::Decoded => {
                st.decompressed = true;
                None
            }
            compress::Decoding::Refused(reply) => Some(reply),
        })
    }

    fn route_label<'a>(cx: &RequestCtx, st: &'a ProxyState) -> &'a str {
        match (&st.route, cx.refusal) {
            (_, Some(ErrorCode::MethodNotAllowed)) | (None, _) => NO_ROUTE,
            (Some(r), _) => r.name.as_str(),
        }
    }
}

/// Where a policy's [`Target`](crate::policy::Target) sends the request, among the
/// route's configuration.
fn resolve(route: &Route, target: crate::policy::Target) -> Result<Choice> {
    use crate::policy::Target;
    let upstream = |name: &crate::policy::UpstreamName| {
        route
            .upstreams
            .get(name.as_str())
            .cloned()
            .or_err_with(ErrorType::InternalError, || {
                format!("a policy chose upstream {name}, which this configuration lacks")
            })
    };
    Ok(match target {
        Target::Upstream(name) => Choice::Upstream(upstream(&name)?),
        Target::Backend(name, addr) => Choice::Backend(upstream(&name)?, addr),
        Target::Peer(p) => Choice::Peer(p),
    })
}

/// Room left in a header map for what a route's policies add after the gateway's own
/// edit (`request_headers`, `cors`, …), so that their edits do not rebuild the
/// map a second time. A route without policies gets none: a map with room to spare is
/// rebuilt for nothing.
fn policy_headroom(chain: &crate::policy::Chain) -> usize {
    if chain.is_empty() {
        0
    } else {
        4
    }
}

/// Whether a failed connect failed for want of the gateway's own resources (file
/// descriptors, socket buffers, memory, local ports), not because of the backend.
fn own_shortage(e: &Error) -> bool {
    let os = e
        .root_cause()
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::raw_os_error);
    matches!(
        os,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// Maps a proxying error to the contract's refusal.
fn classify(e: &Error) -> Option<ErrorCode> {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(503) => Some(ErrorCode::NoHealthyUpstream),
        HTTPStatus(code) => match *code {
            400 => Some(ErrorCode::BadRequest),
            413 => Some(ErrorCode::PayloadTooLarge),
            408 => Some(ErrorCode::RequestTimeout),
            502 => Some(ErrorCode::BadGateway),
            504 => Some(ErrorCode::GatewayTimeout),
            _ => Some(ErrorCode::InternalError),
        },
        ConnectTimedout | ReadTimedout | WriteTimedout => match e.esource() {
            ErrorSource::Upstream => Some(ErrorCode::GatewayTimeout),
            ErrorSource::Downstream => Some(ErrorCode::RequestTimeout),
            _ => Some(ErrorCode::InternalError),
        },
        _ => match e.esource() {
            ErrorSource::Upstream => Some(ErrorCode::BadGateway),
            ErrorSource::Downstream => match e.etype() {
                ReadError | WriteError | ConnectionClosed => None,
                _ => Some(ErrorCode::BadRequest),
            },
            ErrorSource::Internal | ErrorSource::Unset => Some(ErrorCode::InternalError),
        },
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: Pingora keeps the context in its per-request future, which it copies
    /// twice a request; behind a box the 480-byte context is not copied (~1,500
    /// instructions a request fewer than inline, docs/benchmarks.md).
    type CTX = Box<Exchange>;

    fn new_ctx(&self) -> Box<Exchange> {
        let mut cx = RequestCtx::new();
        cx.bodies = self.bodies;
        Box::new(Exchange {
            cx,
            st: ProxyState::new(self.drain.enter()),
        })
    }

    /// No downstream modules. Pingora's default adds a response-compression module
    /// that is disabled (level 0) yet still runs on every request; the gateway does
    /// not compress responses, so it goes.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// A route that caches turns Pingora's cache on for requests that use it
    /// (`cache.md` §3.2); every other request never touches it.
    fn request_cache_filter(&self, session: &mut Session, x: &mut Self::CTX) -> Result<()> {
        let st = &mut x.st;
        // borrowed, not cloned: this runs on every request
        let Some(route) = st.route.as_deref() else {
            return Ok(());
        };
        let Some(rules) = route.chain.cache_rules() else {
            return Ok(());
        };
        let mut run = Box::<cache::CacheRun>::default();
        match self.cache.store() {
            Some(store) if !cache::bypasses(session.req_header(), rules, route) => {
                let mut wait = pingora_cache::CacheOptionOverrides::default();
                wait.wait_timeout = Some(rules.lock_timeout);
                session
                    .cache
                    .enable(store, None, None, Some(self.cache.lock()), Some(wait));
            }
            _ => run.bypass = true,
        }
        st.cache = Some(run);
        Ok(())
    }

    fn cache_key_callback(
        &self,
        session: &Session,
        x: &mut Self::CTX,
    ) -> Result<pingora_cache::CacheKey> {
        let Exchange { cx, st } = &mut **x;
        let route = st
            .route
            .as_deref()
            .or_err(ErrorType::InternalError, "a cache key without a route")?;
        let rules = route.chain.cache_rules().or_err(
            ErrorType::InternalError,
            "a cache key on a route that does not cache",
        )?;
        let asked = cache::Asked {
            session,
            cx,
            route,
            client_host: st.client_host.as_ref(),
        };
        Ok(asked.key(rules))
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        _meta: &pingora_cache::CacheMeta,
        _hit: &mut pingora_cache::storage::HitHandler,
        is_fresh: bool,
        x: &mut Self::CTX,
    ) -> Result<Option<pingora_cache::ForcedFreshness>> {
        // the client's `no-cache`: the entry is revalidated before use
        let force = is_fresh && cache::wants_revalidation(session.req_header());
        if let Some(run) = x.st.cache.as_mut() {
            run.found = Some(is_fresh && !force);
        }
        Ok(force.then_some(pingora_cache::ForcedFreshness::ForceExpired))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        x: &mut Self::CTX,
    ) -> Result<pingora_cache::RespCacheable> {
        let Exchange { cx, st } = &mut **x;
        let found = st
            .route
            .as_ref()
            .and_then(|r| Some((r, r.chain.cache_rules()?, self.cache.store()?)));
        let Some((route, rules, store)) = found else {
            return Ok(pingora_cache::RespCacheable::Uncacheable(
                pingora_cache::NoCacheReason::NeverEnabled,
            ));
        };
        let asked = cache::Asked {
            session,
            cx,
            route,
            client_host: st.client_host.as_ref(),
        };
        let verdict = asked.storable(
            rules,
            resp,
            store.settings().max_object,
            self.metrics.cache(),
        );
        if let Some(run) = st.cache.as_mut() {
            match &verdict {
                pingora_cache::RespCacheable::Cacheable(_) => run.storing = true,
                // an expired entry replaced by a full response that is not stored goes
                // (a failure, 5xx, keeps it: cache.md §3.5)
                _ if run.found == Some(false) && !resp.status.is_server_error() => {
                    if let Some(key) = session.cache.maybe_cache_key() {
                        use pingora_cache::key::CacheHashKey;
                        store.remove(&key.combined_bin());
                    }
                }
                _ => {}
            }
        }
        Ok(verdict)
    }

    fn cache_vary_filter(
        &self,
        meta: &pingora_cache::CacheMeta,
        x: &mut Self::CTX,
        req: &RequestHeader,
    ) -> Option<pingora_cache::key::HashBinary> {
        cache::variance(meta, req, &x.cx)
    }

    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        x: &mut Self::CTX,
    ) -> pingora::proxy::RangeType {
        match x.st.cache.as_mut() {
            Some(run) => cache::range(session.req_header(), resp, session.cache.phase(), run),
            None => pingora::proxy::RangeType::None,
        }
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _x: &mut Self::CTX,
        error: Option<&Error>,
    ) -> bool {
        cache::serve_stale(error)
    }

    async fn request_filter(&self, session: &mut Session, x: &mut Self::CTX) -> Result<bool> {
        let Exchange { cx, st } = &mut **x;
        // one place that answers: each `respond(..).await` is a copy of its state
        // machine in this hook's future and code
        let reply = match self.admit(session, cx, st) {
            Ok(route) => match route.chain.compress_rules() {
                Some(rules) if rules.decompress_requests => {
                    // boxed: routes that do not decode keep a small future
                    match Box::pin(self.decoding_chain(session, cx, st, &route, rules)).await? {
                        Some(reply) => reply,
                        None => return Ok(false),
                    }
                }
                _ => match route.chain.request_filter(session, cx).await? {
                    Flow::Continue => return Ok(false),
                    Flow::Respond(reply) => reply,
                },
            },
            Err(reply) => reply,
        };
        self.respond(session, cx, st, reply).await
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        x: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Exchange { cx, st } = &mut **x;
        let Some(route) = st.route.clone() else {
            return Error::e_explain(
                ErrorType::InternalError,
                "no route chosen before upstream_peer",
            );
        };
        // a policy may send the request elsewhere: asked once, before the first try
        if st.tries == 0 && !route.chain.is_empty() {
            if let Some(target) = route.chain.upstream_peer(session, cx)? {
                st.choice = Some(resolve(&route, target)?);
            }
        }
        let chosen_up = match &st.choice {
            Some(Choice::Upstream(u) | Choice::Backend(u, _)) => Some(u.clone()),
            _ => None,
        };
        let up = chosen_up.as_deref().unwrap_or(&route.upstream);
        // a retry releases its hold on the backend that failed before choosing another
        st.slot = None;
        let chosen = match &st.choice {
            None | Some(Choice::Upstream(_)) => {
                let mut key = crate::request_key::KeyBuf::new();
                if let Some(k) = up.selector.hash_key() {
                    k.write(cx, &session.req_header().headers, &mut key);
                }
                up.selector.select(
                    &key,
                    &st.tried,
                    &up.endpoints.current(),
                    &up.passive,
                    up.health.is_some(),
                )
            }
            Some(Choice::Backend(_, addr)) => up.selector.pick_addr(
                *addr,
                &up.endpoints.current(),
                &up.passive,
                up.health.is_some(),
            ),
            Some(Choice::Peer(p)) => Some((Arc::new(crate::endpoint::Endpoint::peer(p)), None)),
        };
        let Some((endpoint, slot)) = chosen else {
            return Error::e_explain(ErrorType::HTTPStatus(503), "every backend is unhealthy");
        };
        st.slot = slot;
        st.tried.push(endpoint.addr);
        cx.backend = Some(endpoint.addr);
        let tls = match &st.choice {
            Some(Choice::Peer(p)) => p.tls,
            _ => up.tls,
        };
        let mut peer = HttpPeer::new(endpoint.backend.addr.clone(), tls, endpoint.sni.clone());
        if endpoint.name.is_some() {
            // an address from DNS may leave: its idle pooled connections, never used
            // again then, close within this (fleet.md §13.5)
            peer.options.idle_timeout = Some(NAMED_IDLE_TIMEOUT);
        }
        st.endpoint = Some(endpoint);
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.total_connection_timeout = Some(up.connect_timeout);
        // Pingora's per-read timer also runs between the pieces of the body, so with
        // it at read_timeout a client pausing its body would be blamed on the upstream.
        // With a body it is longer than the client's own limit (body_timeout answers a
        // pausing client first), and the gateway bounds the upstream itself: the
        // upload deadline while the body is sent, then the response head's deadline,
        // which starts once the upstream has the whole body (HTTP/1; see `with_body`).
        // Pingora reads the response body on a side of its own, so a slow client never
        // runs that timer
        let own_reads = !up.http2 && !session.is_body_empty();
        st.with_body = own_reads;
        peer.options.read_timeout = Some(if own_reads {
            up.read_timeout + self.limits.body_timeout
        } else {
            up.read_timeout
        });
        // an upstream that stops taking the request (its body) is not answering either:
        // without this, Pingora waits for it for ever (it reads no response meanwhile)
        peer.options.write_timeout = Some(up.read_timeout);
        // Pingora strips the request's hop-by-hop headers (and those its `Connection`
        // names) under this policy; the gateway relies on it (see `forwarding`)
        peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy::standard();
        if up.http2 {
            // TLS: offer h2 and http/1.1 by ALPN; plain: HTTP/2 with prior knowledge (h2c)
            let min = if tls { 1 } else { 2 };
            peer.options.set_http_version(2, min);
        } else {
            // a connection opened for this try carries this, for its head deadline
            let conn = Connection::unopened();
            peer.options.tracer = Some(PeerTracer::tracer(&conn));
            st.fresh_conn = Some(conn);
        }
        if up.trust_key != 0 && !matches!(st.choice, Some(Choice::Peer(_))) {
            peer.options.ca = up.ca.clone();
            peer.client_cert_key = up.client_cert.clone();
            peer.group_key = up.trust_key;
        }
        st.tries += 1;
        if st.upstream_start.is_none() {
            st.upstream_start = Some(Instant::now());
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        x: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let st = &mut x.st;
        // the gateway's own shortage (descriptors, memory, local ports) says nothing
        // about the backend
        if let (Some(up), Some(ep), false) = (st.upstream(), &st.endpoint, own_shortage(&e)) {
            up.passive.failed(&ep.stats);
        }
        let retries = st.upstream().map_or(0, |u| u.retries);
        if st.tries <= retries {
            e.set_retry(true);
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        x: &mut Self::CTX,
    ) -> Result<()> {
        let Exchange { st, .. } = &mut **x;
        // a new try: the previous connection's deadline no longer applies
        st.head_deadline = None;
        if st.upstream().is_some_and(|u| !u.http2) {
            st.upstream_conn = Connection::on(fd, reused, st.fresh_conn.take());
            if session.is_body_done() {
                st.arm_head_deadline();
            } else {
                st.arm_upload_deadline();
            }
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        x: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let Exchange { st, .. } = &mut **x;
        let mut e = e.more_context(format!("Peer: {peer}"));
        if st.head_timed_out()
            || !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        x: &mut Self::CTX,
    ) -> Result<()> {
        let Exchange { cx, st } = &mut **x;
        if end_of_stream {
            st.arm_head_deadline();
        } else {
            // a piece of the body moved: the upload deadline starts again
            st.arm_upload_deadline();
        }
        if let Some(held) = &cx.body {
            // the body was read whole for the route's policies: the proxy replays the
            // last piece the client sent (Pingora's retry buffer); what goes upstream
            // is the whole body as the policies left it
            // (an empty piece, not `None`, before the end: `None` ends the body)
            *body = match end_of_stream {
                true => (!held.bytes.is_empty()).then(|| held.bytes.clone()),
                false => Some(bytes::Bytes::new()),
            };
        }
        match st.route.clone() {
            Some(route) => route.chain.request_body_filter(cx, body, end_of_stream),
            None => Ok(()),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        x: &mut Self::CTX,
    ) -> Result<()> {
        let Exchange { cx, st } = &mut **x;
        let Some(route) = st.route.clone() else {
            return Ok(());
        };
        let strip = if route.strip_prefix {
            st.prefix_segments
        } else {
            0
        };
        // the path goes upstream as the client sent it unless the gateway changes it
        // (normalisation, strip_prefix, rewrite) or the client used the absolute form
        let unchanged = strip == 0
            && route.rewrite.is_none()
            && up.uri.scheme().is_none()
            && up.uri.path() == cx.path;
        if !unchanged {
            let query = up.uri.query().map(str::to_string);
            let new_path = forwarding::upstream_path(
                &cx.path,
                strip,
                route.rewrite.as_ref(),
                query.as_deref(),
            );
            match new_path.parse::<http::Uri>() {
                Ok(uri) => up.set_uri(uri),
                Err(_) => {
                    return Error::e_explain(
                        ErrorType::HTTPStatus(400),
                        "rewritten path is not a valid URI",
                    )
                }
            }
        }

        let host_header = st.client_host.clone();
        let had_host = host_header.is_some();
        let client_host = host_header.or_else(|| {
            session
                .req_header()
                .uri
                .authority()
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
        });
        // None: leave Host as the client sent it; Some(None): no Host to send
        let host =
            (!route.preserve_host).then(|| st.endpoint.as_ref().and_then(|e| e.host.clone()));
        let forwarded_for = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| forwarding::forwarded_for(&up.headers, st.client_sent_xff, a.ip()));
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        // `or_err_with`, not `or_err`: the latter builds its (boxed) error even when
        // there is none to report
        let request_id = st
            .request_id_header(&cx.request_id)
            .or_err_with(ErrorType::InvalidHTTPHeader, || "invalid request id")?;
        let consumer = cx
            .consumer
            .as_ref()
            .map(|c| {
                c.name_header()
                    .or_err_with(ErrorType::InvalidHTTPHeader, || "invalid consumer name")
            })
            .transpose()?;
        let traceparent = cx.trace.as_ref().map(TraceContext::child_header);
        // the headers that are new to the map (`Host` replaces the client's); a map with
        // room for them is not rebuilt
        let added = 2 // X-Forwarded-Proto, X-Request-Id
            + usize::from(matches!(host, Some(Some(_))) && !had_host)
            + usize::from(client_host.is_some())
            + usize::from(forwarded_for.is_some())
            + usize::from(traceparent.is_some())
            + usize::from(consumer.is_some())
            + cx.identity_headers.len()
            + policy_headroom(&route.chain);
        forwarding::edit_headers(up, added, |h| {
            match host {
                Some(Some(v)) => {
                    h.insert(header::HOST, v);
                }
                Some(None) => {
                    h.remove(header::HOST);
                }
                None => {}
            }
            if let Some(v) = client_host {
                h.insert(X_FORWARDED_HOST_NAME.clone(), v);
            }
            if let Some(v) = forwarded_for {
                h.insert(X_FORWARDED_FOR_NAME.clone(), v);
            }
            let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
            h.insert(X_FORWARDED_PROTO_NAME.clone(), proto);
            h.insert(X_REQUEST_ID.clone(), request_id);
            if let Some(v) = traceparent {
                h.insert(TRACEPARENT_NAME.clone(), v);
            }
            if let Some(v) = consumer {
                h.insert(X_CONSUMER_NAME.clone(), v);
            }
            for (n, v) in &cx.identity_headers {
                h.insert(n.clone(), v.clone());
            }
        })?;
        if let Some(held) = &cx.body {
            let bodiless = session.is_body_empty();
            if !held.bytes.is_empty() && bodiless && st.upstream().is_some_and(|u| u.http2) {
                // Pingora ends an HTTP/2 stream at its head when the client sent no body
                return Error::e_explain(
                    ErrorType::InternalError,
                    "a policy gave a request without a body one: HTTP/2 upstreams cannot take it",
                );
            }
            held.frame(up, !bodiless)?;
        }
        if let Some(rules) = route.chain.compress_rules() {
            compress::upstream_identity(rules, up)?;
        }
        route.chain.upstream_request_filter(cx, up)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        x: &mut Self::CTX,
    ) -> Result<()> {
        let st = &mut x.st;
        forwarding::strip_response_hop_by_hop(resp);
        if forwarding::is_interim(resp.status) {
            // `100 Continue`, `103 Early Hints`: the request is not answered yet, and
            // its deadlines go on (a client may send its body only now)
            return Ok(());
        }
        st.upstream_conn = None;
        st.head_deadline = None;
        if let Some(start) = st.upstream_start {
            st.upstream_elapsed = Some(start.elapsed());
        }
        if let (Some(up), Some(ep)) = (st.upstream(), &st.endpoint) {
            up.passive.succeeded(&ep.stats);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        x: &mut Self::CTX,
    ) -> Result<()> {
        let Exchange { cx, st } = &mut **x;
        // a request that was in flight when the drain began closes its connection too
        if self.drain.is_draining() {
            session.set_keepalive(None);
        }
        let id = st
            .request_id_header(&cx.request_id)
            .or_err_with(ErrorType::InvalidHTTPHeader, || "invalid request id")?;
        // room for what goes in: a map with room to spare is not rebuilt (Pingora's
        // `Date` and `Connection` replace the upstream's)
        let headroom = st.route.as_ref().map_or(0, |r| policy_headroom(&r.chain));
        // the policies' headers go on the final answer only (taken, not cloned: a clone
        // of a fresh header value allocates); an interim one passes here before it
        let set = if forwarding::is_interim(resp.status) {
            Vec::new()
        } else {
            std::mem::take(&mut cx.response_headers)
        };
        forwarding::edit_response_headers(resp, 1 + set.len() + headroom, |h| {
            h.insert(X_REQUEST_ID.clone(), id);
            for (n, v) in set {
                h.insert(n, v);
            }
        })?;
        if let Some(route) = st.route.clone() {
            if !route.chain.is_empty() {
                if let (Some(run), Some(rules), false) = (
                    st.cache.as_mut(),
                    route.chain.cache_rules(),
                    forwarding::is_interim(resp.status),
                ) {
                    let status = run.status(session.cache.phase());
                    if let Some(length) = run.unsatisfiable {
                        // cache.md §7: the refusal goes instead of the entry
                        run.refusal_body =
                            Some(cache::unsatisfiable(resp, length, &cx.request_id)?);
                        cx.refusal = Some(crate::reply::ErrorCode::RangeNotSatisfiable);
                    }
                    cache::mark(resp, rules, run, status)?;
                }
                if let Some(cap) = route.chain.response_cap_for(cx) {
                    self.hold_response(session, resp, cap, &route, st)?;
                }
                route.chain.response_filter(cx, resp)?;
                // compression is the last change to the head (cache.md §12.6); the
                // gateway's own answers are never compressed
                if let (Some(rules), false, None) = (
                    route.chain.compress_rules(),
                    forwarding::is_interim(resp.status),
                    cx.refusal,
                ) {
                    if !rules.algorithms.is_empty() {
                        st.compress = compress::start(
                            session.req_header(),
                            resp,
                            rules,
                            &self.streams,
                            self.metrics.compress(),
                            &route.name,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        x: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        let Exchange { cx, st } = &mut **x;
        if let Some(run) = st.cache.as_mut().filter(|r| r.unsatisfiable.is_some()) {
            // the 416 refusal's body, once, instead of the entry's
            *body = run.refusal_body.take();
            return Ok(None);
        }
        if let Some(route) = &st.route {
            if !route.chain.is_empty() {
                if let Some(held) = st.held_response.as_mut() {
                    use crate::policy::body::Hold;
                    match body.take().map(|piece| held.push(&piece)) {
                        Some(Hold::Release(bytes, why)) => {
                            st.held_response = None;
                            self.metrics.response_body_passed(&route.name, why.as_str());
                            *body = Some(bytes);
                        }
                        Some(Hold::Held) | None if end_of_stream => {
                            let mut whole = held.take();
                            st.held_response = None;
                            route.chain.response_body(cx, &mut whole)?;
                            *body = Some(whole);
                        }
                        Some(Hold::Held) | None => {}
                    }
                }
                route.chain.response_body_filter(cx, body, end_of_stream)?;
                if let Some(run) = st.compress.as_mut() {
                    compress::encode(
                        run,
                        body,
                        end_of_stream,
                        self.metrics.compress(),
                        &route.name,
                    )?;
                }
            }
        }
        Ok(None)
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        _trailers: &mut http::HeaderMap,
        x: &mut Self::CTX,
    ) -> Result<Option<bytes::Bytes>> {
        let Exchange { cx, st } = &mut **x;
        // trailers that nothing announced, after a body held whole: the body must not
        // be lost, so it goes as the end of the response (Pingora then drops the
        // trailers)
        let (Some(held), Some(route)) = (st.held_response.as_mut(), st.route.clone()) else {
            return Ok(None);
        };
        let original = held.take();
        st.held_response = None;
        tracing::warn!(
            route = %route.name,
            "unannounced response trailers after a body held whole were dropped"
        );
        // as at the body's end; a failing hook cannot end the response here (the head
        // is gone and Pingora would send the trailers without the body): the body goes
        // as the upstream sent it
        let mut whole = original.clone();
        let mut out = None;
        if route.chain.response_body(cx, &mut whole).is_ok() {
            let mut piece = Some(whole);
            if route
                .chain
                .response_body_filter(cx, &mut piece, true)
                .is_ok()
            {
                out = piece;
            }
        }
        Ok(Some(out.unwrap_or(original)))
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        x: &mut Self::CTX,
    ) -> FailToProxy {
        let Exchange { cx, st } = &mut **x;
        let code = if st.head_timed_out() {
            Some(ErrorCode::GatewayTimeout)
        } else {
            classify(e)
        };
        st.head_deadline = None;
        let status = match code {
            Some(code) if session.response_written().is_none() => {
                if cx.request_id.is_empty() {
                    cx.request_id = request_id::generate();
                }
                let mut reply = Reply::refuse(code);
                if code == ErrorCode::NoHealthyUpstream {
                    // CROSSCUTTING.md rule 3.2
                    reply = reply.header(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                let status = reply.status.as_u16();
                if let Err(we) = self.respond(session, cx, st, reply).await {
                    tracing::debug!("could not write error response: {we}");
                }
                status
            }
            Some(code) => {
                cx.refusal = Some(code);
                code.status().as_u16()
            }
            None => 0,
        };
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, x: &mut Self::CTX) {
        let Exchange { cx, st } = &mut **x;
        if session.subrequest_ctx.is_some() {
            // a background refresh of a cache entry (cache.md §9): no line, no count;
            // its policies still release what it held (a concurrency slot)
            if let Some(r) = st.route.clone() {
                r.chain.logging(cx, e);
            }
            return;
        }
        if let Some(conn) = session
            .as_downstream()
            .stream()
            .and_then(crate::guard::conn_state)
        {
            conn.request_done();
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let cache_status = st
            .cache
            .as_mut()
            .map(|run| run.status(session.cache.phase()));
        let route = Self::route_label(cx, st);
        let elapsed = st.start.elapsed();
        let method = &session.req_header().method;
        let upstream_secs = st.upstream_elapsed.map(|t| t.as_secs_f64());
        match st.route.as_ref().filter(|r| r.name == route) {
            Some(r) => {
                // a policy's choice is timed under its own upstream's label
                let chosen = st.chosen_label();
                self.metrics.observe_routed(
                    (&r.name, &r.upstream.name, &r.metrics),
                    method,
                    status,
                    elapsed.as_secs_f64(),
                    upstream_secs.filter(|_| chosen.is_none()),
                );
                if let (Some(label), Some(secs)) = (chosen, upstream_secs) {
                    self.metrics.observe_upstream(label, secs);
                }
            }
            None => self
                .metrics
                .observe_request(route, method, status, elapsed.as_secs_f64()),
        }
        if let Some(code) = cx.refusal {
            self.metrics.refusal(route, code.as_str());
        }
        if let Some(r) = st.route.clone() {
            r.chain.logging(cx, e);
        }
        let cache_status = cache_status.map(|status| {
            let c = self.metrics.cache();
            c.lookups.with_label_values(&[route, status.label()]).inc();
            if let Some(waited) = session.cache.lock_duration() {
                c.lock_wait
                    .with_label_values(&[route])
                    .observe(waited.as_secs_f64());
            }
            status.as_str()
        });
        if let Some(log) = &self.access_log {
            let done = crate::access_log::Done {
                cache: cache_status,
                compress: st.compress.as_ref().map(|r| r.algorithm.as_str()),
                decompress: st.decompressed.then_some("gzip"),
                status,
                elapsed,
                upstream_elapsed: st.upstream_elapsed,
                bytes: session.body_bytes_sent(),
                upstream_name: st.endpoint.as_ref().and_then(|e| e.name.as_deref()),
            };
            log.log(session, cx, &done);
        }
        if let (Some(spans), Some(trace)) = (&self.spans, &cx.trace) {
            let req = session.req_header();
            spans.record(&crate::otlp::FinishedRequest {
                trace,
                method: req.method.as_str(),
                path: if cx.path.is_empty() {
                    req.uri.path()
                } else {
                    cx.path.as_str()
                },
                status,
                route: st.route.as_ref().map(|r| r.name.as_str()),
                upstream: st
                    .chosen_label()
                    .or_else(|| st.route.as_ref().map(|r| r.upstream.name.as_str())),
                backend: cx.backend().map(|a| a.to_string()),
                consumer: cx.consumer.as_ref().map(|c| c.name.as_str()),
                client_ip: cx.client_ip.map(|ip| ip.to_string()),
                error: cx.refusal().map(|c| c.as_str()),
                elapsed,
            });
        }
    }

    fn suppress_error_log(&self, _session: &Session, _cx: &Self::CTX, error: &Error) -> bool {
        // upstream failures are counted in metrics and answered with a refusal
        matches!(error.esource(), ErrorSource::Upstream)
    }
}
