//! Per-request state shared by the gateway and the policies of a route.

use std::net::IpAddr;
use std::sync::Arc;

pub(crate) use crate::consumer::Consumer;
use crate::consumer::Consumers;
use crate::reply::ErrorCode;

/// A route as a policy sees it: its name and its upstream's.
#[derive(Debug)]
pub(crate) struct RouteInfo {
    pub(crate) name: String,
    pub(crate) upstream: String,
    /// The route's path patterns, when one has `{param}` segments (else none).
    pub(crate) paths: Vec<crate::router::PathPattern>,
    /// `strip_prefix` and `rewrite`: how the path is forwarded.
    pub(crate) strip_prefix: bool,
    pub(crate) rewrite: Option<(regex::Regex, String)>,
}

/// What a policy may read and write of the request in flight.
///
/// One is created per request; policies read it and may write [`RequestCtx::consumer`]
/// and [`RequestCtx::extensions`] (typed data for later policies of the same request),
/// and add headers to the response with [`RequestCtx::set_response_header`]. The
/// proxy's own bookkeeping of the request (its snapshot, the backends tried, deadlines,
/// timings) is not here: it is the proxy's.
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
    /// The segments of the route path that matched (what `strip_prefix` removes).
    pub(crate) prefix_segments: usize,
    /// The consumer set by an authentication policy.
    pub consumer: Option<Arc<Consumer>>,
    /// Typed data that policies pass to each other and to their own later hooks.
    pub extensions: http::Extensions,
    /// Headers for whichever response answers the request (see
    /// [`RequestCtx::set_response_header`]).
    pub(crate) response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The consumers of the configuration the request runs on, once routed.
    pub(crate) consumers: Option<Arc<Consumers>>,
    /// The matched route, once routed.
    pub(crate) route: Option<Arc<RouteInfo>>,
    /// The backend the request went to, once chosen.
    pub(crate) backend: Option<std::net::SocketAddr>,
    /// The refusal code of the gateway's own answer.
    pub(crate) refusal: Option<ErrorCode>,
    /// How far the route's policy chain got in `request_filter` (its `logging` runs
    /// only for the policies whose `request_filter` ran).
    pub(crate) chain: ChainProgress,
    /// The body buffers of the process (`body_buffer_total`).
    pub(crate) bodies: &'static crate::policy::body::Budget,
    /// The whole request body, when a policy of the route needs it.
    pub(crate) body: Option<crate::policy::body::HeldBody>,
    /// Headers the authenticating policy set for the upstream ([`RequestCtx::set_identity_header`]).
    pub(crate) identity_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The consumer an authentication policy offered for a credential that was valid
    /// but named no consumer ([`RequestCtx::offer_anonymous`]).
    pub(crate) anonymous: Option<Arc<Consumer>>,
    /// The name of the policy that authenticated the request.
    pub(crate) auth: Option<Arc<str>>,
    /// The verified client certificate of the connection (mutual TLS).
    pub(crate) client_cert: Option<Arc<crate::client_cert::ClientCertificate>>,
    /// Access-log fields set by policies ([`RequestCtx::set_log_field`]).
    pub(crate) log_fields: Vec<(&'static str, serde_json::Value)>,
    /// Query parameters that carry a hidden credential ([`RequestCtx::hide_query_parameter`]).
    pub(crate) hidden_query: Vec<String>,
}

/// A value kept for later hooks of a request that cannot be cloned (a
/// [`BodyBuffer`](crate::policy::BodyBuffer)): [`RequestCtx::extensions`] holds only
/// `Clone` values, so it is kept behind a shared handle. Only the request's own hooks,
/// one at a time, reach it: its lock is never contended.
#[derive(Debug)]
struct Kept<T>(Arc<std::sync::Mutex<T>>);

