//! `DELETE /admin/cache?SELECTORS` (`cache.md` §4): which entries a purge selects.

use super::key::{keyed_host, keyed_query};
use super::store::{Facts, Store};
use super::CacheRules;

/// The entries a purge removes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Purge {
    /// `None`: every route (`all=true`).
    route: Option<String>,
    path: Option<Path>,
    host: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum Path {
    /// `url=`: this path and query.
    Exact { path: String, query: String },
    /// `prefix=`: this path or below it on a segment boundary.
    Prefix(String),
}

impl Purge {
    /// Reads the selectors of `query`; `rules` gives a route's cache rules (`None`: no
    /// such route, or one that does not cache). The error is the 400's message.
    pub(crate) fn parse<'r>(
        query: &str,
        rules: impl Fn(&str) -> Option<&'r CacheRules>,
    ) -> Result<Self, String> {
        let (mut route, mut url, mut prefix, mut host, mut all) = (None, None, None, None, None);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match &*k {
                "route" => &mut route,
                "url" => &mut url,
                "prefix" => &mut prefix,
                "host" => &mut host,
                "all" => &mut all,
                other => return Err(format!("unknown parameter {other:?}")),
            };
            if slot.replace(v.into_owned()).is_some() {
                return Err(format!("{k} is given twice"));
            }
        }
        if let Some(a) = all {
            if a != "true" {
                return Err("all must be true".into());
            }
            if route.is_some() || url.is_some() || prefix.is_some() || host.is_some() {
                return Err("all=true takes no other parameter".into());
            }
            return Ok(Self {
                route: None,
                path: None,
                host: None,
            });
        }
        let route = route.ok_or("route is required (or all=true)")?;
        let r = rules(&route).ok_or_else(|| format!("no route {route:?} with a cache policy"))?;
        let path = match (url, prefix) {
            (Some(_), Some(_)) => return Err("url and prefix cannot be combined".into()),
            (Some(u), None) => {
                let (p, q) = u.split_once('?').unwrap_or((&u, ""));
                Some(Path::Exact {
                    path: normalised(p, "url")?,
                    query: keyed_query(q, r.vary_query.as_deref()),
                })
            }
            (None, Some(p)) => Some(Path::Prefix(normalised(&p, "prefix")?)),
            (None, None) => None,
        };
        Ok(Self {
            route: Some(route),
            path,
            host: host.map(|h| h.to_ascii_lowercase()),
        })
    }

    fn selects(&self, f: &Facts) -> bool {
        let path = match &self.path {
            None => true,
            Some(Path::Exact { path, query }) => *f.path == **path && *f.query == **query,
            Some(Path::Prefix(p)) => {
                let p = p.trim_end_matches('/');
                f.path
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        };
        let host = self.host.as_ref().is_none_or(|h| {
            *f.host == *keyed_host(h.as_bytes(), false)
                || *f.host == *keyed_host(h.as_bytes(), true)
        });
        path && host
    }

    /// Removes what it selects from `store`: how many entries went.
    pub(crate) fn run(&self, store: &Store) -> usize {
        store.remove_where(self.route.as_deref(), |f| self.selects(f))
    }
}

fn normalised(p: &str, what: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("{what} must start with /"));
    }
    crate::router::path::normalize(p)
        .map(|p| p.into_owned())
        .map_err(|e| format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn parse(q: &str) -> Result<Purge, String> {
        let rules = CacheRules::default();
        Purge::parse(q, |r| (r == "r").then_some(&rules))
    }

    fn facts(host: &str, path: &str, query: &str) -> Facts {
        Facts {
            route: Arc::from("r"),
            generation: 0,
            host: host.into(),
            path: path.into(),
            query: query.into(),
        }
    }

    #[test]
    fn bad_selectors_are_refused() {
        for q in [
            "",
            "url=/a",
            "route=nope",
            "route=r&url=/a&prefix=/b",
            "route=r&url=a",
            "route=r&prefix=b",
            "all=true&route=r",
            "all=yes",
            "route=r&what=1",
            "route=r&route=r",
        ] {
            assert!(parse(q).is_err(), "{q}");
        }
        assert!(parse("all=true").is_ok());
    }

    #[test]
    fn url_selects_one_path_and_sorted_query_prefix_a_subtree() {
        let url = parse("route=r&url=%2Fa%2Fb%3Fy%3D2%26x%3D1").unwrap();
        assert!(url.selects(&facts("h", "/a/b", "x=1&y=2")));
        assert!(!url.selects(&facts("h", "/a/b", "")));
        let prefix = parse("route=r&prefix=/a/b").unwrap();
        assert!(prefix.selects(&facts("h", "/a/b", "q=1")));
        assert!(prefix.selects(&facts("h", "/a/b/c", "")));
        assert!(!prefix.selects(&facts("h", "/a/bc", "")));
        let host = parse("route=r&host=Example.com:80").unwrap();
        assert!(host.selects(&facts("example.com", "/x", "")));
        assert!(!host.selects(&facts("other.com", "/x", "")));
    }
}
