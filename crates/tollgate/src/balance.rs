//! Choosing a backend: Pingora's load balancers for `round_robin`, `random` and
//! `consistent_hash` (Ketama), and in-flight counting for `least_conn`;
//! SRV backups held back while a lower priority has a healthy address.

use rustc_hash::FxHashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pingora::lb::selection::consistent::KetamaHashing;
use pingora::lb::selection::{Random, RoundRobin};
use pingora::lb::{Backend, LoadBalancer};

use crate::endpoint::{AddrStats, Endpoint, Endpoints};
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
/// then takes it out again); any response from it resets its count. The counts live
/// in each address's [`AddrStats`].
#[derive(Debug)]
pub(crate) struct Passive {
    threshold: u32,
    cooldown_ms: u64,
    epoch: tokio::time::Instant,
}

impl Passive {
    /// Like `prior` (its clock, so the counters of addresses that stay keep their
    /// meaning across a reload), with these settings.
    pub(crate) fn since(mut self, prior: &Passive) -> Self {
        self.epoch = prior.epoch;
        self
    }

    pub(crate) fn new(threshold: u32, cooldown: std::time::Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown_ms: cooldown.as_millis() as u64,
            epoch: tokio::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Records a failed connect to the address of `s`.
    pub(crate) fn failed(&self, s: &AddrStats) {
        if s.fails.fetch_add(1, Ordering::AcqRel) + 1 >= self.threshold {
            s.down_until
                .store(self.now_ms() + self.cooldown_ms, Ordering::Release);
        }
    }

    /// Records a response from the address of `s`.
    pub(crate) fn succeeded(&self, s: &AddrStats) {
        s.fails.store(0, Ordering::Release);
        s.down_until.store(0, Ordering::Release);
    }

    /// True while the address of `s` is taken out.
    pub(crate) fn is_down(&self, s: &AddrStats) -> bool {
        // the usual case, never taken out, reads no clock
        let until = s.down_until.load(Ordering::Acquire);
        until != 0 && self.now_ms() < until
    }
}

/// One request's hold on a backend; dropping it ends the request for `least_conn`.
pub(crate) struct BackendSlot(Arc<AddrStats>);

impl fmt::Debug for BackendSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BackendSlot").finish_non_exhaustive()
    }
}

impl Drop for BackendSlot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The balancing algorithm of an upstream.
pub(crate) enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<KetamaHashing>, RequestKey),
    /// Fewest in-flight requests per unit of weight (counted in [`AddrStats`]).
    LeastConn(LoadBalancer<RoundRobin>),
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

/// What a request chose: the endpoint, and for `least_conn` its hold on it.
pub(crate) type Chosen = (Arc<Endpoint>, Option<BackendSlot>);

impl Selector {
    /// The backends and their health.
    pub(crate) fn backends(&self) -> &pingora::lb::Backends {
        match self {
            Self::RoundRobin(lb) | Self::LeastConn(lb) => lb.backends(),
            Self::Random(lb) => lb.backends(),
            Self::Consistent(lb, _) => lb.backends(),
        }
    }

    /// Rebuilds the selection from the backends' discovery (a change of addresses).
    pub(crate) async fn update(&self) -> pingora::Result<()> {
        match self {
            Self::RoundRobin(lb) | Self::LeastConn(lb) => lb.update().await,
            Self::Random(lb) => lb.update().await,
            Self::Consistent(lb, _) => lb.update().await,
        }
    }

    /// The hash key, for `consistent_hash`.
    pub(crate) fn hash_key(&self) -> Option<&RequestKey> {
        match self {
            Self::Consistent(_, k) => Some(k),
            _ => None,
        }
    }

    /// Picks a backend in force for `key`, preferring ones not in `avoid` (already
    /// tried); falls back to any backend when every other was tried. For `least_conn`
    /// the returned slot must be held until the request ends.
    ///
    /// `checked`: whether active health checks run on the backends; without them every
    /// backend is healthy, and one alone is picked without asking Pingora (a hash of the
    /// backend and a map look-up per request).
    pub(crate) fn select(
        &self,
        key: &[u8],
        avoid: &[SocketAddr],
        eps: &Endpoints,
        passive: &Passive,
        checked: bool,
    ) -> Option<Chosen> {
        let active = (!eps.backups.is_empty()).then(|| self.active_ranks(eps, passive));
        let up = |b: &Backend| {
            eps.by_addr
                .get(&addr_of(b))
                .filter(|e| !passive.is_down(&e.stats) && eligible(eps, active.as_ref(), e.addr))
        };
        let untried = |b: &Backend| !avoid.contains(&addr_of(b));
        match self {
            Self::RoundRobin(lb) => pick(lb, key, checked, up, untried),
            Self::Random(lb) => pick(lb, key, checked, up, untried),
            Self::Consistent(lb, _) => pick(lb, key, checked, up, untried),
            Self::LeastConn(lb) => {
                let backends = lb.backends().get_backend();
                let healthy: Vec<&Arc<Endpoint>> = backends
                    .iter()
                    .filter(|b| lb.backends().ready(b))
                    .filter_map(&up)
                    .collect();
                let fewest = |c: &mut dyn Iterator<Item = &Arc<Endpoint>>| {
                    c.min_by(|a, b| {
                        let (ia, ib) = (inflight(a), inflight(b));
                        (ia * b.backend.weight.max(1)).cmp(&(ib * a.backend.weight.max(1)))
                    })
                    .cloned()
                };
                let chosen = fewest(&mut healthy.iter().copied().filter(|e| untried(&e.backend)))
                    .or_else(|| fewest(&mut healthy.iter().copied()))?;
                chosen.stats.inflight.fetch_add(1, Ordering::AcqRel);
                let slot = BackendSlot(chosen.stats.clone());
                Some((chosen, Some(slot)))
            }
        }
    }

