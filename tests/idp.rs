//! A real identity provider on loopback for the identity tests: OpenID Connect
//! discovery, a JWKS document and RFC 7662 token introspection over HTTP/1.1 (or
//! HTTPS), with what each answers set by the test (key rotation, error statuses,
//! garbage, delays) and a record of every request.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::net::TcpListener;

use crate::{record, Seen};

/// What one document answers: a status, a body and extra headers.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// A pause before the answer.
    pub delay: Duration,
}

impl Answer {
    /// A 200 with this JSON body.
    pub fn json(v: &serde_json::Value) -> Self {
        Self {
            status: 200,
            body: v.to_string().into_bytes(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// An answer with this status and raw body.
    pub fn raw(status: u16, body: &[u8]) -> Self {
        Self {
            status,
            body: body.to_vec(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// This answer with one more header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// This answer after a pause.
    #[must_use]
    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

/// What the provider serves; change it with [`IdentityProvider::set`].
#[derive(Debug, Default)]
pub struct IdpState {
    /// `GET /.well-known/openid-configuration`; `None`: the default document (this
    /// provider's issuer, `jwks_uri` = `/jwks`).
    pub discovery: Option<Answer>,
    /// `GET /jwks`.
    pub jwks: Option<Answer>,
    /// `POST /introspect`: the answer for each token (`{"active": false}` for others).
    pub introspection: HashMap<String, Answer>,
    /// `POST /introspect` for every token, when set (errors, garbage).
    pub introspection_override: Option<Answer>,
    /// Other paths and their answers.
    pub extra: HashMap<String, Answer>,
}

/// The identity provider. See the [module docs](self).
pub struct IdentityProvider {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    scheme: &'static str,
    state: Arc<Mutex<IdpState>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl IdentityProvider {
    /// A provider over plain HTTP.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    /// A provider over plain HTTP on `addr`.
    pub async fn start_on(addr: &str) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind idp on {addr}: {e}"));
        Self::serve(listener, None)
    }

    /// A provider over HTTPS with this PEM certificate chain and key.
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind idp");
        Self::serve(listener, Some(crate::tls_acceptor(cert_pem, key_pem, None)))
    }

    fn serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let addr = listener.local_addr().expect("idp addr");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{addr}");
        let state: Arc<Mutex<IdpState>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (st, rec) = (state.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, rec, base, tls) = (st.clone(), rec.clone(), base.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (st, rec, base) = (st.clone(), rec.clone(), base.clone());
                        async move { Ok::<_, Infallible>(answer(req, &st, &rec, &base).await) }
                    });
                    crate::serve_http1(stream, tls, svc).await;
                });
            }
        });
        Self {
            addr,
            scheme,
            state,
            seen,
            task,
        }
    }

    /// The provider's issuer (its base URL).
    pub fn issuer(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The URL of `path` on the provider.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer())
    }

    /// Changes what the provider serves.
    pub fn set(&self, f: impl FnOnce(&mut IdpState)) {
        f(&mut self.state.lock().expect("idp state"));
    }

    /// Serves this JWKS (`{"keys": [...]}`) at `/jwks`.
    pub fn serve_jwks(&self, keys: &[serde_json::Value]) {
        let doc = serde_json::json!({ "keys": keys });
        self.set(|s| s.jwks = Some(Answer::json(&doc)));
    }

    /// The requests received for `path` so far.
    pub fn requests(&self, path: &str) -> Vec<Seen> {
        let seen = self.seen.lock().expect("idp seen");
        seen.iter()
            .filter(|s| s.target.split('?').next() == Some(path))
            .cloned()
            .collect()
    }

    /// How many requests `path` received.
    pub fn hits(&self, path: &str) -> usize {
        self.requests(path).len()
    }
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<Incoming>,
    state: &Mutex<IdpState>,
    rec: &Mutex<Vec<Seen>>,
    base: &str,
) -> Response<Full<Bytes>> {
    let seen = record(req).await;
    if let Ok(mut r) = rec.lock() {
        r.push(seen.clone());
    }
    let (target, body) = (seen.target, seen.body);
    let path = target.split('?').next().unwrap_or_default().to_string();
    let chosen = {
        let s = state.lock().expect("idp state");
        match path.as_str() {
            "/.well-known/openid-configuration" => Some(s.discovery.clone().unwrap_or_else(|| {
                Answer::json(&serde_json::json!({
                    "issuer": base, "jwks_uri": format!("{base}/jwks"),
                    "introspection_endpoint": format!("{base}/introspect"),
                }))
            })),
            "/jwks" => s.jwks.clone(),
            "/introspect" => {
                let token = form_urlencoded_token(&body);
                s.introspection_override.clone().or_else(|| {
                    Some(
                        token
                            .and_then(|t| s.introspection.get(&t).cloned())
                            .unwrap_or_else(|| Answer::json(&serde_json::json!({"active": false}))),
                    )
                })
            }
            other => s.extra.get(other).cloned(),
        }
    };
    let a = chosen.unwrap_or_else(|| Answer::raw(404, b"not found"));
    if !a.delay.is_zero() {
        tokio::time::sleep(a.delay).await;
    }
    let mut resp = Response::builder()
        .status(a.status)
        .header("content-type", "application/json");
    for (n, v) in &a.headers {
        resp = resp.header(n, v);
    }
    resp.body(Full::new(Bytes::from(a.body)))
        .unwrap_or_default()
}

