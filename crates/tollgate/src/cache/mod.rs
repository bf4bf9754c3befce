//! Response caching (`cache.md`): what a route caches ([`CacheRules`], declared by the
//! `cache` policy or one of yours through [`Policy::cache_rules`](crate::policy::Policy::cache_rules)),
//! the key of an entry, the freshness of a response, and the process's one bounded
//! store. Pingora's cache engine (`pingora-cache`) does the lookup, the cache lock
//! that coalesces misses, revalidation and stale serving; the proxy maps its hooks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use http::HeaderName;

pub(crate) mod fresh;
pub(crate) mod key;
pub(crate) mod purge;
pub(crate) mod store;

/// How a route caches its responses (`[routes.X.policies.cache]`, `cache.md` §2).
///
/// Build one with [`CacheRules::default`] and set its fields. Durations are whole
/// seconds. Two routes' entries never mix: the route is part of every key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct CacheRules {
    /// Freshness, in seconds, of a response that carries none (0: not stored).
    pub ttl: u32,
    /// Per-status replacement of `ttl`.
    pub status_ttl: BTreeMap<u16, u32>,
    /// The statuses that may be stored.
    pub statuses: BTreeSet<u16>,
    /// Whether GET requests use the cache.
    pub get: bool,
    /// Whether HEAD requests use the cache (answered from the GET entry).
    pub head: bool,
    /// Whether the upstream's freshness information counts.
    pub respect_cache_control: bool,
    /// The longest freshness of any entry, in seconds.
    pub max_ttl: Option<u32>,
    /// Request headers whose values are part of the key (lowercase).
    pub vary_headers: Vec<HeaderName>,
    /// Only these query parameters are part of the key (`None`: the whole query).
    pub vary_query: Option<Vec<String>>,
    /// Entries are shared between consumers, and credentialed requests use the cache
    /// on a route without authentication.
    pub shared: bool,
    /// Responses with `Set-Cookie` are stored without it (else not stored).
    pub strip_set_cookie: bool,
    /// Seconds after its freshness that an entry is served while one request refreshes it.
    pub stale_while_revalidate: u32,
    /// Seconds after its freshness that an entry is served when the upstream fails.
    pub stale_if_error: u32,
    /// How long a request waits for another's fetch of the same key.
    pub lock_timeout: Duration,
    /// Whether responses carry `X-Cache-Status`.
    pub status_header: bool,
}

impl Default for CacheRules {
    /// `cache.md` §2's defaults.
    fn default() -> Self {
        Self {
            ttl: 300,
            status_ttl: BTreeMap::new(),
            statuses: [200, 301, 404].into_iter().collect(),
            get: true,
            head: true,
            respect_cache_control: true,
            max_ttl: None,
            vary_headers: Vec::new(),
            vary_query: None,
            shared: false,
            strip_set_cookie: false,
            stale_while_revalidate: 0,
            stale_if_error: 0,
            lock_timeout: Duration::from_secs(3),
            status_header: true,
        }
    }
}

impl CacheRules {
    /// What identifies these rules' entries across reloads: entries stay while their
    /// route stays and its rules are equal.
    pub(crate) fn generation(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

/// How a response of a cached route was made (`X-Cache-Status`, `cache.md` §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheStatus {
    /// From a fresh entry.
    Hit,
    /// From the upstream: no usable entry.
    Miss,
    /// An expired entry, replaced (or removed) by the upstream's full response.
    Expired,
    /// An expired entry, confirmed by the upstream's 304.
    Revalidated,
    /// An expired entry served within a stale window.
    Stale,
    /// The request did not use the cache.
    Bypass,
}

impl CacheStatus {
    /// The header value (`HIT`, `MISS`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Expired => "EXPIRED",
            Self::Revalidated => "REVALIDATED",
            Self::Stale => "STALE",
            Self::Bypass => "BYPASS",
        }
    }

    /// The metric label (`hit`, `miss`, …).
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Expired => "expired",
            Self::Revalidated => "revalidated",
            Self::Stale => "stale",
            Self::Bypass => "bypass",
        }
    }
}

/// `[server.cache]`: the store's byte cap and its largest object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    pub memory: u64,
    pub max_object: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            memory: 64 << 20,
            max_object: 1 << 20,
        }
    }
}

/// The store in force and the lock that coalesces fetches of one key: one per process.
/// A reload that changes `[server.cache]` puts a new, empty store in place.
pub(crate) struct Shelf {
    current: arc_swap::ArcSwapOption<&'static store::Store>,
    lock: &'static pingora_cache::lock::CacheKeyLockImpl,
}

impl std::fmt::Debug for Shelf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shelf").finish_non_exhaustive()
    }
}

/// How long a fetch holds its key's lock before waiting requests may compete for it
/// again (a fetch that hangs); each request waits at most its route's `lock_timeout`.
const LOCK_AGE: Duration = Duration::from_secs(60);

impl Shelf {
    pub(crate) fn new() -> Self {
        let lock: &'static pingora_cache::lock::CacheLock =
            Box::leak(pingora_cache::lock::CacheLock::new_boxed(LOCK_AGE));
        Self {
            current: arc_swap::ArcSwapOption::empty(),
            lock,
        }
    }

    /// The store, when a route caches.
    pub(crate) fn store(&self) -> Option<&'static store::Store> {
        self.current.load().as_deref().copied()
    }

    pub(crate) fn lock(&self) -> &'static pingora_cache::lock::CacheKeyLockImpl {
        self.lock
    }

    /// Puts the store `settings` describe in force for the routes that cache (`live`:
    /// route name and rules generation): the running one when its settings are the
    /// same (minus the entries of routes gone or changed), else a new, empty one. With
    /// no route caching, there is no store.
    pub(crate) fn configure(
        &self,
        settings: Settings,
        live: &std::collections::HashMap<&str, u64>,
        metrics: &crate::metrics::CacheMetrics,
    ) {
        let running = self.store();
        match running {
            Some(s) if s.settings() == settings && !live.is_empty() => s.retain_live(live),
            _ => {
                let new = (!live.is_empty())
                    .then(|| std::sync::Arc::new(store::Store::leak(settings, metrics.clone())));
                self.current.store(new);
                if let Some(old) = running {
                    old.retire();
                }
                if self.store().is_none() {
                    metrics.bytes.set(0);
                    metrics.objects.set(0);
                }
            }
        }
    }
}
