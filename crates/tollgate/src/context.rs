//! Per-request state shared by the gateway and the policies of a route.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::time::Instant;

pub use crate::consumer::Consumer;
use crate::consumer::Consumers;
use crate::reply::ErrorCode;
use crate::runtime::{Route, Snapshot};

/// Everything the gateway knows about the request in flight.
///
/// One is created per request; policies read it and may write [`RequestCtx::consumer`]
/// and [`RequestCtx::extensions`] (typed data for later policies of the same request),
/// and add headers to the response with [`RequestCtx::set_response_header`].
#[derive(Debug)]
pub struct RequestCtx {
    /// The request id: the client's valid `X-Request-Id`, or a generated one.
    pub request_id: String,
    /// The client's IP: the peer, or the right-most untrusted `X-Forwarded-For` entry
    /// when the peer is a trusted proxy.
    pub client_ip: Option<IpAddr>,
    /// The W3C trace this request belongs to (propagated or started here).
    pub trace: Option<crate::trace::TraceContext>,
    /// The normalised request path (see [`crate::router::path::normalize`]).
    pub path: String,
    /// The consumer set by an authentication policy.
    pub consumer: Option<Arc<Consumer>>,
    /// Typed data that policies pass to each other and to their own later hooks.
    pub extensions: http::Extensions,
    /// Headers for whichever response answers the request (see
    /// [`RequestCtx::set_response_header`]).
    pub(crate) response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// `request_id` as a header value, made once for the headers that carry it.
    pub(crate) request_id_header: Option<http::HeaderValue>,
    /// The client's `Host` (for `X-Forwarded-Host`), and whether it sent an
    /// `X-Forwarded-For`: read once, with the rest of the head.
    pub(crate) client_host: Option<http::HeaderValue>,
    pub(crate) client_sent_xff: bool,
    pub(crate) snapshot: Option<Arc<Snapshot>>,
    pub(crate) route: Option<Arc<Route>>,
    pub(crate) prefix_segments: usize,
    pub(crate) start: Instant,
    pub(crate) upstream_start: Option<Instant>,
    pub(crate) upstream_elapsed: Option<std::time::Duration>,
    pub(crate) refusal: Option<ErrorCode>,
    pub(crate) tries: usize,
    /// Backends tried, in order; the last is the one the request went to.
    /// Inline for the usual one or two tries: no allocation per request.
    pub(crate) tried: smallvec::SmallVec<[std::net::SocketAddr; 2]>,
    pub(crate) slot: Option<crate::balance::BackendSlot>,
    /// The connection Pingora opens if the current try needs a new one (HTTP/1).
    pub(crate) fresh_conn: Option<Arc<crate::head_deadline::Connection>>,
    /// The HTTP/1 upstream connection of the current try, until its deadline is armed.
    pub(crate) upstream_conn: Option<Arc<crate::head_deadline::Connection>>,
    pub(crate) head_deadline: Option<crate::head_deadline::HeadDeadline>,
    /// With a request body: the upstream connection whose reads the gateway bounds
    /// itself, each by `read_timeout`, once the request is sent (Pingora's own read
    /// timeout would also run while the upstream waits for a slow client).
    pub(crate) read_idle: Option<Arc<crate::head_deadline::Connection>>,
    /// Counts the request as in flight for a graceful shutdown, until dropped.
    pub(crate) in_flight: Option<crate::drain::InFlight>,
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestCtx {
    /// An empty context, as the gateway makes for each request (useful for testing and
    /// benchmarking a policy on its own).
    pub fn new() -> Self {
        Self {
            request_id: String::new(),
            client_ip: None,
            trace: None,
            path: String::new(),
            consumer: None,
            extensions: http::Extensions::new(),
            response_headers: Vec::new(),
            request_id_header: None,
            client_host: None,
            client_sent_xff: false,
            snapshot: None,
            route: None,
            prefix_segments: 0,
            start: Instant::now(),
            upstream_start: None,
            upstream_elapsed: None,
            refusal: None,
            tries: 0,
            tried: smallvec::SmallVec::new(),
            slot: None,
            fresh_conn: None,
            upstream_conn: None,
            head_deadline: None,
            read_idle: None,
            in_flight: None,
        }
    }

    /// Sets `name: value` on the response the client gets for this request, whichever
    /// answers it: the upstream, or the gateway itself (a refusal by this or a later
    /// policy, a 502, …). Replaces the upstream's values of that name, and an earlier
    /// call's. Interim answers (`100 Continue`, `103 Early Hints`) do not get it.
    ///
    /// For headers known before the response arrives (a rate limiter's counts, say), this
    /// is cheaper than editing the response in [`Policy::response_filter`]: the gateway
    /// puts them in together with its own headers, in one edit of the header map. They go
    /// in before the policies' `response_filter` hooks run, so those still see (and may
    /// change) them.
    ///
    /// [`Policy::response_filter`]: crate::policy::Policy::response_filter
    pub fn set_response_header(&mut self, name: http::HeaderName, value: http::HeaderValue) {
        match self.response_headers.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.response_headers.push((name, value)),
        }
    }

