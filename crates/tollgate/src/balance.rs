//! Choosing a backend: Pingora's load balancers for `round_robin`, `random` and
//! `consistent_hash` (Ketama), and in-flight counting for `least_conn`.

use rustc_hash::FxHashMap as HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pingora::lb::selection::consistent::KetamaHashing;
use pingora::lb::selection::{Random, RoundRobin};
use pingora::lb::{Backend, LoadBalancer};

use crate::request_key::RequestKey;

/// How an upstream spreads requests over its backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Balance {
    /// Weighted round robin. The default.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Ketama consistent hashing on `hash_key`.
    ConsistentHash,
    /// Fewest in-flight requests.
    LeastConn,
}

/// Passive health: consecutive connect failures per backend. A backend that failed
/// `threshold` times in a row is skipped for `cooldown`, then tried again (one failure
/// then takes it out again); any response from it resets its count.
#[derive(Debug)]
pub(crate) struct Passive {
    threshold: u32,
    cooldown_ms: u64,
    epoch: tokio::time::Instant,
    state: HashMap<SocketAddr, (std::sync::atomic::AtomicU32, std::sync::atomic::AtomicU64)>,
}

impl Passive {
    /// Tracks these backend addresses.
    pub(crate) fn new(
        addrs: impl IntoIterator<Item = SocketAddr>,
        threshold: u32,
        cooldown: std::time::Duration,
    ) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown_ms: cooldown.as_millis() as u64,
            epoch: tokio::time::Instant::now(),
            state: addrs.into_iter().map(|a| (a, Default::default())).collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Records a failed connect to `addr`.
    pub(crate) fn failed(&self, addr: SocketAddr) {
        if let Some((n, until)) = self.state.get(&addr) {
            if n.fetch_add(1, Ordering::AcqRel) + 1 >= self.threshold {
                until.store(self.now_ms() + self.cooldown_ms, Ordering::Release);
            }
        }
    }

    /// Records a response from `addr`.
    pub(crate) fn succeeded(&self, addr: SocketAddr) {
        if let Some((n, until)) = self.state.get(&addr) {
            n.store(0, Ordering::Release);
            until.store(0, Ordering::Release);
        }
    }

    /// True while `addr` is taken out.
    pub(crate) fn is_down(&self, addr: SocketAddr) -> bool {
        // the usual case, never taken out, reads no clock
        self.state.get(&addr).is_some_and(|(_, until)| {
            let until = until.load(Ordering::Acquire);
            until != 0 && self.now_ms() < until
        })
    }
}

/// In-flight requests per backend, for `least_conn`.
#[derive(Debug, Default)]
pub(crate) struct LeastConn {
    inflight: HashMap<SocketAddr, AtomicUsize>,
}

/// One request's hold on a backend; dropping it ends the request for `least_conn`.
pub(crate) struct BackendSlot {
    counts: Arc<LeastConn>,
    addr: SocketAddr,
}

impl fmt::Debug for BackendSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BackendSlot").field(&self.addr).finish()
    }
}

impl Drop for BackendSlot {
    fn drop(&mut self) {
        if let Some(c) = self.counts.inflight.get(&self.addr) {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl LeastConn {
    /// Tracks these backend addresses.
    pub(crate) fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self {
            inflight: addrs
                .into_iter()
                .map(|a| (a, AtomicUsize::new(0)))
                .collect(),
        }
    }

    /// Requests in flight on `addr`.
    pub(crate) fn inflight(&self, addr: SocketAddr) -> usize {
        self.inflight
            .get(&addr)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// The candidate with the fewest in-flight requests per unit of weight (first wins ties).
    fn pick<'b>(&self, candidates: impl Iterator<Item = &'b Backend>) -> Option<&'b Backend> {
        candidates.min_by(|a, b| {
            let (ia, ib) = (self.inflight(addr_of(a)), self.inflight(addr_of(b)));
            (ia * b.weight.max(1)).cmp(&(ib * a.weight.max(1)))
        })
    }
}

/// The balancing algorithm of an upstream.
pub(crate) enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<KetamaHashing>, RequestKey),
    LeastConn(LoadBalancer<RoundRobin>, Arc<LeastConn>),
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RoundRobin(_) => "RoundRobin",
            Self::Random(_) => "Random",
            Self::Consistent(..) => "Consistent",
            Self::LeastConn(..) => "LeastConn",
        })
    }
}

