//! Service discovery by DNS (fleet.md §13): the answers for every (name, record type)
//! the configuration uses, shared by the
//! upstreams that list the name and kept across reloads (fleet.md §13.4, §13.5), and
//! the background refresher that looks each up again when its answer expires.
//!
//! A finished lookup updates its entry, then every upstream of the current snapshot
//! is brought in line with the table ([`Discovery::resync`]): an upstream whose addresses
//! changed gets new endpoints and an updated balancer, atomically for new requests.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::dns::lookup::{self, Found, Records, SrvRecord, Status};
use crate::dns::{blocked, clamp_ttl, service_name, IpFamily, Kind, Resolved, Settings};
use crate::endpoint::{Target, Want};
use crate::metrics::Metrics;
use crate::runtime::{Snapshot, Upstream};

/// At most this many lookups run at once (fleet.md §13.13).
const MAX_IN_FLIGHT: usize = 64;
/// The longest `error` text kept for `/admin/status`.
const MAX_ERROR_TEXT: usize = 256;
/// The largest weight an SRV record gives a backend (larger ones are scaled down).
const MAX_SRV_WEIGHT: usize = 100;
/// The most backends one upstream has (Pingora's selection holds at most 65,535).
const MAX_BACKENDS: usize = 10_000;

/// A lookup's hold on its entry's `running` flag, cleared when dropped.
struct Running(Arc<Discovery>, Key);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(e) = self.0.table().get_mut(&self.1) {
            e.running = false;
        }
    }
}

/// What is looked up: a name as asked (lower case; a final `.` when absolute) and a
/// record type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    pub name: String,
    pub kind: Kind,
}

impl Key {
    fn new(name: &str, kind: Kind) -> Self {
        Self {
            name: name.to_ascii_lowercase(),
            kind,
        }
    }
}

/// The state of one (name, record type).
#[derive(Debug, Clone, Default)]
pub(crate) struct Entry {
    /// The records in force: the last answer's (empty after a negative one); `None`
    /// before the first answer.
    pub records: Option<Records>,
    /// The newest result; `None` before the first (pending).
    pub status: Option<Status>,
    /// The newest failure's text, until an answer comes.
    pub error: Option<String>,
    /// Records kept after a failed lookup.
    pub stale: bool,
    pub from_hosts: bool,
    pub resolved_at: Option<SystemTime>,
    /// When it is looked up next; `None` for a hosts-file answer.
    pub due: Option<Instant>,
    pub due_wall: Option<SystemTime>,
    /// A lookup of it is running.
    pub running: bool,
    /// The settings generation its newest lookup used (0: never looked up).
    pub looked: u64,
    /// What its newest answer had that was not taken (blocked, beyond
    /// `max_addresses`), to log a change once.
    pub dropped: String,
}

/// (upstream, entry as written) → its addresses when last logged.
type Logged = HashMap<(String, Arc<str>), Vec<SocketAddr>>;

/// The DNS answers of a gateway's upstreams, the settings they are looked up with,
/// and the work of refreshing them.
pub(crate) struct Discovery {
    /// `[server.dns]` as configured.
    settings: Mutex<Settings>,
    /// The settings with the system files read: read when a name is first looked
    /// up, and again at each reload of a config with names.
    resolved: arc_swap::ArcSwapOption<Resolved>,
    /// Advanced whenever `resolved` changes: an answer looked up under an older one
    /// is looked up again.
    generation: AtomicU64,
    table: Mutex<HashMap<Key, Entry>>,
    /// Each (upstream, entry)'s addresses when last logged, to log changes once.
    logged: Mutex<Logged>,
    /// Serialises bringing upstreams in line with the table.
    resync: tokio::sync::Mutex<()>,
    /// Counts finished lookups: wakes the refresher and a waiting `prepare`.
    done: watch::Sender<u64>,
    slots: Arc<Semaphore>,
    metrics: Metrics,
    /// The snapshot in force, once the gateway is built.
    current: std::sync::OnceLock<Arc<ArcSwap<Snapshot>>>,
    /// Snapshots a reload is preparing: the entries they need are kept.
    pinned: Mutex<Vec<Arc<Snapshot>>>,
}

/// Keeps the entries a snapshot needs while a reload prepares it (see [`Discovery::pin`]).
pub(crate) struct Pinned<'a>(&'a Discovery, Arc<Snapshot>);

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        let mut pinned = self.0.pinned.lock().unwrap_or_else(|p| p.into_inner());
        pinned.retain(|s| !Arc::ptr_eq(s, &self.1));
    }
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

impl Discovery {
    pub(crate) fn new(settings: &Settings, metrics: Metrics) -> Self {
        Self {
            settings: Mutex::new(settings.clone()),
            resolved: arc_swap::ArcSwapOption::empty(),
            generation: AtomicU64::new(1),
            table: Mutex::default(),
            logged: Mutex::default(),
            resync: tokio::sync::Mutex::new(()),
            done: watch::channel(0).0,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            metrics,
            current: std::sync::OnceLock::new(),
            pinned: Mutex::default(),
        }
    }

