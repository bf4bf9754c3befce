//! `cache`: keep responses in the gateway's memory and answer repeated requests from
//! them (`cache.md`).
//!
//! # Config
//!
//! ```toml
//! [routes.products.policies.cache]   # every key optional; the defaults shown
//! ttl = "5m"                         # freshness of a response that carries none; "0s": not stored
//! status_ttl = { 404 = "30s" }       # per status, instead of ttl (each status also in `statuses`)
//! statuses = [200, 301, 404]         # 200-599, never 206 or 304
//! methods = ["GET", "HEAD"]          # a HEAD is answered from the GET entry
//! respect_cache_control = true       # false: ttl/status_ttl, whatever the upstream says
//! # max_ttl = "1h"                   # no entry is fresh longer than this
//! vary_headers = []                  # request headers that are part of the key
//! # vary_query = ["page"]            # only these query parameters are part of the key
//! shared = false                     # true: consumers share entries
//! strip_set_cookie = false           # true: store responses without their Set-Cookie
//! stale_while_revalidate = "0s"
//! stale_if_error = "0s"
//! lock_timeout = "3s"                # waiting for another request's fetch of the key
//! status_header = true               # X-Cache-Status on the route's responses
//! ```
//!
//! The store is `[server.cache]`'s (`memory`, `max_object`), one per process. Entries are
//! keyed by route, scheme, host, path, sorted query, `vary_headers` values and, on a
//! route with authentication, the consumer (unless `shared`); requests with
//! `Authorization` or `Cookie` on a route without authentication are not cached unless
//! `shared`. The gateway's proxy does the lookup, store, coalescing and stale serving;
//! this policy declares the rules ([`Policy::cache_rules`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderName;
use serde::Deserialize;

use crate::cache::CacheRules;
use crate::policy::{BuildCtx, BuildError, Policy, PolicyConfig, Stage};
use crate::units::ConfigDuration;

// === Config ===

/// `cache` config. See the [module docs](self).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Freshness of a response without its own (default `"5m"`; `"0s"`: not stored).
    pub ttl: Option<ConfigDuration>,
    /// Per-status `ttl`; each status must also be in `statuses`.
    #[serde(default)]
    pub status_ttl: BTreeMap<String, ConfigDuration>,
    /// Statuses that may be stored (default `[200, 301, 404]`).
    pub statuses: Option<Vec<i64>>,
    /// `GET` and/or `HEAD` (default both).
    pub methods: Option<Vec<String>>,
    /// Whether the upstream's freshness information counts (default true).
    pub respect_cache_control: Option<bool>,
    /// The longest freshness of any entry.
    pub max_ttl: Option<ConfigDuration>,
    /// Request headers whose values are part of the key.
    #[serde(default)]
    pub vary_headers: Vec<String>,
    /// Only these query parameters are part of the key.
    pub vary_query: Option<Vec<String>>,
    /// Consumers share entries (default false).
    #[serde(default)]
    pub shared: bool,
    /// Store responses without `Set-Cookie` instead of not at all (default false).
    #[serde(default)]
    pub strip_set_cookie: bool,
    /// Serve an expired entry while one request refreshes it (default `"0s"`).
    pub stale_while_revalidate: Option<ConfigDuration>,
    /// Serve an expired entry when the upstream fails (default `"0s"`).
    pub stale_if_error: Option<ConfigDuration>,
    /// Wait for another request's fetch of the key at most this (default `"3s"`).
    pub lock_timeout: Option<ConfigDuration>,
    /// Add `X-Cache-Status` (default true).
    pub status_header: Option<bool>,
}

/// Whole seconds of `d`, or an error at `field`.
fn whole_seconds(field: &str, d: Option<ConfigDuration>, default: u32) -> Result<u32, BuildError> {
    let Some(d) = d else {
        return Ok(default);
    };
    let d = d.get();
    if d.subsec_nanos() != 0 {
        return Err(BuildError::field(
            field,
            format!("must be whole seconds (\"{}ms\" is not)", d.as_millis()),
        ));
    }
    u32::try_from(d.as_secs()).map_err(|_| BuildError::field(field, "is too long"))
}

