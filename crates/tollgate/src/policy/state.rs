//! Policy state that outlives a reload, and the background tasks that live as long as it.
//!
//! Policies are built again at every reload; what they keep in state is not. A policy
//! asks its [`BuildCtx`](crate::policy::BuildCtx) for state under a key (by default its
//! whole table): the running configuration's value is handed over when the instance
//! (its key path) and the key are unchanged, else `init` makes a new one. State no
//! policy of the new configuration asked for is dropped with the old configuration,
//! and its background tasks stop.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a piece of state belongs: one policy instance (its key path), or every
/// instance of the policy type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Scope {
    Instance(String),
    Shared,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    scope: Scope,
    ty: TypeId,
    key: u64,
}

/// One piece of state, what stops its tasks when the last configuration holding it is
/// dropped, and its tasks until one of those configurations starts them.
#[derive(Clone)]
struct Held {
    value: Arc<dyn Any + Send + Sync>,
    stop: Arc<Stop>,
    unstarted: Arc<Mutex<Vec<Task>>>,
}

/// Dropping it ends the tasks of its state (each waits on one of these senders).
#[derive(Default)]
struct Stop(Mutex<Vec<tokio::sync::oneshot::Sender<()>>>);

/// The state of one configuration's policies.
#[derive(Default)]
pub(crate) struct States {
    held: Mutex<HashMap<Key, Held>>,
    /// What must be done before this configuration takes effect (each bounded).
    preparations: Mutex<Vec<Task>>,
}

impl std::fmt::Debug for States {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("States").finish_non_exhaustive()
    }
}

impl States {
    /// Starts the tasks of this configuration's state that have not started yet (made
    /// for it, or for one it replaced before they started), on the current runtime.
    pub(crate) fn start_pending(&self) {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for h in held.values() {
            let tasks =
                std::mem::take(&mut *h.unstarted.lock().unwrap_or_else(PoisonError::into_inner));
            for t in tasks {
                tokio::spawn(t);
            }
        }
    }

    /// Runs the preparations of this configuration's new state (the first fetch of a key
    /// set), in parallel, each within its own bound.
    pub(crate) async fn prepare(&self) {
        let work = std::mem::take(
            &mut *self
                .preparations
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let running: Vec<_> = work.into_iter().map(tokio::spawn).collect();
        for r in running {
            let _ = r.await;
        }
    }

    /// Ends this configuration's hold on its state, once another is in force: what the
    /// new one did not take over is dropped (its tasks stop), even while something
    /// still holds this configuration.
    pub(crate) fn retire(&self) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// Collects the state of a configuration being built, handing over the running one's.
#[derive(Default)]
pub(crate) struct StatesBuilder<'a> {
    prior: Option<&'a States>,
    made: Mutex<HashMap<Key, Held>>,
    /// The values made (not handed over) in this build whose task is not chosen yet.
    fresh: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
    /// The values made in this build whose preparation is not chosen yet.
    unprepared: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
    preparations: Mutex<Vec<Task>>,
}

impl<'a> StatesBuilder<'a> {
    /// A builder handing over `prior`'s state.
    pub(crate) fn new(prior: Option<&'a States>) -> Self {
        Self {
            prior,
            ..Self::default()
        }
    }