    /// Tells the table which snapshot is in force (lookups that end update it).
    pub(crate) fn serve(&self, state: Arc<ArcSwap<Snapshot>>) {
        let _ = self.current.set(state);
    }

    fn table(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings lookups use, the system files read on first use.
    fn resolved(&self) -> Arc<Resolved> {
        if let Some(r) = self.resolved.load_full() {
            return r;
        }
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let r = Arc::new(settings.resolve());
        self.resolved.store(Some(r.clone()));
        r
    }

    /// Applies `[server.dns]` of a reload; with names in the new config, reads the
    /// system files again (fleet.md §13.4). Returns true when what lookups use
    /// changed: every name is then looked up again, and an answer that arrives from a
    /// lookup under the old settings is asked again.
    pub(crate) fn configure(&self, settings: &Settings, has_names: bool) -> bool {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = settings.clone();
        let old = self.resolved.load_full();
        if !has_names {
            self.resolved.store(None);
            return false;
        }
        let new = settings.resolve();
        if old.as_deref() == Some(&new) {
            return false;
        }
        self.resolved.store(Some(Arc::new(new)));
        self.generation.fetch_add(1, Ordering::AcqRel);
        let now = Instant::now();
        for e in self.table().values_mut() {
            e.due = Some(now);
        }
        old.is_some()
    }

    // === What the configuration needs ===

    /// Every key `snap` needs (SRV targets from the SRV answers in force), with the
    /// upstreams that need each.
    fn wanted(&self, snap: &Snapshot) -> BTreeMap<Key, Vec<String>> {
        let table = self.table();
        let mut wanted: BTreeMap<Key, Vec<String>> = BTreeMap::new();
        let mut add = |k: Key, up: &str| {
            let ups = wanted.entry(k).or_default();
            if ups.last().is_none_or(|l| l != up) {
                ups.push(up.to_string());
            }
        };
        for up in snap.upstreams.values().filter(|u| u.has_names()) {
            for e in &up.entries {
                let (own, targets) = entry_keys(&e.target, up.ip_family, &table);
                for k in own.into_iter().chain(targets) {
                    add(k, &up.name);
                }
            }
        }
        wanted
    }

    /// Adds a pending entry, due now, for every key `snap` needs that has none.
    /// Returns how many of its keys have not been looked up under the settings in
    /// force.
    fn ensure(&self, snap: &Snapshot) -> usize {
        let wanted = self.wanted(snap);
        let generation = self.generation.load(Ordering::Acquire);
        let mut table = self.table();
        let now = Instant::now();
        let mut waiting = 0;
        for k in wanted.into_keys() {
            let e = table.entry(k).or_insert_with(|| Entry {
                due: Some(now),
                ..Entry::default()
            });
            waiting += usize::from(e.looked < generation);
        }
        waiting
    }

    /// The upstreams, of the snapshot in force and of those being prepared, that
    /// list the name of `key` (for an SRV target: whose SRV answer names it).
    fn users(&self, key: &Key) -> Vec<String> {
        let mut snaps: Vec<Arc<Snapshot>> = self
            .pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(st) = self.current.get() {
            snaps.push(st.load_full());
        }
        let table = self.table();
        let mut users: Vec<String> = Vec::new();
        for snap in &snaps {
            for up in snap.upstreams.values().filter(|u| u.has_names()) {
                let uses = up.entries.iter().any(|e| {
                    let (own, targets) = entry_keys(&e.target, up.ip_family, &table);
                    own.contains(key) || targets.contains(key)
                });
                if uses && !users.contains(&up.name) {
                    users.push(up.name.clone());
                }
            }
        }
        users
    }

    /// Keeps the entries `snap` needs, until the guard is dropped, while a reload
    /// prepares it (before it is in force).
    pub(crate) fn pin(&self, snap: Arc<Snapshot>) -> Pinned<'_> {
        let mut pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        pinned.push(snap.clone());
        Pinned(self, snap)
    }

    /// Forgets the entries that neither the snapshot in force nor one being prepared
    /// needs (names gone in a reload, SRV targets gone from an answer): the table
    /// stays bounded by the configuration.
    pub(crate) fn prune(&self) {
        let Some(current) = self.current.get() else {
            return;
        };
        let pinned = self
            .pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut keep = self.wanted(&current.load());
        for p in &pinned {
            keep.extend(self.wanted(p));
        }
        self.table().retain(|k, _| keep.contains_key(k));
    }

    // === Lookups ===

    /// Starts a lookup of every entry due by now that is not running; returns when
    /// the next entry is due.
    fn start_due(self: &Arc<Self>) -> Option<Instant> {
        let now = Instant::now();
        let mut started = Vec::new();
        let mut next: Option<Instant> = None;
        let mut table = self.table();
        for (k, e) in table.iter_mut() {
            match e.due {
                Some(due) if due <= now && !e.running => {
                    e.running = true;
                    started.push(k.clone());
                }
                Some(due) if !e.running => next = Some(next.map_or(due, |n| n.min(due))),
                _ => {}
            }
        }
        drop(table);
        for k in started {
            // made before the task: if the task is dropped unpolled (a start-up runtime
            // that ends), the guard in it still clears `running`
            let running = Running(self.clone(), k);
            tokio::spawn(self.clone().run_lookup(running));
        }
        next
    }

