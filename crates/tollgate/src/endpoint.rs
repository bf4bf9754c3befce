//! An upstream's backends: its `backends` entries as configured, and the addresses in
//! force ([`Endpoints`]), each with what a request to it needs (its `Host`, its TLS name,
//! the entry it came from) and the counters that follow the address (passive health,
//! in-flight requests). Fixed for an upstream of IP entries; replaced as answers change
//! for one with DNS names (fleet.md §13.5).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use rustc_hash::FxHashMap;

/// One `backends` entry as configured.
#[derive(Debug, Clone)]
pub(crate) struct BackendEntry {
    /// As written: `IP:PORT`, `NAME:PORT`, or the SRV name.
    pub written: Arc<str>,
    pub target: Target,
    pub weight: usize,
    /// Its key path, `upstreams.X.backends[I]`, and where it is in the file
    /// (`FILE:LINE:COL`), for `check --resolve`.
    pub path: String,
    pub place: String,
}

/// What a backend entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Ip(SocketAddr),
    /// A host name (as written, a final `.` kept) and a port.
    Host(String, u16),
    /// An SRV name (as written).
    Srv(String),
}

impl BackendEntry {
    /// True for a DNS name or an SRV entry.
    pub(crate) fn is_name(&self) -> bool {
        !matches!(self.target, Target::Ip(_))
    }
}

/// Per-address counters that outlive a change of the upstream's addresses: passive
/// health and in-flight requests.
#[derive(Debug, Default)]
pub(crate) struct AddrStats {
    pub(crate) fails: AtomicU32,
    /// Passively taken out until this (ms on the upstream's passive clock); 0: in.
    pub(crate) down_until: AtomicU64,
    pub(crate) inflight: AtomicUsize,
}

/// One backend address of an upstream and what a request to it needs, made when the
/// address comes into force.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub addr: SocketAddr,
    /// The load balancer's backend (address and weight).
    pub backend: Backend,
    /// The `Host` sent when `preserve_host` is false; `None` when it is no valid value.
    pub host: Option<http::HeaderValue>,
    /// The TLS server name (also the name the certificate is verified against).
    pub sni: String,
    /// The entry the address came from, as written; `None` for an IP entry.
    pub name: Option<Arc<str>>,
    pub stats: Arc<AddrStats>,
}

impl Endpoint {
    /// The endpoint of an ad-hoc peer a policy chose ([`crate::policy::Peer`]): its
    /// counters are its own and go with the request.
    pub(crate) fn peer(p: &crate::policy::Peer) -> Self {
        let host = if p.tls && !p.sni.is_empty() {
            p.sni.clone()
        } else {
            p.addr.to_string()
        };
        let backend = Backend::new(&p.addr.to_string())
            .unwrap_or_else(|_| Backend::new("0.0.0.0:1").expect("a valid address"));
        Self {
            addr: p.addr,
            backend,
            host: http::HeaderValue::from_str(&host).ok(),
            sni: p.sni.clone(),
            name: None,
            stats: Arc::default(),
        }
    }
}

/// An address an upstream should have, before merging: one per (entry, address).
#[derive(Debug, Clone)]
pub(crate) struct Want {
    pub addr: SocketAddr,
    pub weight: usize,
    /// Index into [`Upstream::entries`].
    pub entry: usize,
    /// For an address from a name: the host it is sent and verified as, and whether
    /// the port goes in `Host` (not for the scheme's default port).
    pub host_name: Option<String>,
    /// For an SRV address: (SRV entry, priority rank), rank 0 the lowest value.
    pub tier: Option<(u16, u16)>,
    /// For an SRV address: its record's priority.
    pub priority: Option<u16>,
}

impl Want {
    /// The address of an IP entry (or, in tests, of any entry `entry`).
    pub(crate) fn ip(addr: SocketAddr, weight: usize, entry: usize) -> Self {
        Self {
            addr,
            weight,
            entry,
            host_name: None,
            tier: None,
            priority: None,
        }
    }
}

/// The addresses in force.
#[derive(Debug, Default)]
pub(crate) struct Endpoints {
    pub(crate) by_addr: FxHashMap<SocketAddr, Arc<Endpoint>>,
    /// In entry order, each name's addresses ascending: for `/admin/status`.
    pub(crate) list: Vec<Arc<Endpoint>>,
    /// SRV addresses that serve only as backups: their (entry, rank) memberships.
    pub(crate) backups: FxHashMap<SocketAddr, Vec<(u16, u16)>>,
    /// Per SRV entry with backups: its addresses by rank.
    pub(crate) tiers: FxHashMap<u16, Vec<Vec<SocketAddr>>>,
}

