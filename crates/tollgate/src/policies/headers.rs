//! `request_headers` and `response_headers`: set, add and remove headers.
//!
//! # Config
//!
//! ```toml
//! [routes.orders.policies.request_headers]
//! set = { "x-env" = "prod" }          # replaces any value the client sent
//! add = { "x-via" = "tollgate" }      # appends a value
//! remove = ["x-debug"]
//!
//! [routes.orders.policies.response_headers]
//! set = { "cache-control" = "no-store" }
//! remove = ["server"]
//! ```
//!
//! `request_headers` edits the request sent upstream; `response_headers` edits every
//! response sent to the client on the route, including the gateway's own refusals.
//! Removal runs first, then `set`, then `add`. Names and values are checked at load.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;
use serde::Deserialize;

use crate::context::RequestCtx;
use crate::forwarding;
use crate::policy::{BuildCtx, BuildError, Policy, PolicyConfig, Stage};

// === Config ===

/// The table of `request_headers` and `response_headers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    /// Headers to set, replacing any existing value. Default: none.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers to append. Default: none.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Header names to remove. Default: none.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `request_headers` config. See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RequestHeadersConfig(pub HeadersConfig);

/// `response_headers` config. See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ResponseHeadersConfig(pub HeadersConfig);

impl HeadersConfig {
    fn compile(self) -> Result<HeaderEdit, BuildError> {
        let name = |section: &str, n: &str| {
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| BuildError::field(section, format!("invalid header name {n:?}")))
        };
        let pairs = |section: &str, m: BTreeMap<String, String>| {
            m.into_iter()
                .map(|(k, v)| {
                    let value = HeaderValue::from_str(&v).map_err(|_| {
                        BuildError::field(section, format!("invalid value for header {k:?}"))
                    })?;
                    Ok((name(section, &k)?, value))
                })
                .collect::<Result<Vec<_>, BuildError>>()
        };
        Ok(HeaderEdit {
            remove: self
                .remove
                .iter()
                .map(|n| name("remove", n))
                .collect::<Result<_, _>>()?,
            set: pairs("set", self.set)?,
            add: pairs("add", self.add)?,
        })
    }
}

impl PolicyConfig for RequestHeadersConfig {
    type Policy = RequestHeaders;
    fn build(self, _cx: &BuildCtx<'_>) -> Result<RequestHeaders, BuildError> {
        Ok(RequestHeaders(self.0.compile()?))
    }
}

impl PolicyConfig for ResponseHeadersConfig {
    type Policy = ResponseHeaders;
    fn build(self, _cx: &BuildCtx<'_>) -> Result<ResponseHeaders, BuildError> {
        Ok(ResponseHeaders(self.0.compile()?))
    }
}

// === Policy ===

/// A compiled set of header edits.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdit {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdit {
    /// The edits on a plain header map.
    fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }

    fn added(&self) -> usize {
        self.set.len() + self.add.len()
    }

    // One edit of the plain map, names as parsed at load. A message that kept its
    // names' case loses it here, as on every other edit the gateway makes (header
    // names go out in lower case both ways; docs/config.md, "Always on").
    fn apply_request(&self, req: &mut RequestHeader) -> Result<()> {
        forwarding::edit_headers(req, self.added(), |h| self.apply(h))
    }

    fn apply_response(&self, resp: &mut ResponseHeader) -> Result<()> {
        forwarding::edit_response_headers(resp, self.added(), |h| self.apply(h))
    }
}

/// Edits the request sent upstream.
#[derive(Debug)]
pub struct RequestHeaders(HeaderEdit);

impl Policy for RequestHeaders {
    fn stage(&self) -> Stage {
        Stage::Transform
    }
    fn upstream_request_filter(&self, _cx: &mut RequestCtx, req: &mut RequestHeader) -> Result<()> {
        self.0.apply_request(req)
    }
}

/// Edits the response sent to the client.
#[derive(Debug)]
pub struct ResponseHeaders(HeaderEdit);

impl Policy for ResponseHeaders {
    fn stage(&self) -> Stage {
        Stage::Transform
    }
    fn response_filter(&self, _cx: &mut RequestCtx, resp: &mut ResponseHeader) -> Result<()> {
        self.0.apply_response(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(src: &str) -> HeadersConfig {
        toml::from_str(src).unwrap()
    }

    #[test]
    fn edits_apply_remove_then_set_then_add() {
        let edit = config(
            "set = { x-env = \"prod\" }\nadd = { x-via = \"tollgate\" }\nremove = [\"x-debug\", \"x-env\"]",
        )
        .compile()
        .unwrap();
        // with and without a case-preserving name map to begin with
        for with_case in [true, false] {
            let mut req = if with_case {
                RequestHeader::build("GET", b"/a?b", None).unwrap()
            } else {
                RequestHeader::build_no_case("GET", b"/a?b", None).unwrap()
            };
            assert_eq!(req.has_case(), with_case);
            req.insert_header("x-debug", "1").unwrap();
            req.insert_header("x-env", "dev").unwrap();
            req.insert_header("x-via", "client").unwrap();
            edit.apply_request(&mut req).unwrap();
            assert!(req.headers.get("x-debug").is_none());
            assert_eq!(
                req.headers.get_all("x-env").iter().collect::<Vec<_>>(),
                ["prod"]
            );
            assert_eq!(
                req.headers.get_all("x-via").iter().collect::<Vec<_>>(),
                ["client", "tollgate"]
            );
            assert_eq!(req.uri, "/a?b", "the request target is kept");
            let mut wire = Vec::new();
            req.header_to_h1_wire(&mut wire);
            let wire = String::from_utf8(wire).unwrap().to_ascii_lowercase();
            assert!(wire.contains("x-env: prod\r\n"), "{wire}");
            assert!(!wire.contains("x-debug"), "{wire}");

            let mut resp = if with_case {
                ResponseHeader::build(200, None).unwrap()
            } else {
                ResponseHeader::build_no_case(200, None).unwrap()
            };
            resp.insert_header("x-debug", "1").unwrap();
            resp.insert_header("x-via", "upstream").unwrap();
            edit.apply_response(&mut resp).unwrap();
            assert!(resp.headers.get("x-debug").is_none());
            assert_eq!(resp.headers["x-env"], "prod");
            assert_eq!(
                resp.headers.get_all("x-via").iter().collect::<Vec<_>>(),
                ["upstream", "tollgate"]
            );
        }
    }

    #[test]
    fn invalid_names_and_values_are_build_errors() {
        let e = config("set = { \"bad name\" = \"x\" }")
            .compile()
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("set"));
        let e = config("add = { ok = \"bad\\nvalue\" }")
            .compile()
            .unwrap_err();
        assert!(e.message.contains("invalid value"), "{e}");
    }

    #[test]
    fn rejects_unknown_field() {
        let e = toml::from_str::<HeadersConfig>("sett = {}").unwrap_err();
        assert!(e.message().contains("unknown field `sett`"), "{e}");
    }

    #[test]
    fn config_example_parses() {
        let doc: toml::Table = toml::from_str(
            r#"
[routes.orders.policies.request_headers]
set = { "x-env" = "prod" }
add = { "x-via" = "tollgate" }
remove = ["x-debug"]
"#,
        )
        .unwrap();
        let t = &doc["routes"]["orders"]["policies"]["request_headers"];
        let c: HeadersConfig = t.clone().try_into().unwrap();
        assert_eq!(c.remove, ["x-debug"]);
        c.compile().unwrap();
    }
}
