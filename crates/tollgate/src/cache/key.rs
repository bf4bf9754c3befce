//! The key of an entry (`cache.md` §3.1): route, scheme, host, method class, path,
//! query, `vary_headers` values, and the consumer with the identity values the gateway
//! set, each part length-prefixed so that no two requests' parts run together.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::store::Facts;
use super::CacheRules;

/// What of a request the key is made of.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub route: &'a str,
    /// The route's rules as loaded ([`CacheRules::generation`]).
    pub generation: u64,
    pub https: bool,
    /// The host as the client sent it (`Host`, or the request target's authority).
    pub host: &'a [u8],
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The consumer, on a route with authentication.
    pub consumer: Option<&'a str>,
    /// The identity headers the gateway set.
    pub identity: &'a [(HeaderName, HeaderValue)],
}

/// The key's primary bytes, each part length-prefixed.
pub(crate) fn primary(rules: &CacheRules, r: &Request<'_>) -> Vec<u8> {
    let mut k = Vec::with_capacity(96 + r.host.len() + r.path.len() + r.query.map_or(0, str::len));
    let part = |k: &mut Vec<u8>, bytes: &[u8]| {
        k.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        k.extend_from_slice(bytes);
    };
    part(&mut k, r.route.as_bytes());
    part(&mut k, &r.generation.to_be_bytes());
    part(&mut k, if r.https { b"https" } else { b"http" });
    part(&mut k, keyed_host(r.host, r.https).as_bytes());
    part(&mut k, b"GET");
    part(&mut k, r.path.as_bytes());
    match r.query {
        Some(q) if !q.is_empty() => part(
            &mut k,
            keyed_query(q, rules.vary_query.as_deref()).as_bytes(),
        ),
        _ => part(&mut k, b""),
    }
    for name in &rules.vary_headers {
        let mut values = r.headers.get_all(name).iter();
        match values.next() {
            // an absent header differs from an empty one
            None => part(&mut k, b"\xff"),
            Some(first) => {
                let mut joined = first.as_bytes().to_vec();
                for v in values {
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(v.as_bytes());
                }
                part(&mut k, b"=");
                part(&mut k, &joined);
            }
        }
    }
    if !rules.shared {
        match r.consumer {
            Some(c) => {
                part(&mut k, b"consumer");
                part(&mut k, c.as_bytes());
            }
            None => part(&mut k, b"-"),
        }
        for (n, v) in r.identity {
            part(&mut k, n.as_str().as_bytes());
            part(&mut k, v.as_bytes());
        }
    }
    k
}

/// What a purge selects an entry of this request by (made when a response is stored).
pub(crate) fn facts(rules: &CacheRules, r: &Request<'_>) -> Facts {
    Facts {
        route: Arc::from(r.route),
        generation: r.generation,
        host: keyed_host(r.host, r.https).into(),
        path: r.path.into(),
        query: keyed_query(r.query.unwrap_or(""), rules.vary_query.as_deref()).into(),
    }
}

/// The host as keyed: lowercased, its port dropped only when it is the scheme's
/// default.
pub(crate) fn keyed_host(host: &[u8], https: bool) -> String {
    let host = String::from_utf8_lossy(host).to_ascii_lowercase();
    let default = if https { ":443" } else { ":80" };
    match host.strip_suffix(default) {
        // `[::1]:80` and `a:80`, not a bare IPv6 address ending in `:80`
        Some(h) if !h.is_empty() && (h.ends_with(']') || !h.contains(':')) => h.to_string(),
        _ => host,
    }
}

