//! Remote key sets of `jwt_auth`: a JWKS URL, or one found by OpenID Connect discovery
//! (identity.md §3.1). Fetched in the background, refreshed on a timer (or sooner when
//! the document says `Cache-Control: max-age`), refetched at once, within a bound, for
//! a token that names an unknown `kid`, and kept across reloads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::policy::{
    identity, BuildCtx, BuildError, Call, CounterVec, GaugeVec, HttpClient, PolicyMetrics,
};
use crate::units::ConfigDuration;

/// Largest discovery or JWKS document.
const MAX_DOCUMENT: usize = 256 * 1024;

/// Most usable keys kept of one set.
const MAX_KEYS: usize = 100;

/// Longest wait between failed attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The timers of a key set: the policy's current values (a reload that keeps the set
/// brings new ones).
#[derive(Debug, Clone)]
pub(super) struct Timers {
    pub(super) refresh: Duration,
    pub(super) min_refetch: Duration,
    pub(super) max_stale: Duration,
    pub(super) timeout: Duration,
    /// The policy's algorithms: keys whose `alg` names another are not used.
    pub(super) algorithms: Vec<Algorithm>,
}

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Source {
    /// A JWKS document.
    Jwks(String),
    /// `{issuer}/.well-known/openid-configuration`, whose `jwks_uri` is the JWKS.
    Discovery { issuer: String, url: String },
}

impl Source {
    /// The discovery URL of `issuer` (a trailing `/` removed first).
    pub(super) fn discovery(issuer: &str) -> Self {
        let base = issuer.strip_suffix('/').unwrap_or(issuer);
        Self::Discovery {
            issuer: issuer.to_string(),
            url: format!("{base}/.well-known/openid-configuration"),
        }
    }
}

/// One usable key of a fetched set.
pub(super) struct Key {
    pub(super) kid: Option<String>,
    pub(super) key: DecodingKey,
    /// The key's own `alg`, when it names one.
    pub(super) alg: Option<Algorithm>,
}

/// A fetched set of usable keys.
pub(super) struct KeySet {
    pub(super) keys: Vec<Key>,
    /// Changes when a fetch brings other keys (tokens verified before are verified
    /// again).
    pub(super) version: u64,
    /// The material of the keys, to tell a changed set from the same one.
    fingerprint: Vec<String>,
    pub(super) fetched_at: Instant,
}

/// Why a key was not found for a token.
pub(super) enum Miss {
    /// No key set (none fetched yet, or dropped after `jwks_max_stale`).
    NoSet,
    /// The token's `kid` is not in the set; `seen` tells later fetches from this one.
    UnknownKid { seen: u64 },
    /// The token cannot be verified with this set (no `kid` and several keys, a key of
    /// another type).
    Invalid(&'static str),
}

/// What a forced refetch for an unknown `kid` did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refetch {
    /// A fetch happened (this one or another one since the miss): look again.
    LookAgain,
    /// Rate limited, or the fetch failed: the token stays unknown.
    No,
}

/// The metric families of key sets.
struct Metrics {
    fetches: CounterVec,
    refetches: CounterVec,
    keys: GaugeVec,
    last_success: GaugeVec,
}

/// A remote key set, shared by the routes of one policy instance and kept across
/// reloads while its route, source and CA file stay.
pub(super) struct RemoteKeys {
    route: String,
    source: Source,
    client: HttpClient,
    timers: ArcSwap<Timers>,
    current: ArcSwapOption<KeySet>,
    /// The last good `jwks_uri` of the discovery document.
    jwks_uri: Mutex<Option<String>>,
    /// When the last forced refetch started.
    forced: tokio::sync::Mutex<Option<Instant>>,
    /// Successful fetches so far.
    fetched: AtomicU64,
    metrics: Metrics,
}

