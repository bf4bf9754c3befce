//! The proxy's own per-request state, beside the [`RequestCtx`] the policies see.

use std::sync::Arc;

use tokio::time::Instant;

use crate::balance::BackendSlot;
use crate::context::RequestCtx;
use crate::drain::InFlight;
use crate::guard::head_deadline::{Connection, HeadDeadline};
use crate::runtime::{Route, Upstream};

/// Where a policy sent the request instead of its route's upstream, resolved.
#[derive(Debug)]
pub(crate) enum Choice {
    Upstream(Arc<Upstream>),
    Backend(Arc<Upstream>, std::net::SocketAddr),
    Peer(crate::policy::Peer),
}

/// Pingora's per-request context for the gateway: what the policies see, and the
/// proxy's bookkeeping.
#[derive(Debug)]
pub struct Exchange {
    pub(crate) cx: RequestCtx,
    pub(crate) st: ProxyState,
}

/// The proxy's bookkeeping of one request: its route, the backends tried, connection
/// slots, deadlines and timings.
#[derive(Debug)]
pub(crate) struct ProxyState {
    /// `cx.request_id` as a header value, made once for the headers that carry it.
    pub(crate) request_id_header: Option<http::HeaderValue>,
    /// The client's `Host` (for `X-Forwarded-Host`), and whether it sent an
    /// `X-Forwarded-For`: read once, with the rest of the head.
    pub(crate) client_host: Option<http::HeaderValue>,
    pub(crate) client_sent_xff: bool,
    pub(crate) route: Option<Arc<Route>>,
    /// A policy's choice of where the request goes (`Policy::upstream_peer`).
    pub(crate) choice: Option<Choice>,
    pub(crate) prefix_segments: usize,
    pub(crate) start: Instant,
    pub(crate) upstream_start: Option<Instant>,
    pub(crate) upstream_elapsed: Option<std::time::Duration>,
    pub(crate) tries: usize,
    /// Backends tried, in order; the last is the one the request went to.
    /// Inline for the usual one or two tries: no allocation per request.
    pub(crate) tried: smallvec::SmallVec<[std::net::SocketAddr; 2]>,
    pub(crate) slot: Option<BackendSlot>,
    /// The backend address chosen last, and what requests to it need.
    pub(crate) endpoint: Option<std::sync::Arc<crate::endpoint::Endpoint>>,
    /// The connection Pingora opens if the current try needs a new one (HTTP/1).
    pub(crate) fresh_conn: Option<Arc<Connection>>,
    /// The HTTP/1 upstream connection of the current try, until its deadline is armed.
    pub(crate) upstream_conn: Option<Arc<Connection>>,
    pub(crate) head_deadline: Option<HeadDeadline>,
    /// The request has a body, sent to an HTTP/1 upstream: the gateway bounds the
    /// upstream's taking of it, and starts the head's deadline once it has all of it
    /// (Pingora's per-read timeout would also run while the upstream waits for a slow
    /// client).
    pub(crate) with_body: bool,
    /// The response body, while it is held for the route's policies that need it whole.
    pub(crate) held_response: Option<crate::policy::body::BodyBuffer>,
    /// What the cache did, on a route that caches (set once the request policies passed).
    /// Boxed, as is `compress`: routes that use neither keep a small context.
    pub(crate) cache: Option<Box<super::cache::CacheRun>>,
    /// The response's compression, when it is compressed.
    pub(crate) compress: Option<Box<super::compress::CompressRun>>,
    /// The request body was decoded (`decompress_requests`).
    pub(crate) decompressed: bool,
    /// Counts the request as in flight for a graceful shutdown, until dropped.
    _in_flight: InFlight,
}

impl ProxyState {
    pub(crate) fn new(in_flight: InFlight) -> Self {
        Self {
            request_id_header: None,
            client_host: None,
            client_sent_xff: false,
            route: None,
            choice: None,
            prefix_segments: 0,
            start: Instant::now(),
            upstream_start: None,
            upstream_elapsed: None,
            cache: None,
            compress: None,
            decompressed: false,
            tries: 0,
            tried: smallvec::SmallVec::new(),
            slot: None,
            endpoint: None,
            fresh_conn: None,
            upstream_conn: None,
            head_deadline: None,
            with_body: false,
            held_response: None,
            _in_flight: in_flight,
        }
    }

    /// The upstream whose settings the request follows: a policy's choice, else the
    /// route's (also for an ad-hoc peer, which has none of its own).
    pub(crate) fn upstream(&self) -> Option<&Upstream> {
        match &self.choice {
            Some(Choice::Upstream(u) | Choice::Backend(u, _)) => Some(u),
            _ => self.route.as_deref().map(|r| &*r.upstream),
        }
    }

    /// The `upstream` label of the request's upstream time, when a policy chose
    /// where it went (`_peer` for an ad-hoc peer).
    pub(crate) fn chosen_label(&self) -> Option<&str> {
        match &self.choice {
            Some(Choice::Upstream(u) | Choice::Backend(u, _)) => Some(&u.name),
            Some(Choice::Peer(_)) => Some("_peer"),
            None => None,
        }
    }

    /// `request_id` as a header value (`None` if a policy made it invalid).
    pub(crate) fn request_id_header(&self, request_id: &str) -> Option<http::HeaderValue> {
        match &self.request_id_header {
            Some(v) if v.as_bytes() == request_id.as_bytes() => Some(v.clone()),
            _ => http::HeaderValue::from_str(request_id).ok(),
        }
    }

    /// Whether the upstream's response head missed its deadline.
    pub(crate) fn head_timed_out(&self) -> bool {
        self.head_deadline.as_ref().is_some_and(|d| d.expired())
    }

    /// Starts the response-head deadline of the current try, once both the upstream
    /// connection is known and the request has been sent.
    pub(crate) fn arm_head_deadline(&mut self) {
        let Some(after) = self.upstream().map(|u| u.read_timeout) else {
            return;
        };
        let Some(conn) = self.upstream_conn.take() else {
            return;
        };
        self.head_deadline = Some(if self.with_body {
            // its end may still be in the socket's buffers, on its way to a slow
            // upstream; the head's time starts once the upstream has all of it
            HeadDeadline::arm_sent(conn, after)
        } else {
            HeadDeadline::arm(conn, after)
        });
    }

    /// While the request body is sent ([`Self::with_body`]), again for each piece of it
    /// that moves: an upstream that stops taking the body is cut after `read_timeout`,
    /// a client that pauses is not blamed on it.
    pub(crate) fn arm_upload_deadline(&mut self) {
        let (Some(conn), true, Some(up)) = (&self.upstream_conn, self.with_body, self.upstream())
        else {
            return;
        };
        let after = up.read_timeout;
        self.head_deadline = Some(HeadDeadline::arm_upload(conn.clone(), after));
    }
}