/// The `token` member of a form body.
fn form_urlencoded_token(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.replace('+', " "))
}

/// What an [`AuthzService`] answers a request with.
pub type Decide = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

/// A real HTTP authorization service on loopback: it records every call and answers as
/// the test's function decides (forward-auth statuses and headers, OPA result
/// documents, errors, delays).
pub struct AuthzService {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    decide: Arc<Mutex<Decide>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AuthzService {
    /// A service that allows everything (204) until told otherwise.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind authz");
        let addr = listener.local_addr().expect("authz addr");
        let decide: Arc<Mutex<Decide>> = Arc::new(Mutex::new(Arc::new(|_| Answer::raw(204, b""))));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (d, rec) = (decide.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (d, rec) = (d.clone(), rec.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (d, rec) = (d.clone(), rec.clone());
                        async move {
                            let s = record(req).await;
                            if let Ok(mut r) = rec.lock() {
                                r.push(s.clone());
                            }
                            let f = d.lock().expect("decide").clone();
                            let a = f(&s);
                            if !a.delay.is_zero() {
                                tokio::time::sleep(a.delay).await;
                            }
                            let mut resp = Response::builder().status(a.status);
                            for (n, v) in &a.headers {
                                resp = resp.header(n, v);
                            }
                            Ok::<_, Infallible>(
                                resp.body(Full::new(Bytes::from(a.body)))
                                    .unwrap_or_default(),
                            )
                        }
                    });
                    crate::serve_http1(stream, None, svc).await;
                });
            }
        });
        Self {
            addr,
            decide,
            seen,
            task,
        }
    }

    /// The URL of `path` on the service.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers every later call with `f`'s answer.
    pub fn decide(&self, f: impl Fn(&Seen) -> Answer + Send + Sync + 'static) {
        *self.decide.lock().expect("decide") = Arc::new(f);
    }

    /// The calls received so far.
    pub fn calls(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for AuthzService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The quickstart's identity provider: OpenID Connect discovery and a JWKS with one
/// P-256 key made at start, and `GET /token`, a token it signed for subject `alice`
/// (ES256, valid 24 h). A demo: anyone who can reach it gets a token.
pub async fn demo_provider(addr: &str) -> IdentityProvider {
    use base64::Engine;
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let idp = IdentityProvider::start_on(addr).await;
    let secret = p256::SecretKey::random(&mut rand::thread_rng());
    let point = secret.public_key().to_encoded_point(false);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let (x, y) = (point.x().map(|x| b64(x)), point.y().map(|y| b64(y)));
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "demo-1", "use": "sig",
        "alg": "ES256", "x": x, "y": y});
    idp.serve_jwks(&[jwk]);
    let pem = secret.to_pkcs8_pem(LineEnding::LF).expect("pkcs8");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).expect("key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("demo-1".into());
    let claims = serde_json::json!({
        "iss": idp.issuer(), "sub": "alice", "email": "alice@example.com",
        "scope": "orders:read", "exp": jsonwebtoken::get_current_timestamp() + 24 * 3600,
    });
    let token = jsonwebtoken::encode(&header, &claims, &key).expect("sign");
    idp.set(|s| {
        s.extra
            .insert("/token".into(), Answer::raw(200, token.as_bytes()));
    });
    idp
}