impl Endpoints {
    /// Merges `wants` (one address from several entries is one backend, weights
    /// summed, named after its first entry) and makes each address's endpoint, keeping
    /// the counters of addresses in `priors` (the first that has the address).
    pub(crate) fn build(up: &UpstreamShape<'_>, wants: &[Want], priors: &[&Endpoints]) -> Self {
        let mut order: Vec<SocketAddr> = Vec::new();
        let mut merged: FxHashMap<SocketAddr, (usize, &Want, bool)> = FxHashMap::default();
        let mut tiers: FxHashMap<u16, Vec<Vec<SocketAddr>>> = FxHashMap::default();
        for w in wants {
            let primary = w.tier.is_none_or(|(_, rank)| rank == 0);
            match merged.get_mut(&w.addr) {
                Some((weight, _, any_primary)) => {
                    *weight += w.weight;
                    *any_primary |= primary;
                }
                None => {
                    order.push(w.addr);
                    merged.insert(w.addr, (w.weight, w, primary));
                }
            }
            if let Some((entry, rank)) = w.tier {
                let t = tiers.entry(entry).or_default();
                if t.len() <= usize::from(rank) {
                    t.resize(usize::from(rank) + 1, Vec::new());
                }
                t[usize::from(rank)].push(w.addr);
            }
        }
        tiers.retain(|_, t| t.len() > 1);
        let mut backups: FxHashMap<SocketAddr, Vec<(u16, u16)>> = FxHashMap::default();
        for w in wants {
            if let (Some((entry, rank)), false) = (w.tier, merged[&w.addr].2) {
                backups.entry(w.addr).or_default().push((entry, rank));
            }
        }
        let mut by_addr = FxHashMap::default();
        let mut list = Vec::with_capacity(order.len());
        for addr in order {
            let (weight, w, _) = merged[&addr];
            let stats = priors
                .iter()
                .find_map(|p| p.by_addr.get(&addr))
                .map_or_else(Arc::default, |e| e.stats.clone());
            let ep = Arc::new(up.endpoint(addr, weight, w, stats));
            by_addr.insert(addr, ep.clone());
            list.push(ep);
        }
        Self {
            by_addr,
            list,
            backups,
            tiers,
        }
    }

    /// The same addresses, weights, names, Host and SNI values and backups.
    pub(crate) fn same_as(&self, other: &Endpoints) -> bool {
        self.list.len() == other.list.len()
            && self.list.iter().zip(&other.list).all(|(a, b)| {
                a.addr == b.addr
                    && a.backend.weight == b.backend.weight
                    && a.host == b.host
                    && a.sni == b.sni
                    && a.name == b.name
            })
            && self.backups == other.backups
            && self.tiers == other.tiers
    }

    /// `self` with the addresses of `old` that leave it, for the moment between the
    /// new endpoints and the balancer's update: a request that the balancer still
    /// sends to a leaving address, or already to a new one, finds its endpoint.
    pub(crate) fn with_leaving(&self, old: &Endpoints) -> Endpoints {
        let mut by_addr = self.by_addr.clone();
        for (a, e) in &old.by_addr {
            by_addr.entry(*a).or_insert_with(|| e.clone());
        }
        Endpoints {
            by_addr,
            list: self.list.clone(),
            backups: self.backups.clone(),
            tiers: self.tiers.clone(),
        }
    }

    /// Its addresses that `other` does not have.
    pub(crate) fn not_in(&self, other: &Endpoints) -> Vec<SocketAddr> {
        self.list
            .iter()
            .filter(|e| !other.by_addr.contains_key(&e.addr))
            .map(|e| e.addr)
            .collect()
    }

    /// The Host and SNI each address is health-checked with.
    pub(crate) fn check_pairs(&self) -> FxHashMap<SocketAddr, (String, String)> {
        self.list
            .iter()
            .map(|e| {
                let host = e.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
                (e.addr, (host.to_string(), e.sni.clone()))
            })
            .collect()
    }

    /// The backends for the load balancer.
    pub(crate) fn backend_set(&self) -> BTreeSet<Backend> {
        self.list.iter().map(|e| e.backend.clone()).collect()
    }
}

/// An upstream of plain HTTP with no entries, for tests.
#[cfg(test)]
pub(crate) const PLAIN: UpstreamShape<'static> = UpstreamShape {
    entries: &[],
    tls: false,
    sni: "",
};

/// What making an upstream's endpoints needs of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamShape<'a> {
    pub entries: &'a [BackendEntry],
    pub tls: bool,
    pub sni: &'a str,
}

impl UpstreamShape<'_> {
    fn endpoint(
        &self,
        addr: SocketAddr,
        weight: usize,
        w: &Want,
        stats: Arc<AddrStats>,
    ) -> Endpoint {
        let entry = self.entries.get(w.entry);
        let name = entry.filter(|e| e.is_name()).map(|e| e.written.clone());
        // GATEWAY.md §3 and fleet.md §13.6: the SNI name over TLS when one is set; else
        // the name (its port unless the scheme's default); else the address
        let host = match (&w.host_name, self.tls && !self.sni.is_empty()) {
            (_, true) => self.sni.to_string(),
            (Some(h), false) => match (addr.port(), self.tls) {
                (80, false) | (443, true) => h.clone(),
                (port, _) => format!("{h}:{port}"),
            },
            (None, false) => addr.to_string(),
        };
        let sni = match (&w.host_name, self.sni.is_empty()) {
            (Some(h), true) => h.clone(),
            _ => self.sni.to_string(),
        };
        let mut backend = Backend::new_with_weight(&addr.to_string(), weight)
            .unwrap_or_else(|_| Backend::new_with_weight("0.0.0.0:1", 1).expect("a valid address"));
        backend.weight = weight;
        Endpoint {
            addr,
            backend,
            host: http::HeaderValue::from_str(&host).ok(),
            sni,
            name,
            stats,
        }
    }
}