    /// One lookup: waits for a slot, looks up, records the result and, when it
    /// changed anything, brings the upstreams that list the name in line.
    async fn run_lookup(self: Arc<Self>, running: Running) {
        let key = &running.1;
        let Ok(_slot) = self.slots.clone().acquire_owned().await else {
            return;
        };
        let generation = self.generation.load(Ordering::Acquire);
        let resolved = self.resolved();
        let found = lookup::lookup(&resolved, &key.name, key.kind).await;
        let users = self.users(key);
        let changed = self.apply(key, found, &resolved.settings, generation, &users);
        if let (true, Some(state)) = (changed, self.current.get()) {
            let snap = state.load_full();
            self.ensure(&snap);
            self.resync_some(&snap, Some(&users)).await;
        }
        drop(running);
        self.done.send_modify(|n| *n += 1);
    }

    /// Records a lookup's result under fleet.md §13.4 "Effect of a result"; true
    /// when the records in force or their staleness changed.
    fn apply(
        &self,
        key: &Key,
        found: Found,
        s: &Settings,
        generation: u64,
        users: &[String],
    ) -> bool {
        let now = Instant::now();
        let wall = SystemTime::now();
        if !found.from_hosts {
            for up in users {
                self.metrics.dns_resolution(up, found.status.as_str());
            }
        }
        let mut table = self.table();
        let Some(e) = table.get_mut(key) else {
            return false;
        };
        let had = e.records.as_ref().map_or(0, records_len);
        let name = key.name.trim_end_matches('.');
        let ups = users.join(", ");
        let what = if key.kind == Kind::Srv {
            "SRV records"
        } else {
            "addresses"
        };
        let (ttl, records) = match found.status {
            Status::Ok => {
                let (records, dropped) = match found.records {
                    Some(r) => bounded(r, s.max_addresses),
                    None => (empty_like(key.kind), String::new()),
                };
                if dropped != e.dropped && !dropped.is_empty() {
                    tracing::warn!("dns: upstreams {ups}: {name} ({:?}): {dropped}", key.kind);
                }
                e.dropped = dropped;
                (clamp_ttl(found.ttl.min(u32::MAX - 1), s), Some(records))
            }
            st if st.is_negative() => {
                if had > 0 {
                    tracing::warn!(
                        "dns: upstreams {ups}: {name} ({:?}) answered {}: its {had} {what} \
                         are removed",
                        key.kind,
                        st.as_str().to_uppercase()
                    );
                }
                (s.negative_ttl, Some(empty_like(key.kind)))
            }
            st => {
                let why = found.error.as_deref().unwrap_or("");
                if had > 0 {
                    tracing::warn!(
                        "dns: upstreams {ups}: lookup of {name} ({:?}) failed ({}): keeping \
                         its {had} {what}: {why}",
                        key.kind,
                        st.as_str()
                    );
                } else {
                    tracing::warn!(
                        "dns: upstreams {ups}: lookup of {name} ({:?}) failed ({}): {why}",
                        key.kind,
                        st.as_str()
                    );
                }
                (s.negative_ttl, e.records.take())
            }
        };
        let stale =
            found.status.is_failure() && records.as_ref().is_some_and(|r| records_len(r) > 0);
        let changed = e.status.is_none() || e.records != records || e.stale != stale;
        e.stale = stale;
        e.records = records;
        e.error = found.error.map(|t| clip(&t, MAX_ERROR_TEXT));
        e.status = Some(found.status);
        e.from_hosts = found.from_hosts;
        e.resolved_at = Some(wall);
        e.looked = generation;
        if found.from_hosts {
            e.due = None;
            e.due_wall = None;
        } else {
            e.due = Some(now + ttl);
            e.due_wall = Some(wall + ttl);
        }
        if generation != self.generation.load(Ordering::Acquire) {
            // looked up under settings a reload has replaced: again, under the new
            e.due = Some(now);
        }
        changed
    }

    /// Looks up, before `snap` comes into force, every name it needs that has not
    /// been looked up under the settings in force (and SRV targets as SRV answers
    /// come), for at most `wait`. Names that stay keep their answers and expiry.
    /// Lookups still running then go on in the background.
    pub(crate) async fn prepare(self: &Arc<Self>, snap: &Snapshot, wait: Duration) {
        let deadline = Instant::now() + wait;
        let mut done = self.done.subscribe();
        loop {
            done.borrow_and_update();
            let waiting = self.ensure(snap);
            self.start_due();
            if waiting == 0 {
                break;
            }
            if !matches!(
                tokio::time::timeout_at(deadline, done.changed()).await,
                Ok(Ok(()))
            ) {
                break;
            }
        }
        self.resync(snap).await;
    }

