//! Header hygiene between client and upstream: hop-by-hop headers, `X-Forwarded-*`,
//! spoofed identity headers, and the upstream path.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

/// Hop-by-hop headers (RFC 9110 §7.6.1) removed in both directions. `Transfer-Encoding`
/// is left to Pingora, which frames each side itself.
fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == header::CONNECTION
        || n == header::TE
        || n == header::TRAILER
        || n == header::UPGRADE
        || matches!(n.as_str(), "keep-alive" | "proxy-connection")
}

/// The header names for which `pred` holds (one pass over the names; allocates
/// nothing when there are none, the usual case).
fn names_where(headers: &HeaderMap, pred: impl Fn(&HeaderName) -> bool) -> Vec<HeaderName> {
    headers.keys().filter(|n| pred(n)).cloned().collect()
}

/// The hop-by-hop headers present, plus those `Connection` names.
fn hop_by_hop_present(headers: &HeaderMap, keep_upgrade: bool) -> Vec<HeaderName> {
    let mut found = names_where(headers, |n| {
        is_hop_by_hop(n) && !(keep_upgrade && n == header::UPGRADE)
    });
    found.extend(connection_named(headers));
    found
}

/// True for a protocol upgrade request (WebSocket): `Connection: upgrade` + `Upgrade`.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Headers a `Connection` token cannot remove: framing, the host, the forwarding and
/// identity headers the gateway vouches for, and trace context. A request naming one is
/// refused (400); should one get here, the nomination is ignored.
fn protected(n: &HeaderName) -> bool {
    const PROTECTED: &[&str] = &[
        "host",
        "content-length",
        "transfer-encoding",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-real-ip",
        "x-request-id",
        "traceparent",
        "tracestate",
    ];
    PROTECTED.contains(&n.as_str()) || n.as_str().starts_with("x-consumer-")
}

/// Removes every header whose name has an underscore (`X_User`): some servers treat
/// `_` and `-` alike, so such a header could impersonate one the gateway checks or sets.
/// Routes, policies and the upstream never see them.
pub fn drop_underscore_headers(req: &mut RequestHeader) {
    for n in names_where(&req.headers, |k| k.as_str().contains('_')) {
        req.remove_header(&n);
    }
}

/// Collapses repeated identical `Content-Length` headers (the connection guard refused
/// differing ones) into one, so the upstream sees a single length.
pub fn collapse_content_length(req: &mut RequestHeader) {
    let mut values = req.headers.get_all(header::CONTENT_LENGTH).iter();
    let (Some(first), Some(_)) = (values.next().cloned(), values.next()) else {
        return;
    };
    let _ = req.insert_header(header::CONTENT_LENGTH, first);
}

/// Whether `Connection` names a header the gateway protects (see [`protected`]); such a
/// request is refused rather than forwarded without the header.
pub fn connection_names_protected(headers: &HeaderMap) -> bool {
    connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .any(|n| protected(&n))
}

/// Headers named in `Connection`, to be removed with it.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| !is_hop_by_hop(n) && !protected(n))
        .collect()
}

/// Removes hop-by-hop headers from the request going upstream. An upgrade request keeps
/// `Upgrade` and a bare `Connection: upgrade`; `TE: trailers` is kept (gRPC needs it).
pub fn strip_request_hop_by_hop(req: &mut RequestHeader) -> Result<()> {
    let upgrade = is_upgrade(&req.headers);
    let te_trailers = req
        .headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for n in hop_by_hop_present(&req.headers, upgrade) {
        req.remove_header(&n);
    }
    if upgrade {
        req.insert_header(header::CONNECTION, "upgrade")?;
    }
    if te_trailers {
        req.insert_header(header::TE, "trailers")?;
    }
    Ok(())
}

/// Removes hop-by-hop headers from an upstream response (not from a `101`).
pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    for n in hop_by_hop_present(&resp.headers, false) {
        resp.remove_header(&n);
    }
}

/// Removes every client-sent `X-Consumer-*` header: only the gateway says who the
/// consumer is.
pub fn strip_consumer_headers(req: &mut RequestHeader) {
    for n in names_where(&req.headers, |n| n.as_str().starts_with("x-consumer-")) {
        req.remove_header(&n);
    }
}