/// An upstream's endpoints: fixed when every backend is an IP entry, else replaced as
/// its names' answers change (its balancer discovers its backends from them, see
/// [`Discover`]).
#[derive(Debug)]
pub(crate) enum EndpointSet {
    Fixed(Endpoints),
    Dns(Arc<ArcSwap<Endpoints>>),
}

/// The endpoints a request reads: borrowed, or a guard on the current set.
pub(crate) enum Current<'a> {
    Fixed(&'a Endpoints),
    Dns(arc_swap::Guard<Arc<Endpoints>>),
}

impl std::ops::Deref for Current<'_> {
    type Target = Endpoints;
    fn deref(&self) -> &Endpoints {
        match self {
            Self::Fixed(e) => e,
            Self::Dns(g) => g,
        }
    }
}

impl EndpointSet {
    /// The endpoints in force now.
    pub(crate) fn current(&self) -> Current<'_> {
        match self {
            Self::Fixed(e) => Current::Fixed(e),
            Self::Dns(s) => Current::Dns(s.load()),
        }
    }
}

/// The endpoints of an upstream with DNS names as its balancer's service discovery:
/// the backends in force (the balancer is updated after each change).
pub(crate) struct Discover(pub(crate) Arc<ArcSwap<Endpoints>>);

#[async_trait::async_trait]
impl ServiceDiscovery for Discover {
    async fn discover(
        &self,
    ) -> pingora::Result<(BTreeSet<Backend>, std::collections::HashMap<u64, bool>)> {
        Ok((self.0.load().backend_set(), Default::default()))
    }
}

/// The Host and SNI each address of an upstream with names is health-checked with.
pub(crate) type CheckHosts = Arc<ArcSwap<FxHashMap<SocketAddr, (String, String)>>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(tls: bool, sni: &str, addr: &str, host_name: Option<&str>) -> (String, String) {
        let entries = [BackendEntry {
            written: Arc::from("x"),
            target: Target::Host("x".into(), 1),
            weight: 1,
            path: String::new(),
            place: String::new(),
        }];
        let shape = UpstreamShape {
            entries: &entries,
            tls,
            sni,
        };
        let want = Want {
            host_name: host_name.map(str::to_string),
            ..Want::ip(addr.parse().unwrap(), 1, 0)
        };
        let e = Endpoints::build(&shape, &[want], &[]);
        let ep = &e.list[0];
        (
            ep.host.as_ref().unwrap().to_str().unwrap().to_string(),
            ep.sni.clone(),
        )
    }

    #[test]
    fn while_the_balancer_updates_leaving_and_new_addresses_both_have_endpoints() {
        let want = |a: &str| Want::ip(a.parse().unwrap(), 1, 0);
        let old = Endpoints::build(&PLAIN, &[want("10.0.0.1:80")], &[]);
        let new = Endpoints::build(&PLAIN, &[want("10.0.0.2:80")], &[&old]);
        let both = new.with_leaving(&old);
        assert_eq!(both.by_addr.len(), 2);
        assert_eq!(both.list.len(), 1, "status lists the new ones only");
        assert!(Arc::ptr_eq(
            &both.by_addr[&"10.0.0.1:80".parse().unwrap()].stats,
            &old.by_addr[&"10.0.0.1:80".parse().unwrap()].stats
        ));
    }

    #[test]
    fn host_and_sni_follow_the_name_and_leave_out_the_default_port() {
        let pair = |h: &str, s: &str| (h.to_string(), s.to_string());
        // fleet.md §13.6, CROSSCUTTING.md §11.1
        assert_eq!(
            endpoint(false, "", "10.0.0.1:8080", Some("orders.svc")),
            pair("orders.svc:8080", "orders.svc")
        );
        assert_eq!(
            endpoint(false, "", "10.0.0.1:80", Some("orders.svc")),
            pair("orders.svc", "orders.svc")
        );
        assert_eq!(
            endpoint(true, "", "10.0.0.1:443", Some("orders.svc")),
            pair("orders.svc", "orders.svc")
        );
        assert_eq!(
            endpoint(true, "", "10.0.0.1:80", Some("orders.svc")),
            pair("orders.svc:80", "orders.svc")
        );
        assert_eq!(
            endpoint(true, "api.example", "10.0.0.1:8443", Some("orders.svc")),
            pair("api.example", "api.example")
        );
        // IP entries: the address, and no SNI unless set
        assert_eq!(
            endpoint(false, "", "10.0.0.1:80", None),
            pair("10.0.0.1:80", "")
        );
        assert_eq!(
            endpoint(true, "api.example", "10.0.0.1:443", None),
            pair("api.example", "api.example")
        );
    }
}