    /// [`Discovery::prepare`] for code that has no runtime running, or is inside
    /// one it must not block: on a thread and a runtime of its own. Lookups still
    /// running after `wait` end with that runtime and are started again by the
    /// refresher.
    pub(crate) fn prepare_blocking(
        self: &Arc<Self>,
        snap: Arc<Snapshot>,
        wait: Duration,
    ) -> std::io::Result<()> {
        let this = self.clone();
        crate::blocking::run(
            "tollgate-dns",
            async move { this.prepare(&snap, wait).await },
        )
    }

    // === Upstreams ===

    /// Brings every upstream with names of `snap` in line with the table.
    pub(crate) async fn resync(&self, snap: &Snapshot) {
        self.resync_some(snap, None).await;
    }

    /// Brings the upstreams with names of `snap` (only those named in `only`, when
    /// given) in line with the table.
    async fn resync_some(&self, snap: &Snapshot, only: Option<&[String]>) {
        let _one = self.resync.lock().await;
        let chosen = |u: &&Arc<Upstream>| only.is_none_or(|o| o.contains(&u.name));
        for up in snap
            .upstreams
            .values()
            .filter(|u| u.has_names())
            .filter(chosen)
        {
            let (wants, stale) = self.wants(up);
            self.log_changes(up, &wants);
            // (the changes were logged per name just above)
            for gone in up.install(&wants).await {
                self.metrics.forget_backend(&up.name, &gone.to_string());
            }
            up.publish_health(&self.metrics);
            self.metrics.dns_stale(&up.name, stale);
        }
    }

    /// The addresses `up` should have under the table, and how many of its names are
    /// stale.
    pub(crate) fn wants(&self, up: &Upstream) -> (Vec<Want>, usize) {
        let max = self.resolved().settings.max_addresses;
        let table = self.table();
        let mut wants = Vec::new();
        let mut stale = 0;
        for (i, e) in up.entries.iter().enumerate() {
            match &e.target {
                Target::Ip(addr) => wants.push(Want::ip(*addr, e.weight, i)),
                Target::Host(h, port) => {
                    let (ips, st) = addresses(&table, h, up.ip_family, max);
                    stale += usize::from(st);
                    let host = h.trim_end_matches('.').to_string();
                    wants.extend(ips.into_iter().map(|ip| Want {
                        addr: SocketAddr::new(ip, *port),
                        weight: e.weight,
                        entry: i,
                        host_name: Some(host.clone()),
                        tier: None,
                        priority: None,
                    }));
                }
                Target::Srv(n) => {
                    let key = Key::new(n, Kind::Srv);
                    let mut st = table.get(&key).is_some_and(|e| e.stale);
                    let service = service_name(n).to_string();
                    let records = srv_records(&table, &key);
                    let mut ranks: Vec<u16> = records.iter().map(|r| r.priority).collect();
                    ranks.dedup();
                    // weights come from an unauthenticated answer: scaled so the
                    // largest is at most MAX_SRV_WEIGHT (a balancer's memory grows
                    // with the sum of weights), proportions kept
                    let top = records.iter().map(|r| r.weight).max().unwrap_or(1);
                    let mut taken = 0;
                    for r in &records {
                        let (ips, s) =
                            addresses(&table, &format!("{}.", r.target), up.ip_family, max);
                        st |= s;
                        let rank = ranks.iter().position(|p| *p == r.priority).unwrap_or(0);
                        for ip in ips {
                            if taken == max {
                                break;
                            }
                            taken += 1;
                            wants.push(Want {
                                addr: SocketAddr::new(ip, r.port),
                                weight: srv_weight(r.weight, top),
                                entry: i,
                                host_name: Some(service.clone()),
                                tier: Some((i as u16, rank as u16)),
                                priority: Some(r.priority),
                            });
                        }
                    }
                    stale += usize::from(st);
                }
            }
        }
        if wants.len() > MAX_BACKENDS {
            tracing::warn!(
                "upstream {}: {} backends, only the first {MAX_BACKENDS} are used",
                up.name,
                wants.len()
            );
            wants.truncate(MAX_BACKENDS);
        }
        (wants, stale)
    }

    /// Logs each name entry of `up` whose addresses changed since last logged.
    fn log_changes(&self, up: &Upstream, wants: &[Want]) {
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        for (i, e) in up.entries.iter().enumerate().filter(|(_, e)| e.is_name()) {
            let mut now: Vec<SocketAddr> = wants
                .iter()
                .filter(|w| w.entry == i)
                .map(|w| w.addr)
                .collect();
            now.sort();
            now.dedup();
            let key = (up.name.clone(), e.written.clone());
            let before = logged.get(&key).cloned();
            if before.as_ref() == Some(&now) {
                continue;
            }
            let before = before.unwrap_or_default();
            let added: Vec<String> = now
                .iter()
                .filter(|a| !before.contains(a))
                .map(ToString::to_string)
                .collect();
            let removed: Vec<String> = before
                .iter()
                .filter(|a| !now.contains(a))
                .map(ToString::to_string)
                .collect();
            if !added.is_empty() || !removed.is_empty() {
                tracing::info!(
                    "dns: upstream {}: {} addresses changed: added [{}], removed [{}]",
                    up.name,
                    e.written,
                    added.join(", "),
                    removed.join(", ")
                );
            }
            logged.insert(key, now);
        }
    }