    /// The backend at `addr`, when it is one of `eps` and healthy (not taken out by
    /// passive health, and up by its active checks when `checked`): a policy's pick of
    /// one backend ([`crate::policy::Target::Backend`]).
    pub(crate) fn pick_addr(
        &self,
        addr: SocketAddr,
        eps: &Endpoints,
        passive: &Passive,
        checked: bool,
    ) -> Option<Chosen> {
        let e = eps.by_addr.get(&addr)?;
        if passive.is_down(&e.stats) || (checked && !self.backends().ready(&e.backend)) {
            return None;
        }
        let slot = matches!(self, Self::LeastConn(_)).then(|| {
            e.stats.inflight.fetch_add(1, Ordering::AcqRel);
            BackendSlot(e.stats.clone())
        });
        Some((e.clone(), slot))
    }

    /// For each SRV entry with backups, the rank that gets requests: the lowest with a
    /// healthy address (the last when none has one).
    fn active_ranks(&self, eps: &Endpoints, passive: &Passive) -> FxHashMap<u16, u16> {
        eps.tiers
            .iter()
            .map(|(entry, ranks)| {
                let healthy = |a: &SocketAddr| {
                    eps.by_addr.get(a).is_some_and(|e| {
                        !passive.is_down(&e.stats) && self.backends().ready(&e.backend)
                    })
                };
                let rank = ranks
                    .iter()
                    .position(|addrs| addrs.iter().any(healthy))
                    .unwrap_or(ranks.len().saturating_sub(1));
                (*entry, rank as u16)
            })
            .collect()
    }
}

fn inflight(e: &Endpoint) -> usize {
    e.stats.inflight.load(Ordering::Acquire)
}

/// Whether `addr` may get requests: always, unless it is only an SRV backup whose
/// lower ranks have a healthy address.
fn eligible(eps: &Endpoints, active: Option<&FxHashMap<u16, u16>>, addr: SocketAddr) -> bool {
    let (Some(active), Some(memberships)) = (active, eps.backups.get(&addr)) else {
        return true;
    };
    memberships
        .iter()
        .any(|(entry, rank)| active.get(entry).is_none_or(|a| rank <= a))
}

