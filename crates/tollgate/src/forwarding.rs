//! Header hygiene between client and upstream: hop-by-hop headers, `X-Forwarded-*`,
//! spoofed identity headers, and the upstream path.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// Hop-by-hop headers (RFC 9110 §7.6.1) removed from upstream responses.
/// `Transfer-Encoding` is left to Pingora, which frames each side itself.
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

/// The items of a comma-separated list header (`Connection`, `Vary`, `Cache-Control`,
/// `Content-Encoding`), read as one list over all its lines, trimmed, empty ones
/// skipped; a line that is not text has none.
pub(crate) fn list_tokens<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    list_tokens(headers, &header::CONNECTION)
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

/// What the gateway reads from a request's headers, found in one pass over them: a
/// look-up costs a hash of the name and a probe, and the usual request has fewer
/// headers than the gateway has questions.
#[derive(Debug, Default)]
pub(crate) struct HeadFacts {
    /// The first `Host`.
    pub host: Option<HeaderValue>,
    /// The first `X-Request-Id`.
    pub request_id: Option<HeaderValue>,
    /// The first `traceparent`.
    pub traceparent: Option<HeaderValue>,
    /// Whether there is an `X-Forwarded-For`.
    pub forwarded_for: bool,
    /// Whether there is a `Connection`.
    pub connection: bool,
    /// Whether a header must go (see [`drop_untrusted_headers`]).
    pub untrusted: bool,
    /// How many `Content-Length` values there are.
    pub content_lengths: usize,
}

impl HeadFacts {
    /// Reads `headers`.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut f = Self::default();
        for (n, v) in headers {
            if n == header::HOST {
                f.host.get_or_insert_with(|| v.clone());
            } else if n == header::CONTENT_LENGTH {
                f.content_lengths += 1;
            } else if n == header::CONNECTION {
                f.connection = true;
            } else {
                match n.as_str().as_bytes() {
                    b"x-request-id" => {
                        f.request_id.get_or_insert_with(|| v.clone());
                    }
                    b"traceparent" => {
                        f.traceparent.get_or_insert_with(|| v.clone());
                    }
                    b"x-forwarded-for" => f.forwarded_for = true,
                    other => f.untrusted |= untrusted(other),
                }
            }
        }
        f
    }
}

/// A header name no client may send (see [`drop_untrusted_headers`]).
fn untrusted(name: &[u8]) -> bool {
    name.contains(&b'_') || name.starts_with(b"x-consumer-")
}

/// Removes the headers no client may send: any whose name has an underscore
/// (`X_User`: some servers treat `_` and `-` alike, so such a header could impersonate
/// one the gateway checks or sets) and every `X-Consumer-*` (only the gateway says who
/// the consumer is). Routes, policies and the upstream never see them.
pub(crate) fn drop_untrusted_headers(req: &mut RequestHeader) {
    for n in names_where(&req.headers, |n| untrusted(n.as_str().as_bytes())) {
        req.remove_header(&n);
    }
}

/// Collapses repeated identical `Content-Length` headers (the connection guard refused
/// differing ones) into one, so the upstream sees a single length.
pub(crate) fn collapse_content_length(req: &mut RequestHeader) {
    let mut values = req.headers.get_all(header::CONTENT_LENGTH).iter();
    let (Some(first), Some(_)) = (values.next().cloned(), values.next()) else {
        return;
    };
    let _ = req.insert_header(header::CONTENT_LENGTH, first);
}

/// Whether `Connection` names a header the gateway protects (see [`protected`]); such a
/// request is refused rather than forwarded without the header.
pub(crate) fn connection_names_protected(headers: &HeaderMap) -> bool {
    connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .any(|n| protected(&n))
}

/// Whether `status` is an interim answer (`100 Continue`, `103 Early Hints`, …): a 1xx
/// that the final answer follows. A `101 Switching Protocols` is the last HTTP answer on
/// its connection, so it is final.
pub(crate) fn is_interim(status: http::StatusCode) -> bool {
    status.is_informational() && status != http::StatusCode::SWITCHING_PROTOCOLS
}