    // === Reports ===

    /// `/admin/status`'s `names` of `up` (fleet.md §13.9), in config order.
    pub(crate) fn report(&self, up: &Upstream) -> Vec<NameReport> {
        let (wants, _) = self.wants(up);
        let table = self.table();
        let mut out = Vec::new();
        for (i, e) in up.entries.iter().enumerate() {
            let srv = match &e.target {
                Target::Ip(_) => continue,
                Target::Host(..) => None,
                Target::Srv(n) => Some(srv_records(&table, &Key::new(n, Kind::Srv))),
            };
            let (keys, targets) = entry_keys(&e.target, up.ip_family, &table);
            let entries: Vec<&Entry> = keys.iter().filter_map(|k| table.get(k)).collect();
            let all: Vec<&Entry> = keys
                .iter()
                .chain(&targets)
                .filter_map(|k| table.get(k))
                .collect();
            let statuses: Vec<Status> = entries.iter().filter_map(|e| e.status).collect();
            let result = if statuses.contains(&Status::Ok) {
                "ok"
            } else if let Some(f) = newest_failure(&entries) {
                f.as_str()
            } else if statuses.is_empty() || statuses.len() < keys.len() {
                "pending"
            } else if statuses.iter().all(|s| *s == Status::NxDomain) {
                "nxdomain"
            } else {
                "nodata"
            };
            let mut addresses: Vec<SocketAddr> = wants
                .iter()
                .filter(|w| w.entry == i)
                .map(|w| w.addr)
                .collect();
            addresses.sort();
            addresses.dedup();
            let from_hosts = !entries.is_empty() && entries.iter().all(|e| e.from_hosts);
            out.push(NameReport {
                name: e.written.to_string(),
                srv: srv.clone(),
                from_hosts,
                addresses,
                result,
                stale: all.iter().any(|e| e.stale),
                resolved_at: all.iter().filter_map(|e| e.resolved_at).max(),
                expires_at: all.iter().filter_map(|e| e.due_wall).min(),
                error: entries
                    .iter()
                    .filter(|e| e.status.is_some_and(Status::is_failure))
                    .max_by_key(|e| e.resolved_at)
                    .and_then(|e| e.error.clone()),
                path: e.path.clone(),
                place: e.place.clone(),
                detail: wants
                    .iter()
                    .filter(|w| w.entry == i)
                    .map(|w| (w.addr, w.priority, w.weight))
                    .collect(),
            });
        }
        out
    }
}

/// What a backend entry looks up: its own keys (A/AAAA of a host name by `family`, or
/// the SRV name), and for an SRV entry its targets' A/AAAA (absolute names) under the
/// SRV answer in force.
fn entry_keys(
    target: &Target,
    family: IpFamily,
    table: &HashMap<Key, Entry>,
) -> (Vec<Key>, Vec<Key>) {
    match target {
        Target::Ip(_) => (Vec::new(), Vec::new()),
        Target::Host(h, _) => (
            family.kinds().iter().map(|k| Key::new(h, *k)).collect(),
            Vec::new(),
        ),
        Target::Srv(n) => {
            let key = Key::new(n, Kind::Srv);
            let targets = srv_records(table, &key)
                .iter()
                .flat_map(|r| {
                    let name = format!("{}.", r.target);
                    family.kinds().iter().map(move |k| Key::new(&name, *k))
                })
                .collect();
            (vec![key], targets)
        }
    }
}

/// One name entry as `/admin/status` and `check --resolve` show it.
#[derive(Debug, Clone)]
pub(crate) struct NameReport {
    pub name: String,
    /// For an SRV entry: its records.
    pub srv: Option<Vec<SrvRecord>>,
    pub from_hosts: bool,
    pub addresses: Vec<SocketAddr>,
    pub result: &'static str,
    pub stale: bool,
    pub resolved_at: Option<SystemTime>,
    pub expires_at: Option<SystemTime>,
    pub error: Option<String>,
    /// `upstreams.X.backends[I]`.
    pub path: String,
    /// `FILE:LINE:COL` of the entry.
    pub place: String,
    /// Each address with its SRV priority and its weight.
    pub detail: Vec<(SocketAddr, Option<u16>, usize)>,
}

fn newest_failure(entries: &[&Entry]) -> Option<Status> {
    entries
        .iter()
        .filter(|e| e.status.is_some_and(Status::is_failure))
        .max_by_key(|e| e.resolved_at)
        .and_then(|e| e.status)
}

fn records_len(r: &Records) -> usize {
    match r {
        Records::Addrs(a) => a.len(),
        Records::Srv(s) => s.len(),
    }
}

fn empty_like(kind: Kind) -> Records {
    match kind {
        Kind::Srv => Records::Srv(Vec::new()),
        _ => Records::Addrs(Vec::new()),
    }
}