impl RemoteKeys {
    pub(super) fn new(
        route: &str,
        source: Source,
        client: HttpClient,
        timers: Timers,
        metrics: &PolicyMetrics,
    ) -> Self {
        let metrics = Metrics {
            fetches: metrics.counter(
                "tollgate_jwks_fetches_total",
                "Fetches of discovery and JWKS documents, by route, document and result.",
                &["route", "document", "result"],
            ),
            refetches: metrics.counter(
                "tollgate_jwks_refetches_total",
                "Refetches of a JWKS for a token with an unknown kid, by route and result.",
                &["route", "result"],
            ),
            keys: metrics.gauge(
                "tollgate_jwks_keys",
                "Usable keys in the current key set (0 before the first fetch).",
                &["route"],
            ),
            last_success: metrics.gauge(
                "tollgate_jwks_last_success_timestamp_seconds",
                "Unix time of the last successful JWKS fetch (0 before the first).",
                &["route"],
            ),
        };
        Self {
            route: route.to_string(),
            source,
            client,
            timers: ArcSwap::from_pointee(timers),
            current: ArcSwapOption::empty(),
            jwks_uri: Mutex::new(None),
            forced: tokio::sync::Mutex::new(None),
            fetched: AtomicU64::new(0),
            metrics,
        }
    }

    /// Takes the timers of the policy built last (a reload keeps the set, not its
    /// timers).
    pub(super) fn set_timers(&self, timers: Timers) {
        self.timers.store(Arc::new(timers));
    }

    /// The key for a token signed with `alg` naming `kid`.
    pub(super) fn find<T>(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        use_key: impl FnOnce(&DecodingKey, u64) -> T,
    ) -> Result<T, Miss> {
        let seen = self.fetched.load(Ordering::Acquire);
        let set = self.current.load();
        let Some(set) = set.as_ref().filter(|s| self.fresh(s)) else {
            return Err(Miss::NoSet);
        };
        let fits =
            |k: &&Key| crate::jwt_crypto::fits(&k.key, alg) && k.alg.is_none_or(|a| a == alg);
        let key = match kid {
            Some(kid) => {
                let mut named = set.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                let mut named_fit = named.clone().filter(fits);
                match (named_fit.next(), named.next()) {
                    (Some(k), _) => k,
                    (None, Some(_)) => {
                        return Err(Miss::Invalid("the key of this kid does not fit the token"))
                    }
                    (None, None) => return Err(Miss::UnknownKid { seen }),
                }
            }
            None => match set.keys.as_slice() {
                [only] if fits(&only) => only,
                [_] => return Err(Miss::Invalid("the key does not fit the token")),
                _ => return Err(Miss::Invalid("token has no key id")),
            },
        };
        Ok(use_key(&key.key, set.version))
    }

    /// The version of the current set; 0 without one or once it is older than
    /// `jwks_max_stale` (no remembered token has version 0: they are verified again,
    /// and refused with 503).
    pub(super) fn version(&self) -> u64 {
        self.current
            .load()
            .as_ref()
            .filter(|s| self.fresh(s))
            .map_or(0, |s| s.version)
    }

    /// Whether `set` is younger than `jwks_max_stale`.
    fn fresh(&self, set: &KeySet) -> bool {
        set.fetched_at.elapsed() < self.timers.load().max_stale
    }

    /// A forced refetch of the JWKS for a token whose `kid` was unknown when `seen`
    /// fetches had succeeded: at most one starts per `jwks_min_refetch`; requests
    /// that arrive meanwhile wait for it (at most `jwks_timeout`).
    pub(super) async fn refetch(&self, seen: u64) -> Refetch {
        let timers = self.timers.load_full();
        let Ok(mut last) = tokio::time::timeout(timers.timeout, self.forced.lock()).await else {
            return Refetch::No;
        };
        if self.fetched.load(Ordering::Acquire) != seen {
            return Refetch::LookAgain;
        }
        if last.is_some_and(|t| t.elapsed() < timers.min_refetch) {
            self.metrics.refetches.inc(&[&self.route, "rate_limited"]);
            return Refetch::No;
        }
        *last = Some(Instant::now());
        self.metrics.refetches.inc(&[&self.route, "fetched"]);
        let uri = match &self.source {
            Source::Jwks(u) => Some(u.clone()),
            Source::Discovery { .. } => self.last_jwks_uri(),
        };
        let Some(uri) = uri else {
            return Refetch::No;
        };
        match self.fetch_jwks(&uri, &timers).await {
            Ok(_) => Refetch::LookAgain,
            Err(()) => Refetch::No,
        }
    }