    /// The headers set by [`RequestCtx::set_response_header`], in the order first set.
    pub fn response_headers(
        &self,
    ) -> impl Iterator<Item = (&http::HeaderName, &http::HeaderValue)> {
        self.response_headers.iter().map(|(n, v)| (n, v))
    }

    /// [`RequestCtx::request_id`] as a header value (`None` if a policy made it invalid).
    pub(crate) fn request_id_header(&self) -> Option<http::HeaderValue> {
        match &self.request_id_header {
            Some(v) if v.as_bytes() == self.request_id.as_bytes() => Some(v.clone()),
            _ => http::HeaderValue::from_str(&self.request_id).ok(),
        }
    }

    /// The consumers of the configuration this request runs on (for authentication
    /// policies). Empty before routing.
    pub fn consumers(&self) -> &Consumers {
        static EMPTY: std::sync::OnceLock<Consumers> = std::sync::OnceLock::new();
        match &self.snapshot {
            Some(s) => &s.consumers,
            None => EMPTY.get_or_init(Consumers::default),
        }
    }

    /// The name of the matched route, if one matched.
    pub fn route_name(&self) -> Option<&str> {
        self.route.as_deref().map(|r| r.name.as_str())
    }

    /// The name of the matched route's upstream, if one matched.
    pub fn upstream_name(&self) -> Option<&str> {
        self.route.as_deref().map(|r| r.upstream.name.as_str())
    }

    /// The backend address the request was sent to, once one was chosen.
    pub fn backend(&self) -> Option<std::net::SocketAddr> {
        self.tried.last().copied()
    }

    /// Whether the upstream's response head missed its deadline.
    pub(crate) fn head_timed_out(&self) -> bool {
        self.head_deadline.as_ref().is_some_and(|d| d.expired())
    }

    /// Starts the response-head deadline of the current try, once both the upstream
    /// connection is known and the request has been sent.
    pub(crate) fn arm_head_deadline(&mut self) {
        let (Some(conn), Some(route)) = (self.upstream_conn.take(), &self.route) else {
            return;
        };
        let after = route.upstream.read_timeout;
        if self.read_idle.is_some() {
            self.read_idle = Some(conn.clone());
        }
        self.head_deadline = Some(crate::head_deadline::HeadDeadline::arm(conn, after));
    }

    /// While the request body is sent, on a request whose upstream reads the gateway
    /// bounds itself ([`Self::read_idle`]): an upstream that stops taking the body is
    /// cut after `read_timeout`, a client that pauses is not blamed on it.
    pub(crate) fn arm_upload_deadline(&mut self) {
        let (Some(conn), Some(_), Some(route)) =
            (&self.upstream_conn, &self.read_idle, &self.route)
        else {
            return;
        };
        let after = route.upstream.read_timeout;
        self.head_deadline = None;
        self.head_deadline = Some(crate::head_deadline::HeadDeadline::arm_upload(
            conn.clone(),
            after,
        ));
    }

    /// For a request whose upstream reads the gateway bounds itself ([`Self::read_idle`]):
    /// the next read from the upstream must come within `read_timeout`.
    pub(crate) fn rearm_read_deadline(&mut self) {
        if let (Some(conn), Some(route)) = (&self.read_idle, &self.route) {
            let after = route.upstream.read_timeout;
            self.head_deadline = None;
            self.head_deadline = Some(crate::head_deadline::HeadDeadline::arm(conn.clone(), after));
        }
    }

    /// The refusal code of the gateway's own answer, if it made one.
    pub fn refusal(&self) -> Option<ErrorCode> {
        self.refusal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    #[test]
    fn a_response_header_set_again_replaces_the_first_value_in_place() {
        let mut cx = RequestCtx::new();
        let a = HeaderName::from_static("x-a");
        let b = HeaderName::from_static("x-b");
        cx.set_response_header(a.clone(), HeaderValue::from_static("1"));
        cx.set_response_header(b.clone(), HeaderValue::from_static("2"));
        cx.set_response_header(a.clone(), HeaderValue::from_static("3"));
        let set: Vec<_> = cx.response_headers().collect();
        assert_eq!(
            set,
            [
                (&a, &HeaderValue::from_static("3")),
                (&b, &HeaderValue::from_static("2"))
            ]
        );
    }
}