/// `r`'s value, or `None` with its error kept in `errors` (every error of a table is
/// reported in one run).
fn keep<T>(errors: &mut Vec<BuildError>, r: Result<T, BuildError>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

/// The statuses that may be stored (`statuses`).
fn statuses(list: &[i64]) -> Result<BTreeSet<u16>, BuildError> {
    if list.is_empty() {
        return Err(BuildError::field("statuses", "must not be empty"));
    }
    let mut set = BTreeSet::new();
    for (i, s) in list.iter().enumerate() {
        let at = format!("statuses[{i}]");
        match u16::try_from(*s) {
            Ok(206 | 304) => {
                return Err(BuildError::field(
                    at,
                    format!("{s} responses are never stored"),
                ))
            }
            Ok(s @ 200..=599) => {
                set.insert(s);
            }
            _ => {
                return Err(BuildError::field(
                    at,
                    format!("{s} is not a status between 200 and 599"),
                ))
            }
        }
    }
    Ok(set)
}

/// `methods`: whether GET and HEAD use the cache.
fn methods(list: &[String]) -> Result<(bool, bool), BuildError> {
    if list.is_empty() {
        return Err(BuildError::field("methods", "must not be empty"));
    }
    let (mut get, mut head) = (false, false);
    for (i, m) in list.iter().enumerate() {
        match m.as_str() {
            "GET" => get = true,
            "HEAD" => head = true,
            _ => {
                return Err(BuildError::field(
                    format!("methods[{i}]"),
                    format!("{m:?} cannot be cached (only GET and HEAD)"),
                ))
            }
        }
    }
    Ok((get, head))
}

impl PolicyConfig for CacheConfig {
    type Policy = Cache;

    fn build(self, _cx: &BuildCtx<'_>) -> Result<Cache, BuildError> {
        let mut errors = Vec::new();
        let e = &mut errors;
        let mut rules = CacheRules::default();
        let d = CacheRules::default();
        rules.ttl = keep(e, whole_seconds("ttl", self.ttl, d.ttl)).unwrap_or(d.ttl);
        if let Some(list) = &self.statuses {
            if let Some(set) = keep(e, statuses(list)) {
                rules.statuses = set;
            }
        }
        for (code, ttl) in self.status_ttl {
            let at = format!("status_ttl.{code}");
            let status = code.parse::<u16>().ok().filter(|s| (100..=999).contains(s));
            let Some(status) = status else {
                e.push(BuildError::field(
                    &at,
                    format!("{code:?} is not a status code"),
                ));
                continue;
            };
            if !rules.statuses.contains(&status) {
                e.push(BuildError::field(
                    &at,
                    format!("{status} is not in statuses: it is never stored"),
                ));
                continue;
            }
            if let Some(secs) = keep(e, whole_seconds(&at, Some(ttl), 0)) {
                rules.status_ttl.insert(status, secs);
            }
        }
        if let Some(list) = &self.methods {
            if let Some((get, head)) = keep(e, methods(list)) {
                (rules.get, rules.head) = (get, head);
            }
        }
        rules.respect_cache_control = self.respect_cache_control.unwrap_or(true);
        if let Some(d) = self.max_ttl {
            rules.max_ttl = keep(e, whole_seconds("max_ttl", Some(d), 0));
        }
        for (i, h) in self.vary_headers.iter().enumerate() {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) if !rules.vary_headers.contains(&name) => rules.vary_headers.push(name),
                Ok(_) => {}
                Err(_) => e.push(BuildError::field(
                    format!("vary_headers[{i}]"),
                    format!("{h:?} is not a valid header name"),
                )),
            }
        }
        if let Some(q) = self.vary_query {
            if q.is_empty() {
                e.push(BuildError::field(
                    "vary_query",
                    "must not be empty (leave it out to key on the whole query)",
                ));
            } else if let Some(i) = q.iter().position(String::is_empty) {
                e.push(BuildError::field(
                    format!("vary_query[{i}]"),
                    "must not be an empty name",
                ));
            } else {
                rules.vary_query = Some(q);
            }
        }
        rules.shared = self.shared;
        rules.strip_set_cookie = self.strip_set_cookie;
        rules.stale_while_revalidate = keep(
            e,
            whole_seconds("stale_while_revalidate", self.stale_while_revalidate, 0),
        )
        .unwrap_or(0);
        rules.stale_if_error =
            keep(e, whole_seconds("stale_if_error", self.stale_if_error, 0)).unwrap_or(0);
        if let Some(t) = self.lock_timeout {
            let t = t.get();
            if (Duration::from_millis(1)..=Duration::from_secs(60)).contains(&t) {
                rules.lock_timeout = t;
            } else {
                e.push(BuildError::field(
                    "lock_timeout",
                    "must be between \"1ms\" and \"60s\"",
                ));
            }
        }
        rules.status_header = self.status_header.unwrap_or(true);
        BuildError::all(errors)?;
        Ok(Cache { rules })
    }
}