/// The query as keyed: parameters sorted by name (stable: one name's values keep
/// their order), compared as sent; with `only`, just those parameters.
pub(crate) fn keyed_query(query: &str, only: Option<&[String]>) -> String {
    let name = |p: &str| p.split('=').next().unwrap_or("").to_string();
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| only.is_none_or(|names| names.iter().any(|n| *n == name(p))))
        .collect();
    params.sort_by_key(|p| name(p));
    params.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(rules: &CacheRules, f: impl FnOnce(&mut Request<'a>)) -> Vec<u8> {
        static NO_HEADERS: std::sync::LazyLock<HeaderMap> =
            std::sync::LazyLock::new(HeaderMap::new);
        let mut r = Request {
            route: "r",
            generation: 1,
            https: false,
            host: b"Example.com",
            path: "/p",
            query: Some("b=2&a=1"),
            headers: &NO_HEADERS,
            consumer: None,
            identity: &[],
        };
        f(&mut r);
        primary(rules, &r)
    }

    #[test]
    fn hosts_keep_their_port_unless_it_is_the_default() {
        assert_eq!(keyed_host(b"Example.COM:80", false), "example.com");
        assert_eq!(keyed_host(b"example.com:80", true), "example.com:80");
        assert_eq!(keyed_host(b"example.com:443", true), "example.com");
        assert_eq!(keyed_host(b"example.com:8080", false), "example.com:8080");
        assert_eq!(keyed_host(b"[::1]:80", false), "[::1]");
    }

    #[test]
    fn queries_are_sorted_by_name_keeping_repeated_names_in_order() {
        assert_eq!(keyed_query("b=2&a=1&b=1", None), "a=1&b=2&b=1");
        assert_eq!(keyed_query("", None), keyed_query("&", None));
        assert_eq!(keyed_query("%61=1&a=2", None), "%61=1&a=2");
        let only = ["page".to_string()];
        assert_eq!(keyed_query("sort=x&page=2&pages=3", Some(&only)), "page=2");
    }

    #[test]
    fn every_part_tells_keys_apart() {
        let rules = CacheRules::default();
        let base = key(&rules, |_| {});
        assert_eq!(base, key(&rules, |r| r.query = Some("a=1&b=2")));
        assert_eq!(base, key(&rules, |r| r.host = b"example.com:80"));
        assert_ne!(base, key(&rules, |r| r.https = true));
        assert_ne!(base, key(&rules, |r| r.host = b"other.com"));
        assert_ne!(base, key(&rules, |r| r.path = "/q"));
        assert_ne!(base, key(&rules, |r| r.query = None));
        assert_ne!(base, key(&rules, |r| r.consumer = Some("alice")));
        assert_ne!(
            base,
            key(&rules, |r| r.generation = 2),
            "changed rules: other keys"
        );
        // parts cannot run together: path "/p" + query "" differs from path "/" + "p"
        assert_ne!(
            key(&rules, |r| {
                r.path = "/pa";
                r.query = None;
            }),
            key(&rules, |r| {
                r.path = "/p";
                r.query = Some("a");
            })
        );
        // the identity values the gateway set tell callers of one consumer apart
        let id_a = [(
            HeaderName::from_static("x-user"),
            HeaderValue::from_static("a"),
        )];
        let id_b = [(
            HeaderName::from_static("x-user"),
            HeaderValue::from_static("b"),
        )];
        assert_ne!(
            key(&rules, |r| r.identity = &id_a),
            key(&rules, |r| r.identity = &id_b)
        );
        let shared = CacheRules {
            shared: true,
            ..CacheRules::default()
        };
        assert_eq!(
            key(&shared, |_| {}),
            key(&shared, |r| r.consumer = Some("alice"))
        );
        assert_eq!(
            key(&shared, |r| r.identity = &id_a),
            key(&shared, |r| r.identity = &id_b)
        );
    }

    #[test]
    fn vary_headers_tell_absent_from_empty_and_join_lines() {
        let rules = CacheRules {
            vary_headers: vec![HeaderName::from_static("accept-language")],
            ..CacheRules::default()
        };
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("accept-language", HeaderValue::from_str(v).unwrap());
            }
            let r = Request {
                route: "r",
                generation: 1,
                https: false,
                host: b"h",
                path: "/",
                query: None,
                headers: &h,
                consumer: None,
                identity: &[],
            };
            primary(&rules, &r)
        };
        assert_ne!(with(&[]), with(&[""]));
        assert_eq!(with(&["en", "fr"]), with(&["en, fr"]));
        assert_ne!(with(&["en"]), with(&["fr"]));
    }
}
