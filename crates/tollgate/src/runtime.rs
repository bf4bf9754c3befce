//! The compiled configuration the request path reads: names resolved into `Arc`s,
//! policies built, the route trie ready. Nothing at request time looks a name up.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use regex::Regex;

use crate::balance::{Balance, Selector};
use crate::consumer::Consumers;
use crate::dns::IpFamily;
use crate::endpoint::{BackendEntry, CheckHosts, EndpointSet, Endpoints, UpstreamShape, Want};
use crate::policy::Chain;
use crate::router::Router;

/// One configuration, compiled. Requests hold an `Arc` of the snapshot they started
/// with, so a reload never changes a request in flight.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) router: Router,
    pub(crate) routes: Vec<Arc<Route>>,
    pub(crate) upstreams: BTreeMap<String, Arc<Upstream>>,
    pub(crate) consumers: Arc<Consumers>,
    pub(crate) trusted_proxies: Vec<IpNet>,
    /// Hex digest of the configuration source.
    pub digest: String,
    /// The configuration as JSON with secrets replaced by `"***"` (for `/admin/config`).
    pub redacted: serde_json::Value,
    /// When this configuration was loaded.
    pub loaded_at: SystemTime,
    /// Its policies' state (kept across reloads, [`crate::policy::BuildCtx::state`]).
    pub(crate) states: crate::policy::state::States,
    /// The policies' HTTP client (`[server.outbound]`).
    pub(crate) outbound: Arc<crate::policy::outbound::Outbound>,
    /// The identity header names of every policy of the configuration
    /// ([`crate::policy::Policy::identity_headers`]): client copies are removed on
    /// arrival, on every route.
    pub(crate) identity_headers: Box<[http::HeaderName]>,
}

impl Snapshot {
    /// The routes that cache, with the generation of their rules.
    pub(crate) fn cached_routes(&self) -> std::collections::HashMap<&str, u64> {
        self.routes
            .iter()
            .filter(|r| r.chain.cache_rules().is_some())
            .map(|r| (r.name.as_str(), r.chain.cache_generation()))
            .collect()
    }

    /// Route names in declaration order.
    pub fn route_names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.name.as_str())
    }

    /// Upstream names, sorted.
    pub fn upstream_names(&self) -> impl Iterator<Item = &str> {
        self.upstreams.keys().map(String::as_str)
    }

    /// The consumers and their credentials.
    pub fn consumers(&self) -> &Consumers {
        &self.consumers
    }

    /// The client IP for a request from `peer` with these `X-Forwarded-For` values:
    /// the right-most forwarded address that is not a trusted proxy, believed only
    /// when the peer itself is trusted.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        xff: impl DoubleEndedIterator<Item = &'a str>,
    ) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in xff.rev().flat_map(|v| v.rsplit(',')) {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                break;
            };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// A compiled route.
#[derive(Debug)]
pub(crate) struct Route {
    /// The route's name (its table key); the `route` label of metrics.
    pub name: String,
    /// What a policy sees of it ([`crate::RequestCtx::route_name`], …).
    pub(crate) info: Arc<crate::context::RouteInfo>,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) strip_prefix: bool,
    pub(crate) rewrite: Option<(Regex, String)>,
    pub(crate) preserve_host: bool,
    pub(crate) chain: Chain,
    /// Every upstream of the configuration, by name: where a policy may send a request
    /// instead ([`crate::policy::Target`]).
    pub(crate) upstreams: Arc<std::collections::BTreeMap<String, Arc<Upstream>>>,
    /// Its metric series, resolved on first use.
    pub(crate) metrics: crate::metrics::RouteMetrics,
}

/// A compiled upstream: its backends behind a Pingora load balancer.
pub(crate) struct Upstream {
    /// The upstream's name (its table key).
    pub name: String,
    pub(crate) selector: Selector,
    /// The `backends` entries, in config order.
    pub(crate) entries: Vec<BackendEntry>,
    /// The addresses in force and what requests to each need.
    pub(crate) endpoints: EndpointSet,
    /// The address records its names are looked up for.
    pub(crate) ip_family: IpFamily,
    pub(crate) balance: Balance,
    pub(crate) tls: bool,
    pub(crate) sni: String,
    pub(crate) ca: Option<std::sync::Arc<pingora::protocols::tls::CaType>>,
    /// The certificate presented to backends that ask for one.
    pub(crate) client_cert: Option<std::sync::Arc<pingora::utils::tls::CertKey>>,
    /// Separates pooled connections verified under different trust roots (Pingora's pool
    /// key does not include the CA list); 0 for the system roots.
    pub(crate) trust_key: u64,
    /// Speak HTTP/2 to the backends (h2c prior knowledge without TLS).
    pub(crate) http2: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) retries: usize,
    pub(crate) health: Option<HealthSchedule>,
    /// The active checks' health state and the fingerprint of the check that made it.
    pub(crate) health_registry: Option<(String, std::sync::Arc<pingora::lb::HealthRegistry>)>,
    /// With DNS names and active checks: the Host and SNI each address is checked with.
    pub(crate) check_hosts: Option<CheckHosts>,
    /// After a reload, the endpoints of the upstream this one replaced, until its
    /// first install: their counters carry over.
    pub(crate) seed: std::sync::Mutex<Option<Arc<Endpoints>>>,
    pub(crate) passive: crate::balance::Passive,
}

