//! `xml_json`: XML request bodies to JSON for the upstream, JSON responses to XML for
//! clients that prefer it (`transform.md` §3.7).
//!
//! # Config
//!
//! ```toml
//! [routes.legacy.policies.xml_json]
//! request = true       # XML request bodies -> JSON for the upstream
//! response = true      # JSON responses -> XML when the client prefers XML
//! root = "response"    # the element that wraps a converted response
//! max_body = "1MiB"    # at most "64MiB"
//! max_depth = 64       # 1..=128; element / JSON nesting limit
//! ```
//!
//! XML is read by [`crate::xml`]: no document type declaration, no entity but the five
//! predefined ones, UTF-8 only. A response that turns out not convertible after its
//! head was sent is aborted, never sent as a complete-looking document.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use serde::Deserialize;

use super::default_true;
use super::json_body::{max_body_of, max_depth_of};
use crate::context::RequestCtx;
use crate::media::MediaType;
use crate::policy::{
    body_length_changes, BodyBuffer, BuildCtx, BuildError, CounterVec, Flow, Hold, Policy,
    PolicyConfig, Stage,
};
use crate::reply::{ErrorCode, Reply};
use crate::units::ConfigSize;

/// `xml_json` config. See the [module docs](self).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XmlJsonConfig {
    /// Convert XML request bodies to JSON (default true).
    #[serde(default = "default_true")]
    pub request: bool,
    /// Convert JSON responses to XML for clients that prefer it (default true).
    #[serde(default = "default_true")]
    pub response: bool,
    /// The element that wraps a converted response (default `response`).
    pub root: Option<String>,
    /// Largest body converted (default `"1MiB"`).
    pub max_body: Option<ConfigSize>,
    /// Nesting limit (default 64).
    pub max_depth: Option<i64>,
}

impl PolicyConfig for XmlJsonConfig {
    type Policy = XmlJson;

    fn build(self, cx: &BuildCtx<'_>) -> Result<XmlJson, BuildError> {
        let mut errors = Vec::new();
        if !self.request && !self.response {
            errors.push(BuildError::new(
                "request and response are both false: xml_json would do nothing",
            ));
        }
        let root = self.root.unwrap_or_else(|| "response".into());
        let valid_root = root.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && root
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid_root {
            errors.push(BuildError::field(
                "root",
                format!("root {root:?} is not an element name ([A-Za-z_][A-Za-z0-9._-]*)"),
            ));
        }
        let max_body = max_body_of(self.max_body, &mut errors);
        let max_depth = max_depth_of(self.max_depth, &mut errors);
        BuildError::all(errors)?;
        Ok(XmlJson {
            request: self.request,
            response: self.response,
            root,
            max_body,
            max_depth,
            counts: cx.metrics().counter(
                "tollgate_xml_conversions_total",
                "Bodies converted by xml_json, by direction and outcome",
                &["route", "direction", "outcome"],
            ),
        })
    }
}

/// Converts between XML clients and JSON upstreams.
#[derive(Debug)]
pub struct XmlJson {
    request: bool,
    response: bool,
    root: String,
    max_body: usize,
    max_depth: usize,
    counts: CounterVec,
}

/// This request's body is XML to convert.
#[derive(Debug, Clone, Copy)]
struct XmlBody;

/// The request body was converted: the upstream gets JSON.
#[derive(Debug, Clone, Copy)]
struct Converted;

/// The client prefers this XML type: the response is asked for as JSON and converted.
#[derive(Debug, Clone, Copy)]
struct PrefersXml(&'static str);

/// A JSON response being collected for conversion ([`RequestCtx::keep`]).
#[derive(Debug)]
struct Collecting(BodyBuffer);

/// The XML media types a request body is converted from.
fn is_xml(m: &MediaType) -> bool {
    m.essence == "application/xml"
        || m.essence == "text/xml"
        || (m.essence.starts_with("application/") && m.essence.ends_with("+xml"))
}

/// The XML type the client prefers over JSON by its `Accept` (`transform.md` §3.7), if it
/// does.
pub(crate) fn prefers_xml(headers: &http::HeaderMap) -> Option<&'static str> {
    let mut best: Option<(u16, &'static str)> = None;
    for v in headers.get_all(http::header::ACCEPT) {
        let Ok(v) = v.to_str() else { continue };
        for entry in v.split(',') {
            let mut parts = entry.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let kind: &'static str = match media.as_str() {
                "application/xml" => "application/xml",
                "text/xml" => "text/xml",
                "application/json" => "application/json",
                _ => continue,
            };
            let mut q = Some(1000);
            for p in parts {
                if let Some((n, val)) = p.split_once('=') {
                    if n.trim().eq_ignore_ascii_case("q") {
                        q = qvalue(val.trim());
                    }
                }
            }
            let Some(q) = q.filter(|&q| q > 0) else {
                continue;
            };
            if best.is_none_or(|(b, _)| q > b) {
                best = Some((q, kind));
            }
        }
    }
    best.map(|(_, k)| k).filter(|k| *k != "application/json")
}

