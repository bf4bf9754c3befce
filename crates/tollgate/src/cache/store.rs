//! The process's one response store: in memory, bounded in bytes (bodies, headers and
//! keys together), with TinyUFO eviction (TinyLFU admission, S3-FIFO eviction). It is
//! Pingora's cache [`Storage`]; each route's entries are indexed for purges and
//! reloads.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::Result;
use pingora_cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta};
use tinyufo::TinyUfo;

use super::Settings;
use crate::metrics::CacheMetrics;

/// What an entry is about, besides its key's hash: its route and the parts a purge
/// selects by. The proxy puts it in the extensions of the [`CacheMeta`] it stores (made
/// for misses only, never for hits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Facts {
    pub route: Arc<str>,
    pub generation: u64,
    /// Lowercased, its port kept unless the scheme's default.
    pub host: Box<str>,
    /// The normalised path.
    pub path: Box<str>,
    /// The query as it is keyed (sorted, `vary_query` applied).
    pub query: Box<str>,
}

/// One stored response.
struct Stored {
    key: HashBinary,
    facts: Facts,
    fresh_until: SystemTime,
    created: SystemTime,
    updated: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
    header: ResponseHeader,
    body: Bytes,
    /// What it counts against `memory`.
    size: usize,
}

impl Stored {
    fn meta(&self) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate,
            self.stale_if_error,
            self.header.clone(),
        );
        if self.updated != self.created {
            // `Age` counts from the last revalidation
            meta.set_epoch_override(self.updated);
        }
        if let Some(v) = self.variance {
            meta.set_variance(v);
        }
        meta
    }
}

/// What an entry costs beyond its body and headers (its key, facts, bookkeeping).
const ENTRY_OVERHEAD: usize = 256;
/// The most header bytes an entry is given room for in its weight unit.
const HEADER_ROOM: u64 = 256 << 10;

/// The books of the store: kept under one lock, so that bytes held never pass `memory`.
#[derive(Default)]
struct Books {
    bytes: usize,
    objects: usize,
    by_route: HashMap<Arc<str>, HashSet<HashBinary>>,
}

