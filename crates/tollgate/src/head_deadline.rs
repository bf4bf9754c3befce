//! A total deadline on an upstream's HTTP/1 response head.
//!
//! Pingora bounds each read from an upstream by `read_timeout`, but not the head as a
//! whole: an upstream that sends one byte of its head every few seconds holds the
//! request (and its client) for as long as it likes. Once the request has been sent
//! (its body read to the end), the gateway arms a [`HeadDeadline`] on the upstream
//! connection; if the response head has not arrived within `read_timeout`, the
//! deadline shuts the socket down, which ends Pingora's pending read, and the request
//! is answered 504.
//!
//! The deadline holds its own duplicate of the connection's descriptor, so it can
//! only ever shut down the socket it was armed on, even if Pingora has closed its
//! descriptor (and the number been reused) in the meantime. One thread enforces every
//! armed deadline of the process, to within 50 ms. HTTP/2 upstream
//! connections carry many requests and are never armed (their response head comes in
//! one HEADERS frame, which Pingora's `read_timeout` already bounds).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How often the sweeper looks for passed deadlines while any is armed: the precision
/// of the deadline.
const TICK: Duration = Duration::from_millis(50);
const SHARDS: usize = 16;

/// A running deadline on one upstream connection; disarmed when dropped.
#[derive(Debug)]
pub(crate) struct HeadDeadline {
    id: u64,
}

#[derive(Default)]
struct Shard {
    armed: HashMap<u64, (Instant, OwnedFd)>,
    fired: HashSet<u64>,
}

/// The process's armed deadlines and the thread that enforces them. One thread and a
/// sharded table instead of a timer task per request: arming costs a `dup`, a map
/// insert and no wake-up of anything.
struct Sweeper {
    shards: [Mutex<Shard>; SHARDS],
    next_id: AtomicU64,
    armed: AtomicUsize,
    idle: Mutex<()>,
    wake: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sweeper() -> &'static Sweeper {
    static SWEEPER: OnceLock<&'static Sweeper> = OnceLock::new();
    SWEEPER.get_or_init(|| {
        let s: &'static Sweeper = Box::leak(Box::new(Sweeper {
            shards: std::array::from_fn(|_| Mutex::default()),
            next_id: AtomicU64::new(0),
            armed: AtomicUsize::new(0),
            idle: Mutex::new(()),
            wake: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("head deadlines".into())
            .spawn(move || s.run());
        if let Err(e) = spawned {
            tracing::error!("could not start the response-head deadline thread: {e}");
        }
        s
    })
}

impl Sweeper {
    fn shard(&self, id: u64) -> MutexGuard<'_, Shard> {
        lock(&self.shards[id as usize % SHARDS])
    }

    fn run(&self) {
        loop {
            {
                let idle = lock(&self.idle);
                let _idle = self
                    .wake
                    .wait_while(idle, |_| self.armed.load(Ordering::Acquire) == 0)
                    .unwrap_or_else(|e| e.into_inner());
            }
            std::thread::sleep(TICK);
            let now = Instant::now();
            let mut due = Vec::new();
            for shard in &self.shards {
                let mut shard = lock(shard);
                let ids: Vec<u64> = shard
                    .armed
                    .iter()
                    .filter(|(_, (at, _))| *at <= now)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    if let Some((_, fd)) = shard.armed.remove(&id) {
                        self.armed.fetch_sub(1, Ordering::AcqRel);
                        shard.fired.insert(id);
                        due.push(fd);
                    }
                }
            }
            for fd in due {
                // shutdown(2) acts on the socket, whichever descriptor names it; for a
                // Unix-socket peer it is the same call
                let _ = std::net::TcpStream::from(fd).shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

impl HeadDeadline {
    /// Shuts down the socket behind `fd` after `after` (within [`TICK`]), unless
    /// disarmed first.
    ///
    /// `fd` must be open for the duration of the call (Pingora's hook guarantees it).
    // The crate's one `unsafe` block: Pingora's `connected_to_upstream` hook lends
    // the connection as a bare descriptor number.
    #[allow(unsafe_code)]
    pub(crate) fn arm(fd: RawFd, after: Duration) -> io::Result<Self> {
        // SAFETY: the caller passes a descriptor that is open during this call (the
        // connection Pingora's hook was called for); the duplicate made here is owned
        // by the sweeper from then on
        let own = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        let s = sweeper();
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        s.shard(id).armed.insert(id, (Instant::now() + after, own));
        if s.armed.fetch_add(1, Ordering::AcqRel) == 0 {
            let _idle = lock(&s.idle);
            s.wake.notify_one();
        }
        Ok(Self { id })
    }

    /// Whether the deadline passed (and the connection was shut down).
    pub(crate) fn expired(&self) -> bool {
        sweeper().shard(self.id).fired.contains(&self.id)
    }
}

impl Drop for HeadDeadline {
    fn drop(&mut self) {
        let s = sweeper();
        let fd = {
            let mut shard = s.shard(self.id);
            let fd = shard.armed.remove(&self.id);
            if fd.is_none() {
                shard.fired.remove(&self.id);
            }
            fd
        };
        if fd.is_some() {
            s.armed.fetch_sub(1, Ordering::AcqRel);
        }
        // the duplicate descriptor closes here, outside the lock
        drop(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn an_expired_deadline_ends_a_pending_read() {
        let (mut c, _s) = pair().await;
        let d = HeadDeadline::arm(c.as_raw_fd(), Duration::from_millis(50)).unwrap();
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("the read was not ended by the deadline")
            .unwrap();
        assert_eq!(n, 0);
        assert!(d.expired());
    }

    #[tokio::test]
    async fn a_dropped_deadline_leaves_the_connection_alone() {
        let (mut c, mut s) = pair().await;
        let d = HeadDeadline::arm(c.as_raw_fd(), Duration::from_millis(20)).unwrap();
        assert!(!d.expired());
        drop(d);
        // a later deadline on another connection firing shows the first one's time passed
        let (mut witness, _ws) = pair().await;
        let _w = HeadDeadline::arm(witness.as_raw_fd(), Duration::from_millis(40)).unwrap();
        let mut buf = [0u8; 2];
        let n = tokio::time::timeout(Duration::from_secs(5), witness.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        tokio::io::AsyncWriteExt::write_all(&mut s, b"ok")
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .expect("the disarmed connection was shut down")
            .unwrap();
        assert_eq!(&buf, b"ok");
    }
}
