//! Templates: text with `${NAME}` facts of the request (`transform.md` §3.4), and JSON
//! values whose strings are templates.
//!
//! A template always renders to text that is data: what it inserts (a header value
//! holding quotes or braces) is never parsed, so it can only ever land inside a JSON
//! string.

use std::fmt;

use http::HeaderName;

use crate::context::RequestCtx;
use crate::json::{Map, Value};

/// A text with `${NAME}` facts; `$$` is a literal `$`, as is a `$` followed by
/// anything but `{`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Fact(Fact),
}

/// A fact of the request a template can insert.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fact {
    RequestId,
    Route,
    Consumer,
    Method,
    ClientIp,
    Header(HeaderName),
    Param(String),
}

/// Why a template is refused; the message quotes the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateError {}

/// The request a template reads: its head as the client sent it, and its context.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The request head.
    pub request: &'a pingora::http::RequestHeader,
    /// The request's context.
    pub cx: &'a RequestCtx,
}

impl Template {
    /// Reads a template.
    ///
    /// # Errors
    /// An unclosed `${`, an empty or unknown name, or an invalid header name.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            lit.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(more) = after.strip_prefix('$') {
                lit.push('$');
                rest = more;
            } else if let Some(inner) = after.strip_prefix('{') {
                let Some(end) = inner.find('}') else {
                    return Err(TemplateError(format!("unclosed \"${{\" in {text:?}")));
                };
                let name = &inner[..end];
                let fact = Fact::parse(name)
                    .map_err(|why| TemplateError(format!("{why} {name:?} in {text:?}")))?;
                if !lit.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut lit)));
                }
                pieces.push(Piece::Fact(fact));
                rest = &inner[end + 1..];
            } else {
                lit.push('$');
                rest = after;
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        Ok(Self { pieces })
    }

    /// The `${param.NAME}` names it reads.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Fact(Fact::Param(n)) => Some(n.as_str()),
            _ => None,
        })
    }

    /// The text without facts, if it has none.
    fn literal(&self) -> Option<String> {
        match self.pieces.as_slice() {
            [] => Some(String::new()),
            [Piece::Text(t)] => Some(t.clone()),
            _ => None,
        }
    }

    /// The text, with each fact of `facts` in its place.
    pub fn render(&self, facts: Facts<'_>) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Fact(f) => f.render(facts, &mut out),
            }
        }
        out
    }
}

impl Fact {
    fn parse(name: &str) -> Result<Self, &'static str> {
        Ok(match name {
            "" => return Err("empty template name"),
            "request_id" => Self::RequestId,
            "route" => Self::Route,
            "consumer" => Self::Consumer,
            "method" => Self::Method,
            "client_ip" => Self::ClientIp,
            _ => {
                if let Some(h) = name.strip_prefix("header.") {
                    let h = HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| "invalid header name in template name")?;
                    Self::Header(h)
                } else if let Some(p) = name.strip_prefix("param.") {
                    if p.is_empty() {
                        return Err("empty path parameter name in template name");
                    }
                    Self::Param(p.to_string())
                } else {
                    return Err("unknown template name");
                }
            }
        })
    }

    fn render(&self, Facts { request, cx }: Facts<'_>, out: &mut String) {
        match self {
            Self::RequestId => out.push_str(&cx.request_id),
            Self::Route => out.push_str(cx.route_name().unwrap_or_default()),
            Self::Consumer => {
                out.push_str(cx.consumer.as_ref().map_or("", |c| c.name.as_str()));
            }
            Self::Method => out.push_str(request.method.as_str()),
            Self::ClientIp => {
                if let Some(ip) = cx.client_ip {
                    out.push_str(&ip.to_string());
                }
            }
            Self::Header(name) => {
                // the gateway's value of an identity header, never a client's
                // (CROSSCUTTING.md rule 9.5)
                let mut set = cx.identity_headers().filter(|(n, _)| *n == name).peekable();
                let consumer = (name == "x-consumer-name")
                    .then(|| cx.consumer.as_ref().map(|c| c.name.as_str()))
                    .flatten();
                if set.peek().is_some() {
                    join(set.map(|(_, v)| v.as_bytes()), out);
                } else if let Some(c) = consumer {
                    out.push_str(c);
                } else {
                    join(
                        request.headers.get_all(name).iter().map(|v| v.as_bytes()),
                        out,
                    );
                }
            }
            Self::Param(n) => out.push_str(&cx.path_param(n).unwrap_or_default()),
        }
    }
}

/// Field values joined with `, `; invalid UTF-8 becomes U+FFFD.
fn join<'v>(values: impl Iterator<Item = &'v [u8]>, out: &mut String) {
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&String::from_utf8_lossy(v));
    }
}

/// A JSON value whose strings are templates (a `set` or `add` value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateValue {
    /// A value without templates, used as it is.
    Fixed(Value),
    /// A string with facts.
    String(Template),
    /// An array with a template somewhere inside.
    Array(Vec<TemplateValue>),
    /// An object with a template somewhere inside, members in order.
    Object(Vec<(String, TemplateValue)>),
}