impl Selector {
    /// The backends and their health.
    pub(crate) fn backends(&self) -> &pingora::lb::Backends {
        match self {
            Self::RoundRobin(lb) | Self::LeastConn(lb, _) => lb.backends(),
            Self::Random(lb) => lb.backends(),
            Self::Consistent(lb, _) => lb.backends(),
        }
    }

    /// The hash key, for `consistent_hash`.
    pub(crate) fn hash_key(&self) -> Option<&RequestKey> {
        match self {
            Self::Consistent(_, k) => Some(k),
            _ => None,
        }
    }

    /// Picks a backend for `key`, preferring ones not in `avoid` (already tried); falls
    /// back to any backend when every other was tried. For `least_conn` the returned slot
    /// must be held until the request ends.
    ///
    /// `checked`: whether active health checks run on the backends; without them every
    /// backend is healthy, and one alone is picked without asking Pingora (a hash of the
    /// backend and a map look-up per request).
    pub(crate) fn select(
        &self,
        key: &[u8],
        avoid: &[SocketAddr],
        passive: Option<&Passive>,
        checked: bool,
    ) -> Option<(Backend, Option<BackendSlot>)> {
        let up = |b: &Backend| passive.is_none_or(|p| !p.is_down(addr_of(b)));
        let untried = |b: &Backend| !avoid.contains(&addr_of(b));
        match self {
            Self::RoundRobin(lb) => pick(lb, key, checked, up, untried),
            Self::Random(lb) => pick(lb, key, checked, up, untried),
            Self::Consistent(lb, _) => pick(lb, key, checked, up, untried),
            Self::LeastConn(lb, counts) => {
                let backends = lb.backends().get_backend();
                let healthy: Vec<&Backend> = backends
                    .iter()
                    .filter(|b| lb.backends().ready(b) && up(b))
                    .collect();
                let chosen = counts
                    .pick(healthy.iter().copied().filter(|b| untried(b)))
                    .or_else(|| counts.pick(healthy.iter().copied()))?
                    .clone();
                let addr = addr_of(&chosen);
                counts.inflight.get(&addr)?.fetch_add(1, Ordering::AcqRel);
                Some((
                    chosen,
                    Some(BackendSlot {
                        counts: counts.clone(),
                        addr,
                    }),
                ))
            }
        }
    }
}

