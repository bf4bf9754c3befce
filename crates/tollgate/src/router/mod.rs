//! Route matching: a segment trie over normalised paths, most specific route wins.
//!
//! Paths are matched segment by segment, so the cost of a look-up depends on the depth
//! of the path and of the configured routes, never on how many routes there are.
//! Among the routes whose path matches, the winner is chosen by, in order:
//! exact (`=/x`) over prefix; more path segments; more literal (non-`{param}`) segments;
//! an exact host over a `*.` wildcard over no host constraint; a method constraint;
//! more header constraints; the route declared first.

pub mod path;

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// Which hosts a route accepts.
#[derive(Debug, Clone, Default)]
pub struct HostMatch {
    exact: Vec<String>,
    /// Suffixes including the leading dot: `*.example.com` is stored as `.example.com`.
    wildcard: Vec<String>,
}

impl HostMatch {
    /// Builds a matcher from config entries (`api.example.com`, `*.example.com`).
    pub fn new<'a>(hosts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut m = Self::default();
        for h in hosts {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(suffix) => m.wildcard.push(suffix.to_string()),
                None => m.exact.push(h),
            }
        }
        m
    }

    fn is_any(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// 0 when unconstrained, 2 for an exact match, 1 for a wildcard match, None when
    /// the host does not match.
    fn score(&self, host: Option<&str>) -> Option<u8> {
        if self.is_any() {
            return Some(0);
        }
        let host = host?;
        if self.exact.iter().any(|e| e.eq_ignore_ascii_case(host)) {
            return Some(2);
        }
        let hb = host.as_bytes();
        for w in &self.wildcard {
            if hb.len() > w.len() && hb[hb.len() - w.len()..].eq_ignore_ascii_case(w.as_bytes()) {
                return Some(1);
            }
        }
        None
    }
}

/// Strips the port (and IPv6 brackets' port) and a trailing dot from a Host value.
pub fn host_without_port(host: &str) -> &str {
    let h = if host.starts_with('[') {
        match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        }
    } else {
        // `name:digits`: the digits from the end, then the colon (a byte loop: the
        // usual host is short and `rfind` is a general search)
        let b = host.as_bytes();
        let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
        match b.len().checked_sub(digits + 1) {
            Some(i) if b[i] == b':' => &host[..i],
            _ => host,
        }
    };
    h.strip_suffix('.').unwrap_or(h)
}

/// One path pattern of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    /// `=/x`: match only exactly.
    pub exact: bool,
    /// Segments; `None` is a `{param}` segment.
    pub segments: Vec<Option<String>>,
    /// The names of the `{param}` segments, with their segment's index.
    pub params: Vec<(usize, String)>,
}

impl PathPattern {
    /// Parses a config path entry (`/api/orders`, `=/health`, `/users/{id}/orders`).
    ///
    /// # Errors
    /// A message saying what is wrong with the entry.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let (exact, p) = match entry.strip_prefix('=') {
            Some(p) => (true, p),
            None => (false, entry),
        };
        if !p.starts_with('/') {
            return Err(format!(
                "path {entry:?} must start with '/' (or '=/' for an exact match)"
            ));
        }
        if p.contains('?') || p.contains('#') {
            return Err(format!("path {entry:?} must not contain '?' or '#'"));
        }
        let norm = path::normalize(p).map_err(|e| format!("path {entry:?} is not valid: {e}"))?;
        if norm != p {
            return Err(format!(
                "path {entry:?} is not in normal form; write {norm:?}"
            ));
        }
        let mut segments = Vec::new();
        let mut params = Vec::new();
        for s in norm.split('/').filter(|s| !s.is_empty()) {
            if s.starts_with('{') || s.ends_with('}') {
                let name = s.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
                match name {
                    Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                        params.push((segments.len(), n.to_string()));
                        segments.push(None)
                    }
                    _ => return Err(format!("path {entry:?}: a parameter segment is written {{name}} with name [A-Za-z0-9_]+")),
                }
            } else {
                segments.push(Some(s.to_string()));
            }
        }
        Ok(Self {
            exact,
            segments,
            params,
        })
    }

    /// The value of the `{name}` segment in `path` (a normalised path this pattern
    /// matches), percent-decoded; invalid UTF-8 becomes U+FFFD. `None` when the pattern
    /// has no such segment or does not match `path` segment for segment.
    pub fn param(&self, path: &str, name: &str) -> Option<String> {
        let (at, _) = self.params.iter().find(|(_, n)| n == name)?;
        if !self.matches(path) {
            return None;
        }
        let value = path.split('/').filter(|s| !s.is_empty()).nth(*at)?;
        let decoded = percent_encoding::percent_decode(value.as_bytes());
        Some(decoded.decode_utf8_lossy().into_owned())
    }

    /// Whether `path` (normalised) matches this pattern: every literal segment, a
    /// `{param}` any one segment, and for an exact pattern nothing more.
    pub fn matches(&self, path: &str) -> bool {
        let mut segs = path.split('/').filter(|s| !s.is_empty());
        for want in &self.segments {
            match (segs.next(), want) {
                (None, _) => return false,
                (Some(seg), Some(lit)) if seg != lit => return false,
                _ => {}
            }
        }
        !self.exact || segs.next().is_none()
    }

    fn literals(&self) -> usize {
        self.segments.iter().filter(|s| s.is_some()).count()
    }
}