/// A weight in thousandths (`0`, `0.5`, `1.000`); `None` when malformed.
fn qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_n: u16 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(frac_n),
        "1" if frac_n == 0 => Some(1000),
        _ => None,
    }
}

impl XmlJson {
    fn count(&self, cx: &mut RequestCtx, direction: &'static str, outcome: &'static str) {
        let route = cx.route_name().unwrap_or_default().to_string();
        self.counts.inc(&[&route, direction, outcome]);
        let field = if direction == "request" {
            "xml_request"
        } else {
            "xml_response"
        };
        cx.set_log_field(field, outcome);
    }

    /// Ends a conversion that can no longer be correct: the response is aborted.
    fn abort<T>(&self, cx: &mut RequestCtx, outcome: &'static str, why: &str) -> Result<T> {
        self.count(cx, "response", outcome);
        cx.set_log_field("error", "response_aborted");
        tracing::warn!(
            "xml_json: route {}: request {}: {why}; the response is aborted",
            cx.route_name().unwrap_or_default(),
            cx.request_id
        );
        Error::e_explain(ErrorType::InternalError, "xml_json: conversion aborted")
    }

    /// The XML for the whole JSON body.
    fn convert(&self, cx: &mut RequestCtx, json: &[u8]) -> Result<Bytes> {
        let doc = match crate::json::parse(json, self.max_depth) {
            Ok(doc) => doc,
            Err(_) => return self.abort(cx, "invalid", "the response is not valid JSON"),
        };
        match crate::xml::from_json(&doc, &self.root, self.max_body.saturating_mul(4)) {
            Ok(xml) => {
                // the output is held too (body_buffer_total counts bytes held)
                if BodyBuffer::start(cx, Some(xml.len()), xml.len()).is_err() {
                    return self.abort(cx, "too_large", "no room for the XML in the body buffers");
                }
                self.count(cx, "response", "converted");
                Ok(Bytes::from(xml))
            }
            Err(_) => self.abort(cx, "too_large", "the XML would be over 4 times max_body"),
        }
    }
}

#[async_trait]
impl Policy for XmlJson {
    fn stage(&self) -> Stage {
        Stage::Body
    }

    fn request_body_limit(&self) -> Option<usize> {
        self.request.then_some(self.max_body)
    }

    async fn request_filter(&self, session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        let req = session.req_header();
        if self.response && req.method != http::Method::HEAD {
            if let Some(kind) = prefers_xml(&req.headers) {
                cx.extensions.insert(PrefersXml(kind));
                // the whole document, never a range of it (CROSSCUTTING.md rule 10.3)
                let req = session.req_header_mut();
                req.remove_header(&http::header::RANGE);
                req.remove_header(&http::header::IF_RANGE);
            }
        }
        if !self.request || session.is_body_empty() {
            return Ok(Flow::Continue);
        }
        let req = session.req_header();
        let Some(media) = MediaType::of(&req.headers).filter(is_xml) else {
            return Ok(Flow::Continue);
        };
        if !crate::media::identity_encoding(&req.headers) {
            return Ok(Flow::Continue);
        }
        if !media.is_utf8() {
            self.count(cx, "request", "invalid");
            return Ok(Flow::Respond(Reply::refuse_with(
                ErrorCode::BadRequest,
                crate::xml::XmlError::NotUtf8.to_string(),
            )));
        }
        if let Some(r) = super::json_body::declared_over(&req.headers, self.max_body) {
            self.count(cx, "request", "too_large");
            return Ok(Flow::Respond(r));
        }
        cx.extensions.insert(XmlBody);
        Ok(Flow::Continue)
    }

    fn wants_request_body(&self, _session: &Session, cx: &RequestCtx) -> bool {
        cx.extensions.get::<XmlBody>().is_some()
    }

    async fn request_body(
        &self,
        session: &mut Session,
        cx: &mut RequestCtx,
        body: &mut Bytes,
    ) -> Result<Flow> {
        if body.is_empty() {
            return Ok(Flow::Continue);
        }
        match crate::xml::to_json(body, self.max_depth) {
            Ok(doc) => {
                *body = Bytes::from(doc.write());
                // the later body policies (validate, request_body) see JSON (§3.1)
                let req = session.req_header_mut();
                req.insert_header(http::header::CONTENT_TYPE, "application/json")?;
                for gone in ["content-md5", "digest"] {
                    req.remove_header(gone);
                }
                cx.extensions.insert(Converted);
                self.count(cx, "request", "converted");
                Ok(Flow::Continue)
            }
            Err(e) => {
                self.count(cx, "request", "invalid");
                Ok(Flow::Respond(Reply::refuse_with(
                    ErrorCode::BadRequest,
                    e.to_string(),
                )))
            }
        }
    }