/// An answer as kept: blocked addresses taken out (fleet.md §13.12), then at most
/// `max` addresses, or SRV records in the order their addresses are kept (§13.13);
/// and what was left out, for the log.
fn bounded(r: Records, max: usize) -> (Records, String) {
    match r {
        Records::Addrs(addrs) => {
            let (bad, mut good): (Vec<IpAddr>, Vec<IpAddr>) =
                addrs.into_iter().partition(|ip| blocked(*ip));
            good.sort();
            let mut why = Vec::new();
            if !bad.is_empty() {
                let list: Vec<String> = bad.iter().map(ToString::to_string).collect();
                why.push(format!(
                    "addresses never taken from DNS, dropped: {}",
                    list.join(", ")
                ));
            }
            if good.len() > max {
                why.push(format!(
                    "{} addresses, only the first {max} are kept",
                    good.len()
                ));
                good.truncate(max);
            }
            (Records::Addrs(good), why.join("; "))
        }
        Records::Srv(mut records) => {
            records.sort_by(srv_order);
            let mut why = String::new();
            if records.len() > max {
                why = format!(
                    "{} SRV records, only the first {max} are kept",
                    records.len()
                );
                records.truncate(max);
            }
            (Records::Srv(records), why)
        }
    }
}

/// The weight of a backend from an SRV record of weight `w` (0 counts as 1), when the
/// largest of its entry's records is `top`: scaled so that one is MAX_SRV_WEIGHT.
fn srv_weight(w: u16, top: u16) -> usize {
    let w = usize::from(w.max(1));
    match usize::from(top) {
        t if t > MAX_SRV_WEIGHT => (w * MAX_SRV_WEIGHT / t).max(1),
        _ => w,
    }
}