/// The match constraints of one route, as the router sees it.
#[derive(Debug, Clone, Default)]
pub struct RouteSpec {
    /// Path patterns; at least one.
    pub paths: Vec<PathPattern>,
    /// Allowed methods; empty means any.
    pub methods: Vec<Method>,
    /// Allowed hosts.
    pub hosts: HostMatch,
    /// Exact header matches.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The request facts the router looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The method.
    pub method: &'a Method,
    /// The host without port, if the request has one.
    pub host: Option<&'a str>,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The normalised path (see [`path::normalize`]).
    pub path: &'a str,
}

/// The outcome of a look-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Route `route` (its index in declaration order) matched; its pattern covered the
    /// first `prefix_segments` segments of the path.
    Found {
        /// Index of the route, in declaration order.
        route: usize,
        /// How many leading path segments the pattern matched (for `strip_prefix`).
        prefix_segments: usize,
    },
    /// A route matches the path but not the method: the value of `Allow`.
    MethodNotAllowed(String),
    /// Nothing matches.
    NotFound,
}

#[derive(Debug)]
struct Entry {
    route: usize,
    exact: bool,
    segments: usize,
    literals: usize,
}

#[derive(Debug, Default)]
struct Node {
    /// Children by literal segment. The client picks the segments looked up, not the
    /// keys (the config does), so a keyed hash that is quicker than SipHash on short
    /// strings will do (`ahash`, seeded at random).
    literal: HashMap<Box<str>, Node, ahash::RandomState>,
    param: Option<Box<Node>>,
    /// Entries whose pattern ends at this node.
    entries: Vec<Entry>,
}

/// The compiled routing table.
#[derive(Debug, Default)]
pub struct Router {
    root: Node,
    specs: Vec<RouteSpec>,
}

type Key = (u8, usize, usize, u8, u8, usize, std::cmp::Reverse<usize>);