    fn last_jwks_uri(&self) -> Option<String> {
        self.jwks_uri
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// One refresh: the discovery document first (with discovery), then the JWKS.
    /// `Ok` carries the document's `max-age`, if it gave one.
    async fn refresh(&self) -> Result<Option<Duration>, ()> {
        let timers = self.timers.load_full();
        let uri = match &self.source {
            Source::Jwks(u) => u.clone(),
            Source::Discovery { issuer, url } => match self.discover(issuer, url, &timers).await {
                Ok(uri) => uri,
                Err(Discovered::Mismatch) => return Err(()),
                Err(Discovered::Failed) => self.last_jwks_uri().ok_or(())?,
            },
        };
        self.fetch_jwks(&uri, &timers).await
    }

    /// Fetches the discovery document and checks it: its `jwks_uri` when it is good.
    async fn discover(
        &self,
        issuer: &str,
        url: &str,
        timers: &Timers,
    ) -> Result<String, Discovered> {
        let doc = match self.get(url, timers).await {
            Ok((doc, _)) => doc,
            Err(reason) => {
                self.failed("discovery", url, &reason);
                return Err(Discovered::Failed);
            }
        };
        let got = doc.get("issuer").and_then(Value::as_str);
        if got != Some(issuer) {
            let reason = format!("issuer mismatch: got {:?}", got.unwrap_or_default());
            self.failed("discovery", url, &reason);
            return Err(Discovered::Mismatch);
        }
        let secure = url.starts_with("https://");
        let uri = doc.get("jwks_uri").and_then(Value::as_str).filter(|u| {
            reqwest::Url::parse(u)
                .is_ok_and(|p| p.scheme() == "https" || (p.scheme() == "http" && !secure))
        });
        let Some(uri) = uri else {
            // a document that is not used: this refresh stops (identity.md §3.1 item 1)
            self.failed("discovery", url, "no usable jwks_uri");
            return Err(Discovered::Mismatch);
        };
        self.metrics.fetches.inc(&[&self.route, "discovery", "ok"]);
        *self
            .jwks_uri
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(uri.to_string());
        Ok(uri.to_string())
    }

    /// Fetches the JWKS at `uri` and, when it holds a usable key, makes it the current
    /// set.
    async fn fetch_jwks(&self, uri: &str, timers: &Timers) -> Result<Option<Duration>, ()> {
        let result = self.get(uri, timers).await.and_then(|(doc, max_age)| {
            let keys = usable(&doc, &timers.algorithms)?;
            Ok((keys, max_age))
        });
        let (keys, max_age) = match result {
            Ok(ok) => ok,
            Err(reason) => {
                self.failed("jwks", uri, &reason);
                return Err(());
            }
        };
        let mut fingerprint: Vec<String> = keys.iter().map(|(f, _)| f.clone()).collect();
        fingerprint.sort_unstable();
        let old = self.current.load();
        // a fresh version from one counter: two fetches at once never give two sets one
        // version (a token verified under one must not pass under the other)
        static VERSIONS: AtomicU64 = AtomicU64::new(1);
        let version = match old.as_deref() {
            Some(o) if o.fingerprint == fingerprint => o.version,
            _ => VERSIONS.fetch_add(1, Ordering::Relaxed),
        };
        let n = keys.len();
        self.current.store(Some(Arc::new(KeySet {
            keys: keys.into_iter().map(|(_, k)| k).collect(),
            version,
            fingerprint,
            fetched_at: Instant::now(),
        })));
        self.fetched.fetch_add(1, Ordering::AcqRel);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.metrics.fetches.inc(&[&self.route, "jwks", "ok"]);
        self.metrics.keys.set(&[&self.route], n as i64);
        self.metrics
            .last_success
            .set(&[&self.route], i64::try_from(now).unwrap_or(i64::MAX));
        Ok(max_age)
    }

    /// GETs a JSON document: its value and `Cache-Control: max-age` (no-store,
    /// no-cache: 0).
    async fn get(&self, url: &str, timers: &Timers) -> Result<(Value, Option<Duration>), String> {
        let req = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Bytes::new())
            .map_err(|e| format!("bad URL: {e}"))?;
        let call = Call::default()
            .timeout(timers.timeout)
            .max_body(MAX_DOCUMENT);
        let (doc, headers) = identity::fetch_json(&self.client, req, call).await?;
        Ok((doc, max_age(&headers)))
    }