/// A backend's socket address (backends are always `IP:PORT`, checked at load).
fn addr_of(b: &Backend) -> SocketAddr {
    b.addr
        .as_inet()
        .copied()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Pingora's selection over healthy, passively-up backends, preferring untried ones.
fn pick<S>(
    lb: &LoadBalancer<S>,
    key: &[u8],
    checked: bool,
    up: impl Fn(&Backend) -> bool,
    untried: impl Fn(&Backend) -> bool,
) -> Option<(Backend, Option<BackendSlot>)>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    // one backend: nothing to choose between (Pingora's selection iterates, hashes and
    // de-duplicates its way to the same answer)
    let backends = lb.backends().get_backend();
    if let (1, Some(only)) = (backends.len(), backends.first()) {
        let healthy = !checked || lb.backends().ready(only);
        return (healthy && up(only)).then(|| (only.clone(), None));
    }
    lb.select_with(key, 256, |b, healthy| healthy && up(b) && untried(b))
        .or_else(|| lb.select_with(key, 256, |b, healthy| healthy && up(b)))
        .map(|b| (b, None))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use pingora::lb::discovery::Static;
    use pingora::lb::Backends;

    use super::*;

    fn lb<S>(addrs: &[&str]) -> LoadBalancer<S>
    where
        S: pingora::lb::selection::BackendSelection + 'static,
        S::Iter: pingora::lb::selection::BackendIter,
    {
        let set: BTreeSet<Backend> = addrs.iter().map(|a| Backend::new(a).unwrap()).collect();
        let lb = LoadBalancer::from_backends(Backends::new(Static::new(set)));
        crate::config::now_or_never(lb.update());
        lb
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn owner(s: &Selector, key: &str) -> String {
        s.select(key.as_bytes(), &[], None, true)
            .unwrap()
            .0
            .addr
            .to_string()
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_only_the_removed_share() {
        let three = Selector::Consistent(
            lb(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]),
            RequestKey::ClientIp,
        );
        let two = Selector::Consistent(lb(&["127.0.0.1:1", "127.0.0.1:2"]), RequestKey::ClientIp);
        let keys: Vec<String> = (0..3000)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
            .collect();
        let mut moved = 0;
        let mut on_removed = 0;
        for k in &keys {
            let before = owner(&three, k);
            assert_eq!(before, owner(&three, k), "not stable");
            if before == "127.0.0.1:3" {
                on_removed += 1;
            } else if owner(&two, k) != before {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "keys of remaining backends moved");
        assert!(
            (700..1300).contains(&on_removed),
            "uneven share: {on_removed} of 3000"
        );
    }

    #[test]
    fn retries_avoid_tried_backends() {
        let s = Selector::Consistent(lb(&["127.0.0.1:1", "127.0.0.1:2"]), RequestKey::Path);
        let first = owner(&s, "/x");
        let first_addr: SocketAddr = first.parse().unwrap();
        let second = s
            .select(b"/x", &[first_addr], None, true)
            .unwrap()
            .0
            .addr
            .to_string();
        assert_ne!(first, second);
    }

    #[test]
    fn least_conn_prefers_the_idle_backend_and_releases_on_drop() {
        let addrs = ["127.0.0.1:1", "127.0.0.1:2"];
        let counts = Arc::new(LeastConn::new(addrs.map(sa)));
        let s = Selector::LeastConn(lb(&addrs), counts.clone());
        let (a, slot_a) = s.select(b"", &[], None, true).unwrap();
        let (b, slot_b) = s.select(b"", &[], None, true).unwrap();
        assert_ne!(
            a.addr, b.addr,
            "the second request went to the busy backend"
        );
        drop(slot_b);
        let (c, _slot_c) = s.select(b"", &[], None, true).unwrap();
        assert_eq!(c.addr, b.addr, "the freed backend is the idle one");
        assert_eq!(counts.inflight(addr_of(&a)), 1);
        drop(slot_a);
        assert_eq!(counts.inflight(addr_of(&a)), 0);
    }

    #[test]
    fn passive_failures_take_a_backend_out_until_it_answers() {
        let (a, b) = (sa("10.0.0.1:1"), sa("10.0.0.2:1"));
        let p = Passive::new([a, b], 2, std::time::Duration::from_secs(60));
        p.failed(a);
        assert!(!p.is_down(a), "one failure is below the threshold");
        p.failed(a);
        assert!(p.is_down(a));
        assert!(!p.is_down(b));
        p.succeeded(a);
        assert!(!p.is_down(a));
        let s = Selector::RoundRobin(lb(&["127.0.0.1:1", "127.0.0.1:2"]));
        let p = Passive::new(
            [sa("127.0.0.1:1"), sa("127.0.0.1:2")],
            1,
            std::time::Duration::from_secs(60),
        );
        p.failed(sa("127.0.0.1:1"));
        for _ in 0..4 {
            assert_eq!(
                s.select(b"", &[], Some(&p), true)
                    .unwrap()
                    .0
                    .addr
                    .to_string(),
                "127.0.0.1:2"
            );
        }
        p.failed(sa("127.0.0.1:2"));
        assert!(
            s.select(b"", &[], Some(&p), true).is_none(),
            "every backend down: no backend"
        );
        // one backend: chosen while it is up, tried or not
        let one = Selector::Consistent(lb(&["127.0.0.1:3"]), RequestKey::Path);
        let p = Passive::new([sa("127.0.0.1:3")], 1, std::time::Duration::from_secs(60));
        // (with active checks, Pingora's health of it is asked too; without, it is not)
        for checked in [true, false] {
            for avoid in [&[][..], &[sa("127.0.0.1:3")][..]] {
                let (b, _) = one.select(b"k", avoid, Some(&p), checked).unwrap();
                assert_eq!(b.addr.to_string(), "127.0.0.1:3");
            }
        }
        p.failed(sa("127.0.0.1:3"));
        assert!(one.select(b"k", &[], Some(&p), true).is_none());
        assert!(one.select(b"k", &[], Some(&p), false).is_none());
    }
}