    /// The configuration's state; its tasks are started by [`States::start_pending`].
    pub(crate) fn finish(self) -> States {
        States {
            held: Mutex::new(
                self.made
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner),
            ),
            preparations: Mutex::new(
                self.preparations
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner),
            ),
        }
    }

    /// State shared by the whole configuration, by type and `key`.
    pub(crate) fn shared<T: Send + Sync + 'static>(
        &self,
        key: &impl std::hash::Hash,
        init: impl FnOnce() -> T,
    ) -> Arc<T> {
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        self.get(None, std::hash::Hasher::finish(&h), init)
    }

    fn get<T: Send + Sync + 'static>(
        &self,
        scope: Option<&str>,
        key: u64,
        init: impl FnOnce() -> T,
    ) -> Arc<T> {
        let key = Key {
            scope: scope.map_or(Scope::Shared, |s| Scope::Instance(s.to_string())),
            ty: TypeId::of::<T>(),
            key,
        };
        let mut made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
        let found = made.get(&key).cloned().or_else(|| {
            let prior = self
                .prior?
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            prior.get(&key).cloned()
        });
        if let Some(h) = found {
            if let Ok(v) = h.value.clone().downcast::<T>() {
                made.insert(key, h);
                return v;
            }
        }
        let v = Arc::new(init());
        let held = Held {
            value: v.clone(),
            stop: Arc::default(),
            unstarted: Arc::default(),
        };
        made.insert(key, held);
        self.fresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(v.clone());
        self.unprepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(v.clone());
        v
    }

    fn prepare<T, F, Fut>(&self, state: &Arc<T>, limit: std::time::Duration, work: F)
    where
        T: Send + Sync + 'static,
        F: FnOnce(Arc<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let as_any: Arc<dyn Any + Send + Sync> = state.clone();
        let mut unprepared = self
            .unprepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(i) = unprepared.iter().position(|v| Arc::ptr_eq(v, &as_any)) else {
            return;
        };
        unprepared.swap_remove(i);
        let work = work(state.clone());
        self.preparations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(async move {
                let _ = tokio::time::timeout(limit, work).await;
            }));
    }

    fn background<T, F, Fut>(&self, state: &Arc<T>, task: F)
    where
        T: Send + Sync + 'static,
        F: FnOnce(Weak<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let as_any: Arc<dyn Any + Send + Sync> = state.clone();
        {
            // the first call for a value made in this build: later calls (another
            // instance of shared state, a handed-over value) start nothing
            let mut fresh = self.fresh.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(i) = fresh.iter().position(|v| Arc::ptr_eq(v, &as_any)) else {
                return;
            };
            fresh.swap_remove(i);
        }
        let made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(held) = made.values().find(|h| Arc::ptr_eq(&h.value, &as_any)) else {
            return;
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        held.stop
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        let work = task(Arc::downgrade(state));
        held.unstarted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(async move {
                tokio::select! {
                    () = work => {}
                    _ = rx => {}
                }
            }));
    }
}

/// What [`BuildCtx`](crate::policy::BuildCtx) needs of a build's state: the builder
/// and the policy's instance.
#[derive(Clone, Copy)]
pub(crate) struct StateCx<'a> {
    pub(crate) builder: &'a StatesBuilder<'a>,
    /// Hashes the policy's table (its default key): only for a policy that asks for
    /// state by it, not for every policy of a large configuration.
    pub(crate) table: &'a (dyn Fn() -> u64 + 'a),
}

impl std::fmt::Debug for StateCx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCx").finish_non_exhaustive()
    }
}

