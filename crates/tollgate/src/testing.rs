//! Unit-testing a policy without a server (the `test-util` feature).
//!
//! [`PolicyTest`] runs one or more policies, in stage order, on a [`TestRequest`] the
//! way the gateway runs a route's chain: `request_filter`, then (unless a policy
//! answered) `upstream_peer`, `upstream_request_filter` and `request_body_filter`. The
//! [`Outcome`] holds what came of it: the answer a policy gave, or the request as it
//! would go upstream and where (with `X-Consumer-Name` and the identity headers the
//! policies set, client copies of those removed, as the gateway does);
//! [`Outcome::respond`] then plays an upstream response through `response_filter`,
//! `response_body_filter` and `logging`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use tollgate::policies::headers::RequestHeadersConfig;
//! use tollgate::testing::{PolicyTest, TestRequest};
//!
//! let test = PolicyTest::from_toml::<RequestHeadersConfig>(
//!     "request_headers",
//!     r#"set = { "x-env" = "test" }"#,
//! )
//! .expect("a valid table");
//! let outcome = test.run(TestRequest::get("/orders/1")).await.expect("no gateway error");
//! assert!(outcome.answer.is_none(), "proxied");
//! let sent = outcome.upstream_request.expect("a request for the upstream");
//! assert_eq!(sent.headers["x-env"], "test");
//! # }
//! ```

use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use tokio::io::AsyncWriteExt;

use crate::consumer::Consumers;
use crate::context::{RequestCtx, RouteInfo};
use crate::policy::{BoxPolicy, BuildCtx, BuildError, Chain, Flow, Policy, PolicyConfig, Target};

/// A request to run a policy on.
#[derive(Debug, Clone)]
pub struct TestRequest {
    method: Method,
    target: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    client_ip: Option<IpAddr>,
}

impl TestRequest {
    /// A request with `method` for `target` (a path with an optional query).
    pub fn new(method: Method, target: &str) -> Self {
        Self {
            method,
            target: target.to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
            client_ip: Some(IpAddr::from([127, 0, 0, 1])),
        }
    }

    /// `GET target`.
    pub fn get(target: &str) -> Self {
        Self::new(Method::GET, target)
    }

    /// `POST target` with `body`.
    pub fn post(target: &str, body: impl Into<Bytes>) -> Self {
        Self::new(Method::POST, target).body(body)
    }