/// Removes hop-by-hop headers from an upstream response (not from a `101`): the
/// standard ones and those its `Connection` names.
///
/// `Connection` itself stays on a final answer: Pingora replaces it on every HTTP/1
/// answer (`keep-alive` or `close`, as the client connection goes on or not) and drops
/// it, with the other hop-by-hop headers, from every HTTP/2 answer. Informational
/// answers (`100`, `103`) pass Pingora untouched, so theirs goes here.
///
/// The request going upstream needs no such pass here: Pingora's default upstream
/// request policy (`HttpUpstreamRequestPolicy::standard`, which the proxy sets on
/// every peer) strips the standard hop-by-hop headers and those `Connection` names,
/// and keeps a WebSocket upgrade's.
pub(crate) fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let interim = is_interim(resp.status);
    let mut gone = names_where(&resp.headers, |n| {
        is_hop_by_hop(n) && (interim || n != header::CONNECTION)
    });
    // `Connection: keep-alive` or `close`, the usual values, name no header
    let names_nothing = |v: &HeaderValue| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    };
    if !resp
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .all(names_nothing)
    {
        let named = connection_tokens(&resp.headers)
            .filter(|t| {
                ![
                    "close",
                    "keep-alive",
                    "proxy-connection",
                    "te",
                    "trailer",
                    "upgrade",
                ]
                .iter()
                .any(|h| t.eq_ignore_ascii_case(h))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| !protected(n));
        gone.extend(named);
    }
    for n in gone {
        resp.remove_header(&n);
    }
}

/// Edits the headers of the request going upstream as a plain [`HeaderMap`], with room
/// for `additional` more made once.
///
/// Adding a header through `RequestHeader::insert_header` parses and allocates its name
/// twice (the header also goes into the map that keeps the client's spelling of names),
/// and the header maps, sized exactly for the client's headers, grow and rehash several
/// times as the forwarding headers go in: ~2 µs a request in the profile. The price of
/// this way: header names go upstream in lower case (the common standard ones
/// capitalised, `Host`, `Content-Type`, …), as Envoy and HAProxy send them and as
/// HTTP/2 has them anyway; names are case-insensitive (RFC 9110 §5.1).
pub(crate) fn edit_headers(
    req: &mut RequestHeader,
    additional: usize,
    edit: impl FnOnce(&mut HeaderMap),
) -> pingora::Result<()> {
    let end_stream = req.send_end_stream();
    // a target the URI does not spell byte for byte is put back as it was
    let uri_target = req.uri.path_and_query().map_or("", |p| p.as_str());
    let raw = (req.raw_path() != uri_target.as_bytes()).then(|| req.raw_path().to_vec());
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, placeholder));
    parts.headers.reserve(additional);
    edit(&mut parts.headers);
    *req = RequestHeader::from(parts);
    if let Some(e) = end_stream {
        req.set_send_end_stream(e);
    }
    if let Some(raw) = raw {
        req.set_raw_path(&raw)?;
    }
    Ok(())
}

/// [`edit_headers`] for a response on its way to the client (its reason phrase kept).
pub(crate) fn edit_response_headers(
    resp: &mut ResponseHeader,
    additional: usize,
    edit: impl FnOnce(&mut HeaderMap),
) -> pingora::Result<()> {
    let reason = resp.get_reason_phrase().map(str::to_string);
    let reason = reason.filter(|r| Some(r.as_str()) != resp.status.canonical_reason());
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, placeholder));
    parts.headers.reserve(additional);
    edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        resp.set_reason_phrase(reason.as_deref())?;
    }
    Ok(())
}

