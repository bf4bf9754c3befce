//! The one path normaliser, used for routing, for policies and for the path sent upstream,
//! so what a route's policies authorised is exactly what is forwarded.
//!
//! Rules, in order, on the path part of the request target (before `?`):
//! - it must start with `/`; a raw backslash or control character is refused;
//! - percent-encoded *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) are decoded, other
//!   escapes are kept with upper-case hex; an encoded `/` (`%2F`), `\` (`%5C`) or NUL
//!   (`%00`) is refused because it would change which segments the path has;
//!   a `%` not followed by two hex digits is refused;
//! - empty segments (`//`) are merged, `.` segments dropped, `..` segments pop one
//!   segment; a `..` that would climb above the root is refused;
//! - a trailing slash is kept.
//!
//! Decoding happens once: `%252e` stays `%252E` and is never a dot.

use std::borrow::Cow;

/// Why a request path was refused (the client gets 400 `bad_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("request path must start with '/'")]
    NotAbsolute,
    /// A `..` segment climbs above the root.
    #[error("request path climbs above the root")]
    EscapesRoot,
    /// `%2F` or `%5C`: an encoded separator.
    #[error("request path contains an encoded '/' or '\\'")]
    EncodedSeparator,
    /// `%00`.
    #[error("request path contains an encoded NUL")]
    EncodedNul,
    /// A `%` not followed by two hex digits.
    #[error("request path contains an invalid percent-escape")]
    BadEscape,
    /// A raw backslash or control character.
    #[error("request path contains a backslash or control character")]
    BadCharacter,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// True when `path` is already in normal form and can be borrowed as is.
fn is_plain(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            b if b < 0x20 || b == 0x7f => return false,
            b'/' if prev == b'/' => return false,
            b'.' if prev == b'/' => {
                // "/." starts a dot segment only if followed by '/', end, or ".(/|end)"
                let rest = &path[i + 1..];
                if rest.is_empty()
                    || rest[0] == b'/'
                    || (rest[0] == b'.' && (rest.len() == 1 || rest[1] == b'/'))
                {
                    return false;
                }
            }
            _ => {}
        }
        prev = b;
    }
    true
}