    /// Adds a header.
    ///
    /// # Panics
    /// `name` or `value` is not a valid header name or value.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid header name");
        let value = HeaderValue::from_str(value).expect("a valid header value");
        self.headers.push((name, value));
        self
    }

    /// Sets the body (sent with `Content-Length`).
    #[must_use]
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the client's IP ([`RequestCtx::client_ip`]; 127.0.0.1 by default).
    #[must_use]
    pub fn client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = Some(ip);
        self
    }

    /// The request as HTTP/1.1 bytes.
    fn wire(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        if !self.headers.iter().any(|(n, _)| n == http::header::HOST) {
            out.extend_from_slice(b"Host: test\r\n");
        }
        for (n, v) in &self.headers {
            out.extend_from_slice(n.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !self.body.is_empty() {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// The policies under test, and what their requests see of the gateway.
#[derive(Clone)]
pub struct PolicyTest {
    policies: Vec<(Arc<str>, BoxPolicy)>,
    consumers: Arc<Consumers>,
    route: Arc<RouteInfo>,
}

impl std::fmt::Debug for PolicyTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyTest")
            .field(
                "policies",
                &self.policies.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// What a policy (or the gateway) answered instead of proxying, as the client gets it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers, after the policies' `response_filter`.
    pub headers: HeaderMap,
    /// The body: a refusal's JSON, or a reply's own.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (a refusal's `error`, `message`, `request_id`).
    ///
    /// # Panics
    /// The body is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A response after the policies' response hooks ([`Outcome::respond`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TestResponse {
    /// The response head the client gets.
    pub head: ResponseHeader,
    /// The body the client gets, its pieces joined.
    pub body: Bytes,
}

/// What running the policies on a request came to.
#[non_exhaustive]
pub struct Outcome {
    /// The answer a policy made (`Flow::Respond`); `None` when the request goes upstream.
    pub answer: Option<Answer>,
    /// Where a policy's `upstream_peer` sent the request; `None`: the route's upstream.
    pub target: Option<Target>,
    /// The request head as it would go upstream, after `upstream_request_filter`.
    pub upstream_request: Option<RequestHeader>,
    /// The request body as it would go upstream, after `request_body_filter`.
    pub upstream_body: Bytes,
    /// The request's context as the policies left it (consumer, extensions, headers
    /// set for the response).
    pub cx: RequestCtx,
    chain: Chain,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("answer", &self.answer)
            .field("target", &self.target)
            .field("upstream_request", &self.upstream_request)
            .finish_non_exhaustive()
    }
}

impl PolicyTest {
    /// A test of `policy`, enabled as `name`.
    pub fn new(name: &str, policy: impl Policy) -> Self {
        Self {
            policies: vec![(Arc::from(name), Arc::new(policy) as BoxPolicy)],
            consumers: Arc::default(),
            route: Arc::new(RouteInfo {
                name: "test".into(),
                upstream: "test".into(),
                paths: Vec::new(),
                strip_prefix: false,
                rewrite: None,
            }),
        }
    }

    /// A test of the policy `C` builds from a TOML table's body (`key = value` lines),
    /// built as the gateway builds it: an error is what `tollgate check` would report.
    ///
    /// # Errors
    /// The table does not parse into `C`, or `C::build` refuses it.
    pub fn from_toml<C: PolicyConfig>(name: &str, table: &str) -> Result<Self, BuildError> {
        let config: C = toml::from_str(table).map_err(|e| BuildError::new(e.message()))?;
        let path = format!("routes.test.policies.{name}");
        let policy = config.build(&BuildCtx::new(std::path::Path::new("."), &path))?;
        Ok(Self::new(name, policy))
    }

    /// Adds another policy: all run in stage order, as in a route's chain.
    #[must_use]
    pub fn with(mut self, name: &str, policy: impl Policy) -> Self {
        self.policies.push((Arc::from(name), Arc::new(policy)));
        self
    }

    /// The consumers authentication policies look credentials up in.
    #[must_use]
    pub fn consumers(mut self, consumers: Consumers) -> Self {
        self.consumers = Arc::new(consumers);
        self
    }

    /// The route's name and its upstream's, as [`RequestCtx::route_name`] and
    /// [`RequestCtx::upstream_name`] give them (`test` by default).
    #[must_use]
    pub fn route(mut self, name: &str, upstream: &str) -> Self {
        self.route = Arc::new(RouteInfo {
            name: name.into(),
            upstream: upstream.into(),
            paths: Vec::new(),
            strip_prefix: false,
            rewrite: None,
        });
        self
    }

    /// Runs the request hooks on `req`.
    ///
    /// # Errors
    /// A hook returned `Err` (the gateway would answer 500).
    pub async fn run(&self, req: TestRequest) -> pingora::Result<Outcome> {
        let chain = Chain::new(self.policies.clone());
        let (mut client, server) = tokio::io::duplex(req.wire().len() + 1024);
        client.write_all(&req.wire()).await.map_err(|e| {
            pingora::Error::because(pingora::ErrorType::WriteError, "test request", e)
        })?;
        let mut session = Session::new_h1(Box::new(server));
        if !session.read_request().await? {
            return pingora::Error::e_explain(
                pingora::ErrorType::InvalidHTTPHeader,
                "test request",
            );
        }
        // as the gateway does on arrival: client copies of identity headers go
        for name in chain.identity_headers() {
            session.req_header_mut().remove_header(&name);
        }
        let mut cx = RequestCtx::new();
        cx.request_id = "test-request".into();
        cx.client_ip = req.client_ip;
        cx.path = crate::router::path::normalize(session.req_header().uri.path())
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| session.req_header().uri.path().to_string());
        cx.consumers = Some(self.consumers.clone());
        cx.route = Some(self.route.clone());
        let mut outcome = Outcome {
            answer: None,
            target: None,
            upstream_request: None,
            upstream_body: Bytes::new(),
            cx,
            chain,
        };
        let chain = outcome.chain.clone();
        let cx = &mut outcome.cx;
        if let Flow::Respond(reply) = chain.request_filter(&mut session, cx).await? {
            cx.refusal = reply.code;
            let r = reply.render(&cx.request_id);
            let mut head = ResponseHeader::build(r.status, None)?;
            for (n, v) in r.headers {
                head.append_header(n, v)?;
            }
            for (n, v) in std::mem::take(&mut cx.response_headers) {
                head.insert_header(n, v)?;
            }
            chain.response_filter(cx, &mut head)?;
            outcome.answer = Some(Answer {
                status: head.status,
                headers: head.headers.clone(),
                body: r.body,
            });
            return Ok(outcome);
        }
        outcome.target = chain.upstream_peer(&session, cx)?;
        let mut up = session.req_header().clone();
        if let Some(held) = &cx.body {
            held.frame(&mut up, !session.is_body_empty())?;
        }
        // as the gateway does: who the consumer is, and the identity headers set
        if let Some(v) = cx.consumer.as_ref().and_then(|c| c.name_header()) {
            up.insert_header("x-consumer-name", v)?;
        }
        for (n, v) in &cx.identity_headers {
            up.insert_header(n.clone(), v.clone())?;
        }
        chain.upstream_request_filter(cx, &mut up)?;
        outcome.upstream_request = Some(up);
        let mut sent = BytesMut::new();
        if let Some(held) = cx.body.as_ref().map(|h| h.bytes.clone()) {
            // read whole for a policy's `request_body`: sent as the policies left it
            let mut piece = Some(held);
            chain.request_body_filter(cx, &mut piece, true)?;
            outcome.upstream_body = piece.unwrap_or_default();
            drop(client);
            return Ok(outcome);
        }
        loop {
            let mut piece = session.read_request_body().await?;
            let end = piece.is_none() || session.is_body_done();
            chain.request_body_filter(cx, &mut piece, end)?;
            if let Some(p) = piece {
                sent.extend_from_slice(&p);
            }
            if end {
                break;
            }
        }
        outcome.upstream_body = sent.freeze();
        drop(client);
        Ok(outcome)
    }
}

impl Outcome {
    /// Plays an upstream response through the policies' `response_filter` (with the
    /// headers they set with [`RequestCtx::set_response_header`]) and
    /// `response_body_filter` (the body in `pieces`, in order), then runs `logging`.
    ///
    /// # Errors
    /// A hook returned `Err`.
    pub fn respond(
        &mut self,
        mut head: ResponseHeader,
        pieces: &[&[u8]],
    ) -> pingora::Result<TestResponse> {
        for (n, v) in std::mem::take(&mut self.cx.response_headers) {
            head.insert_header(n, v)?;
        }
        // a policy that needs the body whole gets it when it is within the largest
        // limit of the policies; the head then goes without its length
        let whole: Vec<u8> = pieces.concat();
        let held = self
            .chain
            .response_cap_for(&self.cx)
            .is_some_and(|cap| whole.len() <= cap);
        if held {
            crate::policy::body_length_changes(&mut head)?;
        }
        self.chain.response_filter(&mut self.cx, &mut head)?;
        let mut out = BytesMut::new();
        if held {
            let mut piece = Bytes::from(whole);
            self.chain.response_body(&mut self.cx, &mut piece)?;
            let mut piece = Some(piece);
            self.chain
                .response_body_filter(&mut self.cx, &mut piece, true)?;
            out.extend_from_slice(piece.as_deref().unwrap_or_default());
        } else if pieces.is_empty() {
            let mut none = None;
            self.chain
                .response_body_filter(&mut self.cx, &mut none, true)?;
            out.extend_from_slice(none.as_deref().unwrap_or_default());
        }
        let last = pieces.len().saturating_sub(1);
        for (i, p) in pieces.iter().enumerate().filter(|_| !held) {
            let mut piece = Some(Bytes::copy_from_slice(p));
            self.chain
                .response_body_filter(&mut self.cx, &mut piece, i == last)?;
            if let Some(p) = piece {
                out.extend_from_slice(&p);
            }
        }
        self.chain.logging(&self.cx, None);
        Ok(TestResponse {
            head,
            body: out.freeze(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Peer, UpstreamName};
    use crate::reply::{ErrorCode, Reply};

    /// Sends `/beta` requests to the `beta` upstream, pins `x-tenant: acme` to one
    /// backend, answers `/ping` itself, upper-cases the response body, and counts the
    /// request body's bytes.
    struct Everything {
        beta: UpstreamName,
    }

    #[derive(Clone)]
    struct Seen(usize);

    #[async_trait::async_trait]
    impl Policy for Everything {
        async fn request_filter(
            &self,
            _: &mut Session,
            cx: &mut RequestCtx,
        ) -> pingora::Result<Flow> {
            if cx.path == "/ping" {
                return Ok(Flow::Respond(Reply::with_body(
                    StatusCode::OK,
                    HeaderValue::from_static("text/plain"),
                    "pong",
                )));
            }
            if cx.path == "/no" {
                return Ok(Flow::Respond(Reply::refuse(ErrorCode::Forbidden)));
            }
            Ok(Flow::Continue)
        }
        fn upstream_peer(
            &self,
            session: &Session,
            cx: &mut RequestCtx,
        ) -> pingora::Result<Option<Target>> {
            if session.req_header().headers.contains_key("x-adhoc") {
                return Ok(Some(Target::Peer(Peer::plain(
                    "127.0.0.1:9".parse().unwrap(),
                ))));
            }
            Ok(cx
                .path
                .starts_with("/beta")
                .then(|| Target::Upstream(self.beta.clone())))
        }
        fn request_body_filter(
            &self,
            cx: &mut RequestCtx,
            body: &mut Option<Bytes>,
            _: bool,
        ) -> pingora::Result<()> {
            let n = body.as_ref().map_or(0, Bytes::len);
            let before = cx.extensions.get::<Seen>().map_or(0, |s| s.0);
            cx.extensions.insert(Seen(before + n));
            Ok(())
        }
        fn response_filter(
            &self,
            _: &mut RequestCtx,
            resp: &mut ResponseHeader,
        ) -> pingora::Result<()> {
            resp.insert_header("x-seen", "1")
        }
        fn response_body_filter(
            &self,
            _: &mut RequestCtx,
            body: &mut Option<Bytes>,
            end: bool,
        ) -> pingora::Result<()> {
            if let Some(b) = body.as_mut() {
                *b = Bytes::from(b.to_ascii_uppercase());
            }
            if end {
                let mut with_end = body.take().map(BytesMut::from).unwrap_or_default();
                with_end.extend_from_slice(b"!");
                *body = Some(with_end.freeze());
            }
            Ok(())
        }
    }

    fn test() -> PolicyTest {
        let names = ["alpha".to_string(), "beta".to_string()].into();
        let beta = BuildCtx::new(std::path::Path::new("."), "p")
            .with_upstreams(&names)
            .upstream("upstream", "beta")
            .unwrap();
        PolicyTest::new("everything", Everything { beta })
    }

    #[test]
    fn an_upstream_not_in_the_configuration_is_a_build_error_at_the_field() {
        let names = ["alpha".to_string()].into();
        let cx = BuildCtx::new(std::path::Path::new("."), "p").with_upstreams(&names);
        let e = cx.upstream("canary", "beta").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("canary"));
        assert_eq!(e.message, "unknown upstream \"beta\"");
        assert_eq!(cx.upstream("canary", "alpha").unwrap().as_str(), "alpha");
    }

    /// Sets `x-tenant` from the `tenant` query parameter, as an identity header.
    struct Tenant;

    #[async_trait::async_trait]
    impl Policy for Tenant {
        async fn request_filter(
            &self,
            session: &mut Session,
            cx: &mut RequestCtx,
        ) -> pingora::Result<Flow> {
            let tenant = session
                .req_header()
                .uri
                .query()
                .unwrap_or_default()
                .to_string();
            if let Ok(v) = http::HeaderValue::from_str(&tenant) {
                cx.set_identity_header(http::HeaderName::from_static("x-tenant"), v);
            }
            Ok(Flow::Continue)
        }
        fn identity_headers(&self) -> Vec<http::HeaderName> {
            vec![http::HeaderName::from_static("x-tenant")]
        }
    }

    #[tokio::test]
    async fn identity_headers_replace_client_copies_in_the_upstream_request() {
        let t = PolicyTest::new("tenant", Tenant);
        let o = t
            .run(TestRequest::get("/x?t1").header("x-tenant", "forged"))
            .await
            .unwrap();
        let sent = o.upstream_request.unwrap();
        let values: Vec<_> = sent.headers.get_all("x-tenant").iter().collect();
        assert_eq!(values, ["t1"]);
    }

    #[tokio::test]
    async fn a_policy_answers_with_its_own_body_or_a_refusal() {
        let t = test();
        let o = t.run(TestRequest::get("/ping")).await.unwrap();
        let a = o.answer.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(&a.body[..], b"pong");
        assert_eq!(a.headers["content-length"], "4");
        assert_eq!(a.headers["content-type"], "text/plain");
        assert_eq!(a.headers["x-seen"], "1", "response_filter runs on answers");
        assert!(o.upstream_request.is_none());

        let o = t.run(TestRequest::get("/no")).await.unwrap();
        let a = o.answer.unwrap();
        assert_eq!(a.status, 403);
        assert_eq!(a.json()["error"], "forbidden");
        assert_eq!(a.json()["request_id"], "test-request");
    }

    #[tokio::test]
    async fn the_first_policy_that_chooses_decides_where_the_request_goes() {
        let t = test();
        let o = t.run(TestRequest::get("/beta/x")).await.unwrap();
        assert!(matches!(&o.target, Some(Target::Upstream(u)) if u.as_str() == "beta"));
        let o = t.run(TestRequest::get("/alpha/x")).await.unwrap();
        assert_eq!(o.target, None, "the route's upstream");
        // a later policy is not asked once one chose
        let t = t.with(
            "second",
            Everything {
                beta: UpstreamName(Arc::from("alpha")),
            },
        );
        let o = t
            .run(TestRequest::get("/beta/x").header("x-adhoc", "1"))
            .await
            .unwrap();
        assert!(matches!(&o.target, Some(Target::Peer(p)) if p.addr.port() == 9 && !p.tls));
    }

    #[tokio::test]
    async fn request_and_response_bodies_pass_through_the_body_hooks() {
        let t = test();
        let mut o = t
            .run(TestRequest::post("/upload", "hello body").header("x-a", "1"))
            .await
            .unwrap();
        assert_eq!(&o.upstream_body[..], b"hello body");
        assert_eq!(o.cx.extensions.get::<Seen>().map(|s| s.0), Some(10));
        let sent = o.upstream_request.as_ref().unwrap();
        assert_eq!(sent.headers["x-a"], "1");
        let head = ResponseHeader::build(200, None).unwrap();
        let r = o.respond(head, &[b"abc", b"def"]).unwrap();
        assert_eq!(&r.body[..], b"ABCDEF!");
        assert_eq!(r.head.headers["x-seen"], "1");
    }

    /// Needs both bodies whole: upper-cases the request body (refusing `bad`), and
    /// reverses the response body.
    struct Whole;

    #[async_trait::async_trait]
    impl Policy for Whole {
        fn request_body_limit(&self) -> Option<usize> {
            Some(16)
        }
        async fn request_body(
            &self,
            _: &mut Session,
            _: &mut RequestCtx,
            body: &mut Bytes,
        ) -> pingora::Result<Flow> {
            if &body[..] == b"bad" {
                return Ok(Flow::Respond(Reply::refuse(ErrorCode::BadRequest)));
            }
            *body = Bytes::from(body.to_ascii_uppercase());
            Ok(Flow::Continue)
        }
        fn response_body_limit(&self) -> Option<usize> {
            Some(8)
        }
        fn response_body(&self, _: &mut RequestCtx, body: &mut Bytes) -> pingora::Result<()> {
            *body = body.iter().rev().copied().collect::<Vec<u8>>().into();
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_whole_request_body_is_read_once_replaced_and_bounded() {
        let t = PolicyTest::new("whole", Whole);
        let mut o = t.run(TestRequest::post("/u", "abc")).await.unwrap();
        assert!(o.answer.is_none());
        assert_eq!(&o.upstream_body[..], b"ABC");
        assert_eq!(o.cx.request_body().map(|b| &b[..]), Some(&b"ABC"[..]));
        assert_eq!(
            o.upstream_request.as_ref().unwrap().headers["content-length"],
            "3"
        );
        // the response, whole: reversed; over the limit: as it came
        let mut head = ResponseHeader::build(200, None).unwrap();
        head.insert_header("content-length", "6").unwrap();
        let r = o.respond(head, &[b"abc", b"def"]).unwrap();
        assert_eq!(&r.body[..], b"fedcba");
        assert!(r.head.headers.get("content-length").is_none());
        let mut o = t.run(TestRequest::post("/u", "abc")).await.unwrap();
        let r = o
            .respond(ResponseHeader::build(200, None).unwrap(), &[b"0123456789"])
            .unwrap();
        assert_eq!(&r.body[..], b"0123456789");

        let o = t.run(TestRequest::post("/u", "bad")).await.unwrap();
        assert_eq!(o.answer.unwrap().status, 400);
        let o = t
            .run(TestRequest::post("/u", "x".repeat(17)))
            .await
            .unwrap();
        let a = o.answer.unwrap();
        assert_eq!(a.status, 413);
        assert_eq!(a.json()["error"], "payload_too_large");
    }
}