impl<T> Clone for Kept<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// Which policies of a route's chain ran `request_filter`: the first `reached` ones,
/// except the authentication policies after `authenticated_by` (skipped once one
/// authenticated).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ChainProgress {
    pub(crate) reached: usize,
    pub(crate) authenticated_by: Option<usize>,
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
            prefix_segments: 0,
            consumer: None,
            extensions: http::Extensions::new(),
            response_headers: Vec::new(),
            consumers: None,
            route: None,
            backend: None,
            refusal: None,
            chain: ChainProgress::default(),
            bodies: &crate::policy::body::UNBOUNDED,
            body: None,
            identity_headers: Vec::new(),
            anonymous: None,
            auth: None,
            client_cert: None,
            log_fields: Vec::new(),
            hidden_query: Vec::new(),
        }
    }

    /// Marks query parameter `name` as a credential that must not leave the gateway
    /// (`key_auth`'s key with `hide_credentials`): services that are told about the
    /// request (an authorization service) do not see it.
    pub fn hide_query_parameter(&mut self, name: &str) {
        if !self.hidden_query.iter().any(|n| n == name) {
            self.hidden_query.push(name.to_string());
        }
    }

    /// The query parameters marked by [`RequestCtx::hide_query_parameter`].
    pub fn hidden_query_parameters(&self) -> &[String] {
        &self.hidden_query
    }

    /// Sets field `name` of this request's access-log line (a policy's decision, such
    /// as `ext_authz`'s `authz`). Set it again to replace it. Name fields after your
    /// policy; a name of the gateway's own fields is ignored, except `error`, which a
    /// policy that aborts a response it started sets to say why (`response_aborted`).
    pub fn set_log_field(&mut self, name: &'static str, value: impl Into<serde_json::Value>) {
        let value = value.into();
        match self.log_fields.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.log_fields.push((name, value)),
        }
    }

    /// Keeps `value` for this request's later hooks (one value per type: wrap it in a
    /// type of your policy), for what [`RequestCtx::extensions`] cannot hold because it
    /// cannot be cloned, such as a [`BodyBuffer`](crate::policy::BodyBuffer).
    pub fn keep<T: Send + 'static>(&mut self, value: T) {
        self.extensions
            .insert(Kept(Arc::new(std::sync::Mutex::new(value))));
    }

    /// Runs `f` on the value of type `T` kept with [`RequestCtx::keep`]; `None` when
    /// there is none.
    pub fn kept<T: Send + 'static, R>(&mut self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let Kept(value) = self.extensions.get::<Kept<T>>()?.clone();
        let mut value = value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(f(&mut value))
    }

    /// Takes back the value of type `T` kept with [`RequestCtx::keep`].
    pub fn unkeep<T: Send + 'static>(&mut self) -> Option<T> {
        let Kept(value) = self.extensions.remove::<Kept<T>>()?;
        let value = Arc::into_inner(value)?;
        Some(
            value
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Whether field `name` of the access-log line was set ([`RequestCtx::set_log_field`]).
    pub fn log_field_set(&self, name: &str) -> bool {
        self.log_fields.iter().any(|(n, _)| *n == name)
    }

    /// The verified client certificate of the connection, on a `[[server.tls]]`
    /// listener with `client_ca` whose client presented one.
    pub fn client_certificate(&self) -> Option<&Arc<crate::client_cert::ClientCertificate>> {
        self.client_cert.as_ref()
    }

    /// Sets an identity header for the upstream: what an authentication policy learnt
    /// about the caller (a claim, a certificate's subject), sent with the proxied request
    /// in place of any value of that name. Its name should be one the policy declares in
    /// [`Policy::identity_headers`](crate::policy::Policy::identity_headers), so that
    /// client copies are removed on arrival and an upstream only ever sees the
    /// gateway's value. Set one again to replace it.
    pub fn set_identity_header(&mut self, name: http::HeaderName, value: http::HeaderValue) {
        match self.identity_headers.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.identity_headers.push((name, value)),
        }
    }

    /// The identity headers set for this request, in the order first set.
    pub fn identity_headers(
        &self,
    ) -> impl Iterator<Item = (&http::HeaderName, &http::HeaderValue)> {
        self.identity_headers.iter().map(|(n, v)| (n, v))
    }

    /// For an authentication policy that refuses a credential it found valid but that
    /// names no consumer: `consumer` (its `anonymous` option) authenticates the request
    /// when no other authentication policy of the route does, none could not check its
    /// credential, and none found a valid credential lacking a scope. The first offer
    /// of the route's authentication order counts. Return the refusal as usual: the
    /// identity headers a policy set before refusing are dropped, unless its anonymous
    /// consumer is the one taken.
    pub fn offer_anonymous(&mut self, consumer: Arc<Consumer>) {
        self.anonymous.get_or_insert(consumer);
    }

    /// The name of the authentication policy that authenticated the request (its
    /// `anonymous` consumer included), once one did.
    pub fn authenticated_by(&self) -> Option<&str> {
        self.auth.as_deref()
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

    /// The consumers of the configuration this request runs on (for authentication
    /// policies). Empty before routing.
    pub fn consumers(&self) -> &Consumers {
        static EMPTY: std::sync::OnceLock<Consumers> = std::sync::OnceLock::new();
        match &self.consumers {
            Some(c) => c,
            None => EMPTY.get_or_init(Consumers::default),
        }
    }

    /// [`RequestCtx::consumers`], shared: for work that outlives the hook (a password
    /// check on a blocking thread). `None` before routing.
    pub fn consumers_shared(&self) -> Option<Arc<Consumers>> {
        self.consumers.clone()
    }

    /// The name of the matched route, if one matched.
    pub fn route_name(&self) -> Option<&str> {
        self.route.as_deref().map(|r| r.name.as_str())
    }

    /// The `{name}` segment of the matched route path (`/users/{id}`), percent-decoded
    /// (invalid UTF-8 becomes U+FFFD); `None` when the matched path has no such segment.
    pub fn path_param(&self, name: &str) -> Option<String> {
        let route = self.route.as_deref()?;
        // the route's deepest pattern that matches is the one the router chose
        route
            .paths
            .iter()
            .filter(|p| p.matches(&self.path))
            .max_by_key(|p| p.segments.len())?
            .param(&self.path, name)
    }

    /// The path (without the query) as the upstream will receive it: normalised, then
    /// the route's `strip_prefix` and `rewrite` applied.
    pub fn forwarded_path(&self) -> String {
        let Some(route) = self.route.as_deref() else {
            return self.path.clone();
        };
        let strip = if route.strip_prefix {
            self.prefix_segments
        } else {
            0
        };
        crate::forwarding::upstream_path(&self.path, strip, route.rewrite.as_ref(), None)
    }

    /// The name of the matched route's upstream, if one matched.
    pub fn upstream_name(&self) -> Option<&str> {
        self.route.as_deref().map(|r| r.upstream.as_str())
    }

    /// The backend address the request was sent to, once one was chosen.
    pub fn backend(&self) -> Option<std::net::SocketAddr> {
        self.backend
    }

    /// The whole request body as the policies that needed it left it (the body sent
    /// upstream), once read: only on routes with a policy that asks for it
    /// ([`Policy::request_body_limit`](crate::policy::Policy::request_body_limit)).
    pub fn request_body(&self) -> Option<&bytes::Bytes> {
        self.body.as_ref().map(|b| &b.bytes)
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

    #[test]
    fn a_kept_value_is_reached_by_type_and_taken_back_whole() {
        #[derive(Debug, PartialEq)]
        struct Count(Vec<u8>);
        let mut cx = RequestCtx::new();
        assert_eq!(cx.kept(|c: &mut Count| c.0.len()), None);
        cx.keep(Count(vec![1]));
        let len = cx.kept(|c: &mut Count| {
            c.0.push(2);
            c.0.len()
        });
        assert_eq!(len, Some(2));
        assert_eq!(cx.unkeep::<Count>(), Some(Count(vec![1, 2])));
        assert_eq!(cx.unkeep::<Count>(), None);
    }
}
