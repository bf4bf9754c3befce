//! Answers of another service, kept by the digest of the question: bounded (least
//! recently used evicted), each until its own expiry, and the calls in progress, so that
//! concurrent misses for one question share one call. What an introspection or an
//! authorization cache needs; keys are SHA-256 digests, never the raw question.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The outcome of a shared call: the answer, or `Err` when the call failed.
type Shared<V> = Option<Result<V, ()>>;

/// See the [module docs](self).
pub struct Answers<V> {
    entries: Mutex<lru::LruCache<[u8; 32], (V, Instant)>>,
    calls: Mutex<HashMap<[u8; 32], watch::Receiver<Shared<V>>>>,
}

impl<V> std::fmt::Debug for Answers<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers")
            .field("entries", &lock(&self.entries).len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<V: Clone + Send + Sync> Answers<V> {
    /// Room for `size` answers.
    pub fn new(size: NonZeroUsize) -> Self {
        Self {
            entries: Mutex::new(lru::LruCache::new(size)),
            calls: Mutex::new(HashMap::new()),
        }
    }

    /// Makes room for `size` answers (the least recently used go first).
    pub fn resize(&self, size: NonZeroUsize) {
        lock(&self.entries).resize(size);
    }

    /// The answer kept for `digest`, unless it expired.
    pub fn get(&self, digest: &[u8; 32]) -> Option<V> {
        let mut entries = lock(&self.entries);
        match entries.get(digest) {
            Some((v, until)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                entries.pop(digest);
                None
            }
            None => None,
        }
    }

    /// Keeps `answer` for `digest` until `until`; the number of answers kept.
    pub fn put(&self, digest: [u8; 32], answer: V, until: Instant) -> usize {
        let mut entries = lock(&self.entries);
        entries.put(digest, (answer, until));
        entries.len()
    }

    /// When a call for `digest` is in progress: its outcome, waited for at most
    /// `timeout` (`Err` when it failed, was dropped or took longer). `None`: no call is
    /// in progress; make one with [`Answers::lead`].
    pub async fn join(&self, digest: &[u8; 32], timeout: Duration) -> Option<Result<V, ()>> {
        let mut rx = lock(&self.calls).get(digest).cloned()?;
        let done = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        Some(match done {
            Ok(Ok(outcome)) => outcome.clone().unwrap_or(Err(())),
            _ => Err(()),
        })
    }

    /// Registers the call for `digest` that this request makes: later misses
    /// [`join`](Answers::join) it until [`Leader::finish`] (or the leader is dropped).
    pub fn lead(&self, digest: [u8; 32]) -> Leader<'_, V> {
        let (tx, rx) = watch::channel(None);
        lock(&self.calls).insert(digest, rx);
        Leader {
            answers: self,
            digest,
            tx,
        }
    }
}

/// The request that makes a shared call ([`Answers::lead`]).
pub struct Leader<'a, V: Clone + Send + Sync> {
    answers: &'a Answers<V>,
    digest: [u8; 32],
    tx: watch::Sender<Shared<V>>,
}

impl<V: Clone + Send + Sync> Leader<'_, V> {
    /// Hands the call's outcome to the requests that joined it.
    pub fn finish(self, outcome: Result<V, ()>) {
        let _ = self.tx.send(Some(outcome));
    }
}

impl<V: Clone + Send + Sync> Drop for Leader<'_, V> {
    fn drop(&mut self) {
        lock(&self.answers.calls).remove(&self.digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn size(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn answers_expire_and_the_least_recently_used_goes_first() {
        let a = Answers::new(size(2));
        let later = Instant::now() + Duration::from_secs(60);
        a.put([1; 32], "one", later);
        a.put([2; 32], "two", later);
        assert_eq!(a.get(&[1; 32]), Some("one")); // 1 is now the most recent
        assert_eq!(a.put([3; 32], "three", later), 2);
        assert_eq!(a.get(&[2; 32]), None, "the least recently used was evicted");
        a.put([4; 32], "gone", Instant::now());
        assert_eq!(a.get(&[4; 32]), None, "expired");
    }

    #[tokio::test]
    async fn misses_join_the_call_in_progress_and_get_its_outcome() {
        let a = Arc::new(Answers::<u32>::new(size(4)));
        assert!(a.join(&[9; 32], Duration::from_secs(1)).await.is_none());
        let leader = a.lead([9; 32]);
        let b = a.clone();
        let joined = tokio::spawn(async move { b.join(&[9; 32], Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        leader.finish(Ok(7));
        assert_eq!(joined.await.unwrap(), Some(Ok(7)));
        // a dropped leader fails its joiners and leaves no call behind
        let leader = a.lead([8; 32]);
        let b = a.clone();
        let joined = tokio::spawn(async move { b.join(&[8; 32], Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        drop(leader);
        assert_eq!(joined.await.unwrap(), Some(Err(())));
        assert!(a.join(&[8; 32], Duration::from_secs(1)).await.is_none());
    }
}
