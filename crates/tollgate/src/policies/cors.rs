//! `cors`: answer CORS preflights at the gateway and label actual responses.
//!
//! # Config
//!
//! ```toml
//! [routes.api.policies.cors]
//! allow_origins = ["https://app.example.com"]   # required; "*" for any origin
//! allow_methods = ["GET", "POST"]               # default: GET, HEAD, POST, PUT, PATCH, DELETE
//! allow_headers = ["content-type", "x-api-key"] # default: none; "*" echoes what is asked
//! expose_headers = ["x-request-id"]             # default: none
//! max_age = "10m"                               # default: 5s
//! allow_credentials = false                     # default; not with "*" origins
//! ```
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
//! 204 by the gateway and never reaches the upstream; it is routed by the method it asks
//! about, so routes limited to `GET`/`POST` still get their preflights. An allowed
//! origin gets `Access-Control-Allow-*` headers; a disallowed one gets none. Actual
//! requests from an allowed origin get `Access-Control-Allow-Origin` (and
//! `-Credentials`, `-Expose-Headers`) on the final response, the gateway's own refusals
//! included (so a page can read why it was refused), replacing the upstream's;
//! `Vary: Origin` is always added to the upstream's own `Vary`.

use async_trait::async_trait;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde::Deserialize;

use crate::context::RequestCtx;
use crate::policy::{BuildCtx, BuildError, Flow, Policy, PolicyConfig, Stage};
use crate::reply::Reply;
use crate::units::ConfigDuration;

// === Config ===

/// `cors` config. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins (`https://app.example.com`), or `"*"`. Required.
    pub allow_origins: Vec<String>,
    /// Allowed methods. Default: GET, HEAD, POST, PUT, PATCH, DELETE.
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    /// Allowed request headers; `"*"` allows whatever the preflight asks. Default: none.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read. Default: none.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long browsers may cache a preflight. Default: `5s`.
    #[serde(default = "default_max_age")]
    pub max_age: ConfigDuration,
    /// Allow cookies and credentials. Default: `false`.
    #[serde(default)]
    pub allow_credentials: bool,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}

fn default_max_age() -> ConfigDuration {
    ConfigDuration::new(std::time::Duration::from_secs(5))
}

fn header_list(field: &str, items: &[String]) -> Result<Option<HeaderValue>, BuildError> {
    if items.is_empty() {
        return Ok(None);
    }
    for i in items {
        if i != "*" && HeaderName::from_bytes(i.as_bytes()).is_err() {
            return Err(BuildError::field(
                field,
                format!("invalid header name {i:?}"),
            ));
        }
    }
    HeaderValue::from_str(&items.join(", "))
        .map(Some)
        .map_err(|_| BuildError::field(field, "invalid header list"))
}

impl PolicyConfig for CorsConfig {
    type Policy = Cors;
    fn build(self, _cx: &BuildCtx<'_>) -> Result<Cors, BuildError> {
        if self.allow_origins.is_empty() {
            return Err(BuildError::field(
                "allow_origins",
                "give at least one origin, or \"*\"",
            ));
        }
        let any_origin = self.allow_origins.iter().any(|o| o == "*");
        if any_origin && self.allow_credentials {
            return Err(BuildError::field(
                "allow_credentials",
                "credentials cannot be allowed for \"*\" origins",
            ));
        }
        for o in self.allow_origins.iter().filter(|o| *o != "*") {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return Err(BuildError::field(
                    "allow_origins",
                    format!("invalid origin {o:?}: expected scheme://host[:port]"),
                ));
            }
        }
        let mut methods = Vec::new();
        for m in &self.allow_methods {
            methods.push(
                Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    BuildError::field("allow_methods", format!("invalid method {m:?}"))
                })?,
            );
        }
        let methods_value = HeaderValue::from_str(
            &methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        )
        .map_err(|_| BuildError::field("allow_methods", "invalid method list"))?;
        Ok(Cors {
            any_origin,
            origins: self
                .allow_origins
                .iter()
                .filter(|o| *o != "*")
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            any_header: self.allow_headers.iter().any(|h| h == "*"),
            headers: self
                .allow_headers
                .iter()
                .filter(|h| *h != "*")
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            headers_value: header_list("allow_headers", &self.allow_headers)?,
            expose: header_list("expose_headers", &self.expose_headers)?,
            methods,
            methods_value,
            max_age: HeaderValue::from(self.max_age.get().as_secs()),
            credentials: self.allow_credentials,
        })
    }
}