/// One backend as `/admin/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackendState {
    pub addr: SocketAddr,
    pub weight: usize,
    pub healthy: bool,
    pub name: Option<Arc<str>>,
}

impl Upstream {
    /// Each backend in force: address, weight, current health and its entry.
    pub(crate) fn backend_health(&self) -> Vec<BackendState> {
        let eps = self.endpoints.current();
        eps.list
            .iter()
            .map(|e| {
                // as traffic sees it: failing active checks, or passively ejected
                let healthy =
                    !self.passive.is_down(&e.stats) && self.selector.backends().ready(&e.backend);
                BackendState {
                    addr: e.addr,
                    weight: e.backend.weight,
                    healthy,
                    name: e.name.clone(),
                }
            })
            .collect()
    }

    /// Sets its metric series: each backend's health gauge, as traffic sees it, and
    /// how many backends are in force.
    pub(crate) fn publish_health(&self, metrics: &crate::metrics::Metrics) {
        let backends = self.backend_health();
        for b in &backends {
            metrics.backend_health(&self.name, &b.addr.to_string(), b.healthy);
        }
        metrics.upstream_backends(&self.name, backends.len());
    }

    /// True when some backend entry is a DNS name or an SRV name.
    pub(crate) fn has_names(&self) -> bool {
        matches!(self.endpoints, EndpointSet::Dns(_))
    }

    /// What making its endpoints needs.
    pub(crate) fn shape(&self) -> UpstreamShape<'_> {
        UpstreamShape {
            entries: &self.entries,
            tls: self.tls,
            sni: &self.sni,
        }
    }

    /// Puts `wants` in force (an upstream with names only); returns the addresses
    /// that left.
    pub(crate) async fn install(&self, wants: &[Want]) -> Vec<SocketAddr> {
        let EndpointSet::Dns(swap) = &self.endpoints else {
            return Vec::new();
        };
        let old = swap.load_full();
        // after a reload, the first install also finds the counters of the upstream
        // this one replaced (CROSSCUTTING.md §7.4)
        let seed = self.seed.lock().unwrap_or_else(|p| p.into_inner()).take();
        let priors: Vec<&Endpoints> = [Some(&*old), seed.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let new = Endpoints::build(&self.shape(), wants, &priors);
        if new.same_as(&old) {
            return Vec::new();
        }
        let removed = old.not_in(&new);
        if let Some(hosts) = &self.check_hosts {
            hosts.store(Arc::new(new.check_pairs()));
        }
        // the balancer discovers the new set (`with_leaving` lists the new ones only);
        // until it is updated it may offer a leaving address, and after it a new one:
        // both have endpoints meanwhile; then the leaving ones go
        swap.store(Arc::new(new.with_leaving(&old)));
        if let Err(e) = self.selector.update().await {
            tracing::error!("upstream {}: updating its backends failed: {e}", self.name);
        }
        swap.store(Arc::new(new));
        removed
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("entries", &self.entries)
            .field("balance", &self.balance)
            .finish_non_exhaustive()
    }
}

/// When an upstream's checks are due.
#[derive(Debug)]
pub(crate) struct HealthSchedule {
    interval: Duration,
    next_due_ms: AtomicU64,
    running: AtomicBool,
}

impl HealthSchedule {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            next_due_ms: AtomicU64::new(0),
            running: AtomicBool::new(false),
        }
    }

    /// Claims the next run if it is due at `elapsed_ms` and none is running.
    pub(crate) fn claim(&self, elapsed_ms: u64) -> bool {
        if elapsed_ms < self.next_due_ms.load(Ordering::Acquire) {
            return false;
        }
        if self.running.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.next_due_ms.store(
            elapsed_ms + self.interval.as_millis() as u64,
            Ordering::Release,
        );
        true
    }

    /// When the next run is due (ms since the checker started). A run that overruns
    /// its interval is past due; the checker then looks again shortly.
    pub(crate) fn next_due(&self) -> u64 {
        self.next_due_ms.load(Ordering::Acquire)
    }

    /// Ends the run [`HealthSchedule::claim`] claimed.
    pub(crate) fn finish(&self) {
        self.running.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_runs_once_per_interval_and_never_overlaps() {
        let s = HealthSchedule::new(Duration::from_millis(100));
        assert!(s.claim(0));
        assert!(!s.claim(10), "not due yet");
        assert!(!s.claim(150), "previous run still going");
        s.finish();
        assert!(s.claim(150));
        assert!(!s.claim(200));
    }
}