/// A backend's socket address (backends are always `IP:PORT`, checked at load).
fn addr_of(b: &Backend) -> SocketAddr {
    b.addr
        .as_inet()
        .copied()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Pingora's selection over healthy, passively-up backends in force, preferring
/// untried ones.
fn pick<'e, S>(
    lb: &LoadBalancer<S>,
    key: &[u8],
    checked: bool,
    up: impl Fn(&Backend) -> Option<&'e Arc<Endpoint>>,
    untried: impl Fn(&Backend) -> bool,
) -> Option<Chosen>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    // one backend: nothing to choose between (Pingora's selection iterates, hashes and
    // de-duplicates its way to the same answer)
    let backends = lb.backends().get_backend();
    if let (1, Some(only)) = (backends.len(), backends.first()) {
        let healthy = !checked || lb.backends().ready(only);
        return healthy
            .then(|| up(only))
            .flatten()
            .map(|e| (e.clone(), None));
    }
    let walked = lb
        .select_with(key, 256, |b, healthy| {
            healthy && up(b).is_some() && untried(b)
        })
        .or_else(|| lb.select_with(key, 256, |b, healthy| healthy && up(b).is_some()));
    if let Some(e) = walked.as_ref().and_then(&up) {
        return Some((e.clone(), None));
    }
    // Pingora's walk is bounded (256 steps, repeats counted): when most backends may
    // not take the request (SRV backups, ejected ones) it can miss the few that may;
    // then choose among those directly
    let ok: Vec<&Backend> = backends
        .iter()
        .filter(|b| lb.backends().ready(b) && up(b).is_some())
        .collect();
    let fresh: Vec<&Backend> = ok.iter().copied().filter(|b| untried(b)).collect();
    let from = if fresh.is_empty() { ok } else { fresh };
    let i = match key {
        [] => fastrand::usize(..from.len().max(1)),
        k => (rustc_hash::FxBuildHasher.hash_one(k) as usize) % from.len().max(1),
    };
    from.get(i).and_then(|b| up(b)).map(|e| (e.clone(), None))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use pingora::lb::discovery::Static;
    use pingora::lb::Backends;

    use super::*;
    use crate::endpoint::{Want, PLAIN};

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

    /// Endpoints of IP entries, with SRV ranks where given.
    fn eps(addrs: &[(&str, Option<(u16, u16)>)]) -> Endpoints {
        let wants: Vec<Want> = addrs
            .iter()
            .enumerate()
            .map(|(i, (a, tier))| Want {
                tier: *tier,
                ..Want::ip(sa(a), 1, i)
            })
            .collect();
        Endpoints::build(&PLAIN, &wants, &[])
    }

    fn plain(addrs: &[&str]) -> Endpoints {
        eps(&addrs.iter().map(|a| (*a, None)).collect::<Vec<_>>())
    }

    fn passive() -> Passive {
        Passive::new(1, std::time::Duration::from_secs(60))
    }

    fn owner(s: &Selector, e: &Endpoints, key: &str) -> String {
        s.select(key.as_bytes(), &[], e, &passive(), true)
            .unwrap()
            .0
            .addr
            .to_string()
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_only_the_removed_share() {
        let all = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let three = Selector::Consistent(lb(&all), RequestKey::ClientIp);
        let two = Selector::Consistent(lb(&all[..2]), RequestKey::ClientIp);
        let e = plain(&all);
        let keys: Vec<String> = (0..3000)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
            .collect();
        let mut moved = 0;
        let mut on_removed = 0;
        for k in &keys {
            let before = owner(&three, &e, k);
            assert_eq!(before, owner(&three, &e, k), "not stable");
            if before == "127.0.0.1:3" {
                on_removed += 1;
            } else if owner(&two, &e, k) != before {
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
        let addrs = ["127.0.0.1:1", "127.0.0.1:2"];
        let s = Selector::Consistent(lb(&addrs), RequestKey::Path);
        let e = plain(&addrs);
        let first = owner(&s, &e, "/x");
        let second = s
            .select(b"/x", &[sa(&first)], &e, &passive(), true)
            .unwrap()
            .0
            .addr
            .to_string();
        assert_ne!(first, second);
    }

    #[test]
    fn a_backend_without_an_endpoint_is_never_chosen() {
        // the balancer still offers an address the new endpoints no longer have
        let s = Selector::RoundRobin(lb(&["127.0.0.1:1", "127.0.0.1:2"]));
        let e = plain(&["127.0.0.1:2"]);
        for _ in 0..6 {
            assert_eq!(owner(&s, &e, ""), "127.0.0.1:2");
        }
        let one = Selector::RoundRobin(lb(&["127.0.0.1:1"]));
        assert!(one.select(b"", &[], &e, &passive(), false).is_none());
    }

    #[test]
    fn least_conn_prefers_the_idle_backend_and_releases_on_drop() {
        let addrs = ["127.0.0.1:1", "127.0.0.1:2"];
        let s = Selector::LeastConn(lb(&addrs));
        let e = plain(&addrs);
        let p = passive();
        let (a, slot_a) = s.select(b"", &[], &e, &p, true).unwrap();
        let (b, slot_b) = s.select(b"", &[], &e, &p, true).unwrap();
        assert_ne!(
            a.addr, b.addr,
            "the second request went to the busy backend"
        );
        drop(slot_b);
        let (c, _slot_c) = s.select(b"", &[], &e, &p, true).unwrap();
        assert_eq!(c.addr, b.addr, "the freed backend is the idle one");
        assert_eq!(inflight(&a), 1);
        drop(slot_a);
        assert_eq!(inflight(&a), 0);
    }

    #[test]
    fn passive_failures_take_a_backend_out_until_it_answers() {
        let e = plain(&["127.0.0.1:1", "127.0.0.1:2"]);
        let stats = |a: &str| e.by_addr[&sa(a)].stats.clone();
        let p = Passive::new(2, std::time::Duration::from_secs(60));
        p.failed(&stats("127.0.0.1:1"));
        assert!(
            !p.is_down(&stats("127.0.0.1:1")),
            "one failure is below the threshold"
        );
        p.failed(&stats("127.0.0.1:1"));
        assert!(p.is_down(&stats("127.0.0.1:1")));
        assert!(!p.is_down(&stats("127.0.0.1:2")));
        p.succeeded(&stats("127.0.0.1:1"));
        assert!(!p.is_down(&stats("127.0.0.1:1")));
        let s = Selector::RoundRobin(lb(&["127.0.0.1:1", "127.0.0.1:2"]));
        let p = passive();
        p.failed(&stats("127.0.0.1:1"));
        for _ in 0..4 {
            let (chosen, _) = s.select(b"", &[], &e, &p, true).unwrap();
            assert_eq!(chosen.addr.to_string(), "127.0.0.1:2");
        }
        p.failed(&stats("127.0.0.1:2"));
        assert!(
            s.select(b"", &[], &e, &p, true).is_none(),
            "every backend down: no backend"
        );
        // one backend: chosen while it is up, tried or not
        let one = Selector::Consistent(lb(&["127.0.0.1:3"]), RequestKey::Path);
        let e = plain(&["127.0.0.1:3"]);
        let p = passive();
        // (with active checks, Pingora's health of it is asked too; without, it is not)
        for checked in [true, false] {
            for avoid in [&[][..], &[sa("127.0.0.1:3")][..]] {
                let (b, _) = one.select(b"k", avoid, &e, &p, checked).unwrap();
                assert_eq!(b.addr.to_string(), "127.0.0.1:3");
            }
        }
        p.failed(&e.by_addr[&sa("127.0.0.1:3")].stats);
        assert!(one.select(b"k", &[], &e, &p, true).is_none());
        assert!(one.select(b"k", &[], &e, &p, false).is_none());
    }

    #[test]
    fn srv_backups_get_requests_only_while_every_lower_priority_address_is_down() {
        let addrs = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let s = Selector::RoundRobin(lb(&addrs));
        // one SRV entry: .1 and .2 at the lowest priority, .3 a backup
        let e = eps(&[
            (addrs[0], Some((0, 0))),
            (addrs[1], Some((0, 0))),
            (addrs[2], Some((0, 1))),
        ]);
        let p = passive();
        let seen = |p: &Passive| -> BTreeSet<String> {
            (0..8)
                .filter_map(|_| s.select(b"", &[], &e, p, true))
                .map(|(c, _)| c.addr.to_string())
                .collect()
        };
        assert_eq!(seen(&p), BTreeSet::from([addrs[0].into(), addrs[1].into()]));
        p.failed(&e.by_addr[&sa(addrs[0])].stats);
        assert_eq!(
            seen(&p),
            BTreeSet::from([addrs[1].to_string()]),
            "one primary is enough"
        );
        p.failed(&e.by_addr[&sa(addrs[1])].stats);
        assert_eq!(
            seen(&p),
            BTreeSet::from([addrs[2].to_string()]),
            "the backup takes over"
        );
        p.succeeded(&e.by_addr[&sa(addrs[1])].stats);
        assert_eq!(
            seen(&p),
            BTreeSet::from([addrs[1].to_string()]),
            "and steps back"
        );
    }

    #[test]
    fn a_few_eligible_backends_among_many_are_always_found() {
        // 2 primaries and 300 SRV backups: Pingora's bounded walk alone misses the
        // primaries now and then
        let addrs: Vec<String> = (0..302)
            .map(|i| format!("127.0.{}.{}:1", i / 200, i % 200 + 1))
            .collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let tiered: Vec<(&str, Option<(u16, u16)>)> = refs
            .iter()
            .enumerate()
            .map(|(i, a)| (*a, Some((0, u16::from(i >= 2)))))
            .collect();
        let e = eps(&tiered);
        let primaries = [sa(refs[0]), sa(refs[1])];
        for s in [
            Selector::Random(lb(&refs)),
            Selector::Consistent(lb(&refs), RequestKey::Path),
        ] {
            for i in 0..300 {
                let key = format!("/k{i}");
                let (c, _) = s.select(key.as_bytes(), &[], &e, &passive(), true).unwrap();
                assert!(primaries.contains(&c.addr), "{s:?}: a backup: {}", c.addr);
            }
        }
    }

    #[test]
    fn one_address_from_several_entries_is_one_backend_with_the_summed_weight() {
        let wants: Vec<Want> = [("127.0.0.1:1", 2), ("127.0.0.1:1", 3), ("127.0.0.1:2", 1)]
            .iter()
            .enumerate()
            .map(|(i, (a, w))| Want::ip(sa(a), *w, i))
            .collect();
        let e = Endpoints::build(&PLAIN, &wants, &[]);
        assert_eq!(e.list.len(), 2);
        assert_eq!(e.by_addr[&sa("127.0.0.1:1")].backend.weight, 5);
        // counters carry over to a rebuilt set
        e.by_addr[&sa("127.0.0.1:2")]
            .stats
            .inflight
            .fetch_add(1, Ordering::AcqRel);
        let again = Endpoints::build(&PLAIN, &wants[2..], &[&e]);
        assert_eq!(inflight(&again.by_addr[&sa("127.0.0.1:2")]), 1);
    }
}