/// The `X-Forwarded-For` value sent upstream: the client's entries (if any) followed
/// by the peer's address.
pub fn forwarded_for(headers: &HeaderMap, peer: std::net::IpAddr) -> HeaderValue {
    use std::io::Write;
    let mut buf = Vec::with_capacity(64);
    for v in headers.get_all("x-forwarded-for") {
        buf.extend_from_slice(v.as_bytes());
        buf.extend_from_slice(b", ");
    }
    let _ = write!(buf, "{peer}");
    // the client's values were valid header values, and so is the join
    HeaderValue::from_maybe_shared(bytes::Bytes::from(buf))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The path sent upstream: the normalised path minus the matched prefix
/// (`strip_prefix`), then `rewrite`, plus the original query.
pub fn upstream_path(
    normalised: &str,
    strip_segments: usize,
    rewrite: Option<&(regex::Regex, String)>,
    query: Option<&str>,
) -> String {
    let mut path = if strip_segments > 0 {
        let mut rest = normalised;
        for _ in 0..strip_segments {
            rest = rest.trim_start_matches('/');
            rest = rest.find('/').map_or("", |i| &rest[i..]);
        }
        if rest.is_empty() {
            "/".to_string()
        } else {
            rest.to_string()
        }
    } else {
        normalised.to_string()
    };
    if let Some((re, to)) = rewrite {
        path = re.replace(&path, to.as_str()).into_owned();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
    }
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_drops_matched_segments() {
        assert_eq!(upstream_path("/api/orders/7", 2, None, None), "/7");
        assert_eq!(upstream_path("/api/orders", 2, None, Some("x=1")), "/?x=1");
        assert_eq!(upstream_path("/api/orders/7/", 2, None, None), "/7/");
        assert_eq!(
            upstream_path("/api/orders/7", 0, None, None),
            "/api/orders/7"
        );
    }

    #[test]
    fn rewrite_applies_after_strip() {
        let re = (
            regex::Regex::new("^/api/(.*)").unwrap(),
            "/v1/$1".to_string(),
        );
        assert_eq!(
            upstream_path("/api/orders/7", 0, Some(&re), Some("a=b")),
            "/v1/orders/7?a=b"
        );
        let re = (regex::Regex::new("^/(.*)").unwrap(), "x/$1".to_string());
        assert_eq!(upstream_path("/7", 0, Some(&re), None), "/x/7");
    }

    #[test]
    fn underscore_headers_are_dropped() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x_consumer_name", "admin").unwrap();
        req.insert_header("x-kept", "1").unwrap();
        req.append_header("api_key", "k").unwrap();
        drop_underscore_headers(&mut req);
        assert_eq!(req.headers.len(), 1);
        assert!(req.headers.get("x-kept").is_some());
    }

    #[test]
    fn connection_cannot_name_protected_headers() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header(
            "connection",
            "x-forwarded-for, Host, x-request-id, x-consumer-name, traceparent, x-other",
        )
        .unwrap();
        for h in [
            "x-forwarded-for",
            "host",
            "x-request-id",
            "x-consumer-name",
            "traceparent",
            "x-other",
        ] {
            req.insert_header(h, "v").unwrap();
        }
        strip_request_hop_by_hop(&mut req).unwrap();
        for kept in [
            "x-forwarded-for",
            "host",
            "x-request-id",
            "x-consumer-name",
            "traceparent",
        ] {
            assert!(req.headers.get(kept).is_some(), "{kept} was stripped");
        }
        assert!(req.headers.get("x-other").is_none());
    }

    #[test]
    fn removes_hop_by_hop_and_connection_named() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("connection", "keep-alive, x-secret")
            .unwrap();
        req.insert_header("keep-alive", "timeout=5").unwrap();
        req.insert_header("x-secret", "1").unwrap();
        req.insert_header("te", "trailers, deflate").unwrap();
        req.insert_header("x-keep", "1").unwrap();
        strip_request_hop_by_hop(&mut req).unwrap();
        assert!(req.headers.get("connection").is_none());
        assert!(req.headers.get("keep-alive").is_none());
        assert!(req.headers.get("x-secret").is_none());
        assert_eq!(req.headers.get("te").unwrap(), "trailers");
        assert_eq!(req.headers.get("x-keep").unwrap(), "1");
    }

    #[test]
    fn keeps_websocket_upgrade() {
        let mut req = RequestHeader::build("GET", b"/ws", None).unwrap();
        req.insert_header("connection", "Upgrade").unwrap();
        req.insert_header("upgrade", "websocket").unwrap();
        strip_request_hop_by_hop(&mut req).unwrap();
        assert_eq!(req.headers.get("upgrade").unwrap(), "websocket");
        assert_eq!(req.headers.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn removes_spoofed_consumer_headers() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-consumer-name", "admin").unwrap();
        req.insert_header("X-Consumer-Groups", "root").unwrap();
        req.insert_header("x-consumerish", "ok").unwrap();
        strip_consumer_headers(&mut req);
        assert!(req.headers.get("x-consumer-name").is_none());
        assert!(req.headers.get("x-consumer-groups").is_none());
        assert!(req.headers.get("x-consumerish").is_some());
    }
}
