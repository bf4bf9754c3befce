//! What identifies a request for a limit (`by`) or for consistent hashing (`hash_key`):
//! `client_ip`, `consumer`, `route`, `path` or `"header:NAME"`.

use std::fmt;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::context::RequestCtx;

/// A request's key as written by [`RequestKey::write`]: inline up to 64 bytes (an
/// address, a consumer name, most header values), so a request does not allocate for it.
pub(crate) type KeyBuf = smallvec::SmallVec<[u8; 64]>;

/// The part of a request that identifies its client or its share.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RequestKey {
    /// The client IP (see `trusted_proxies`). The default.
    #[default]
    ClientIp,
    /// The authenticated consumer's name; the client IP when there is none.
    Consumer,
    /// The matched route's name: one key for everyone on the route.
    Route,
    /// The normalised request path.
    Path,
    /// A request header's value; the client IP when the header is absent.
    Header(HeaderName),
}

impl RequestKey {
    /// Parses `client_ip`, `consumer`, `route`, `path` or `header:NAME`.
    ///
    /// # Errors
    /// A message naming what was expected.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "client_ip" => Ok(Self::ClientIp),
            "consumer" => Ok(Self::Consumer),
            "route" => Ok(Self::Route),
            "path" => Ok(Self::Path),
            _ => match s.strip_prefix("header:") {
                Some(h) => HeaderName::from_bytes(h.trim().as_bytes())
                    .map(Self::Header)
                    .map_err(|_| format!("invalid header name {h:?}")),
                None => Err(format!(
                    r#"unknown key {s:?} (expected client_ip, consumer, route, path or "header:NAME")"#
                )),
            },
        }
    }

    /// Appends this request's key to `out`. Each kind of value is tagged, so a consumer
    /// name can never collide with a header value or an address.
    pub(crate) fn write(&self, cx: &RequestCtx, headers: &HeaderMap, out: &mut KeyBuf) {
        let ip = |out: &mut KeyBuf| match cx.client_ip {
            Some(IpAddr::V4(v4)) => out.extend_from_slice(&v4.octets()),
            Some(IpAddr::V6(v6)) => out.extend_from_slice(&v6.octets()),
            None => {}
        };
        match self {
            Self::ClientIp => ip(out),
            Self::Consumer => match &cx.consumer {
                Some(c) => {
                    out.push(b'c');
                    out.extend_from_slice(c.name.as_bytes());
                }
                None => ip(out),
            },
            Self::Route => out.extend_from_slice(cx.route_name().unwrap_or_default().as_bytes()),
            Self::Path => out.extend_from_slice(cx.path.as_bytes()),
            Self::Header(h) => match headers.get(h) {
                Some(v) => {
                    out.push(b'h');
                    out.extend_from_slice(v.as_bytes());
                }
                None => ip(out),
            },
        }
    }
}

impl<'de> Deserialize<'de> for RequestKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RequestKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""client_ip", "consumer", "route", "path" or "header:NAME""#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RequestKey, E> {
                RequestKey::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_refuses_others() {
        assert_eq!(RequestKey::parse("path"), Ok(RequestKey::Path));
        assert_eq!(RequestKey::parse("route"), Ok(RequestKey::Route));
        assert_eq!(
            RequestKey::parse("header:x-user"),
            Ok(RequestKey::Header(HeaderName::from_static("x-user")))
        );
        assert!(RequestKey::parse("ip").is_err());
        assert!(RequestKey::parse("header:bad name").is_err());
    }

    #[test]
    fn falls_back_to_the_client_ip() {
        let mut cx = RequestCtx::new();
        cx.client_ip = Some(IpAddr::from([10, 0, 0, 7]));
        let headers = HeaderMap::new();
        let mut a = KeyBuf::new();
        RequestKey::Consumer.write(&cx, &headers, &mut a);
        let mut b = KeyBuf::new();
        RequestKey::Header(HeaderName::from_static("x-user")).write(&cx, &headers, &mut b);
        assert_eq!(a.as_slice(), [10, 0, 0, 7]);
        assert_eq!(a, b);
    }
}