impl TemplateValue {
    /// Turns a TOML value into JSON: strings, integers, floats, booleans, arrays and
    /// tables; every string is a template.
    ///
    /// # Errors
    /// A date or time, a float that is `inf` or `nan`, or a malformed template.
    pub fn from_toml(v: &toml::Value) -> Result<Self, TemplateError> {
        let out = match v {
            toml::Value::String(s) => {
                let t = Template::parse(s)?;
                match t.literal() {
                    Some(s) => Self::Fixed(Value::String(s)),
                    None => Self::String(t),
                }
            }
            toml::Value::Integer(i) => Self::Fixed(Value::Number(i.to_string())),
            toml::Value::Float(f) if f.is_finite() => {
                // `{:?}` keeps the point (`2.0`) and writes JSON exponents (`1e300`)
                Self::Fixed(Value::Number(format!("{f:?}")))
            }
            toml::Value::Float(f) => {
                return Err(TemplateError(format!(
                    "the float {f} has no JSON form (inf and nan are not allowed)"
                )))
            }
            toml::Value::Boolean(b) => Self::Fixed(Value::Bool(*b)),
            toml::Value::Datetime(d) => {
                return Err(TemplateError(format!(
                    "the date/time {d} has no JSON form (write it as a string)"
                )))
            }
            toml::Value::Array(items) => {
                let items = items
                    .iter()
                    .map(Self::from_toml)
                    .collect::<Result<Vec<_>, _>>()?;
                match items.iter().map(Self::fixed).collect::<Option<Vec<_>>>() {
                    Some(fixed) => Self::Fixed(Value::Array(fixed)),
                    None => Self::Array(items),
                }
            }
            toml::Value::Table(t) => {
                let members = t
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), Self::from_toml(v)?)))
                    .collect::<Result<Vec<_>, TemplateError>>()?;
                let fixed: Option<Map> = members
                    .iter()
                    .map(|(k, v)| Some((k.clone(), v.fixed()?)))
                    .collect();
                match fixed {
                    Some(m) => Self::Fixed(Value::Object(m)),
                    None => Self::Object(members),
                }
            }
        };
        Ok(out)
    }

    fn fixed(&self) -> Option<Value> {
        match self {
            Self::Fixed(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// The `${param.NAME}` names its templates read.
    pub fn params(&self) -> Vec<&str> {
        match self {
            Self::Fixed(_) => Vec::new(),
            Self::String(t) => t.params().collect(),
            Self::Array(items) => items.iter().flat_map(Self::params).collect(),
            Self::Object(members) => members.iter().flat_map(|(_, v)| v.params()).collect(),
        }
    }

    /// The value for the request of `facts`.
    pub fn render(&self, facts: Facts<'_>) -> Value {
        match self {
            Self::Fixed(v) => v.clone(),
            Self::String(t) => Value::String(t.render(facts)),
            Self::Array(items) => Value::Array(items.iter().map(|i| i.render(facts)).collect()),
            Self::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.clone(), v.render(facts)))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts_of(req: &pingora::http::RequestHeader, cx: &RequestCtx, t: &str) -> String {
        Template::parse(t)
            .unwrap()
            .render(Facts { request: req, cx })
    }

    #[test]
    fn dollars_and_facts() {
        let mut req = pingora::http::RequestHeader::build("POST", b"/x", None).unwrap();
        req.append_header("X-Tag", "a\"}{").unwrap();
        req.append_header("x-tag", &b"b\xff"[..]).unwrap();
        let mut cx = RequestCtx::new();
        cx.request_id = "rid".into();
        cx.client_ip = Some("10.0.0.1".parse().unwrap());
        let out = facts_of(&req, &cx, "$$ $x ${request_id}/${method}/${client_ip}/${consumer}/${header.X-TAG}/${header.none}$");
        assert_eq!(out, "$ $x rid/POST/10.0.0.1//a\"}{, b\u{FFFD}/$");
    }

    #[test]
    fn refuses_bad_templates_quoting_them() {
        for (t, says) in [
            ("a ${consumer", "unclosed"),
            ("${}", "empty template name"),
            (
                "${consumr}",
                r#"unknown template name "consumr" in "${consumr}""#,
            ),
            ("${header.a b}", "invalid header name"),
            ("${param.}", "empty path parameter"),
        ] {
            let e = Template::parse(t).unwrap_err().to_string();
            assert!(e.contains(says), "{t}: {e}");
        }
    }

    #[test]
    fn toml_values_become_json() {
        let v: toml::Value = toml::from_str(
            "v = { i = 2, f = 2.0, e = 1e300, b = true, s = \"x\", a = [1, \"${route}\"], t = { n = \"$$\" } }",
        )
        .unwrap();
        let tv = TemplateValue::from_toml(&v["v"]).unwrap();
        let req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        let cx = RequestCtx::new();
        let out = tv.render(Facts {
            request: &req,
            cx: &cx,
        });
        assert_eq!(
            String::from_utf8(out.write()).unwrap(),
            r#"{"i":2,"f":2.0,"e":1e300,"b":true,"s":"x","a":[1,""],"t":{"n":"$"}}"#
        );
        let bad: toml::Value = toml::from_str("d = 1979-05-27\nn = nan").unwrap();
        assert!(TemplateValue::from_toml(&bad["d"])
            .unwrap_err()
            .to_string()
            .contains("date/time"));
        assert!(TemplateValue::from_toml(&bad["n"])
            .unwrap_err()
            .to_string()
            .contains("nan"));
    }
}
