//! The gateway's HTTP client for policies that call other services (token
//! introspection, a key set, an authorization service): one pool per gateway, shared
//! by every policy, with a timeout on every call, a bound on calls in flight and
//! metrics per policy.
//!
//! ```toml
//! [server.outbound]
//! timeout = "10s"          # default; the longest a call may take, unless it says otherwise
//! max_in_flight = 256      # default; calls past it wait (within their timeout)
//! ca_file = "certs/ca.pem" # default: the system's roots
//! ```

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// `[server.outbound]`, checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Settings {
    pub(crate) timeout: Duration,
    pub(crate) max_in_flight: usize,
    /// The PEM of `ca_file`: the only roots trusted; `None`: the system's.
    pub(crate) ca_pem: Option<Vec<u8>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_in_flight: 256,
            ca_pem: None,
        }
    }
}

/// The client of one `[server.outbound]`: shared by every policy, kept across reloads
/// while the table is unchanged (its pooled connections with it).
pub(crate) struct Outbound {
    settings: Settings,
    /// Made on the first call (reading the system's roots is not free, and `check`
    /// makes no calls).
    client: OnceLock<Result<reqwest::Client, String>>,
    /// Shared with the clients of other roots made from this one ([`Outbound::with_ca`]):
    /// one bound, one set of metrics.
    permits: Arc<Semaphore>,
    metrics: Arc<OnceLock<Metrics>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("timeout", &self.settings.timeout)
            .field("max_in_flight", &self.settings.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl Default for Outbound {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl Outbound {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(settings.max_in_flight)),
            settings,
            client: OnceLock::new(),
            metrics: Arc::default(),
        }
    }

    /// This client's settings and bound, trusting only the roots in `pem` (checked):
    /// for a policy with a CA file of its own.
    pub(crate) fn with_ca(&self, pem: Vec<u8>) -> Self {
        Self {
            settings: Settings {
                ca_pem: Some(pem),
                ..self.settings.clone()
            },
            client: OnceLock::new(),
            permits: self.permits.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Its settings (what tells it from the client of another `[server.outbound]`).
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Where calls are counted (the gateway's metrics; set once it is built).
    pub(crate) fn attach(&self, metrics: &Metrics) {
        let _ = self.metrics.set(metrics.clone());
    }

    /// The gateway's metrics, once attached (shared by every client made from this one).
    pub(crate) fn metrics_slot(&self) -> Arc<OnceLock<Metrics>> {
        self.metrics.clone()
    }

    /// Checks that `pem` holds at least one certificate.
    pub(crate) fn check_ca(pem: &[u8]) -> Result<(), String> {
        match reqwest::Certificate::from_pem_bundle(pem) {
            Ok(c) if !c.is_empty() => Ok(()),
            Ok(_) => Err("no certificate in the file".into()),
            Err(e) => Err(format!("not a PEM certificate bundle: {e}")),
        }
    }

    fn client(&self) -> Result<&reqwest::Client, OutboundError> {
        let made = self.client.get_or_init(|| {
            let mut b = reqwest::Client::builder()
                .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(Duration::from_secs(30))
                // never through a proxy named by the environment (HTTP_PROXY, …)
                .no_proxy()
                .connect_timeout(self.settings.timeout);
            if let Some(pem) = &self.settings.ca_pem {
                b = b.tls_built_in_root_certs(false);
                for c in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())? {
                    b = b.add_root_certificate(c);
                }
            }
            b.build().map_err(|e| e.to_string())
        });
        made.as_ref()
            .map_err(|e| OutboundError::Failed(format!("the HTTP client could not start: {e}")))
    }
}

/// Why an outbound call got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboundError {
    /// No complete response within the call's timeout (waiting for a free slot
    /// among `max_in_flight` included).
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The response body was longer than the call allows.
    #[error("the response body is longer than {0} bytes")]
    TooLarge(usize),
    /// The request could not be sent or the response not read (refused, reset, TLS,
    /// a bad URL).
    #[error("{0}")]
    Failed(String),
}

/// What one call may take: its timeout (by default `[server.outbound] timeout`) and
/// the longest response body it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Call {
    /// The longest the call may take, from waiting for a slot to the body's last byte
    /// (a policy's own setting, which may be longer or shorter than the gateway's);
    /// `None`: the gateway's `[server.outbound] timeout`.
    pub timeout: Option<Duration>,
    /// The longest response body accepted (default 16 MiB).
    pub max_body: usize,
    /// A longer body is cut at `max_body` (the response then carries [`Truncated`] in
    /// its extensions) instead of failing the call.
    pub truncate: bool,
}

