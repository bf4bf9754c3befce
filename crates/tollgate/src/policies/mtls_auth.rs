//! `mtls_auth`: authenticate a consumer by the verified client certificate of the
//! connection (identity.md §3.6).
//!
//! # Config
//!
//! ```toml
//! [routes.internal.policies.mtls_auth]
//! anonymous = "partners"      # optional: a verified certificate matching no consumer
//! cert_headers = { subject = "x-client-cert-subject", san = "x-client-cert-san", sha256 = "x-client-cert-sha256" }
//! ```
//!
//! A consumer matches with `mtls = { san = "…" }` (a DNS, URI or email SAN of the
//! certificate; DNS names compared ASCII case-insensitively) or `mtls = { cn = "…" }`
//! (the subject's one Common Name). Exactly one matching consumer authenticates; none
//! is `anonymous` when set, else 401; several is 401 and a warning. The 401 carries no
//! `WWW-Authenticate`. `cert_headers` (the default above; `{}` sends none) forward the
//! certificate's subject (RFC 4514), SANs and SHA-256; they are identity headers.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::proxy::Session;
use pingora::Result;
use serde::Deserialize;

use crate::policy::identity;
use crate::policy::{
    BuildCtx, BuildError, CertMatch, ClientCertificate, CounterVec, Flow, Policy, PolicyConfig,
    Reply, RequestCtx, Stage,
};
use crate::reply::ErrorCode;

/// `mtls_auth` config. See the [module docs](self).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsAuthConfig {
    /// The consumer a verified certificate that names no consumer authenticates as.
    pub anonymous: Option<String>,
    /// Certificate facts sent upstream: `subject`, `san`, `sha256` → header name.
    pub cert_headers: Option<BTreeMap<String, String>>,
}

/// The default `cert_headers`.
const DEFAULT_HEADERS: [(&str, &str); 3] = [
    ("san", "x-client-cert-san"),
    ("sha256", "x-client-cert-sha256"),
    ("subject", "x-client-cert-subject"),
];

/// A certificate fact sent as a header.
#[derive(Debug, Clone, Copy)]
enum Fact {
    Subject,
    San,
    Sha256,
}

impl PolicyConfig for MtlsAuthConfig {
    type Policy = MtlsAuth;

    fn build(self, cx: &BuildCtx<'_>) -> Result<MtlsAuth, BuildError> {
        if !cx.client_certificates_asked() {
            return Err(BuildError::new(
                "no [[server.tls]] listener has client_ca: no request could carry a client certificate",
            ));
        }
        let table: BTreeMap<String, String> = match self.cert_headers {
            Some(t) => t,
            None => DEFAULT_HEADERS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut headers = Vec::new();
        for (key, name) in &table {
            let at = format!("cert_headers.{key}");
            let fact = match key.as_str() {
                "subject" => Fact::Subject,
                "san" => Fact::San,
                "sha256" => Fact::Sha256,
                other => {
                    return Err(BuildError::field(
                        at,
                        format!("unknown key {other:?} (expected subject, san or sha256)"),
                    ))
                }
            };
            let name = identity::header_name(name).map_err(|e| BuildError::field(&at, e))?;
            if headers.iter().any(|(_, n)| *n == name) {
                return Err(BuildError::field(
                    at,
                    format!("header {name} is used twice"),
                ));
            }
            headers.push((fact, name));
        }
        let anonymous = match &self.anonymous {
            Some(a) => Some(cx.consumer("anonymous", a)?),
            None => None,
        };
        Ok(MtlsAuth {
            anonymous,
            headers,
            results: cx.metrics().counter(
                "tollgate_mtls_auth_total",
                "mtls_auth decisions, by route and result.",
                &["route", "result"],
            ),
            route: cx.instance_route().to_string(),
        })
    }
}

/// Authenticates by the connection's verified client certificate.
pub struct MtlsAuth {
    anonymous: Option<Arc<str>>,
    headers: Vec<(Fact, HeaderName)>,
    results: CounterVec,
    route: String,
}

impl std::fmt::Debug for MtlsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsAuth")
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

impl MtlsAuth {
    fn set_headers(&self, cert: &ClientCertificate, cx: &mut RequestCtx) {
        for (fact, name) in &self.headers {
            let value = match fact {
                Fact::Subject => cert.subject.clone(),
                Fact::San => cert.san_list(),
                Fact::Sha256 => cert.sha256.clone(),
            };
            if value.len() <= identity::MAX_IDENTITY_VALUE {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    cx.set_identity_header(name.clone(), v);
                }
            }
        }
    }

    fn count(&self, cx: &RequestCtx, result: &str) {
        let route = cx.route_name().unwrap_or(&self.route);
        self.results.inc(&[route, result]);
    }
}

fn refuse(message: &str) -> Flow {
    Flow::Respond(Reply::refuse_with(ErrorCode::Unauthorized, message))
}

#[async_trait]
impl Policy for MtlsAuth {
    fn stage(&self) -> Stage {
        Stage::Authentication
    }

    async fn request_filter(&self, _session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        let Some(cert) = cx.client_certificate().cloned() else {
            self.count(cx, "no_certificate");
            return Ok(refuse("no verified client certificate"));
        };
        self.set_headers(&cert, cx);
        match cx.consumers().by_certificate(&cert) {
            CertMatch::One(c) => {
                cx.consumer = Some(c);
                self.count(cx, "ok");
                Ok(Flow::Continue)
            }
            CertMatch::Several => {
                tracing::warn!(
                    "mtls_auth: the client certificate {} matches several consumers",
                    cert.sha256
                );
                self.count(cx, "unknown_certificate");
                Ok(refuse("the client certificate names several consumers"))
            }
            CertMatch::None => {
                match self
                    .anonymous
                    .as_deref()
                    .and_then(|a| cx.consumers().get(a))
                {
                    Some(c) => {
                        cx.offer_anonymous(c.clone());
                        self.count(cx, "anonymous");
                    }
                    None => self.count(cx, "unknown_certificate"),
                }
                Ok(refuse("the client certificate names no consumer"))
            }
        }
    }

    fn identity_headers(&self) -> Vec<HeaderName> {
        self.headers.iter().map(|(_, n)| n.clone()).collect()
    }
}
