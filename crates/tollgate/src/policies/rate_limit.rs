//! `rate_limit`: at most `requests` per fixed `window` for each client key.
//!
//! # Config
//!
//! ```toml
//! [routes.orders.policies.rate_limit]
//! requests = 100           # required: 1 to 4294967294
//! window = "1s"            # default
//! by = "consumer"          # consumer | client_ip (default) | route | path | "header:NAME"
//! store = "local"          # default; "redis" shares the count via [server.redis]
//! on_store_error = "allow"  # default; "deny": 503 when Redis cannot answer in time
//! ```
//!
//! Every final response on the route carries `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` (seconds to the end of the window). Over the limit the answer is 429
//! `rate_limited` with `Retry-After` (whole seconds, at least 1), and the request never
//! reaches the upstream. With `by = "consumer"` (or a header) and no consumer (or no such
//! header), the client IP is the key.
//!
//! With `store = "local"`, counting is local to the process, in fixed windows aligned to
//! the process clock, in a count-min sketch whose counters carry their window (so a
//! window's end clears nothing): memory is bounded (2 MiB per distinct window length,
//! shared by every limiter) whatever the number of keys; with very many distinct keys
//! in one window the estimate can only over-count. Counts are keyed by the policy's key
//! path, so they survive a reload.
//!
//! With `store = "redis"`, every instance using the same Redis shares one count per key
//! (`tollgate:rl:<policy path>:<window>:<key>`, windows aligned to wall-clock time, one
//! atomic script per request, so concurrent instances never over-admit). When Redis does
//! not answer within `[server.redis] timeout`, `on_store_error` decides: `allow` lets the
//! request through, `deny` answers 503 `overloaded` with `Retry-After`.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::proxy::Session;
use pingora::Result;
use serde::Deserialize;
use tokio::time::Instant;

use crate::context::RequestCtx;
use crate::policy::{BuildCtx, BuildError, Flow, Policy, PolicyConfig, Stage};
use crate::reply::{ErrorCode, Reply};
use crate::request_key::RequestKey;
use crate::store::RedisStore;
use crate::units::ConfigDuration;

// === Config ===

/// Where counts are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Store {
    /// In this process. The default.
    #[default]
    Local,
    /// In `[server.redis]`, shared by every instance.
    Redis,
}

/// What to do when the shared store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Let the request through. The default.
    #[default]
    Allow,
    /// Answer 503 `overloaded`.
    Deny,
}

/// `rate_limit` config. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per window and key. Required, at least 1.
    pub requests: u64,
    /// Window length. Default: `1s`.
    #[serde(default = "one_second")]
    pub window: ConfigDuration,
    /// What identifies a client. Default: `client_ip`.
    #[serde(default)]
    pub by: RequestKey,
    /// Where counts are kept. Default: `local`.
    #[serde(default)]
    pub store: Store,
    /// With `store = "redis"`: what to do when Redis cannot be reached. Default: `allow`.
    #[serde(default)]
    pub on_store_error: OnStoreError,
}

fn one_second() -> ConfigDuration {
    ConfigDuration::new(Duration::from_secs(1))
}

impl PolicyConfig for RateLimitConfig {
    type Policy = RateLimit;
    fn build(self, cx: &BuildCtx<'_>) -> Result<RateLimit, BuildError> {
        if self.requests == 0 {
            return Err(BuildError::field("requests", "requests must be at least 1"));
        }
        if self.requests > MAX_REQUESTS {
            return Err(BuildError::field(
                "requests",
                format!("requests must be at most {MAX_REQUESTS}"),
            ));
        }
        let window = self.window.get();
        if window < Duration::from_millis(100) || window > Duration::from_secs(24 * 3600) {
            return Err(BuildError::field(
                "window",
                "window must be between 100ms and 24h",
            ));
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        cx.path.hash(&mut h);
        let counter = match self.store {
            // one sketch per window length, shared by every local limiter of that
            // length (their keys are told apart by the policy's path) and kept across
            // reloads (CROSSCUTTING.md rule 7.5)
            Store::Local => Counter::Local(
                cx.shared_state(&window, || FixedWindows::new(window, Instant::now())),
                h.finish(),
            ),
            Store::Redis => match cx.redis {
                Some(store) => Counter::Redis {
                    store: store.clone(),
                    prefix: format!("tollgate:rl:{}:", cx.path).into_bytes(),
                    window_ms: window.as_millis() as u64,
                    on_error: self.on_store_error,
                },
                None => {
                    return Err(BuildError::field(
                        "store",
                        "store = \"redis\" needs a [server.redis] table",
                    ))
                }
            },
        };
        Ok(RateLimit {
            limit: self.requests,
            limit_value: self.requests.into(),
            by: self.by,
            counter,
        })
    }
}

// === Counting ===

/// Rows of the sketch; each takes 16 bits of the key's one 64-bit hash.
const ROWS: usize = 4;
/// Counters per row (2^16).
const SLOTS: usize = 1 << 16;
/// Largest `requests`: a local counter holds 32 bits and stops at their maximum, which
/// must still be over the limit.
const MAX_REQUESTS: u64 = u32::MAX as u64 - 1;

/// Fixed windows of one length, counted in one count-min sketch whose counters carry
/// the window they count: a counter last touched in an earlier window starts again
/// from zero when next touched, so nothing is ever cleared wholesale (no pause at a
/// window's end) and memory (2 MiB) is one sketch whatever the number of keys.
pub struct FixedWindows {
    window_ms: u64,
    epoch: Instant,
    /// `ROWS * SLOTS` counters: window index (low 32 bits) << 32 | count.
    counters: Box<[AtomicU64]>,
    /// Keyed (aHash, seeded at random): clients choose keys (a header, a path), not
    /// where they land.
    hasher: ahash::RandomState,
}

impl fmt::Debug for FixedWindows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedWindows")
            .field("window_ms", &self.window_ms)
            .finish_non_exhaustive()
    }
}

