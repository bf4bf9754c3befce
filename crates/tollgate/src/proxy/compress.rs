//! The gateway's response compression (`cache.md` §12.3–12.5): the decision at the
//! response head, the head's changes, and the body encoded piece by piece. It runs
//! after every policy, on responses from the upstream and from cache entries, never on
//! the gateway's own answers.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

use crate::compress::encoder::Encoder;
use crate::compress::{negotiate, Algorithm, CompressRules, StreamSlot, Streams};
use crate::forwarding::list_tokens;
use crate::metrics::CompressMetrics;

/// One response being compressed, or how it was.
#[derive(Debug)]
pub(crate) struct CompressRun {
    /// The coding (the access log's `compress`).
    pub algorithm: Algorithm,
    encoder: Option<Encoder>,
    _slot: Option<StreamSlot>,
}

/// The first condition of §12.3 that fails, as its `reason`; `Ok`: compress.
fn decide(
    req: &RequestHeader,
    resp: &ResponseHeader,
    rules: &CompressRules,
) -> Result<(), &'static str> {
    if req.method == http::Method::HEAD {
        return Err("head");
    }
    if req.headers.contains_key(header::RANGE) {
        return Err("range");
    }
    let no_transform = |h: &http::HeaderMap| {
        list_tokens(h, &header::CACHE_CONTROL).any(|d| d.eq_ignore_ascii_case("no-transform"))
    };
    if no_transform(&req.headers) {
        return Err("no_transform");
    }
    let status = resp.status.as_u16();
    if resp.status.is_informational() || matches!(status, 204 | 206 | 304) {
        return Err("status");
    }
    if resp.headers.contains_key(header::CONTENT_ENCODING) {
        return Err("encoded");
    }
    if no_transform(&resp.headers) {
        return Err("no_transform");
    }
    let typed = resp
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| rules.compresses_type(t));
    if !typed {
        return Err("type");
    }
    let length = resp
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if length.is_some_and(|n| n == 0 || n < rules.min_size) {
        return Err("size");
    }
    Ok(())
}

/// `Accept-Encoding` in `resp`'s `Vary` (once, never beside `*`).
fn vary_accept_encoding(resp: &mut ResponseHeader) -> Result<()> {
    let named = list_tokens(&resp.headers, &header::VARY)
        .any(|n| n == "*" || n.eq_ignore_ascii_case("accept-encoding"));
    if !named {
        resp.append_header(header::VARY, "Accept-Encoding")?;
    }
    Ok(())
}

/// A strong `ETag` made weak (`"x"` becomes `W/"x"`).
fn weaken_etag(resp: &mut ResponseHeader) -> Result<()> {
    let strong = resp
        .headers
        .get(header::ETAG)
        .filter(|v| v.as_bytes().starts_with(b"\""))
        .map(|v| [b"W/", v.as_bytes()].concat());
    if let Some(weak) = strong.and_then(|w| HeaderValue::from_bytes(&w).ok()) {
        resp.insert_header(header::ETAG, weak)?;
    }
    Ok(())
}

