//! `key_auth`: authenticate a consumer by API key, from a header or a query parameter.
//!
//! # Config
//!
//! ```toml
//! [routes.orders.policies.key_auth]
//! header = "apikey"          # default
//! query = "apikey"           # default; "" turns query keys off
//! hide_credentials = true    # default: the key is not forwarded upstream
//! ```
//!
//! A request without a key, or with a key no consumer has, gets 401 `unauthorized`
//! with `WWW-Authenticate: Key`. Keys are looked up by digest and compared in constant
//! time (see [`crate::Consumers::by_api_key`]). The key is never logged or echoed.

use std::borrow::Cow;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde::Deserialize;

use crate::context::RequestCtx;
use crate::policy::{BuildCtx, BuildError, Flow, Policy, PolicyConfig, Stage};
use crate::reply::{ErrorCode, Reply};

// === Config ===

/// `key_auth` config. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAuthConfig {
    /// Request header carrying the key. Default: `apikey`.
    #[serde(default = "default_name")]
    pub header: String,
    /// Query parameter carrying the key; empty to disable. Default: `apikey`.
    #[serde(default = "default_name")]
    pub query: String,
    /// Remove the key before forwarding. Default: `true`.
    #[serde(default = "crate::policies::default_true")]
    pub hide_credentials: bool,
}

fn default_name() -> String {
    "apikey".into()
}

impl Default for KeyAuthConfig {
    fn default() -> Self {
        Self {
            header: default_name(),
            query: default_name(),
            hide_credentials: true,
        }
    }
}

impl PolicyConfig for KeyAuthConfig {
    type Policy = KeyAuth;
    fn build(self, _cx: &BuildCtx<'_>) -> Result<KeyAuth, BuildError> {
        let header = HeaderName::from_bytes(self.header.as_bytes()).map_err(|_| {
            BuildError::field("header", format!("invalid header name {:?}", self.header))
        })?;
        Ok(KeyAuth {
            header,
            query: self.query,
            hide: self.hide_credentials,
        })
    }
}

// === Policy ===

/// Authenticates by API key.
#[derive(Debug)]
pub struct KeyAuth {
    header: HeaderName,
    query: String,
    hide: bool,
}

fn challenge(message: &str) -> Flow {
    Flow::Respond(Reply::refuse_with(ErrorCode::Unauthorized, message).header(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Key"),
    ))
}

/// The value of query parameter `name`, percent-decoded.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Removes query parameter `name` from the request target.
pub(crate) fn remove_query_param(req: &mut RequestHeader, name: &str) {
    let Some(q) = req.uri.query() else { return };
    let kept = crate::policy::identity::without_query_parameters(q, &[name.to_string()]);
    let mut target = req.uri.path().to_string();
    if !kept.is_empty() {
        target.push('?');
        target.push_str(&kept);
    }
    if let Ok(uri) = target.parse() {
        req.set_uri(uri);
    }
}

#[async_trait]
impl Policy for KeyAuth {
    fn stage(&self) -> Stage {
        Stage::Authentication
    }

    async fn request_filter(&self, session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        let req = session.req_header();
        // the key is hidden from authorization services too (CROSSCUTTING.md 9.4)
        if self.hide
            && !self.query.is_empty()
            && req
                .uri
                .query()
                .is_some_and(|q| q.contains(self.query.as_str()))
        {
            cx.hide_query_parameter(&self.query);
        }
        let key = match req.headers.get(&self.header) {
            Some(v) => Cow::Borrowed(v.as_bytes()),
            None => match query_param(req.uri.query(), &self.query) {
                Some(q) => Cow::Owned(q.into_bytes()),
                None => Cow::Borrowed(&b""[..]),
            },
        };
        if key.is_empty() {
            return Ok(challenge("missing API key"));
        }
        match cx.consumers().by_api_key(&key) {
            Some(c) => {
                cx.consumer = Some(c.clone());
                Ok(Flow::Continue)
            }
            None => Ok(challenge("invalid API key")),
        }
    }

    fn upstream_request_filter(&self, _cx: &mut RequestCtx, req: &mut RequestHeader) -> Result<()> {
        if self.hide {
            req.remove_header(&self.header);
            if !self.query.is_empty() {
                remove_query_param(req, &self.query);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_example_parses_with_defaults() {
        let c: KeyAuthConfig = toml::from_str("").unwrap();
        assert_eq!(c, KeyAuthConfig::default());
        let c: KeyAuthConfig =
            toml::from_str("header = \"x-api-key\"\nquery = \"\"\nhide_credentials = false")
                .unwrap();
        assert_eq!(c.header, "x-api-key");
        assert!(toml::from_str::<KeyAuthConfig>("heder = \"x\"").is_err());
    }

    #[test]
    fn query_params_are_found_decoded_and_removed() {
        assert_eq!(
            query_param(Some("a=1&apikey=k%2B1"), "apikey").as_deref(),
            Some("k+1")
        );
        assert_eq!(query_param(Some("a=1"), "apikey"), None);
        assert_eq!(query_param(Some("apikey=k"), ""), None);
        let mut req = RequestHeader::build("GET", b"/x?a=1&apikey=secret&b=2", None).unwrap();
        remove_query_param(&mut req, "apikey");
        assert_eq!(req.uri.to_string(), "/x?a=1&b=2");
        let mut req = RequestHeader::build("GET", b"/x?apikey=secret", None).unwrap();
        remove_query_param(&mut req, "apikey");
        assert_eq!(req.uri.to_string(), "/x");
        let mut req = RequestHeader::build("GET", b"/x?api%6Bey=secret&c=3", None).unwrap();
        remove_query_param(&mut req, "apikey");
        assert_eq!(req.uri.to_string(), "/x?c=3");
    }

    #[test]
    fn invalid_header_name_is_a_build_error() {
        let cx = BuildCtx::new(std::path::Path::new("."), "p");
        let e = KeyAuthConfig {
            header: "bad header".into(),
            ..Default::default()
        }
        .build(&cx)
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("header"));
    }
}