    fn failed(&self, document: &str, url: &str, reason: &str) {
        self.metrics.fetches.inc(&[&self.route, document, "error"]);
        tracing::warn!(
            "jwt_auth: route {}: fetching the {document} document {url} failed: {reason}",
            self.route
        );
    }

    /// The first fetch at once, then refreshes: after `jwks_refresh` or the document's
    /// `max-age` (clamped to `jwks_min_refetch`..`jwks_refresh`), plus up to 10 %;
    /// after a failure 1 s, 2 s, 4 s … up to the smaller of `jwks_refresh` and 30 s.
    /// Ends when the key set is dropped.
    pub(super) async fn run(weak: Weak<Self>) {
        let mut failures = 0u32;
        if let Some(keys) = weak.upgrade() {
            if keys.fetched.load(Ordering::Acquire) == 0 {
                keys.metrics.keys.set(&[&keys.route], 0);
                keys.metrics.last_success.set(&[&keys.route], 0);
            } else {
                // fetched already, before the configuration took effect
                let wait = keys.timers.load().refresh;
                drop(keys);
                tokio::time::sleep(wait).await;
            }
        }
        loop {
            let Some(keys) = weak.upgrade() else { return };
            let result = keys.refresh().await;
            let t = keys.timers.load_full();
            let wait = match result {
                Ok(max_age) => {
                    failures = 0;
                    // (not `clamp`: jwks_min_refetch may be longer than jwks_refresh)
                    let next = max_age.map_or(t.refresh, |a| a.max(t.min_refetch).min(t.refresh));
                    next + next.mul_f64(fastrand::f64() * 0.1)
                }
                Err(()) => {
                    failures = failures.saturating_add(1);
                    if !keys
                        .current
                        .load()
                        .as_ref()
                        .is_some_and(|set| keys.fresh(set))
                    {
                        keys.metrics.keys.set(&[&keys.route], 0);
                    }
                    let cap = t.refresh.min(MAX_BACKOFF);
                    Duration::from_secs(1u64 << (failures - 1).min(5)).min(cap)
                }
            };
            drop(keys);
            tokio::time::sleep(wait).await;
        }
    }
}