/// Decides for one response head of a route with `rules` (algorithms not empty), and
/// changes the head when it is compressed. `None`: sent as it is (counted).
pub(crate) fn start(
    req: &RequestHeader,
    resp: &mut ResponseHeader,
    rules: &CompressRules,
    streams: &std::sync::Arc<Streams>,
    metrics: &CompressMetrics,
    route: &str,
) -> Result<Option<Box<CompressRun>>> {
    vary_accept_encoding(resp)?;
    let accepted = || {
        negotiate::choose(
            req.headers
                .get_all(header::ACCEPT_ENCODING)
                .iter()
                .map(HeaderValue::as_bytes),
            &rules.algorithms,
        )
    };
    let skip = |reason: &str| {
        metrics.skipped.with_label_values(&[route, reason]).inc();
    };
    if let Err(reason) = decide(req, resp, rules) {
        // a 304 describes what a 200 would have been for this client
        if resp.status == http::StatusCode::NOT_MODIFIED && accepted().is_some() {
            weaken_etag(resp)?;
        }
        skip(reason);
        return Ok(None);
    }
    let Some(algorithm) = accepted() else {
        skip("not_accepted");
        return Ok(None);
    };
    let Some(slot) = streams.take() else {
        skip("busy");
        return Ok(None);
    };
    let encoder = Encoder::new(algorithm, rules, rules.streaming).map_err(|e| {
        pingora::Error::because(
            pingora::ErrorType::InternalError,
            "starting a compressor",
            e,
        )
    })?;
    resp.insert_header(header::CONTENT_ENCODING, algorithm.as_str())?;
    weaken_etag(resp)?;
    for gone in [
        "accept-ranges",
        "content-md5",
        "digest",
        "content-digest",
        "repr-digest",
    ] {
        resp.remove_header(gone);
    }
    resp.remove_header(&header::CONTENT_LENGTH);
    if req.version != http::Version::HTTP_10 {
        // HTTP/1.1 clients get chunks; HTTP/2 frames every body anyway; an HTTP/1.0
        // client gets the close of the connection
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    metrics
        .responses
        .with_label_values(&[route, algorithm.as_str()])
        .inc();
    Ok(Some(Box::new(CompressRun {
        algorithm,
        encoder: Some(encoder),
        _slot: Some(slot),
    })))
}

/// Encodes one piece of the body; at its end, finishes the stream and gives the slot
/// back. A body that breaks off never reaches its end: the client sees it incomplete.
pub(crate) fn encode(
    run: &mut CompressRun,
    body: &mut Option<Bytes>,
    end: bool,
    metrics: &CompressMetrics,
    route: &str,
) -> Result<()> {
    let Some(encoder) = run.encoder.as_mut() else {
        return Ok(());
    };
    let fail = |e: std::io::Error| {
        pingora::Error::because(
            pingora::ErrorType::InternalError,
            "compressing a response",
            e,
        )
    };
    let alg = run.algorithm.as_str();
    let mut out = match body.take() {
        Some(piece) if !piece.is_empty() => {
            metrics
                .bytes_in
                .with_label_values(&[route, alg])
                .inc_by(piece.len() as u64);
            encoder.push(&piece).map_err(fail)?
        }
        _ => Bytes::new(),
    };
    if end {
        let encoder = run.encoder.take().ok_or_else(|| {
            pingora::Error::explain(pingora::ErrorType::InternalError, "no compressor")
        })?;
        let rest = encoder.finish().map_err(fail)?;
        out = if out.is_empty() {
            rest
        } else {
            [out, rest].concat().into()
        };
        run._slot = None;
    }
    metrics
        .bytes_out
        .with_label_values(&[route, alg])
        .inc_by(out.len() as u64);
    // nothing out yet: no piece (an empty one would end an HTTP/1 chunked body)
    *body = (!out.is_empty() || end).then_some(out);
    Ok(())
}

/// `Accept-Encoding: identity` towards the upstream, when the rules ask for it.
pub(crate) fn upstream_identity(rules: &CompressRules, up: &mut RequestHeader) -> Result<()> {
    if rules.upstream_identity && !rules.algorithms.is_empty() {
        up.insert_header(header::ACCEPT_ENCODING, "identity")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn the_first_failing_condition_decides_in_the_contracts_order() {
        let rules = CompressRules::default();
        let json = [("content-type", "application/json")];
        let ok = resp(200, &json);
        let mut head = req(&[]);
        head.set_method(http::Method::HEAD);
        assert_eq!(decide(&head, &ok, &rules), Err("head"));
        assert_eq!(
            decide(&req(&[("range", "bytes=0-1")]), &ok, &rules),
            Err("range")
        );
        let nt = req(&[("cache-control", "max-age=0, No-Transform")]);
        assert_eq!(decide(&nt, &ok, &rules), Err("no_transform"));
        // a HEAD with Range and no-transform is still counted `head`
        assert_eq!(decide(&head, &resp(304, &[]), &rules), Err("head"));
        for s in [204, 206, 304] {
            assert_eq!(
                decide(&req(&[]), &resp(s, &json), &rules),
                Err("status"),
                "{s}"
            );
        }
        let encoded = resp(
            200,
            &[
                ("content-type", "text/html"),
                ("content-encoding", "identity"),
            ],
        );
        assert_eq!(decide(&req(&[]), &encoded, &rules), Err("encoded"));
        let marked = resp(
            200,
            &[
                ("content-type", "text/html"),
                ("cache-control", "no-transform"),
            ],
        );
        assert_eq!(decide(&req(&[]), &marked, &rules), Err("no_transform"));
        assert_eq!(
            decide(
                &req(&[]),
                &resp(200, &[("content-type", "image/png")]),
                &rules
            ),
            Err("type")
        );
        assert_eq!(decide(&req(&[]), &resp(200, &[]), &rules), Err("type"));
        let small = resp(
            200,
            &[("content-type", "text/plain"), ("content-length", "1023")],
        );
        assert_eq!(decide(&req(&[]), &small, &rules), Err("size"));
        let big = resp(
            200,
            &[("content-type", "text/plain"), ("content-length", "1024")],
        );
        assert_eq!(decide(&req(&[]), &big, &rules), Ok(()));
        // no length: compressed whatever its size; 4xx and 5xx like 200
        assert_eq!(decide(&req(&[]), &resp(500, &json), &rules), Ok(()));
    }

    #[test]
    fn vary_gets_accept_encoding_once_and_never_beside_a_star() {
        let mut r = resp(200, &[("vary", "Origin")]);
        vary_accept_encoding(&mut r).unwrap();
        vary_accept_encoding(&mut r).unwrap();
        let all: Vec<_> = r.headers.get_all("vary").iter().collect();
        assert_eq!(all, ["Origin", "Accept-Encoding"]);
        let mut star = resp(200, &[("vary", "*")]);
        vary_accept_encoding(&mut star).unwrap();
        assert_eq!(star.headers.get_all("vary").iter().count(), 1);
        let mut lower = resp(200, &[("vary", "accept-encoding")]);
        vary_accept_encoding(&mut lower).unwrap();
        assert_eq!(lower.headers.get_all("vary").iter().count(), 1);
    }

    #[test]
    fn etags_weaken_once() {
        let mut r = resp(200, &[("etag", "\"x\"")]);
        weaken_etag(&mut r).unwrap();
        assert_eq!(r.headers["etag"], "W/\"x\"");
        weaken_etag(&mut r).unwrap();
        assert_eq!(r.headers["etag"], "W/\"x\"");
    }
}

/// What request decompression did (`cache.md` §12.7).
#[derive(Debug)]
pub(crate) enum Decoding {
    /// Nothing to decode: no body, no `Content-Encoding`, or `identity`.
    Untouched,
    /// The body was decoded: the policies and the upstream get the decoded one.
    Decoded,
    /// The request is refused.
    Refused(crate::reply::Reply),
}

/// Decodes a gzip request body on a route with `decompress_requests`: read whole (at
/// most `read_cap` encoded bytes), decoded within `decompress_max_size` and
/// `decompress_max_ratio`, held within `body_buffer_total`.
pub(crate) async fn decompress_request(
    session: &mut pingora::proxy::Session,
    cx: &mut crate::context::RequestCtx,
    rules: &CompressRules,
    budget: &'static crate::policy::body::Budget,
    read_cap: usize,
    metrics: &CompressMetrics,
    route: &str,
) -> Result<Decoding> {
    use crate::reply::{ErrorCode, Reply};
    if !session
        .req_header()
        .headers
        .contains_key(header::CONTENT_ENCODING)
        || session.is_body_empty()
    {
        return Ok(Decoding::Untouched);
    }
    let req = session.req_header();
    let codings: Vec<String> = list_tokens(&req.headers, &header::CONTENT_ENCODING)
        .map(str::to_ascii_lowercase)
        .collect();
    let count = |outcome: &str| {
        metrics
            .decompressed
            .with_label_values(&[route, outcome])
            .inc();
    };
    match codings.as_slice() {
        [one] if one == "identity" => return Ok(Decoding::Untouched),
        [one] if one == "gzip" || one == "x-gzip" => {}
        _ => {
            count("unsupported");
            return Ok(Decoding::Refused(
                Reply::refuse_with(
                    ErrorCode::UnsupportedMediaType,
                    "the request body's Content-Encoding is not gzip",
                )
                .header(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip")),
            ));
        }
    }
    let mut held = match cx.body.take() {
        Some(held) => held,
        None => match crate::policy::body::read_request(session, read_cap, budget, budget.pause())
            .await?
        {
            Ok(held) => held,
            Err(reply) => return Ok(Decoding::Refused(reply)),
        },
    };
    let max = usize::try_from(rules.decompress_max_size).unwrap_or(usize::MAX);
    let ratio = usize::try_from(rules.decompress_max_ratio).unwrap_or(usize::MAX);
    let out = match crate::compress::decode::gunzip(&held.bytes, max, ratio) {
        Ok(out) => out,
        Err(why) => {
            use crate::compress::decode::Refused;
            count(why.outcome());
            return Ok(Decoding::Refused(match why {
                Refused::Invalid => {
                    Reply::refuse_with(ErrorCode::BadRequest, "the request body is not valid gzip")
                }
                Refused::TooLarge => Reply::refuse_with(
                    ErrorCode::PayloadTooLarge,
                    format!("the decoded request body is larger than {max} bytes"),
                ),
                Refused::Ratio => Reply::refuse_with(
                    ErrorCode::PayloadTooLarge,
                    format!("the decoded request body is over {ratio} times its encoded size"),
                ),
            }));
        }
    };
    held.bytes = Bytes::from(out);
    if !held.fits() {
        return Ok(Decoding::Refused(crate::policy::body::no_room()));
    }
    cx.body = Some(held);
    let req = session.req_header_mut();
    for gone in [
        "content-encoding",
        "content-md5",
        "digest",
        "content-digest",
        "repr-digest",
    ] {
        req.remove_header(gone);
    }
    count("decoded");
    Ok(Decoding::Decoded)
}
