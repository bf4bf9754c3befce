//! A policy that asks another service whether a request may pass, with the gateway's
//! HTTP client (pooled, bounded, timed, counted in `tollgate_outbound_*`).
//!
//! ```toml
//! [server.outbound]
//! timeout = "2s"                       # the longest any policy's call may take
//!
//! [routes.orders.policies.authorize]
//! url = "http://authz.internal/check"  # required: answers 2xx to allow
//! timeout = "300ms"                    # default 1s
//! ca_file = "certs/authz-ca.pem"       # optional: the only roots trusted for this service
//! ```
//!
//! The service gets `POST url` with `{"method", "path", "authorization"}` as JSON. A 2xx
//! answer lets the request pass, with the answer's `x-user` header sent upstream; a
//! 401 or 403 is relayed as the gateway's 403 `forbidden`; anything else, no answer in
//! time or no connection at all is 503 `authorizer_unavailable`: an authorizer that
//! cannot be asked never lets a request through.
//!
//! ```sh
//! cargo run -p tollgate-bin --example authorize -- gateway.toml
//! ```

use std::process::ExitCode;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use tollgate::bytes::Bytes;
use tollgate::pingora::http::RequestHeader;
use tollgate::policy::{BuildCtx, BuildError, Call, Flow, HttpClient, Policy, PolicyConfig};
use tollgate::units::ConfigDuration;
use tollgate::{async_trait, ErrorCode, GatewayBuilder, Reply, RequestCtx, Session};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizeConfig {
    url: String,
    timeout: Option<ConfigDuration>,
    ca_file: Option<String>,
}

struct Authorize {
    url: http::Uri,
    timeout: Duration,
    client: HttpClient,
    unavailable: ErrorCode,
}

/// The user the service named, for the upstream request.
#[derive(Clone)]
struct User(HeaderValue);

static X_USER: HeaderName = HeaderName::from_static("x-user");

impl PolicyConfig for AuthorizeConfig {
    type Policy = Authorize;

    fn build(self, cx: &BuildCtx<'_>) -> Result<Authorize, BuildError> {
        let url: http::Uri = self
            .url
            .parse()
            .map_err(|e| BuildError::field("url", format!("{:?} is not a URL: {e}", self.url)))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(BuildError::field(
                "url",
                "an http:// or https:// URL with a host",
            ));
        }
        Ok(Authorize {
            url,
            timeout: self.timeout.map_or(Duration::from_secs(1), |t| t.get()),
            client: match &self.ca_file {
                Some(path) => cx.http_client_with_ca("ca_file", path)?,
                None => cx.http_client(),
            },
            unavailable: ErrorCode::custom(503, "authorizer_unavailable")
                .map_err(|e| BuildError::new(e.to_string()))?,
        })
    }
}

#[async_trait]
impl Policy for Authorize {
    async fn request_filter(
        &self,
        session: &mut Session,
        cx: &mut RequestCtx,
    ) -> tollgate::pingora::Result<Flow> {
        let req = session.req_header();
        let question = serde_json::json!({
            "method": req.method.as_str(),
            "path": cx.path,
            "authorization": req.headers.get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        });
        let call = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Bytes::from(question.to_string()));
        let Ok(call) = call else {
            return Ok(Flow::Respond(Reply::refuse(ErrorCode::InternalError)));
        };
        let answer = self
            .client
            .send_with(
                call,
                Call::default().timeout(self.timeout).max_body(64 << 10),
            )
            .await;
        match answer {
            Ok(r) if r.status().is_success() => {
                if let Some(u) = r.headers().get(&X_USER) {
                    cx.extensions.insert(User(u.clone()));
                }
                Ok(Flow::Continue)
            }
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => Ok(Flow::Respond(
                Reply::refuse_with(ErrorCode::Forbidden, "the authorization service said no"),
            )),
            Ok(r) => Ok(Flow::Respond(Reply::refuse_with(
                self.unavailable,
                format!("the authorization service answered {}", r.status().as_u16()),
            ))),
            Err(e) => Ok(Flow::Respond(
                Reply::refuse_with(self.unavailable, format!("the authorization service: {e}"))
                    .header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
            )),
        }
    }

    fn upstream_request_filter(
        &self,
        cx: &mut RequestCtx,
        req: &mut RequestHeader,
    ) -> tollgate::pingora::Result<()> {
        // only the service names the user: a client's own `x-user` never passes
        req.remove_header(&X_USER);
        if let Some(User(u)) = cx.extensions.get::<User>() {
            req.insert_header(X_USER.clone(), u.clone())?;
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: authorize CONFIG.toml");
        return ExitCode::from(2);
    };
    let gateway = match GatewayBuilder::new()
        .policy::<AuthorizeConfig>("authorize")
        .build_from_file(&path)
    {
        Ok(gateway) => gateway,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let mut server = gateway.pingora_server(false);
    gateway.add_to(&mut server);
    gateway.run(server);
    ExitCode::SUCCESS
}