/// The `X-Forwarded-For` value sent upstream: the client's entries (if any) followed
/// by the peer's address.
/// `client_sent` says whether the client sent any (so the headers need no look-up when
/// it did not).
pub(crate) fn forwarded_for(
    headers: &HeaderMap,
    client_sent: bool,
    peer: std::net::IpAddr,
) -> HeaderValue {
    use std::io::Write;
    static NAME: HeaderName = HeaderName::from_static("x-forwarded-for");
    let mut buf = Vec::with_capacity(64);
    for v in client_sent
        .then(|| headers.get_all(&NAME))
        .into_iter()
        .flatten()
    {
        buf.extend_from_slice(v.as_bytes());
        buf.extend_from_slice(b", ");
    }
    match peer {
        // the usual case, without the formatting machinery
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                if octet >= 100 {
                    buf.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    buf.push(b'0' + octet / 10 % 10);
                }
                buf.push(b'0' + octet % 10);
            }
        }
        std::net::IpAddr::V6(_) => {
            let _ = write!(buf, "{peer}");
        }
    }
    // the client's values were valid header values, and so is the join
    HeaderValue::from_maybe_shared(bytes::Bytes::from(buf))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The path sent upstream: the normalised path minus the matched prefix
/// (`strip_prefix`), then `rewrite`, plus the original query.
pub(crate) fn upstream_path(
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
    fn edited_headers_keep_the_request_line() {
        let mut req = RequestHeader::build("POST", b"/a%2Fb?q=1&r", None).unwrap();
        req.insert_header("X-Client-Header", "1").unwrap();
        req.set_version(http::Version::HTTP_2);
        req.set_send_end_stream(false);
        edit_headers(&mut req, 2, |h| {
            h.insert(header::HOST, HeaderValue::from_static("up"));
            h.insert("x-added", HeaderValue::from_static("2"));
        })
        .unwrap();
        assert_eq!(req.method, http::Method::POST);
        assert_eq!(req.raw_path(), b"/a%2Fb?q=1&r");
        assert_eq!(req.send_end_stream(), Some(false));
        assert_eq!(req.headers.len(), 3);
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("x-client-header: 1\r\n"), "{wire}");
        assert!(wire.contains("Host: up\r\n"), "{wire}");

        // a target the URI cannot spell as sent (not UTF-8) goes upstream as it came
        let mut req = RequestHeader::build("GET", b"/caf\xe9", None).unwrap();
        let before = req.raw_path().to_vec();
        edit_headers(&mut req, 1, |h| {
            h.insert("x-added", HeaderValue::from_static("1"));
        })
        .unwrap();
        assert_eq!(req.raw_path(), &before[..]);
    }

    #[test]
    fn edited_responses_keep_status_and_reason() {
        let mut resp = ResponseHeader::build(299, None).unwrap();
        resp.set_reason_phrase(Some("Fine Then")).unwrap();
        resp.insert_header("X-Upstream", "1").unwrap();
        edit_response_headers(&mut resp, 1, |h| {
            h.insert("x-added", HeaderValue::from_static("2"));
        })
        .unwrap();
        assert_eq!(resp.status, 299);
        assert_eq!(resp.get_reason_phrase(), Some("Fine Then"));
        assert_eq!(resp.headers.get("x-upstream").unwrap(), "1");
        assert_eq!(resp.headers.get("x-added").unwrap(), "2");
        let mut ok = ResponseHeader::build(200, None).unwrap();
        edit_response_headers(&mut ok, 0, |_| {}).unwrap();
        assert_eq!(ok.get_reason_phrase(), Some("OK"));
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let mut h = HeaderMap::new();
        for ip in [
            "0.0.0.0",
            "10.20.3.255",
            "192.168.100.9",
            "::1",
            "2001:db8::7",
        ] {
            let v = forwarded_for(&h, false, ip.parse().unwrap());
            assert_eq!(v, ip);
        }
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("10.0.0.1, 10.0.0.2"),
        );
        let v = forwarded_for(&h, true, "127.0.0.1".parse().unwrap());
        assert_eq!(v, "203.0.113.9, 10.0.0.1, 10.0.0.2, 127.0.0.1");
    }

    #[test]
    fn head_facts_are_what_look_ups_find() {
        let mut h = HeaderMap::new();
        assert!(!HeadFacts::of(&h).untrusted);
        for (n, v) in [
            ("Host", "a"),
            ("host", "b"),
            ("X-Request-Id", "r1"),
            ("x-request-id", "r2"),
            ("traceparent", "t"),
            ("content-length", "3"),
            ("Content-Length", "3"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-other", "1"),
        ] {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        let f = HeadFacts::of(&h);
        assert_eq!(f.host.as_ref(), h.get(header::HOST));
        assert_eq!(f.request_id.as_ref(), h.get("x-request-id"));
        assert_eq!(f.traceparent.as_ref(), h.get("traceparent"));
        assert_eq!(f.content_lengths, 2);
        assert!(f.forwarded_for && !f.connection && !f.untrusted);
        for name in ["x_user", "x-consumer-id"] {
            let mut h = h.clone();
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
            assert!(HeadFacts::of(&h).untrusted, "{name}");
        }
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        assert!(HeadFacts::of(&h).connection);
    }

    #[test]
    fn underscore_headers_are_dropped() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x_consumer_name", "admin").unwrap();
        req.insert_header("x-kept", "1").unwrap();
        req.append_header("api_key", "k").unwrap();
        drop_untrusted_headers(&mut req);
        assert_eq!(req.headers.len(), 1);
        assert!(req.headers.get("x-kept").is_some());
    }

    #[test]
    fn connection_naming_a_protected_header_is_detected() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-other"),
        );
        assert!(!connection_names_protected(&h));
        for named in ["Host", "x-forwarded-for", "X-Consumer-Name", "traceparent"] {
            let v = HeaderValue::from_str(&format!("keep-alive, {named}")).unwrap();
            h.insert(header::CONNECTION, v);
            assert!(connection_names_protected(&h), "{named}");
        }
    }

    #[test]
    fn response_hop_by_hop_and_connection_named_are_removed() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("connection", "Keep-Alive, X-Secret, x-request-id")
            .unwrap();
        resp.insert_header("keep-alive", "timeout=5").unwrap();
        resp.insert_header("x-secret", "1").unwrap();
        resp.insert_header("x-request-id", "abc").unwrap();
        resp.insert_header("trailer", "x-checksum").unwrap();
        resp.insert_header("proxy-connection", "close").unwrap();
        resp.insert_header("x-keep", "1").unwrap();
        let mut early = ResponseHeader::build(103, None).unwrap();
        for (n, v) in resp.headers.iter() {
            early.append_header(n.clone(), v.clone()).unwrap();
        }
        strip_response_hop_by_hop(&mut resp);
        strip_response_hop_by_hop(&mut early);
        for gone in ["keep-alive", "x-secret", "trailer", "proxy-connection"] {
            assert!(resp.headers.get(gone).is_none(), "{gone} kept");
            assert!(early.headers.get(gone).is_none(), "{gone} kept on a 103");
        }
        assert_eq!(resp.headers.get("x-request-id").unwrap(), "abc");
        assert_eq!(resp.headers.get("x-keep").unwrap(), "1");
        // Pingora replaces `Connection` on a final answer, and passes a 1xx's on
        assert!(resp.headers.get("connection").is_some());
        assert!(early.headers.get("connection").is_none());
        assert_eq!(early.headers.get("x-keep").unwrap(), "1");
        // a 101 keeps what the upgrade needs
        let mut up = ResponseHeader::build(101, None).unwrap();
        up.insert_header("connection", "upgrade").unwrap();
        up.insert_header("upgrade", "websocket").unwrap();
        strip_response_hop_by_hop(&mut up);
        assert_eq!(up.headers.len(), 2);
    }

    #[test]
    fn removes_spoofed_consumer_headers() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-consumer-name", "admin").unwrap();
        req.insert_header("X-Consumer-Groups", "root").unwrap();
        req.insert_header("x-consumerish", "ok").unwrap();
        drop_untrusted_headers(&mut req);
        assert!(req.headers.get("x-consumer-name").is_none());
        assert!(req.headers.get("x-consumer-groups").is_none());
        assert!(req.headers.get("x-consumerish").is_some());
    }
}