impl StateCx<'_> {
    pub(crate) fn get<T: Send + Sync + 'static>(
        &self,
        scope: Option<&str>,
        key: Option<u64>,
        init: impl FnOnce() -> T,
    ) -> Arc<T> {
        self.builder
            .get(scope, key.unwrap_or_else(self.table), init)
    }

    pub(crate) fn background<T, F, Fut>(&self, state: &Arc<T>, task: F)
    where
        T: Send + Sync + 'static,
        F: FnOnce(Weak<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.builder.background(state, task);
    }

    pub(crate) fn prepare<T, F, Fut>(&self, state: &Arc<T>, limit: std::time::Duration, work: F)
    where
        T: Send + Sync + 'static,
        F: FnOnce(Arc<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.builder.prepare(state, limit, work);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cx<'a>(b: &'a StatesBuilder<'a>, table: u64) -> StateCx<'a> {
        // a table that hashes to `table` (leaked: a test's few bytes)
        StateCx {
            builder: b,
            table: Box::leak(Box::new(move || table)),
        }
    }

    #[test]
    fn state_is_handed_over_while_instance_and_key_are_unchanged() {
        let first = StatesBuilder::new(None);
        let a = cx(&first, 1).get(Some("routes.r.policies.p"), None, || AtomicUsize::new(0));
        a.fetch_add(5, Ordering::Relaxed);
        let shared = cx(&first, 1).get(None, Some(7), || AtomicUsize::new(0));
        shared.fetch_add(1, Ordering::Relaxed);
        let first = first.finish();
        assert_eq!(first.held.lock().unwrap().len(), 2);

        // same table: the same value
        let second = StatesBuilder::new(Some(&first));
        let b = cx(&second, 1).get(Some("routes.r.policies.p"), None, || AtomicUsize::new(0));
        assert!(Arc::ptr_eq(&a, &b));
        // another table, another instance: new values
        let changed = cx(&second, 2).get(Some("routes.r.policies.p"), None, || AtomicUsize::new(0));
        assert_eq!(changed.load(Ordering::Relaxed), 0);
        let other = cx(&second, 1).get(Some("routes.s.policies.p"), None, || AtomicUsize::new(0));
        assert!(!Arc::ptr_eq(&a, &other));
        // shared state: by type and key, whatever the instance
        let shared2 = cx(&second, 9).get(None, Some(7), || AtomicUsize::new(0));
        assert!(Arc::ptr_eq(&shared, &shared2));
    }

    #[tokio::test]
    async fn a_task_runs_once_per_state_and_stops_when_the_state_is_dropped() {
        let ticks = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let build = |prior: Option<&States>, table: u64| {
            let b = StatesBuilder::new(prior);
            let s = cx(&b, table).get(Some("p"), None, || ());
            let (ticks, started) = (ticks.clone(), started.clone());
            cx(&b, table).background(&s, move |_| async move {
                started.fetch_add(1, Ordering::Relaxed);
                loop {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            });
            b.finish()
        };
        let first = build(None, 1);
        first.start_pending();
        let ticking = async |ticks: &AtomicUsize| {
            let n = ticks.load(Ordering::Relaxed);
            for _ in 0..1000 {
                tokio::task::yield_now().await;
                if ticks.load(Ordering::Relaxed) > n {
                    return true;
                }
            }
            false
        };
        assert!(ticking(&ticks).await, "the task runs");
        // a reload with the same table: handed over, the task goes on, no second one;
        // the first configuration is retired while something still holds it
        let second = build(Some(&first), 1);
        first.retire();
        second.start_pending();
        assert!(ticking(&ticks).await, "still runs after the handover");
        assert_eq!(started.load(Ordering::Relaxed), 1);
        // a reload that changes the table: the old state and its task go, although the
        // old configuration is still held
        let third = build(Some(&second), 2);
        second.retire();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let n = ticks.load(Ordering::Relaxed);
        assert!(!ticking(&ticks).await, "the old task stopped at {n} ticks");
        // another reload before the third's task was started: the fourth starts it
        let fourth = build(Some(&third), 2);
        third.retire();
        fourth.start_pending();
        assert!(ticking(&ticks).await, "the handed-over task never started");
        assert_eq!(started.load(Ordering::Relaxed), 2);
        drop((first, second, third));
        fourth.retire();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let n = ticks.load(Ordering::Relaxed);
        assert!(!ticking(&ticks).await, "every task stopped at {n} ticks");
    }

    #[tokio::test]
    async fn shared_state_gets_one_task_however_many_instances_ask() {
        let started = Arc::new(AtomicUsize::new(0));
        let b = StatesBuilder::new(None);
        for _ in 0..3 {
            let s = cx(&b, 0).get(None, Some(7), || ());
            let started = started.clone();
            cx(&b, 0).background(&s, move |_| async move {
                started.fetch_add(1, Ordering::Relaxed);
            });
        }
        let states = b.finish();
        states.start_pending();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(started.load(Ordering::Relaxed), 1);
    }
}