/// The response store.
pub(crate) struct Store {
    settings: Settings,
    /// Bytes per unit of TinyUFO weight (its weights are 16-bit).
    unit: usize,
    entries: TinyUfo<HashBinary, Arc<Stored>>,
    books: Mutex<Books>,
    /// Set when a reload replaced this store: it stores nothing more.
    retired: AtomicBool,
    metrics: CacheMetrics,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A new, empty store. Pingora's engine takes its storage for the life of the
    /// process, so a store is leaked; a reload that replaces it retires it (empties it).
    pub(crate) fn leak(settings: Settings, metrics: CacheMetrics) -> &'static Store {
        let largest = settings.max_object + HEADER_ROOM + ENTRY_OVERHEAD as u64;
        let unit = largest.div_ceil(u64::from(u16::MAX)).max(1) as usize;
        let limit = (settings.memory / unit as u64) as usize;
        let estimated = (settings.memory / 4096).clamp(1024, 1 << 20) as usize;
        metrics.bytes.set(0);
        metrics.objects.set(0);
        Box::leak(Box::new(Store {
            settings,
            unit,
            entries: TinyUfo::new(limit, estimated),
            books: Mutex::default(),
            retired: AtomicBool::new(false),
            metrics,
        }))
    }

    pub(crate) fn settings(&self) -> Settings {
        self.settings
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, books: &Books) {
        self.metrics.bytes.set(books.bytes as i64);
        self.metrics.objects.set(books.objects as i64);
    }

    fn get(&self, key: &HashBinary) -> Option<Arc<Stored>> {
        // TinyUFO keeps a 64-bit hash of the key: the whole key is compared
        self.entries.get(key).filter(|s| s.key == *key)
    }

    /// Takes `key`'s entry out of the books (the caller holds them).
    fn unbook(&self, books: &mut Books, gone: &Stored) {
        books.bytes -= gone.size;
        books.objects -= 1;
        if let Some(set) = books.by_route.get_mut(&gone.facts.route) {
            set.remove(&gone.key);
            if set.is_empty() {
                books.by_route.remove(&gone.facts.route);
            }
        }
    }

    fn remove_locked(&self, books: &mut Books, key: &HashBinary) -> bool {
        match self.entries.remove(key) {
            Some(gone) if gone.key == *key => {
                self.unbook(books, &gone);
                true
            }
            Some(other) => {
                // a different key under the same 64-bit hash: it goes too (a miss later)
                self.unbook(books, &other);
                false
            }
            None => false,
        }
    }

    /// Stores `entry`, replacing its key's previous one, evicting what it must.
    fn insert(&self, entry: Stored) -> bool {
        if self.retired.load(Ordering::Acquire) {
            return false;
        }
        let weight = entry.size.div_ceil(self.unit);
        let Ok(weight) = u16::try_from(weight.max(1)) else {
            return false;
        };
        let entry = Arc::new(entry);
        let mut books = self.books();
        self.remove_locked(&mut books, &entry.key);
        let evicted = self.entries.put(entry.key, entry.clone(), weight);
        let mut admitted = true;
        for kv in evicted {
            self.metrics.evictions.inc();
            if Arc::ptr_eq(&kv.data, &entry) {
                admitted = false;
            } else {
                self.unbook(&mut books, &kv.data);
            }
        }
        if admitted {
            books.bytes += entry.size;
            books.objects += 1;
            books
                .by_route
                .entry(entry.facts.route.clone())
                .or_default()
                .insert(entry.key);
        }
        self.publish(&books);
        admitted
    }

    /// Removes the entries for which `drop` holds (among those of the routes it is
    /// asked about), returning how many went.
    pub(crate) fn remove_where(
        &self,
        route: Option<&str>,
        mut drop: impl FnMut(&Facts) -> bool,
    ) -> usize {
        let mut books = self.books();
        let keys: Vec<HashBinary> = match route {
            Some(r) => books
                .by_route
                .get(r)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
            None => books.by_route.values().flatten().copied().collect(),
        };
        let mut n = 0;
        for key in keys {
            let Some(entry) = self.get(&key) else {
                continue;
            };
            if drop(&entry.facts) && self.remove_locked(&mut books, &key) {
                n += 1;
            }
        }
        self.publish(&books);
        n
    }

    /// Removes the entry of `key` (an expired entry the upstream replaced with a
    /// response that is not stored).
    pub(crate) fn remove(&self, key: &HashBinary) {
        let mut books = self.books();
        self.remove_locked(&mut books, key);
        self.publish(&books);
    }

    /// Keeps only the entries whose route and rules are still in force (a reload).
    pub(crate) fn retain_live(&self, live: &HashMap<&str, u64>) {
        let gone: Vec<Arc<str>> = self
            .books()
            .by_route
            .keys()
            .filter(|r| !live.contains_key(&***r))
            .cloned()
            .collect();
        for r in gone {
            self.remove_where(Some(&r), |_| true);
        }
        for (route, generation) in live {
            self.remove_where(Some(route), |f| f.generation != *generation);
        }
    }

    /// Replaced by a new store: stores nothing more and lets go of its entries (those
    /// being served finish).
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.remove_where(None, |_| true);
    }

    fn not_stored(&self, route: &str, reason: &str) {
        self.metrics
            .not_stored
            .with_label_values(&[route, reason])
            .inc();
    }
}