/// In a response's extensions: its body was longer than the call's `max_body` and was
/// cut there ([`Call::truncate_body`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

impl Default for Call {
    fn default() -> Self {
        Self {
            timeout: None,
            max_body: 16 << 20,
            truncate: false,
        }
    }
}

impl Call {
    /// This call with `timeout` instead of the gateway's default.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// This call accepting bodies of at most `bytes`.
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// This call cutting a longer body at `max_body` (marked [`Truncated`]) instead of
    /// failing: for an answer whose body matters only sometimes.
    #[must_use]
    pub fn truncate_body(mut self) -> Self {
        self.truncate = true;
        self
    }
}

/// The gateway's HTTP client, as one policy uses it
/// ([`BuildCtx::http_client`](crate::policy::BuildCtx::http_client)): pooled
/// connections over HTTP/1.1 or HTTP/2 (by ALPN), TLS verified against the system's
/// roots or `[server.outbound] ca_file` (or the policy's own, from
/// [`BuildCtx::http_client_with_ca`](crate::policy::BuildCtx::http_client_with_ca)),
/// no redirects followed, no proxy from the environment. Every call has a
/// timeout and counts in `tollgate_outbound_requests_total{policy,status}` and
/// `tollgate_outbound_request_duration_seconds{policy}`. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    outbound: Arc<Outbound>,
    policy: Arc<str>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    pub(crate) fn new(outbound: Arc<Outbound>, policy: &str) -> Self {
        Self {
            outbound,
            policy: Arc::from(policy),
        }
    }

    /// Sends `req` with the gateway's timeout and a 16 MiB body limit.
    ///
    /// # Errors
    /// See [`OutboundError`]. A response with any status is `Ok`.
    pub async fn send(
        &self,
        req: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, OutboundError> {
        self.send_with(req, Call::default()).await
    }

    /// Sends `req` within `call`'s limits and reads the whole response.
    ///
    /// # Errors
    /// See [`OutboundError`]. A response with any status is `Ok`.
    pub async fn send_with(
        &self,
        req: http::Request<Bytes>,
        call: Call,
    ) -> Result<http::Response<Bytes>, OutboundError> {
        let timeout = call.timeout.unwrap_or(self.outbound.settings.timeout);
        let start = Instant::now();
        let result = match tokio::time::timeout(timeout, self.exchange(req, call)).await {
            Ok(r) => r,
            Err(_) => Err(OutboundError::Timeout(timeout)),
        };
        if let Some(m) = self.outbound.metrics.get() {
            let mut buf = [0u8; 3];
            let status = match &result {
                Ok(r) => crate::metrics::status_label(r.status().as_u16(), &mut buf),
                Err(OutboundError::Timeout(_)) => "timeout",
                Err(_) => "error",
            };
            m.outbound(&self.policy, status, start.elapsed().as_secs_f64());
        }
        result
    }

    async fn exchange(
        &self,
        req: http::Request<Bytes>,
        call: Call,
    ) -> Result<http::Response<Bytes>, OutboundError> {
        let max_body = call.max_body;
        let client = self.outbound.client()?;
        let _slot = self
            .outbound
            .permits
            .acquire()
            .await
            .map_err(|_| OutboundError::Failed("the client is closed".into()))?;
        let req =
            reqwest::Request::try_from(req).map_err(|e| OutboundError::Failed(e.to_string()))?;
        let mut resp = client.execute(req).await.map_err(describe)?;
        if !call.truncate && resp.content_length().is_some_and(|n| n > max_body as u64) {
            return Err(OutboundError::TooLarge(max_body));
        }
        let mut body = BytesMut::new();
        let mut truncated = false;
        while let Some(chunk) = resp.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > max_body {
                if !call.truncate {
                    return Err(OutboundError::TooLarge(max_body));
                }
                // keep what fits, read no further (the connection is not reused)
                body.extend_from_slice(&chunk[..max_body - body.len()]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let mut out = http::Response::new(body.freeze());
        if truncated {
            out.extensions_mut().insert(Truncated);
        }
        *out.status_mut() = resp.status();
        *out.version_mut() = resp.version();
        *out.headers_mut() = std::mem::take(resp.headers_mut());
        Ok(out)
    }
}

/// A reqwest error with its causes (reqwest's own text often leaves out the cause).
fn describe(e: reqwest::Error) -> OutboundError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    OutboundError::Failed(text)
}