// === Policy ===

/// Answers preflights and labels responses for allowed origins.
#[derive(Debug)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    any_header: bool,
    headers: Vec<String>,
    headers_value: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    max_age: HeaderValue,
    credentials: bool,
}

/// True for a CORS preflight request.
pub fn is_preflight(req: &pingora::http::RequestHeader) -> bool {
    req.method == Method::OPTIONS
        && req.headers.contains_key(http::header::ORIGIN)
        && req
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

impl Cors {
    fn origin_allowed(&self, origin: &str) -> bool {
        self.any_origin || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// The value of `Access-Control-Allow-Origin` for `origin`.
    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    fn preflight(&self, session: &Session) -> Reply {
        use http::header as h;
        let req = session.req_header();
        let mut reply = Reply::empty(StatusCode::NO_CONTENT)
            .header(h::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = req.headers.get(h::ORIGIN) else {
            return reply;
        };
        let origin_ok = origin.to_str().is_ok_and(|o| self.origin_allowed(o));
        let method_ok = req
            .headers
            .get(h::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| self.methods.contains(&m));
        let requested = req.headers.get(h::ACCESS_CONTROL_REQUEST_HEADERS);
        let headers_ok = self.any_header
            || requested.and_then(|v| v.to_str().ok()).is_none_or(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .all(|x| self.headers.iter().any(|a| a.eq_ignore_ascii_case(x)))
            });
        if !(origin_ok && method_ok && headers_ok) {
            return reply;
        }
        reply = reply
            .header(
                h::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin_value(origin),
            )
            .header(h::ACCESS_CONTROL_ALLOW_METHODS, self.methods_value.clone())
            .header(h::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        let allow_headers = if self.any_header {
            requested.cloned()
        } else {
            self.headers_value.clone()
        };
        if let Some(v) = allow_headers {
            reply = reply.header(h::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if self.credentials {
            reply = reply.header(
                h::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        reply
    }
}

#[async_trait]
impl Policy for Cors {
    fn stage(&self) -> Stage {
        Stage::Cors
    }

    async fn request_filter(&self, session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        if is_preflight(session.req_header()) {
            return Ok(Flow::Respond(self.preflight(session)));
        }
        use http::header as h;
        if let Some(origin) = session.req_header().headers.get(h::ORIGIN) {
            if origin.to_str().is_ok_and(|o| self.origin_allowed(o)) {
                // on the final answer, the upstream's or the gateway's own refusal
                cx.set_response_header(
                    h::ACCESS_CONTROL_ALLOW_ORIGIN,
                    self.allow_origin_value(origin),
                );
                if self.credentials {
                    cx.set_response_header(
                        h::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    );
                }
                if let Some(e) = &self.expose {
                    cx.set_response_header(h::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// `Vary: Origin` goes next to the upstream's own `Vary` (appended), so it is added
    /// here rather than set with the allow headers in `request_filter`.
    fn response_filter(&self, _cx: &mut RequestCtx, resp: &mut ResponseHeader) -> Result<()> {
        use http::header as h;
        if resp.status == StatusCode::NO_CONTENT
            && resp.headers.contains_key(h::ACCESS_CONTROL_ALLOW_METHODS)
        {
            return Ok(()); // our own preflight answer
        }
        resp.append_header(h::VARY, "Origin")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(src: &str) -> Result<Cors, BuildError> {
        let cx = BuildCtx::new(std::path::Path::new("."), "p");
        toml::from_str::<CorsConfig>(src).unwrap().build(&cx)
    }

    #[test]
    fn config_checks() {
        assert!(build("allow_origins = []").is_err());
        let e = build("allow_origins = [\"*\"]\nallow_credentials = true").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("allow_credentials"));
        assert!(build("allow_origins = [\"app.example.com\"]").is_err());
        assert!(
            build("allow_origins = [\"https://a.example\"]\nallow_headers = [\"bad header\"]")
                .is_err()
        );
        let c = build("allow_origins = [\"https://A.example\"]").unwrap();
        assert!(c.origin_allowed("https://a.example"));
        assert!(!c.origin_allowed("https://evil.example"));
    }
}
