//! What authentication policies share: identity header names, claims sent upstream as
//! headers, required scopes, and the 503 of an unavailable identity provider.
//!
//! `jwt_auth` and `oauth2_introspection` use these; a policy of yours that
//! authenticates against another provider can too.

use std::collections::BTreeMap;

use std::fmt;

use http::{HeaderName, HeaderValue};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::context::RequestCtx;
use crate::policy::BuildError;
use crate::reply::{ErrorCode, Reply};

/// Most claims one policy sends as headers.
pub const MAX_CLAIM_HEADERS: usize = 32;

/// Longest header value the gateway sets from a claim or a service's answer.
pub const MAX_IDENTITY_VALUE: usize = 4 * 1024;

/// Checks an identity header name (one that a policy sets for the upstream and that
/// client copies of are removed, CROSSCUTTING.md rule 9.1): a valid header name,
/// without `_`, starting with `x-`, and none of `x-forwarded-*`, `x-consumer-*`,
/// `x-request-id`, `x-real-ip`, `x-tollgate-*`. Returned in lower case.
///
/// # Errors
/// The message says why the name cannot be one.
pub fn header_name(name: &str) -> Result<HeaderName, String> {
    let lower = name.to_ascii_lowercase();
    let parsed = HeaderName::from_bytes(lower.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    if lower.contains('_') {
        return Err(format!("{name:?}: header names with `_` are refused"));
    }
    if !lower.starts_with("x-") {
        return Err(format!(
            "{name:?}: identity headers start with `x-` (client copies are removed on every route)"
        ));
    }
    let reserved = ["x-forwarded-", "x-consumer-", "x-tollgate-"]
        .iter()
        .any(|p| lower.starts_with(p))
        || lower == "x-request-id"
        || lower == "x-real-ip";
    if reserved {
        return Err(format!(
            "{name:?} is a header the gateway sets or reads itself"
        ));
    }
    Ok(parsed)
}

/// One audience or a list of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience(pub Vec<String>);

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Audience;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an audience string or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Audience, E> {
                Ok(Audience(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Audience, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Audience(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// The claims of the JWT that `jwt_auth` verified for the request, in
/// [`RequestCtx::extensions`] (for later policies: an authorization service's input).
#[derive(Debug, Clone)]
pub struct Claims(pub std::sync::Arc<Map<String, Value>>);

/// `claims_to_headers`: top-level claims sent upstream as identity headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimHeaders {
    map: Vec<(String, HeaderName)>,
}

impl ClaimHeaders {
    /// Checks a `claims_to_headers` table (at most [`MAX_CLAIM_HEADERS`] entries, each
    /// an identity [`header_name`], no name twice); errors are reported at
    /// `field.CLAIM`.
    ///
    /// # Errors
    /// The first entry that is refused.
    pub fn new(field: &str, table: &BTreeMap<String, String>) -> Result<Self, BuildError> {
        if table.len() > MAX_CLAIM_HEADERS {
            return Err(BuildError::field(
                field,
                format!("at most {MAX_CLAIM_HEADERS} claims can be sent as headers"),
            ));
        }
        let mut map: Vec<(String, HeaderName)> = Vec::with_capacity(table.len());
        for (claim, header) in table {
            let at = format!("{field}.{claim}");
            let name = header_name(header).map_err(|e| BuildError::field(&at, e))?;
            if map.iter().any(|(_, n)| *n == name) {
                return Err(BuildError::field(
                    at,
                    format!("header {name} is used twice in the table"),
                ));
            }
            map.push((claim.clone(), name));
        }
        Ok(Self { map })
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The header names (for [`Policy::identity_headers`](crate::policy::Policy::identity_headers)).
    pub fn names(&self) -> Vec<HeaderName> {
        self.map.iter().map(|(_, n)| n.clone()).collect()
    }

    /// Sets the header of each claim present in `claims` on the request
    /// ([`RequestCtx::set_identity_header`]), rendered as [`claim_value`] says.
    pub fn apply(&self, claims: &Map<String, Value>, cx: &mut RequestCtx) {
        for (claim, name) in &self.map {
            if let Some(v) = claims.get(claim).and_then(claim_value) {
                cx.set_identity_header(name.clone(), v);
            }
        }
    }
}

/// A claim as a header value (identity.md §3.5): a string as is, a number as its JSON
/// text, a boolean as `true`/`false`, an array of those joined by `,`. `None` for
/// `null`, an object, a nested array, a control character or a value over 4 KiB.
pub fn claim_value(v: &Value) -> Option<HeaderValue> {
    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    let text = match v {
        Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()?
            .join(","),
        other => scalar(other)?,
    };
    if text.len() > MAX_IDENTITY_VALUE || text.bytes().any(|b| b.is_ascii_control()) {
        return None;
    }
    HeaderValue::from_str(&text).ok()
}

/// `scopes`: scopes a token must grant, each of them (identity.md §3.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    required: Vec<String>,
    /// The `scope` parameter of the challenge.
    joined: String,
}

impl Scopes {
    /// Checks a `scopes` list: no empty entry, none with a space.
    ///
    /// # Errors
    /// The first entry refused, reported at `field`.
    pub fn new(field: &str, scopes: &[String]) -> Result<Self, BuildError> {
        if let Some(bad) = scopes.iter().find(|s| s.is_empty() || s.contains(' ')) {
            return Err(BuildError::field(
                field,
                format!("{bad:?}: a scope is non-empty and has no space"),
            ));
        }
        Ok(Self {
            required: scopes.to_vec(),
            joined: scopes.join(" "),
        })
    }

    /// Whether no scope is required.
    pub fn is_empty(&self) -> bool {
        self.required.is_empty()
    }

    /// Whether `claims` grant every required scope: the union of `scope` (a
    /// space-separated string) and `scp` (an array of strings, or such a string),
    /// compared exactly.
    pub fn granted(&self, claims: &Map<String, Value>) -> bool {
        self.required
            .iter()
            .all(|want| granted(claims).any(|s| s == want))
    }

    /// The 403 for a valid token lacking a scope, with
    /// `WWW-Authenticate: Bearer error="insufficient_scope", scope="…"`.
    pub fn refusal(&self) -> Reply {
        let challenge = format!(
            "Bearer error=\"insufficient_scope\", scope=\"{}\"",
            self.joined
        );
        let mut r = Reply::refuse_with(ErrorCode::Forbidden, "the token lacks a required scope");
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            r = r.header(http::header::WWW_AUTHENTICATE, v);
        }
        r
    }
}

/// The scopes `claims` grant (`scope` and `scp`).
fn granted(claims: &Map<String, Value>) -> impl Iterator<Item = &str> {
    fn words(v: Option<&Value>, arrays: bool) -> Vec<&str> {
        match v {
            Some(Value::String(s)) => s.split(' ').filter(|w| !w.is_empty()).collect(),
            Some(Value::Array(a)) if arrays => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
    let scope = words(claims.get("scope"), false);
    scope.into_iter().chain(words(claims.get("scp"), true))
}

/// Checks the URL of a service a policy calls (an identity provider, an authorization
/// service): absolute `http`/`https`, with a host and without user info.
///
/// # Errors
/// Reported at `field`; the message never repeats the URL's user info.
pub fn check_url(field: &str, url: &str) -> Result<(), BuildError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| BuildError::field(field, format!("not an absolute URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(BuildError::field(
            field,
            "not an absolute http or https URL",
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(BuildError::field(
            field,
            "user info (user:pass@) is not allowed in the URL",
        ));
    }
    Ok(())
}

/// Logs a warning (at load) for a plain `http://` URL to a host other than loopback:
/// tokens and decisions would cross the network unprotected.
pub fn warn_plain_http(path: &str, url: &str) {
    let Ok(u) = reqwest::Url::parse(url) else {
        return;
    };
    let host = u.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if u.scheme() == "http" && !loopback {
        tracing::warn!("{path}: {url} is plain http to a host that is not loopback");
    }
}

/// `query` without the parameters named in `names` (compared form-decoded), the others
/// kept as written.
pub fn without_query_parameters(query: &str, names: &[String]) -> String {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            let decoded: String = form_urlencoded::parse(key.as_bytes())
                .map(|(k, _)| k.into_owned())
                .collect();
            !names.contains(&decoded)
        })
        .collect();
    kept.join("&")
}

/// The HTTP client for the service at `url` (checked with [`check_url`]): one trusting
/// the CAs of `ca_file` (the option at `ca_field`, only for `https`), else the gateway's.
/// A plain `http://` URL to a host other than loopback is logged as a warning.
///
/// # Errors
/// The URL is refused, `ca_file` is given for an `http://` URL, or it is unreadable or
/// holds no certificate.
pub fn service_client(
    cx: &crate::policy::BuildCtx<'_>,
    url_field: &str,
    url: &str,
    ca_field: &str,
    ca_file: Option<&str>,
) -> Result<crate::policy::HttpClient, BuildError> {
    check_url(url_field, url)?;
    let client = match ca_file {
        Some(_) if url.starts_with("http://") => {
            return Err(BuildError::field(
                ca_field,
                format!("only for https: {url_field} is http://"),
            ))
        }
        Some(file) => cx.http_client_with_ca(ca_field, file)?,
        None => cx.http_client(),
    };
    warn_plain_http(cx.path, url);
    Ok(client)
}

/// Sends `req` within `call` and reads a `200` answer whose body is JSON: the value and
/// the answer's headers. Anything else is an error whose text names the cause (for a
/// warning line): the transport's error, `status N`, or `invalid JSON`; never the body.
///
/// # Errors
/// As above.
pub async fn fetch_json(
    client: &crate::policy::HttpClient,
    req: http::Request<bytes::Bytes>,
    call: crate::policy::Call,
) -> Result<(Value, http::HeaderMap), String> {
    let resp = client
        .send_with(req, call)
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("status {}", resp.status().as_u16()));
    }
    let v = serde_json::from_slice(resp.body()).map_err(|_| "invalid JSON".to_string())?;
    Ok((v, resp.into_parts().0.headers))
}

/// The 503 `identity_unavailable` (with `Retry-After: 1`) of a policy that could not
/// check a credential because its identity provider or authorization service is
/// unavailable.
pub fn unavailable(message: impl Into<String>) -> Reply {
    Reply::refuse_with(ErrorCode::IdentityUnavailable, message)
        .header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn identity_header_names_start_with_x_and_avoid_the_gateways_own() {
        assert_eq!(header_name("X-User-Id").unwrap().as_str(), "x-user-id");
        for bad in [
            "user-id",
            "x_user",
            "x-forwarded-user",
            "X-Consumer-Name",
            "x-request-id",
            "x-real-ip",
            "x-tollgate-debug",
            "authorization",
            "bad header",
        ] {
            assert!(header_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn claims_render_as_the_contract_says() {
        let v = |x: Value| claim_value(&x).map(|h| h.to_str().unwrap().to_string());
        assert_eq!(v(json!("alice")).as_deref(), Some("alice"));
        assert_eq!(v(json!(42)).as_deref(), Some("42"));
        assert_eq!(v(json!(1.5)).as_deref(), Some("1.5"));
        assert_eq!(v(json!(true)).as_deref(), Some("true"));
        assert_eq!(v(json!(["a", 1, false])).as_deref(), Some("a,1,false"));
        for none in [
            json!(null),
            json!({"a": 1}),
            json!([["x"]]),
            json!("a\nb"),
            json!("x".repeat(5000)),
        ] {
            assert_eq!(v(none.clone()), None, "{none}");
        }
    }

    #[test]
    fn claims_to_headers_refuses_bad_names_and_a_name_used_twice() {
        let t = |pairs: &[(&str, &str)]| {
            let m: BTreeMap<String, String> = pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            ClaimHeaders::new("claims_to_headers", &m)
        };
        let ok = t(&[("sub", "X-User-Id"), ("email", "x-user-email")]).unwrap();
        let mut cx = RequestCtx::new();
        ok.apply(&claims(json!({"sub": "s1", "email": {"no": 1}})), &mut cx);
        let set: Vec<_> = cx
            .identity_headers()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(set, [("x-user-id", "s1")]);
        let e = t(&[("a", "x-same"), ("b", "X-Same")]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("claims_to_headers.b"));
        let e = t(&[("sub", "host")]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("claims_to_headers.sub"));
        let many: Vec<(String, String)> = (0..33)
            .map(|i| (format!("c{i}"), format!("x-c{i}")))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert!(t(&many).is_err());
    }

    #[test]
    fn scopes_are_the_union_of_scope_and_scp_compared_exactly() {
        let s = Scopes::new("scopes", &["orders:read".into(), "b".into()]).unwrap();
        assert!(s.granted(&claims(json!({"scope": "x orders:read", "scp": ["b"]}))));
        assert!(s.granted(&claims(json!({"scp": "b orders:read"}))));
        assert!(!s.granted(&claims(json!({"scope": "ORDERS:READ b"}))));
        assert!(!s.granted(&claims(json!({}))));
        let r = s.refusal();
        assert_eq!(r.status, 403);
        assert_eq!(
            r.headers[0].1,
            "Bearer error=\"insufficient_scope\", scope=\"orders:read b\""
        );
        assert!(Scopes::new("scopes", &["a b".into()]).is_err());
        assert!(Scopes::new("scopes", &[String::new()]).is_err());
    }
}