/// The outcome of counting one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is within the limit.
    pub allowed: bool,
    /// Requests left in this window.
    pub remaining: u64,
    /// Time to the end of the window.
    pub reset: Duration,
}

impl FixedWindows {
    /// Windows of `window` starting at `epoch`.
    pub fn new(window: Duration, epoch: Instant) -> Self {
        Self {
            window_ms: (window.as_millis() as u64).max(1),
            epoch,
            counters: (0..ROWS * SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    /// Counts one request for `key` at `now` against `limit`.
    pub fn check(&self, key: &(u64, &[u8]), limit: u64, now: Instant) -> Decision {
        let elapsed = now.saturating_duration_since(self.epoch).as_millis() as u64;
        // windows are told apart by the low 32 bits of their index, ordered on a circle:
        // a counter left untouched for 2^31 windows (6.8 years of the shortest, 100 ms)
        // could be taken for a current one
        let window = (elapsed / self.window_ms) as u32;
        let hash = self.hasher.hash_one(key);
        let n = (0..ROWS)
            .map(|row| {
                let slot = (hash >> (16 * row)) as usize & (SLOTS - 1);
                count(&self.counters[row * SLOTS + slot], window)
            })
            .min()
            .unwrap_or(u64::MAX);
        Decision {
            allowed: n <= limit,
            remaining: limit.saturating_sub(n),
            reset: Duration::from_millis(self.window_ms - elapsed % self.window_ms),
        }
    }
}

/// Adds one to `counter` for `window` and returns its count. A counter of an earlier
/// window starts again at one; a request counted late, after another already counted
/// in a later window, is counted in that later one (never resetting it).
fn count(counter: &AtomicU64, window: u32) -> u64 {
    let mut current = counter.load(Ordering::Relaxed);
    loop {
        let (tag, n) = ((current >> 32) as u32, current & u64::from(u32::MAX));
        let next = if window_before(tag, window) {
            u64::from(window) << 32 | 1
        } else {
            // saturates rather than carrying into the window's bits
            current + u64::from(n < u64::from(u32::MAX))
        };
        match counter.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next & u64::from(u32::MAX),
            Err(seen) => current = seen,
        }
    }
}

/// Whether window `a` came before window `b`, on the 32-bit circle of window indexes.
fn window_before(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) > 0
}

// === Policy ===

/// Where a limiter counts.
#[derive(Debug)]
enum Counter {
    /// In-process windows; the `u64` tells this limiter's keys apart from others'.
    Local(Arc<FixedWindows>, u64),
    /// In Redis, shared by every instance.
    Redis {
        store: Arc<RedisStore>,
        prefix: Vec<u8>,
        window_ms: u64,
        on_error: OnStoreError,
    },
}

/// Limits requests per window and key.
#[derive(Debug)]
pub struct RateLimit {
    limit: u64,
    /// `limit` as the `RateLimit-Limit` value, made once.
    limit_value: HeaderValue,
    by: RequestKey,
    counter: Counter,
}

impl RateLimit {
    /// Counts this request; `Err` carries the answer to give when the store failed.
    async fn count(&self, key: &[u8]) -> std::result::Result<Decision, Flow> {
        match &self.counter {
            Counter::Local(windows, id) => {
                Ok(windows.check(&(*id, key), self.limit, Instant::now()))
            }
            Counter::Redis {
                store,
                prefix,
                window_ms,
                on_error,
            } => {
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as u64;
                let index = now_ms / window_ms;
                let reset = Duration::from_millis(window_ms - now_ms % window_ms);
                let mut k = Vec::with_capacity(prefix.len() + 24 + key.len());
                k.extend_from_slice(prefix);
                k.extend_from_slice(index.to_string().as_bytes());
                k.push(b':');
                k.extend_from_slice(key);
                match store.incr_window(&k, reset + Duration::from_secs(1)).await {
                    Ok(n) => Ok(Decision {
                        allowed: n <= self.limit,
                        remaining: self.limit.saturating_sub(n),
                        reset,
                    }),
                    Err(e) => {
                        tracing::warn!("rate_limit: {e}");
                        match on_error {
                            OnStoreError::Allow => Err(Flow::Continue),
                            OnStoreError::Deny => Err(Flow::Respond(
                                Reply::refuse_with(
                                    ErrorCode::Overloaded,
                                    "rate limit store unavailable",
                                )
                                .header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
                            )),
                        }
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Policy for RateLimit {
    fn stage(&self) -> Stage {
        Stage::Traffic
    }

    async fn request_filter(&self, session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        let mut key = crate::request_key::KeyBuf::new();
        self.by.write(cx, &session.req_header().headers, &mut key);
        let d = match self.count(&key).await {
            Ok(d) => d,
            Err(flow) => return Ok(flow),
        };
        static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
        static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
        static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
        let reset_secs = d.reset.as_secs() + u64::from(d.reset.subsec_nanos() > 0);
        // on the final answer to this request, the upstream's or a refusal
        cx.set_response_header(LIMIT.clone(), self.limit_value.clone());
        cx.set_response_header(REMAINING.clone(), int_value(d.remaining));
        cx.set_response_header(RESET.clone(), int_value(reset_secs));
        if d.allowed {
            return Ok(Flow::Continue);
        }
        Ok(Flow::Respond(
            Reply::refuse_with(
                ErrorCode::RateLimited,
                format!("rate limit of {} requests exceeded", self.limit),
            )
            .header(http::header::RETRY_AFTER, int_value(reset_secs.max(1))),
        ))
    }
}

/// `n` as a header value. Those under 1024 (most `RateLimit-Remaining` and `-Reset`
/// values) are cut from one string made once, so a request's copy points at static
/// bytes instead of allocating.
fn int_value(n: u64) -> HeaderValue {
    const SMALL: usize = 1024;
    static VALUES: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let values = VALUES.get_or_init(|| {
        let mut digits = String::new();
        let mut ends = Vec::with_capacity(SMALL);
        for i in 0..SMALL {
            digits.push_str(&i.to_string());
            ends.push(digits.len());
        }
        let digits: &'static str = Box::leak(digits.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let v = HeaderValue::from_static(&digits[start..end]);
                start = end;
                v
            })
            .collect()
    });
    usize::try_from(n)
        .ok()
        .and_then(|i| values.get(i).cloned())
        .unwrap_or_else(|| n.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn integer_header_values_match_their_formatting() {
        for n in (0..1100).chain([u64::from(u32::MAX), u64::MAX]) {
            assert_eq!(int_value(n), HeaderValue::from(n), "{n}");
        }
    }

    #[test]
    fn allows_up_to_the_limit_per_key_then_refuses() {
        let epoch = Instant::now();
        let w = FixedWindows::new(Duration::from_secs(1), epoch);
        let t = epoch + Duration::from_millis(100);
        for i in 1..=5 {
            let d = w.check(&(1, b"a".as_slice()), 5, t);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 5 - i);
        }
        let d = w.check(&(1, b"a".as_slice()), 5, t);
        assert!(!d.allowed);
        assert_eq!(d.reset, Duration::from_millis(900));
        assert!(
            w.check(&(1, b"b".as_slice()), 5, t).allowed,
            "another key has its own budget"
        );
        assert!(
            w.check(&(2, b"a".as_slice()), 5, t).allowed,
            "another limiter has its own budget"
        );
    }

    #[test]
    fn resets_in_the_next_window_and_forgets_old_ones() {
        let epoch = Instant::now();
        let w = FixedWindows::new(Duration::from_secs(1), epoch);
        let key = (1, b"k".as_slice());
        for _ in 0..3 {
            w.check(&key, 3, epoch);
        }
        assert!(!w.check(&key, 3, epoch + Duration::from_millis(999)).allowed);
        let d = w.check(&key, 3, epoch + Duration::from_millis(1000));
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
        assert_eq!(d.reset, Duration::from_secs(1));
        // skipping several windows starts from zero too
        let d = w.check(&key, 3, epoch + Duration::from_millis(5500));
        assert_eq!(d.remaining, 2);
    }

    #[test]
    fn a_late_request_counts_in_the_newer_window_without_resetting_it() {
        let epoch = Instant::now();
        let w = FixedWindows::new(Duration::from_secs(1), epoch);
        let key = (1, b"k".as_slice());
        assert_eq!(
            w.check(&key, 5, epoch + Duration::from_millis(1001))
                .remaining,
            4
        );
        // a request of window 0 that reaches the counter after window 1 began
        assert_eq!(
            w.check(&key, 5, epoch + Duration::from_millis(999))
                .remaining,
            3
        );
        assert_eq!(
            w.check(&key, 5, epoch + Duration::from_millis(1002))
                .remaining,
            2
        );
    }

    #[test]
    fn concurrent_requests_are_each_counted_once() {
        let epoch = Instant::now();
        let w = FixedWindows::new(Duration::from_secs(60), epoch);
        let key = (7, b"shared".as_slice());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        w.check(&key, u64::MAX, epoch);
                    }
                });
            }
        });
        assert_eq!(w.check(&key, 4001, epoch).remaining, 0);
    }

    #[test]
    fn other_keys_do_not_eat_a_keys_budget() {
        let epoch = Instant::now();
        let w = FixedWindows::new(Duration::from_secs(1), epoch);
        for i in 0..1000u32 {
            w.check(&(1, i.to_string().as_bytes()), 10, epoch);
        }
        // four rows of 65,536 counters: a fresh key collides in all four with odds
        // of about 1 in 20 million
        assert_eq!(w.check(&(1, b"fresh".as_slice()), 10, epoch).remaining, 9);
        // a counter only ever says a count too high, never too low
        let d = w.check(&(1, b"7".as_slice()), 10, epoch);
        assert!(d.remaining <= 8, "{d:?}");
    }

    #[test]
    fn a_saturated_counter_is_still_over_the_largest_limit() {
        let c = AtomicU64::new(u64::from(u32::MAX) - 1);
        assert_eq!(count(&c, 0), u64::from(u32::MAX));
        assert_eq!(count(&c, 0), u64::from(u32::MAX), "stays, never carries");
        assert!(u64::from(u32::MAX) > MAX_REQUESTS);
        assert_eq!(count(&c, 1), 1, "the next window starts again");
    }

    #[test]
    fn counts_match_an_exact_count_across_windows() {
        // the sketch against a plain map of (window, key) -> count, over a random walk of
        // keys and times crossing many windows: never below it, and with a few hundred
        // keys in 4 x 65,536 counters, equal to it
        let epoch = Instant::now();
        let w = FixedWindows::new(Duration::from_millis(100), epoch);
        let mut exact: HashMap<(u64, u32), u64> = HashMap::new();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut t = 0u64;
        for _ in 0..20_000 {
            t += rng.u64(0..3);
            let key = rng.u32(0..300);
            let name = key.to_string();
            let d = w.check(
                &(1, name.as_bytes()),
                u64::MAX,
                epoch + Duration::from_millis(t),
            );
            let n = exact.entry((t / 100, key)).or_default();
            *n += 1;
            assert_eq!(u64::MAX - d.remaining, *n, "key {key} at {t} ms");
            assert_eq!(d.reset, Duration::from_millis(100 - t % 100));
        }
        assert!(t > 10_000, "the walk crossed many windows: {t} ms");
    }

    #[test]
    fn windows_are_ordered_on_a_circle() {
        assert!(window_before(0, 1));
        assert!(!window_before(1, 1));
        assert!(!window_before(2, 1));
        assert!(window_before(u32::MAX, 0), "across the wrap");
    }

    #[test]
    fn config_parses_key_sources_and_rejects_bad_ones() {
        let c: RateLimitConfig = toml::from_str("requests = 5\nby = \"header:x-user\"").unwrap();
        assert_eq!(
            c.by,
            RequestKey::Header(http::HeaderName::from_static("x-user"))
        );
        assert_eq!(c.window.get(), Duration::from_secs(1));
        assert!(toml::from_str::<RateLimitConfig>("requests = 5\nby = \"ip\"").is_err());
        assert!(
            toml::from_str::<RateLimitConfig>("requests = 5\nby = \"header:bad name\"").is_err()
        );
        assert!(toml::from_str::<RateLimitConfig>("requests = -1").is_err());
        let cx = BuildCtx::new(std::path::Path::new("."), "p");
        let redis: RateLimitConfig = toml::from_str("requests = 5\nstore = \"redis\"").unwrap();
        let e = redis.build(&cx).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("store"));
        assert!(e.message.contains("[server.redis]"), "{e}");
        let zero: RateLimitConfig = toml::from_str("requests = 0").unwrap();
        assert_eq!(
            zero.build(&cx).unwrap_err().field.as_deref(),
            Some("requests")
        );
        let huge: RateLimitConfig = toml::from_str("requests = 4294967295").unwrap();
        let e = huge.build(&cx).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("requests"));
        assert!(e.message.contains("4294967294"), "{e}");
        let most: RateLimitConfig = toml::from_str("requests = 4294967294").unwrap();
        assert!(most.build(&cx).is_ok());
    }
}