/// Normalises a request path. Borrows when nothing changes (the common case).
///
/// # Errors
/// A [`PathError`] when the path is ambiguous or escapes the root.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw in path[1..].split('/') {
        let seg = decode_segment(raw)?;
        match seg.as_str() {
            "" => {
                trailing_slash = true;
                continue;
            }
            "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
                trailing_slash = true;
            }
            _ => {
                segments.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

fn decode_segment(raw: &str) -> Result<String, PathError> {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = h * 16 + l;
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0 => return Err(PathError::EncodedNul),
                    v if is_unreserved(v) => out.push(v as char),
                    v => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        out.push('%');
                        out.push(HEX[(v >> 4) as usize] as char);
                        out.push(HEX[(v & 15) as usize] as char);
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::BadCharacter),
            c if c < 0x20 || c == 0x7f => return Err(PathError::BadCharacter),
            _ => {
                // copy the run of ordinary bytes (may be UTF-8)
                let start = i;
                while i < b.len() && b[i] != b'%' && b[i] != b'\\' && b[i] >= 0x20 && b[i] != 0x7f {
                    i += 1;
                }
                out.push_str(&raw[start..i]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(|c| c.into_owned())
    }

    #[test]
    fn plain_paths_are_borrowed() {
        assert!(matches!(
            normalize("/api/orders/7").unwrap(),
            Cow::Borrowed(_)
        ));
        assert!(matches!(normalize("/").unwrap(), Cow::Borrowed(_)));
        assert!(matches!(
            normalize("/a/.hidden/b..c").unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn resolves_dot_segments_and_merges_slashes() {
        assert_eq!(n("/public/../admin").unwrap(), "/admin");
        assert_eq!(n("//admin").unwrap(), "/admin");
        assert_eq!(n("/a/./b/").unwrap(), "/a/b/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(n("/..a/b").unwrap(), "/..a/b");
    }

    #[test]
    fn decodes_unreserved_only() {
        assert_eq!(n("/%61dmin").unwrap(), "/admin");
        assert_eq!(n("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/public/%2E./admin").unwrap(), "/admin");
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(n("/a%3fb").unwrap(), "/a%3Fb");
        // decoded once only
        assert_eq!(n("/%252e%252e/admin").unwrap(), "/%252e%252e/admin");
    }

    #[test]
    fn refuses_ambiguous_paths() {
        assert_eq!(n("/../x"), Err(PathError::EscapesRoot));
        assert_eq!(n("/a/../../x"), Err(PathError::EscapesRoot));
        assert_eq!(n("/%2e%2e/x"), Err(PathError::EscapesRoot));
        assert_eq!(n("/admin%2fsecret"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/admin%5Csecret"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%00b"), Err(PathError::EncodedNul));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
        assert_eq!(n("/a\\..\\b"), Err(PathError::BadCharacter));
        assert_eq!(n("relative"), Err(PathError::NotAbsolute));
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn normal_form_is_a_fixed_point() {
        for p in [
            "/public/../admin",
            "/a/%2e/b//c/",
            "/%7euser/x%20y",
            "/a/b/..",
            "/",
        ] {
            let once = n(p).unwrap();
            assert_eq!(n(&once).unwrap(), once, "{p}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::normalize;
        use crate::router::{PathPattern, RequestFacts, RouteSpec, Router};

        /// A segment that means itself: unreserved characters, not `.` or `..`.
        fn segment() -> impl Strategy<Value = String> {
            "[a-z0-9_~-][a-z0-9._~-]{0,5}"
                .prop_filter("not a dot segment", |s| s != "." && s != "..")
        }

        /// One spelling of `seg`: some unreserved characters percent-encoded (either case).
        fn spelling(seg: &str, mask: u64, upper: bool) -> String {
            seg.bytes()
                .enumerate()
                .map(|(i, b)| {
                    if mask >> (i % 64) & 1 == 1 {
                        if upper {
                            format!("%{b:02X}")
                        } else {
                            format!("%{b:02x}")
                        }
                    } else {
                        (b as char).to_string()
                    }
                })
                .collect()
        }

        fn router() -> Router {
            let specs = ["/a", "/a/b", "/{id}/c", "=/x", "/_", "/~"]
                .iter()
                .map(|p| RouteSpec {
                    paths: vec![PathPattern::parse(p).unwrap()],
                    ..Default::default()
                })
                .collect();
            Router::new(specs)
        }

        fn route(r: &Router, path: &str) -> String {
            let headers = http::HeaderMap::new();
            format!(
                "{:?}",
                r.lookup(&RequestFacts {
                    method: &http::Method::GET,
                    host: None,
                    headers: &headers,
                    path,
                })
            )
        }

        proptest! {
            #[test]
            fn never_panics_and_the_result_is_canonical(p in "\\PC{0,40}") {
                if let Ok(n) = normalize(&p) {
                    prop_assert!(n.starts_with('/'));
                    prop_assert!(!n.contains("//"));
                    prop_assert!(n.split('/').all(|s| s != "." && s != ".."), "{}", n);
                    let again = normalize(&n).unwrap();
                    prop_assert_eq!(again.as_ref(), n.as_ref(), "not idempotent");
                }
            }

            #[test]
            fn never_climbs_above_the_root(segs in prop::collection::vec(prop_oneof![
                segment(), Just("..".to_string()), Just(".".to_string()), Just("%2e%2E".to_string())
            ], 0..8)) {
                let p = format!("/{}", segs.join("/"));
                let mut depth: i64 = 0;
                let mut escapes = false;
                for s in &segs {
                    match s.as_str() {
                        ".." | "%2e%2E" => { depth -= 1; if depth < 0 { escapes = true; } }
                        "." | "" => {}
                        _ => depth += 1,
                    }
                }
                let r = normalize(&p);
                prop_assert_eq!(r.is_err(), escapes, "{}: {:?}", p, r);
            }

            #[test]
            fn every_spelling_of_a_path_routes_as_the_path(
                segs in prop::collection::vec(segment(), 1..5),
                masks in prop::collection::vec(any::<u64>(), 5),
                detours in prop::collection::vec(0u8..4, 5),
                upper in any::<bool>(),
                trailing in any::<bool>(),
            ) {
                let plain = format!("/{}{}", segs.join("/"), if trailing { "/" } else { "" });
                let mut spelled = String::new();
                for (i, s) in segs.iter().enumerate() {
                    match detours[i] {
                        1 => spelled.push_str("/."),          // a dot segment
                        2 => spelled.push_str("/zz/%2E%2e"),  // in and back out
                        3 => spelled.push('/'),               // an empty segment
                        _ => {}
                    }
                    spelled.push('/');
                    spelled.push_str(&spelling(s, masks[i], upper));
                }
                if trailing {
                    spelled.push('/');
                }
                let n = normalize(&spelled).unwrap().into_owned();
                let canonical = normalize(&plain).unwrap().into_owned();
                prop_assert_eq!(&n, &canonical);
                let r = router();
                prop_assert_eq!(route(&r, &n), route(&r, &canonical));
            }
        }
    }
}
