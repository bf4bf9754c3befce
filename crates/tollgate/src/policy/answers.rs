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

    /// A miss for `digest`: the outcome of the call in progress for it (waited for at
    /// most `timeout`; `Err` when it failed or took longer), the answer kept since the
    /// miss, or, when there is neither, this request's turn to make the call
    /// ([`Turn::Lead`]). Checked and registered under one lock, so that concurrent
    /// misses make one call; a leader that goes away without an outcome hands the turn
    /// to a waiting request.
    pub async fn turn(&self, digest: [u8; 32], timeout: Duration) -> Turn<'_, V> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut rx = {
                let mut calls = lock(&self.calls);
                match calls.get(&digest) {
                    Some(rx) => rx.clone(),
                    None => {
                        if let Some(v) = self.get(&digest) {
                            return Turn::Shared(Ok(v));
                        }
                        let (tx, rx) = watch::channel(None);
                        calls.insert(digest, rx.clone());
                        return Turn::Lead(Leader {
                            answers: self,
                            digest,
                            tx,
                            rx,
                        });
                    }
                }
            };
            let waited = tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await;
            match waited {
                Ok(Ok(outcome)) => return Turn::Shared(outcome.clone().unwrap_or(Err(()))),
                // the leader went away without an outcome: look again
                Ok(Err(_)) => {}
                Err(_) => return Turn::Shared(Err(())),
            }
        }
    }
}

/// What a miss does ([`Answers::turn`]).
pub enum Turn<'a, V: Clone + Send + Sync> {
    /// The outcome of another request's call (`Err`: it failed), or the answer it kept.
    Shared(Result<V, ()>),
    /// Make the call, and hand its outcome on with [`Leader::finish`].
    Lead(Leader<'a, V>),
}

/// The request that makes a shared call ([`Turn::Lead`]).
pub struct Leader<'a, V: Clone + Send + Sync> {
    answers: &'a Answers<V>,
    digest: [u8; 32],
    tx: watch::Sender<Shared<V>>,
    /// Tells this call from a later one for the same digest.
    rx: watch::Receiver<Shared<V>>,
}

impl<V: Clone + Send + Sync> Leader<'_, V> {
    /// Hands the call's outcome to the requests that wait for it.
    pub fn finish(self, outcome: Result<V, ()>) {
        let _ = self.tx.send(Some(outcome));
    }
}

impl<V: Clone + Send + Sync> Drop for Leader<'_, V> {
    fn drop(&mut self) {
        let mut calls = lock(&self.answers.calls);
        if calls
            .get(&self.digest)
            .is_some_and(|rx| rx.same_channel(&self.rx))
        {
            calls.remove(&self.digest);
        }
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
    async fn misses_share_the_call_in_progress_and_a_vanished_leader_hands_its_turn_on() {
        let a = Arc::new(Answers::<u32>::new(size(4)));
        let Turn::Lead(leader) = a.turn([9; 32], Duration::from_secs(1)).await else {
            panic!("the first miss leads");
        };
        let b = a.clone();
        let joined = tokio::spawn(async move {
            match b.turn([9; 32], Duration::from_secs(5)).await {
                Turn::Shared(v) => v,
                Turn::Lead(_) => panic!("a second leader"),
            }
        });
        tokio::task::yield_now().await;
        leader.finish(Ok(7));
        assert_eq!(joined.await.unwrap(), Ok(7));
        // a leader dropped without an outcome: the waiting request leads instead
        let Turn::Lead(leader) = a.turn([8; 32], Duration::from_secs(1)).await else {
            panic!("leads");
        };
        let b = a.clone();
        let next = tokio::spawn(async move {
            matches!(b.turn([8; 32], Duration::from_secs(5)).await, Turn::Lead(_))
        });
        tokio::task::yield_now().await;
        drop(leader);
        assert!(next.await.unwrap(), "the waiting request got the turn");
        // an answer kept between a miss and its turn is used, not called again
        a.put([7; 32], 5, Instant::now() + Duration::from_secs(60));
        assert!(matches!(
            a.turn([7; 32], Duration::from_secs(1)).await,
            Turn::Shared(Ok(5))
        ));
    }
}