/// Lower priority values first, then larger weights, then targets by name.
fn srv_order(a: &SrvRecord, b: &SrvRecord) -> std::cmp::Ordering {
    (a.priority, std::cmp::Reverse(a.weight), &a.target).cmp(&(
        b.priority,
        std::cmp::Reverse(b.weight),
        &b.target,
    ))
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The SRV records in force for `key`, in the order their addresses are kept: lower
/// priority values first, then larger weights, then targets by name (§13.13); port 0
/// and the root target ("no service") left out.
fn srv_records(table: &HashMap<Key, Entry>, key: &Key) -> Vec<SrvRecord> {
    let Some(Records::Srv(records)) = table.get(key).and_then(|e| e.records.as_ref()) else {
        return Vec::new();
    };
    let mut r: Vec<SrvRecord> = records
        .iter()
        .filter(|r| r.port != 0 && !r.target.is_empty())
        .cloned()
        .collect();
    r.sort_by(srv_order);
    r
}

/// A host name's addresses in force: its A and AAAA records allowed by `family`, each
/// once, ascending (IPv4 first), the first `max`; and whether any are kept after a
/// failed lookup.
fn addresses(
    table: &HashMap<Key, Entry>,
    name: &str,
    family: IpFamily,
    max: usize,
) -> (Vec<IpAddr>, bool) {
    let mut ips = Vec::new();
    let mut stale = false;
    for kind in family.kinds() {
        if let Some(e) = table.get(&Key::new(name, *kind)) {
            stale |= e.stale;
            if let Some(Records::Addrs(a)) = &e.records {
                ips.extend(a.iter().copied());
            }
        }
    }
    ips.sort();
    ips.dedup();
    // each record type holds at most `max` (see `bounded`, which logs what it drops);
    // A and AAAA together may hold more: the first `max`, IPv4 first
    ips.truncate(max);
    (ips, stale)
}

// === Service ===

/// Looks each name up again when its answer expires (fleet.md §13.4 "When").
pub(crate) struct Refresher {
    pub(crate) dns: Arc<Discovery>,
    pub(crate) state: Arc<ArcSwap<Snapshot>>,
    pub(crate) reloads: watch::Receiver<()>,
}

#[async_trait]
impl BackgroundService for Refresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut reloads = self.reloads.clone();
        let mut reloadable = true;
        let mut done = self.dns.done.subscribe();
        loop {
            reloads.borrow_and_update();
            done.borrow_and_update();
            let snap = self.state.load_full();
            let needed = snap.upstreams.values().any(|u| u.has_names());
            self.dns.prune();
            if needed {
                self.dns.ensure(&snap);
            }
            drop(snap);
            let next = if needed { self.dns.start_due() } else { None };
            tokio::select! {
                _ = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = done.changed() => {}
                changed = reloads.changed(), if reloadable => reloadable = changed.is_ok(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tollgate_tests::{DnsServer, Rule};

    use super::*;
    use crate::config::Config;
    use crate::policy::Registry;

    fn config(dns: &DnsServer) -> Config {
        let src = format!(
            "[server.dns]\nresolvers = [\"{}\"]\nhosts_file = \"\"\nmin_ttl = \"100ms\"\n\
             ip_family = \"v4\"\n\
             [upstreams.u]\nbackends = [{{ srv = \"_http._tcp.s.test\" }}]\n\
             [routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n",
            dns.addr()
        );
        Config::parse(&src, "g.toml", Path::new("."), &Registry::with_builtins()).unwrap()
    }

    fn names(dns: &Discovery) -> Vec<String> {
        let mut v: Vec<String> = dns.table().keys().map(|k| k.name.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn answers_are_bounded_and_what_is_left_out_is_said() {
        let ips = [
            "169.254.169.254",
            "127.0.0.3",
            "127.0.0.2",
            "10.0.0.1",
            "0.1.2.3",
        ];
        let (kept, why) = bounded(
            Records::Addrs(ips.iter().map(|i| i.parse().unwrap()).collect()),
            2,
        );
        let want: Vec<IpAddr> = ["10.0.0.1", "127.0.0.2"]
            .iter()
            .map(|i| i.parse().unwrap())
            .collect();
        assert_eq!(kept, Records::Addrs(want), "blocked out, then the lowest 2");
        assert!(
            why.contains("169.254.169.254, 0.1.2.3") && why.contains("only the first 2"),
            "{why}"
        );
        let srv = |p, w, t: &str| SrvRecord {
            priority: p,
            weight: w,
            port: 80,
            target: t.into(),
        };
        let (kept, why) = bounded(
            Records::Srv(vec![
                srv(20, 5, "a"),
                srv(10, 1, "b"),
                srv(10, 9, "c"),
                srv(10, 9, "a"),
            ]),
            3,
        );
        assert_eq!(
            kept,
            Records::Srv(vec![srv(10, 9, "a"), srv(10, 9, "c"), srv(10, 1, "b")]),
            "lower priorities, then larger weights, then names"
        );
        assert!(why.contains("4 SRV records"));
        assert_eq!(
            bounded(Records::Addrs(vec!["127.0.0.2".parse().unwrap()]), 2).1,
            ""
        );
    }

    #[test]
    fn srv_weights_are_scaled_down_in_proportion() {
        assert_eq!(srv_weight(0, 3), 1, "0 counts as 1");
        assert_eq!(srv_weight(3, 3), 3);
        assert_eq!(srv_weight(65535, 65535), MAX_SRV_WEIGHT);
        assert_eq!(srv_weight(32768, 65535), 50);
        assert_eq!(srv_weight(1, 65535), 1, "never below 1");
    }

    #[test]
    fn error_texts_are_cut_at_a_character_boundary() {
        assert_eq!(clip("ab€", 3), "ab");
        assert_eq!(clip("abc", 256), "abc");
    }

    fn parse(src: &str) -> Config {
        Config::parse(src, "g.toml", Path::new("."), &Registry::with_builtins()).unwrap()
    }

    fn addrs_of(dns: &Discovery, c: &Config, up: &str) -> Vec<String> {
        let (wants, _) = dns.wants(&c.snapshot.upstreams[up]);
        wants.iter().map(|w| w.addr.to_string()).collect()
    }

    #[tokio::test]
    async fn ip_family_picks_the_record_types_and_ipv4_comes_first() {
        let server = DnsServer::start();
        server.set_a("both.test", &["127.0.0.2"], 30);
        server.set_aaaa("both.test", &["::1"], 30);
        let c = parse(&format!(
            "[server.dns]\nresolvers = [\"{}\"]\nhosts_file = \"\"\n\
             [upstreams.any]\nbackends = [\"both.test:80\"]\n\
             [upstreams.four]\nbackends = [\"both.test:80\"]\nip_family = \"v4\"\n\
             [upstreams.six]\nbackends = [\"both.test:80\"]\nip_family = \"v6\"\n\
             [upstreams.heavy]\nbackends = [{{ addr = \"both.test:80\", weight = 2 }}]\n\
             [routes.r]\npaths = [\"/\"]\nupstream = \"any\"\n",
            server.addr()
        ));
        let dns = Arc::new(Discovery::new(
            &c.server.dns,
            crate::metrics::Metrics::new(),
        ));
        dns.serve(Arc::new(ArcSwap::new(c.snapshot.clone())));
        dns.prepare(&c.snapshot, Duration::from_secs(5)).await;
        assert_eq!(addrs_of(&dns, &c, "any"), ["127.0.0.2:80", "[::1]:80"]);
        assert_eq!(addrs_of(&dns, &c, "four"), ["127.0.0.2:80"]);
        assert_eq!(addrs_of(&dns, &c, "six"), ["[::1]:80"]);
        // the entry's weight is each address's, not divided among them (§13.5)
        let (heavy, _) = dns.wants(&c.snapshot.upstreams["heavy"]);
        assert_eq!(heavy.iter().map(|w| w.weight).collect::<Vec<_>>(), [2, 2]);
        // one lookup per name and record type, shared by the four upstreams
        assert_eq!(server.query_count("both.test", "A"), 1);
        assert_eq!(server.query_count("both.test", "AAAA"), 1);
    }

    #[tokio::test]
    async fn failed_lookups_keep_the_srv_records_and_the_targets_addresses() {
        let server = DnsServer::start();
        server.set_srv("_http._tcp.s.test", &[(1, 1, 8080, "t1.test")], 30);
        server.set_a("t1.test", &["127.0.0.2"], 30);
        let src = |attempts: u8| {
            format!(
                "[server.dns]\nresolvers = [\"{}\"]\nhosts_file = \"\"\nip_family = \"v4\"\n\
                 search = [\"x.test\"]\nndots = 5\ntimeout = \"200ms\"\nattempts = {attempts}\n\
                 [upstreams.u]\nbackends = [{{ srv = \"_http._tcp.s.test.\" }}]\n\
                 [routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n",
                server.addr()
            )
        };
        let c = parse(&src(1));
        let dns = Arc::new(Discovery::new(
            &c.server.dns,
            crate::metrics::Metrics::new(),
        ));
        dns.serve(Arc::new(ArcSwap::new(c.snapshot.clone())));
        dns.prepare(&c.snapshot, Duration::from_secs(5)).await;
        assert_eq!(addrs_of(&dns, &c, "u"), ["127.0.0.2:8080"]);
        // SRV targets are absolute: the search list is not tried for them
        let asked: Vec<String> = server.queries().into_iter().map(|q| q.name).collect();
        assert_eq!(asked, ["_http._tcp.s.test", "t1.test"]);
        // both fail; changed settings have every name asked again, at once
        server.set_rule("*", Rule::ServFail);
        let c2 = parse(&src(2));
        assert!(dns.configure(&c2.server.dns, true));
        dns.prepare(&c2.snapshot, Duration::from_secs(5)).await;
        let status = |name: &str, kind| {
            dns.table()
                .get(&Key::new(name, kind))
                .and_then(|e| e.status)
        };
        assert_eq!(
            status("_http._tcp.s.test.", Kind::Srv),
            Some(Status::ServFail)
        );
        assert_eq!(status("t1.test.", Kind::A), Some(Status::ServFail));
        assert_eq!(addrs_of(&dns, &c2, "u"), ["127.0.0.2:8080"], "kept");
        let report = &dns.report(&c2.snapshot.upstreams["u"])[0];
        assert!(report.stale);
        assert_eq!(report.result, "servfail");
    }

    #[tokio::test]
    async fn at_most_64_lookups_run_at_once() {
        let server = DnsServer::start();
        server.set_rule("*", Rule::Drop);
        let backends: Vec<String> = (0..100).map(|i| format!("\"n{i}.test:80\"")).collect();
        let c = parse(&format!(
            "[server.dns]\nresolvers = [\"{}\"]\nhosts_file = \"\"\nip_family = \"v4\"\n\
             timeout = \"3s\"\nattempts = 1\n\
             [upstreams.u]\nbackends = [{}]\n[routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n",
            server.addr(),
            backends.join(", ")
        ));
        let dns = Arc::new(Discovery::new(
            &c.server.dns,
            crate::metrics::Metrics::new(),
        ));
        dns.prepare(&c.snapshot, Duration::ZERO).await;
        let asked = || {
            let mut names: Vec<String> = server.queries().into_iter().map(|q| q.name).collect();
            names.sort();
            names.dedup();
            names.len()
        };
        // every lookup is started; the first 64 ask, the rest wait for a slot (no
        // answer comes: the first slot frees at the 3 s timeout)
        let deadline = Instant::now() + Duration::from_secs(2);
        while asked() < 64 {
            assert!(Instant::now() < deadline, "only {} asked", asked());
            let _ =
                tokio::time::timeout(Duration::from_millis(20), std::future::pending::<()>()).await;
        }
        assert_eq!(asked(), 64);
        assert_eq!(dns.slots.available_permits(), 0);
    }

    #[tokio::test]
    async fn srv_targets_gone_from_an_answer_are_forgotten() {
        let server = DnsServer::start();
        server.set_srv("_http._tcp.s.test", &[(1, 1, 8080, "t1.test")], 0);
        server.set_a("t1.test", &["127.0.0.2"], 0);
        server.set_a("t2.test", &["127.0.0.3"], 0);
        let c = config(&server);
        let dns = Discovery::new(&c.server.dns, crate::metrics::Metrics::new());
        let dns = Arc::new(dns);
        dns.serve(Arc::new(ArcSwap::new(c.snapshot.clone())));
        dns.prepare(&c.snapshot, Duration::from_secs(5)).await;
        assert_eq!(names(&dns), ["_http._tcp.s.test", "t1.test."]);
        let u = &c.snapshot.upstreams["u"];
        assert_eq!(
            u.endpoints.current().list[0].addr.to_string(),
            "127.0.0.2:8080"
        );
        // the SRV answer moves to another target
        server.set_srv("_http._tcp.s.test", &[(1, 1, 8080, "t2.test")], 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !names(&dns).contains(&"t2.test.".to_string())
            || u.endpoints.current().list.len() != 1
            || u.endpoints.current().list[0].addr.to_string() != "127.0.0.3:8080"
        {
            assert!(Instant::now() < deadline, "{:?}", names(&dns));
            // looks up what is due (each answer is due again after min_ttl)
            dns.prepare(&c.snapshot, Duration::from_secs(5)).await;
            let _ =
                tokio::time::timeout(Duration::from_millis(150), dns.done.subscribe().changed())
                    .await;
        }
        dns.prune();
        assert_eq!(
            names(&dns),
            ["_http._tcp.s.test", "t2.test."],
            "t1 is forgotten"
        );
    }
}
