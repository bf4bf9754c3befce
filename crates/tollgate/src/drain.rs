//! Graceful shutdown as the gateway does it itself: requests in flight are counted, and
//! a draining gateway keeps accepting for `grace_period`, then stops accepting and waits
//! up to `graceful_shutdown_timeout` for them before its runtimes go down.
//!
//! Pingora alone cannot keep that promise: on SIGTERM its listeners stop accepting at
//! once, and when its runtimes shut down they drop every task, cutting the requests
//! still running (tokio's `shutdown_timeout` waits only for blocking threads). So the
//! wait happens here, before Pingora is told to shut down (see
//! [`crate::server::ShutdownSignals`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora::server::ListenFds;
use tokio::sync::{watch, Notify};

/// The gateway's count of requests in flight and its draining state.
pub(crate) struct Drain {
    in_flight: AtomicUsize,
    /// Open HTTP/2 connections: a stream's answer is written by its connection's task,
    /// which must not be dropped before it has flushed the last frames.
    h2_open: AtomicUsize,
    draining: AtomicBool,
    /// Told when the count falls to zero while draining.
    idle: Notify,
    /// `true` once the listeners must stop accepting.
    stop_accepting: watch::Sender<bool>,
    /// The server's listening sockets, for a hand-over to an upgrading process.
    fds: Mutex<Option<ListenFds>>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            h2_open: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            idle: Notify::new(),
            stop_accepting: watch::channel(false).0,
            fds: Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("in_flight", &self.in_flight)
            .field("h2_open", &self.h2_open)
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

/// One request in flight, counted while this lives.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.left(&self.0.in_flight);
    }
}

/// One open HTTP/2 connection, counted while this lives.
#[derive(Debug)]
pub(crate) struct H2Open(Arc<Drain>);

impl Drop for H2Open {
    fn drop(&mut self) {
        self.0.left(&self.0.h2_open);
    }
}

impl Drain {
    /// Counts a request until the returned guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Counts an HTTP/2 connection until the returned guard is dropped.
    pub(crate) fn open_h2(self: &Arc<Self>) -> H2Open {
        self.h2_open.fetch_add(1, Ordering::SeqCst);
        H2Open(self.clone())
    }

    /// One of `count` is gone: the last one out wakes a drain that waits (the store of
    /// `draining` and the waiter's reads of the counts are both SeqCst with these, so
    /// one of the two sees the other).
    fn left(&self, count: &AtomicUsize) {
        if count.fetch_sub(1, Ordering::SeqCst) == 1 && self.draining.load(Ordering::SeqCst) {
            self.idle.notify_waiters();
        }
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Nothing to wait for: no request in flight, no HTTP/2 connection still writing.
    fn idle(&self) -> bool {
        self.in_flight() == 0 && self.h2_open.load(Ordering::SeqCst) == 0
    }

    /// From now on answers close their HTTP/1 connections. Returns whether this call
    /// started the drain.
    pub(crate) fn start(&self) -> bool {
        !self.draining.swap(true, Ordering::SeqCst)
    }

    /// Whether the gateway is draining.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Makes the listeners stop accepting new connections (their HTTP/2 connections are
    /// sent GOAWAY).
    pub(crate) fn stop_accepting(&self) {
        self.stop_accepting.send_replace(true);
    }

    /// `true` once the listeners must stop accepting.
    pub(crate) fn stop_watch(&self) -> watch::Receiver<bool> {
        self.stop_accepting.subscribe()
    }

    /// Keeps the server's table of listening sockets, for [`Drain::listen_fds`].
    pub(crate) fn keep_listen_fds(&self, fds: ListenFds) {
        if let Ok(mut slot) = self.fds.lock() {
            slot.get_or_insert(fds);
        }
    }

    /// The server's table of listening sockets, once a listener has started.
    pub(crate) fn listen_fds(&self) -> Option<ListenFds> {
        self.fds.lock().ok().and_then(|f| f.clone())
    }

    /// Waits until no request is in flight and every HTTP/2 connection has closed (it
    /// closes once its streams are done and its GOAWAY is flushed), or `timeout`.
    /// Returns how many requests, and how many HTTP/2 connections, were left.
    pub(crate) async fn wait_idle(&self, timeout: Duration) -> (usize, usize) {
        self.start();
        let wait = async {
            loop {
                let idle = self.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.idle() {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        (self.in_flight(), self.h2_open.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_wait_ends_when_the_last_request_finishes() {
        let drain = Arc::new(Drain::default());
        let a = drain.enter();
        let b = drain.enter();
        assert_eq!(drain.in_flight(), 2);
        let waiter = {
            let drain = drain.clone();
            tokio::spawn(async move { drain.wait_idle(Duration::from_secs(30)).await })
        };
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one request is still in flight");
        drop(b);
        let left = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the wait ended when the count reached zero")
            .expect("join");
        assert_eq!(left, (0, 0));
    }

    #[tokio::test]
    async fn the_wait_gives_up_at_the_timeout_and_says_how_many_are_left() {
        let drain = Arc::new(Drain::default());
        let _held = drain.enter();
        let left = drain.wait_idle(Duration::from_millis(50)).await;
        assert_eq!(left, (1, 0));
        assert!(drain.is_draining());
    }
}