impl Router {
    /// Builds the trie from routes in declaration order.
    pub fn new(specs: Vec<RouteSpec>) -> Self {
        let mut root = Node::default();
        for (route, spec) in specs.iter().enumerate() {
            for p in &spec.paths {
                let mut node = &mut root;
                for seg in &p.segments {
                    node = match seg {
                        Some(lit) => node.literal.entry(lit.as_str().into()).or_default(),
                        None => node.param.get_or_insert_with(Default::default),
                    };
                }
                node.entries.push(Entry {
                    route,
                    exact: p.exact,
                    segments: p.segments.len(),
                    literals: p.literals(),
                });
            }
        }
        Self { root, specs }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// True when there are no routes.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Finds the most specific route for a request.
    pub fn lookup(&self, req: &RequestFacts<'_>) -> Lookup {
        // inline for paths of up to 16 segments: no allocation per request
        let segs: smallvec::SmallVec<[&str; 16]> =
            req.path.split('/').filter(|s| !s.is_empty()).collect();
        let mut best: Option<(Key, usize, usize)> = None;
        let mut method_mismatch = false;
        walk(&self.root, &segs, 0, &mut |e: &Entry| {
            let spec = &self.specs[e.route];
            let Some(host_score) = spec.hosts.score(req.host) else {
                return;
            };
            if !spec
                .headers
                .iter()
                .all(|(n, v)| req.headers.get(n) == Some(v))
            {
                return;
            }
            if !spec.methods.is_empty() && !spec.methods.contains(req.method) {
                method_mismatch = true;
                return;
            }
            let key = (
                e.exact as u8,
                e.segments,
                e.literals,
                host_score,
                (!spec.methods.is_empty()) as u8,
                spec.headers.len(),
                std::cmp::Reverse(e.route),
            );
            if best.as_ref().is_none_or(|(k, _, _)| key > *k) {
                best = Some((key, e.route, e.segments));
            }
        });
        if let Some((_, route, prefix_segments)) = best {
            return Lookup::Found {
                route,
                prefix_segments,
            };
        }
        if !method_mismatch {
            return Lookup::NotFound;
        }
        let mut allow: Vec<&Method> = Vec::new();
        walk(&self.root, &segs, 0, &mut |e: &Entry| {
            let spec = &self.specs[e.route];
            if spec.hosts.score(req.host).is_some()
                && spec
                    .headers
                    .iter()
                    .all(|(n, v)| req.headers.get(n) == Some(v))
            {
                for m in &spec.methods {
                    if !allow.contains(&m) {
                        allow.push(m);
                    }
                }
            }
        });
        let allow: Vec<&str> = allow.iter().map(|m| m.as_str()).collect();
        Lookup::MethodNotAllowed(allow.join(", "))
    }
}

/// Visits every entry whose pattern matches `segs` (prefix entries at every depth,
/// exact entries only where the whole path is consumed).
fn walk<'n>(node: &'n Node, segs: &[&str], depth: usize, visit: &mut impl FnMut(&'n Entry)) {
    let at_end = depth == segs.len();
    for e in &node.entries {
        if !e.exact || at_end {
            visit(e);
        }
    }
    if at_end {
        return;
    }
    if let Some(child) = node.literal.get(segs[depth]) {
        walk(child, segs, depth + 1, visit);
    }
    if let Some(child) = &node.param {
        walk(child, segs, depth + 1, visit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(paths: &[&str]) -> RouteSpec {
        RouteSpec {
            paths: paths
                .iter()
                .map(|p| PathPattern::parse(p).unwrap())
                .collect(),
            ..Default::default()
        }
    }

    fn get(r: &Router, path: &str) -> Lookup {
        look(r, &Method::GET, None, path)
    }

    fn look(r: &Router, m: &Method, host: Option<&str>, path: &str) -> Lookup {
        let headers = HeaderMap::new();
        r.lookup(&RequestFacts {
            method: m,
            host,
            headers: &headers,
            path,
        })
    }

    fn found(route: usize, prefix_segments: usize) -> Lookup {
        Lookup::Found {
            route,
            prefix_segments,
        }
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        let r = Router::new(vec![spec(&["/api/orders"])]);
        assert_eq!(get(&r, "/api/orders"), found(0, 2));
        assert_eq!(get(&r, "/api/orders/7"), found(0, 2));
        assert_eq!(get(&r, "/api/orders/"), found(0, 2));
        assert_eq!(get(&r, "/api/ordersX"), Lookup::NotFound);
        assert_eq!(get(&r, "/api"), Lookup::NotFound);
    }

    #[test]
    fn exact_beats_prefix_and_matches_only_exactly() {
        let r = Router::new(vec![spec(&["/health"]), spec(&["=/health"])]);
        assert_eq!(get(&r, "/health"), found(1, 1));
        assert_eq!(get(&r, "/health/x"), found(0, 1));
    }

    #[test]
    fn params_are_read_from_the_matching_path_decoded() {
        let p = PathPattern::parse("/users/{id}/files/{name}").unwrap();
        assert_eq!(
            p.param("/users/7/files/a%20b/more", "name").as_deref(),
            Some("a b")
        );
        assert_eq!(p.param("/users/7/files/x", "id").as_deref(), Some("7"));
        assert_eq!(
            p.param("/users/%FF/files/x", "id").as_deref(),
            Some("\u{FFFD}")
        );
        assert_eq!(p.param("/users/7/other/x", "id"), None, "a literal differs");
        assert_eq!(p.param("/users/7/files/x", "nope"), None);
        let exact = PathPattern::parse("=/u/{id}").unwrap();
        assert!(exact.matches("/u/1") && !exact.matches("/u/1/2") && !exact.matches("/u"));
    }

    #[test]
    fn longer_prefix_wins_and_literal_beats_param() {
        let r = Router::new(vec![
            spec(&["/"]),
            spec(&["/users/{id}"]),
            spec(&["/users/me"]),
            spec(&["/users/{id}/orders"]),
        ]);
        assert_eq!(get(&r, "/other"), found(0, 0));
        assert_eq!(get(&r, "/users/7"), found(1, 2));
        assert_eq!(get(&r, "/users/me"), found(2, 2));
        assert_eq!(get(&r, "/users/me/orders/1"), found(3, 3));
        assert_eq!(get(&r, "/users"), found(0, 0));
    }

    #[test]
    fn hosts_are_case_insensitive_with_wildcards() {
        let mut a = spec(&["/"]);
        a.hosts = HostMatch::new(["api.example.com"]);
        let mut b = spec(&["/"]);
        b.hosts = HostMatch::new(["*.example.com"]);
        let c = spec(&["/"]);
        let r = Router::new(vec![c, b, a]);
        assert_eq!(
            look(&r, &Method::GET, Some("API.Example.com"), "/"),
            found(2, 0)
        );
        assert_eq!(
            look(&r, &Method::GET, Some("a.b.example.com"), "/"),
            found(1, 0)
        );
        assert_eq!(
            look(&r, &Method::GET, Some("example.com"), "/"),
            found(0, 0)
        );
        assert_eq!(look(&r, &Method::GET, None, "/"), found(0, 0));
    }

    #[test]
    fn host_port_is_ignored() {
        assert_eq!(host_without_port("a.example.com:8080"), "a.example.com");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(host_without_port("example.com."), "example.com");
        assert_eq!(host_without_port("example.com:"), "example.com");
        assert_eq!(host_without_port("8080"), "8080");
        assert_eq!(host_without_port("a:b"), "a:b");
    }

    #[test]
    fn method_mismatch_is_405_with_allow() {
        let mut a = spec(&["/orders"]);
        a.methods = vec![Method::GET, Method::POST];
        let mut b = spec(&["/orders"]);
        b.methods = vec![Method::DELETE];
        let r = Router::new(vec![a, b]);
        assert_eq!(look(&r, &Method::POST, None, "/orders/1"), found(0, 1));
        assert_eq!(
            look(&r, &Method::PUT, None, "/orders/1"),
            Lookup::MethodNotAllowed("GET, POST, DELETE".into())
        );
        assert_eq!(look(&r, &Method::PUT, None, "/other"), Lookup::NotFound);
    }

    #[test]
    fn more_constraints_win_then_declaration_order() {
        let mut a = spec(&["/x"]);
        a.headers = vec![(
            HeaderName::from_static("x-v"),
            HeaderValue::from_static("2"),
        )];
        let b = spec(&["/x"]);
        let c = spec(&["/x"]);
        let r = Router::new(vec![b, c, a]);
        let mut h = HeaderMap::new();
        h.insert("x-v", HeaderValue::from_static("2"));
        let facts = RequestFacts {
            method: &Method::GET,
            host: None,
            headers: &h,
            path: "/x",
        };
        assert_eq!(r.lookup(&facts), found(2, 1));
        assert_eq!(get(&r, "/x"), found(0, 1));
    }

    #[test]
    fn rejects_bad_patterns() {
        assert!(PathPattern::parse("api").is_err());
        assert!(PathPattern::parse("/a/../b").is_err());
        assert!(PathPattern::parse("/a/{}").is_err());
        assert!(PathPattern::parse("/a/{x").is_err());
        assert!(PathPattern::parse("/a?x=1").is_err());
        assert!(PathPattern::parse("=/exact").unwrap().exact);
    }
}