#[async_trait]
impl Storage for Store {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(entry) = self.get(&key.combined_bin()) else {
            return Ok(None);
        };
        let meta = entry.meta();
        let end = entry.body.len();
        let hit = Hit {
            body: entry.body.clone(),
            start: 0,
            end,
            done: false,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let facts = meta.extensions().get::<Facts>().cloned().ok_or_else(|| {
            pingora::Error::explain(
                pingora::ErrorType::InternalError,
                "a stored response without its facts",
            )
        })?;
        Ok(Box::new(Miss {
            store: self,
            key: key.combined_bin(),
            facts,
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            variance: meta.variance(),
            header: meta.response_header_copy(),
            body: Vec::new(),
            len: 0,
            too_large: false,
            finished: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key: &CompactCacheKey = target.key();
        let bin = key.combined_bin();
        let mut books = self.books();
        let removed = self.remove_locked(&mut books, &bin);
        self.publish(&books);
        Ok(if removed {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let bin = key.combined_bin();
        let Some(old) = self.get(&bin) else {
            return Ok(false);
        };
        let header = meta.response_header_copy();
        let size = old.size - header_size(&old.header) + header_size(&header);
        Ok(self.insert(Stored {
            key: bin,
            facts: old.facts.clone(),
            fresh_until: meta.fresh_until(),
            created: old.created,
            updated: meta.updated(),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            variance: meta.variance().or(old.variance),
            header,
            body: old.body.clone(),
            size,
        }))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// The bytes a stored head takes (names, values and their framing).
fn header_size(h: &ResponseHeader) -> usize {
    h.headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + 16
}

/// Reads an entry's body (or one range of it).
struct Hit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done || self.start >= self.end {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                "seek past the end of a cached body",
            );
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Collects a response's body; stores it when it arrives whole within `max_object`.
struct Miss {
    store: &'static Store,
    key: HashBinary,
    facts: Facts,
    fresh_until: SystemTime,
    created: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
    header: ResponseHeader,
    body: Vec<Bytes>,
    len: usize,
    too_large: bool,
    finished: bool,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.too_large || data.is_empty() {
            return Ok(());
        }
        self.len += data.len();
        if self.len as u64 > self.store.settings.max_object {
            // the client still gets the whole response; the store does not
            self.too_large = true;
            self.body = Vec::new();
        } else {
            self.body.push(data);
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        self.finished = true;
        if self.too_large {
            self.store.not_stored(&self.facts.route, "too_large");
            return Ok(MissFinishType::Created(0));
        }
        let body = match self.body.len() {
            0 => Bytes::new(),
            1 => self.body.pop().unwrap_or_default(),
            _ => {
                let mut all = bytes::BytesMut::with_capacity(self.len);
                for piece in &self.body {
                    all.extend_from_slice(piece);
                }
                all.freeze()
            }
        };
        let size = body.len()
            + header_size(&self.header)
            + ENTRY_OVERHEAD
            + self.facts.route.len()
            + self.facts.host.len()
            + self.facts.path.len()
            + self.facts.query.len();
        let len = body.len();
        let header = std::mem::replace(&mut self.header, ResponseHeader::build(200, None)?);
        self.store.insert(Stored {
            key: self.key,
            facts: self.facts.clone(),
            fresh_until: self.fresh_until,
            created: self.created,
            updated: self.created,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            variance: self.variance,
            header,
            body,
            size,
        });
        Ok(MissFinishType::Created(len))
    }
}

impl Drop for Miss {
    fn drop(&mut self) {
        if !self.finished {
            // the upstream's body broke off: nothing is stored
            self.store.not_stored(&self.facts.route, "incomplete");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> CacheMetrics {
        crate::metrics::Metrics::new().cache().clone()
    }

    fn facts(route: &str, path: &str) -> Facts {
        Facts {
            route: route.into(),
            generation: 1,
            host: "example.com".into(),
            path: path.into(),
            query: "".into(),
        }
    }

    fn key(route: &str, path: &str) -> CacheKey {
        CacheKey::new(format!("{route}|{path}"), route)
    }

    fn meta(route: &str, path: &str) -> CacheMeta {
        let now = SystemTime::now();
        let h = ResponseHeader::build(200, None).unwrap();
        let mut m = CacheMeta::new(now + std::time::Duration::from_secs(60), now, 0, 0, h);
        m.extensions_mut().insert(facts(route, path));
        m
    }

    async fn put(store: &'static Store, route: &str, path: &str, body: usize) -> Result<()> {
        let trace = pingora_cache::trace::Span::inactive().handle();
        let k = key(route, path);
        let mut miss = store
            .get_miss_handler(&k, &meta(route, path), &trace)
            .await?;
        miss.write_body(Bytes::from(vec![b'x'; body]), true).await?;
        miss.finish().await?;
        Ok(())
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn stores_and_reads_back_a_body_and_its_ranges() {
        runtime().block_on(async {
            let m = metrics();
            let store = Store::leak(Settings::default(), m.clone());
            put(store, "r", "/a", 10).await.unwrap();
            let trace = pingora_cache::trace::Span::inactive().handle();
            let (meta, mut hit) = store
                .lookup(&key("r", "/a"), &trace)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(meta.response_header().status, 200);
            assert_eq!(hit.read_body().await.unwrap().unwrap().len(), 10);
            assert!(hit.read_body().await.unwrap().is_none());
            hit.seek(2, Some(5)).unwrap();
            assert_eq!(&hit.read_body().await.unwrap().unwrap()[..], b"xxx");
            assert!(hit.seek(10, None).is_err());
            assert!(store
                .lookup(&key("r", "/b"), &trace)
                .await
                .unwrap()
                .is_none());
            assert_eq!(m.objects.get(), 1);
            assert!(m.bytes.get() > 10);
        });
    }

    #[test]
    fn bytes_held_never_pass_memory_and_evictions_are_counted() {
        runtime().block_on(async {
            let m = metrics();
            let settings = Settings {
                memory: 64 << 10,
                max_object: 8 << 10,
            };
            let store = Store::leak(settings, m.clone());
            for i in 0..100 {
                put(store, "r", &format!("/{i}"), 4 << 10).await.unwrap();
                assert!(m.bytes.get() as u64 <= settings.memory, "over the cap");
            }
            assert!(m.evictions.get() > 0);
            assert!(m.objects.get() > 1 && m.objects.get() < 100);
            // the books agree with what the store holds
            let before = m.objects.get();
            let held = store.remove_where(Some("r"), |_| true);
            assert_eq!(held as i64, before);
            assert_eq!(m.objects.get(), 0);
            assert_eq!(m.bytes.get(), 0);
        });
    }

    #[test]
    fn a_body_over_max_object_is_not_stored_and_counted() {
        runtime().block_on(async {
            let m = metrics();
            let settings = Settings {
                memory: 1 << 20,
                max_object: 1000,
            };
            let store = Store::leak(settings, m.clone());
            put(store, "r", "/big", 1001).await.unwrap();
            put(store, "r", "/fits", 1000).await.unwrap();
            let trace = pingora_cache::trace::Span::inactive().handle();
            assert!(store
                .lookup(&key("r", "/big"), &trace)
                .await
                .unwrap()
                .is_none());
            assert!(store
                .lookup(&key("r", "/fits"), &trace)
                .await
                .unwrap()
                .is_some());
            assert_eq!(m.not_stored.with_label_values(&["r", "too_large"]).get(), 1);
        });
    }

    #[test]
    fn an_unfinished_body_is_not_stored_and_counted_incomplete() {
        runtime().block_on(async {
            let m = metrics();
            let store = Store::leak(Settings::default(), m.clone());
            let trace = pingora_cache::trace::Span::inactive().handle();
            let mut miss = store
                .get_miss_handler(&key("r", "/cut"), &meta("r", "/cut"), &trace)
                .await
                .unwrap();
            miss.write_body(Bytes::from_static(b"half"), false)
                .await
                .unwrap();
            drop(miss);
            assert!(store
                .lookup(&key("r", "/cut"), &trace)
                .await
                .unwrap()
                .is_none());
            assert_eq!(
                m.not_stored.with_label_values(&["r", "incomplete"]).get(),
                1
            );
        });
    }

    #[test]
    fn reload_keeps_live_routes_and_drops_the_rest_and_retire_empties() {
        runtime().block_on(async {
            let m = metrics();
            let store = Store::leak(Settings::default(), m.clone());
            put(store, "keep", "/a", 10).await.unwrap();
            put(store, "gone", "/a", 10).await.unwrap();
            put(store, "changed", "/a", 10).await.unwrap();
            let live: HashMap<&str, u64> = [("keep", 1), ("changed", 2)].into_iter().collect();
            store.retain_live(&live);
            let trace = pingora_cache::trace::Span::inactive().handle();
            assert!(store
                .lookup(&key("keep", "/a"), &trace)
                .await
                .unwrap()
                .is_some());
            assert!(store
                .lookup(&key("gone", "/a"), &trace)
                .await
                .unwrap()
                .is_none());
            assert!(store
                .lookup(&key("changed", "/a"), &trace)
                .await
                .unwrap()
                .is_none());
            assert_eq!(m.objects.get(), 1);
            store.retire();
            assert_eq!(m.objects.get(), 0);
            put(store, "keep", "/b", 10).await.unwrap();
            assert!(store
                .lookup(&key("keep", "/b"), &trace)
                .await
                .unwrap()
                .is_none());
        });
    }
}