/// Checks the remote-key options of `config` and gives the policy instance its key
/// set: the running one when a reload keeps route, source and CA file, else a new one
/// fetched in the background.
pub(super) fn build(
    config: &super::JwtAuthConfig,
    algorithms: &[Algorithm],
    cx: &BuildCtx<'_>,
) -> Result<Arc<RemoteKeys>, BuildError> {
    if let Some(hs) = algorithms
        .iter()
        .find(|a| a.family() == jsonwebtoken::AlgorithmFamily::Hmac)
    {
        return Err(BuildError::field(
            "algorithms",
            format!("{hs:?} cannot be used with remote keys: a public document never supplies an HMAC secret"),
        ));
    }
    let source = if config.discovery {
        let Some(issuer) = &config.issuer else {
            return Err(BuildError::field("discovery", "discovery needs `issuer`"));
        };
        Source::discovery(issuer)
    } else {
        Source::Jwks(config.jwks_url.clone().unwrap_or_default())
    };
    let get = |d: &Option<ConfigDuration>, default: u64| {
        d.map_or(Duration::from_secs(default), |d| d.get())
    };
    let timers = Timers {
        refresh: get(&config.jwks_refresh, 300),
        min_refetch: get(&config.jwks_min_refetch, 10),
        max_stale: get(&config.jwks_max_stale, 24 * 3600),
        timeout: get(&config.jwks_timeout, 2),
        algorithms: algorithms.to_vec(),
    };
    for (key, d) in [
        ("jwks_refresh", timers.refresh),
        ("jwks_min_refetch", timers.min_refetch),
    ] {
        if d < Duration::from_secs(1) {
            return Err(BuildError::field(key, "at least 1s"));
        }
    }
    if timers.max_stale <= timers.refresh {
        return Err(BuildError::field(
            "jwks_max_stale",
            "must be longer than jwks_refresh",
        ));
    }
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&timers.timeout) {
        return Err(BuildError::field("jwks_timeout", "between 100ms and 60s"));
    }
    let url = match &source {
        Source::Jwks(u) | Source::Discovery { url: u, .. } => u.clone(),
    };
    let client = identity::service_client(
        cx,
        if config.discovery {
            "issuer"
        } else {
            "jwks_url"
        },
        &url,
        "jwks_ca_file",
        config.jwks_ca_file.as_deref(),
    )?;
    let route = cx.instance_route().to_string();
    let metrics = cx.metrics();
    let key = (&source, &config.jwks_ca_file);
    let keys = cx.state_keyed(&key, || {
        RemoteKeys::new(&route, source.clone(), client, timers.clone(), &metrics)
    });
    // discovery and the JWKS: two fetches, each within jwks_timeout
    let limit = match &source {
        Source::Jwks(_) => timers.timeout,
        Source::Discovery { .. } => timers.timeout * 2,
    };
    keys.set_timers(timers);
    // a reload or an upgrade fetches a new key set before it takes effect
    cx.prepare(&keys, limit, |keys| async move {
        let _ = keys.refresh().await;
    });
    cx.background(&keys, RemoteKeys::run);
    Ok(keys)
}

/// Why discovery gave no `jwks_uri`.
enum Discovered {
    /// The document names another issuer, or no usable `jwks_uri`: this refresh stops.
    Mismatch,
    /// No good document: the last good `jwks_uri` is used.
    Failed,
}

/// `Cache-Control: max-age=N` of a response (`no-store`, `no-cache`: 0).
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let mut age = None;
    for v in headers.get_all(http::header::CACHE_CONTROL) {
        for d in v.to_str().unwrap_or_default().split(',') {
            let d = d.trim().to_ascii_lowercase();
            if d == "no-store" || d == "no-cache" {
                return Some(Duration::ZERO);
            }
            if let Some(n) = d.strip_prefix("max-age=") {
                if let Ok(n) = n.trim_matches('"').parse::<u64>() {
                    age = Some(Duration::from_secs(n));
                }
            }
        }
    }
    age
}

/// The usable keys of a JWKS document (identity.md §3.1 item 5), each with its
/// fingerprint; an error when it has none.
pub(super) fn usable(doc: &Value, algorithms: &[Algorithm]) -> Result<Vec<(String, Key)>, String> {
    let Some(list) = doc.get("keys").and_then(Value::as_array) else {
        return Err("the document has no `keys` array".into());
    };
    let mut out: Vec<(String, Key)> = Vec::new();
    for jwk in list {
        if out.len() == MAX_KEYS {
            break;
        }
        if let Some(k) = usable_key(jwk, algorithms) {
            out.push(k);
        }
    }
    if out.len() > 1 {
        out.retain(|(_, k)| k.kid.is_some());
    }
    if out.is_empty() {
        return Err("the JWKS has no usable key".into());
    }
    Ok(out)
}