    fn upstream_request_filter(&self, cx: &mut RequestCtx, req: &mut RequestHeader) -> Result<()> {
        if cx.extensions.get::<PrefersXml>().is_some() {
            // CROSSCUTTING.md rules 9.6 and 10.3: JSON, whole, unencoded
            req.insert_header(http::header::ACCEPT, "application/json")?;
            req.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
        }
        Ok(())
    }

    fn response_filter(&self, cx: &mut RequestCtx, resp: &mut ResponseHeader) -> Result<()> {
        if cx.refusal().is_some() {
            // the gateway's own answers are never converted
            return Ok(());
        }
        if self.response {
            let listed = crate::forwarding::list_tokens(&resp.headers, &http::header::VARY)
                .any(|v| v == "*" || v.eq_ignore_ascii_case("accept"));
            if !listed {
                resp.append_header(http::header::VARY, "Accept")?;
            }
        }
        let Some(PrefersXml(kind)) = cx.extensions.get::<PrefersXml>().copied() else {
            return Ok(());
        };
        let s = resp.status.as_u16();
        if resp.status.is_informational() || matches!(s, 204 | 206 | 304) {
            return Ok(());
        }
        let json = MediaType::of(&resp.headers).is_some_and(|m| m.is_utf8() && m.is_json());
        if !json {
            return Ok(());
        }
        if !crate::media::identity_encoding(&resp.headers) {
            self.count(cx, "response", "encoding");
            return Ok(());
        }
        let declared = crate::media::content_length(&resp.headers);
        let Ok(buf) = BodyBuffer::start(cx, declared, self.max_body) else {
            // over max_body (or no room): forwarded as JSON, untouched
            self.count(cx, "response", "too_large");
            return Ok(());
        };
        body_length_changes(resp)?;
        resp.insert_header(http::header::CONTENT_TYPE, format!("{kind}; charset=utf-8"))?;
        for gone in ["etag", "content-md5", "digest"] {
            resp.remove_header(gone);
        }
        cx.keep(Collecting(buf));
        Ok(())
    }

    fn response_body_filter(
        &self,
        cx: &mut RequestCtx,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<()> {
        let pushed = cx.kept(|c: &mut Collecting| body.take().map(|piece| c.0.push(&piece)));
        let Some(pushed) = pushed else {
            return Ok(());
        };
        if let Some(Hold::Release(..)) = pushed {
            cx.unkeep::<Collecting>();
            return self.abort(cx, "too_large", "the JSON is larger than max_body");
        }
        if end_of_stream {
            if let Some(Collecting(mut buf)) = cx.unkeep::<Collecting>() {
                let json = buf.take();
                *body = Some(self.convert(cx, &json)?);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefers(accept: &[&str]) -> Option<&'static str> {
        let mut h = http::HeaderMap::new();
        for a in accept {
            h.append(http::header::ACCEPT, a.parse().unwrap());
        }
        prefers_xml(&h)
    }

    #[test]
    fn accept_decides_by_weight_then_order() {
        assert_eq!(prefers(&["application/xml"]), Some("application/xml"));
        assert_eq!(
            prefers(&["Text/XML, application/json"]),
            Some("text/xml"),
            "a tie: first written"
        );
        assert_eq!(prefers(&["application/json, text/xml"]), None);
        assert_eq!(
            prefers(&["application/json;q=0.5, application/xml;q=0.6"]),
            Some("application/xml")
        );
        assert_eq!(
            prefers(&["*/*, application/xml;q=0.1"]),
            Some("application/xml"),
            "wildcards are ignored"
        );
        assert_eq!(prefers(&["application/xml;q=0"]), None, "q=0 never wins");
        assert_eq!(
            prefers(&["application/xml;q=2, application/json;q=0.1"]),
            None,
            "an invalid q drops its entry"
        );
        assert_eq!(
            prefers(&["application/json;q=0.9", "text/xml"]),
            Some("text/xml"),
            "every line counts"
        );
        assert_eq!(prefers(&[]), None);
    }

    #[test]
    fn every_error_is_reported() {
        let c: XmlJsonConfig =
            toml::from_str("request = false\nresponse = false\nroot = \"1x\"\nmax_depth = 0")
                .unwrap();
        let e = c
            .build(&BuildCtx::new(std::path::Path::new("."), "p"))
            .unwrap_err();
        let all: Vec<String> = e.each().map(ToString::to_string).collect();
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all[1].starts_with("root: root \"1x\""), "{all:?}");
    }
}