// === Policy ===

/// Declares its route's caching.
#[derive(Debug)]
pub struct Cache {
    rules: CacheRules,
}

#[async_trait]
impl Policy for Cache {
    fn stage(&self) -> Stage {
        Stage::Transform
    }

    fn cache_rules(&self) -> Option<&CacheRules> {
        Some(&self.rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn build(src: &str) -> Result<CacheRules, BuildError> {
        let c: CacheConfig = toml::from_str(src).map_err(|e| BuildError::new(e.to_string()))?;
        let cx = BuildCtx::new(Path::new("."), "routes.r.policies.cache");
        c.build(&cx).map(|p| p.rules)
    }

    fn field(src: &str) -> String {
        build(src).unwrap_err().field.unwrap_or_default()
    }

    #[test]
    fn defaults_are_the_contracts() {
        assert_eq!(build("").unwrap(), CacheRules::default());
    }

    #[test]
    fn every_bad_value_names_its_key() {
        assert_eq!(field("ttl = \"1500ms\""), "ttl");
        assert_eq!(field("max_ttl = \"1500ms\""), "max_ttl");
        assert_eq!(field("stale_if_error = \"0.5s\""), "stale_if_error");
        assert_eq!(field("statuses = []"), "statuses");
        assert_eq!(field("statuses = [200, 206]"), "statuses[1]");
        assert_eq!(field("statuses = [304]"), "statuses[0]");
        assert_eq!(field("statuses = [199]"), "statuses[0]");
        assert_eq!(field("status_ttl = { 500 = \"1s\" }"), "status_ttl.500");
        assert_eq!(field("status_ttl = { abc = \"1s\" }"), "status_ttl.abc");
        assert_eq!(field("status_ttl = { 404 = \"1500ms\" }"), "status_ttl.404");
        assert_eq!(field("methods = []"), "methods");
        assert_eq!(field("methods = [\"GET\", \"POST\"]"), "methods[1]");
        assert_eq!(field("lock_timeout = \"61s\""), "lock_timeout");
        assert_eq!(field("lock_timeout = \"0s\""), "lock_timeout");
        assert_eq!(field("vary_headers = [\"bad header\"]"), "vary_headers[0]");
        assert_eq!(field("vary_query = []"), "vary_query");
        assert_eq!(field("vary_query = [\"a\", \"\"]"), "vary_query[1]");
        assert!(build("nope = 1").is_err());
        assert!(build("shared = \"yes\"").is_err());
    }

    #[test]
    fn every_error_of_a_table_is_reported_at_once() {
        let e = build("ttl = \"1500ms\"\nstatuses = [206]\nlock_timeout = \"0s\"\nvary_query = []")
            .unwrap_err();
        let fields: Vec<_> = e.each().filter_map(|e| e.field.as_deref()).collect();
        assert_eq!(fields, ["ttl", "statuses[0]", "vary_query", "lock_timeout"]);
    }

    #[test]
    fn values_are_taken() {
        let r = build(
            "ttl = \"1m\"\nstatus_ttl = { 404 = \"30s\" }\nmethods = [\"GET\"]\n\
             vary_headers = [\"Accept-Language\"]\nvary_query = [\"page\"]\nshared = true\n\
             lock_timeout = \"1ms\"\nmax_ttl = \"1h\"",
        )
        .unwrap();
        assert_eq!(r.ttl, 60);
        assert_eq!(r.status_ttl.get(&404), Some(&30));
        assert!(r.get && !r.head && r.shared);
        assert_eq!(r.vary_headers[0].as_str(), "accept-language");
        assert_eq!(r.vary_query.as_deref(), Some(&["page".to_string()][..]));
        assert_eq!(r.lock_timeout, Duration::from_millis(1));
        assert_eq!(r.max_ttl, Some(3600));
    }
}