/// One JWK, when it is usable.
fn usable_key(jwk: &Value, algorithms: &[Algorithm]) -> Option<(String, Key)> {
    let s = |name: &str| jwk.get(name).and_then(Value::as_str);
    let kind_ok = match (s("kty")?, s("crv")) {
        ("RSA", _) => true,
        ("EC", Some("P-256" | "P-384")) => true,
        ("OKP", Some("Ed25519")) => true,
        _ => false, // oct (symmetric) keys never
    };
    if !kind_ok || s("use").is_some_and(|u| u != "sig") {
        return None;
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verify = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")));
        if !verify {
            return None;
        }
    }
    let alg = match s("alg") {
        Some(a) => {
            let alg = a.parse::<Algorithm>().ok()?;
            if !algorithms.contains(&alg) {
                return None;
            }
            Some(alg)
        }
        None => None,
    };
    // only the members that make the key: a member of a type jsonwebtoken does not
    // know (an `alg` it lacks, say) must not cost the key
    let mut core = serde_json::Map::new();
    for m in ["kty", "crv", "n", "e", "x", "y", "kid"] {
        if let Some(v) = jwk.get(m) {
            core.insert(m.into(), v.clone());
        }
    }
    let parsed: Jwk = serde_json::from_value(Value::Object(core)).ok()?;
    let key = DecodingKey::from_jwk(&parsed).ok()?;
    crate::jwt_crypto::check_key(&key).ok()?;
    if !algorithms.iter().any(|a| crate::jwt_crypto::fits(&key, *a)) {
        return None;
    }
    let fingerprint = format!(
        "{}|{}|{}|{}|{}|{}|{:?}",
        s("kid").unwrap_or_default(),
        s("n").unwrap_or_default(),
        s("e").unwrap_or_default(),
        s("x").unwrap_or_default(),
        s("y").unwrap_or_default(),
        s("crv").unwrap_or_default(),
        alg
    );
    let kid = s("kid").map(str::to_string);
    Some((fingerprint, Key { kid, key, alg }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A fresh P-256 public key as a JWK.
    fn ec_jwk(kid: &str) -> Value {
        use base64::Engine;
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let point = p256::SecretKey::random(&mut rand::thread_rng())
            .public_key()
            .to_encoded_point(false);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        json!({"kty": "EC", "crv": "P-256", "kid": kid,
               "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())})
    }

    #[test]
    fn max_age_is_read_and_no_store_means_zero() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::CACHE_CONTROL, v.parse().unwrap());
            max_age(&m)
        };
        assert_eq!(h("public, max-age=60"), Some(Duration::from_secs(60)));
        assert_eq!(h("no-store"), Some(Duration::ZERO));
        assert_eq!(h("max-age=0"), Some(Duration::ZERO));
        assert_eq!(h("public"), None);
    }

    #[test]
    fn symmetric_encryption_and_foreign_alg_keys_are_never_used() {
        let algs = [Algorithm::ES256];
        assert!(usable_key(&ec_jwk("ok"), &algs).is_some());
        let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"});
        assert!(usable_key(&oct, &algs).is_none());
        let mut enc = ec_jwk("e");
        enc["use"] = json!("enc");
        assert!(usable_key(&enc, &algs).is_none());
        let mut sign_only = ec_jwk("s");
        sign_only["key_ops"] = json!(["sign"]);
        assert!(usable_key(&sign_only, &algs).is_none());
        let mut other_alg = ec_jwk("p");
        other_alg["alg"] = json!("ES384");
        assert!(usable_key(&other_alg, &algs).is_none());
        let p521 = json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "x"});
        assert!(usable_key(&p521, &algs).is_none());
        assert!(usable(&json!({"keys": [oct]}), &algs).is_err());
        assert!(usable(&json!({"nokeys": []}), &algs).is_err());
        // keys without kid count only when the set has one usable key
        let mut lone = ec_jwk("x");
        lone.as_object_mut().unwrap().remove("kid");
        assert_eq!(
            usable(&json!({"keys": [lone.clone()]}), &algs)
                .unwrap()
                .len(),
            1
        );
        let two = usable(&json!({"keys": [lone, ec_jwk("k")]}), &algs).unwrap();
        assert_eq!(two.len(), 1);
        assert_eq!(two[0].1.kid.as_deref(), Some("k"));
        // at most 100 are kept
        let many: Vec<Value> = (0..120).map(|i| ec_jwk(&format!("k{i}"))).collect();
        assert_eq!(
            usable(&json!({"keys": many}), &algs).unwrap().len(),
            MAX_KEYS
        );
    }
}
