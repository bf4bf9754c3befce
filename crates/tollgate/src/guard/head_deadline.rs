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
//! The deadline never touches a descriptor Pingora may have closed, without
//! duplicating it (a `dup` and a `close` per request cost ~1 µs): every HTTP/1
//! upstream connection carries a Pingora [`Tracing`] object ([`PeerTracer`] on the
//! peer, [`ConnTracer`] on the connection) whose `on_disconnected` runs in the
//! connection's `Drop`, before its descriptor is closed. It marks the
//! [`Connection`] closed under the same lock the sweeper holds while it shuts a
//! socket down, so the sweeper either shuts down the live connection or leaves it
//! alone. One thread enforces every armed deadline of the process, to within 50 ms.
//! HTTP/2 upstream connections carry many requests and are never armed (their
//! response head comes in one HEADERS frame, which Pingora's `read_timeout` already
//! bounds).
//!
//! A request with a body gets an upload deadline while the body is sent
//! ([`HeadDeadline::arm_upload`]) and a head deadline that starts once the upstream has
//! taken all of it ([`HeadDeadline::arm_sent`]): both look at the socket's send queue,
//! so that a client pausing its body, or a slow upstream taking it, is not cut.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pingora::upstreams::peer::{Tracer, Tracing};

/// How often the sweeper looks for passed deadlines while any is armed: the precision
/// of the deadline.
const TICK: Duration = Duration::from_millis(50);
/// Ticks without an armed deadline after which the sweeper stops ticking and sleeps
/// until one is armed: a steadily used gateway never has to wake it (a wake is a
/// system call on the request path), an idle one does not tick.
const QUIET_TICKS: u32 = 20;
const SHARDS: usize = 16;

/// An HTTP/1 upstream connection, for as long as Pingora keeps it open (in use or in
/// its pool).
#[derive(Debug)]
pub(crate) struct Connection {
    /// The descriptor, known once the proxy has seen the connection; -1 before.
    fd: AtomicI32,
    /// Set (under the lock) by the connection's `Drop`, before its descriptor closes.
    closed: Mutex<bool>,
    /// A descriptor of our own, for a connection met without a tracer.
    own: Option<OwnedFd>,
}

impl Connection {
    fn new(fd: RawFd, own: Option<OwnedFd>) -> Self {
        Self {
            fd: AtomicI32::new(fd),
            closed: Mutex::new(false),
            own,
        }
    }

    /// A connection about to be opened for a request (its descriptor comes later).
    pub(crate) fn unopened() -> Arc<Self> {
        Arc::new(Self::new(-1, None))
    }

    /// The connection on descriptor `fd`: `fresh` when Pingora just opened it for this
    /// request (it carries `fresh`'s tracer), else the one registered when it was
    /// opened. `fd` must be open during the call (Pingora's hook guarantees it).
    pub(crate) fn on(fd: RawFd, reused: bool, fresh: Option<Arc<Self>>) -> Option<Arc<Self>> {
        let mut fds = lock(&registry().fds[fd as usize % SHARDS]);
        if !reused {
            if let Some(c) = fresh {
                c.fd.store(fd, Ordering::Release);
                fds.insert(fd, c.clone());
                return Some(c);
            }
        } else if let Some(c) = fds.get(&fd) {
            return Some(c.clone());
        }
        drop(fds);
        // not opened through a traced peer: fall back to a descriptor of our own
        match borrow(fd).try_clone_to_owned() {
            Ok(own) => Some(Arc::new(Self::new(fd, Some(own)))),
            Err(e) => {
                tracing::warn!("no response-head deadline for an upstream connection: {e}");
                None
            }
        }
    }

    /// Pingora is closing the connection (called before its descriptor closes).
    fn close(self: &Arc<Self>) {
        *lock(&self.closed) = true;
        let fd = self.fd.load(Ordering::Acquire);
        if fd >= 0 {
            let mut fds = lock(&registry().fds[fd as usize % SHARDS]);
            if fds.get(&fd).is_some_and(|c| Arc::ptr_eq(c, self)) {
                fds.remove(&fd);
            }
        }
    }

    /// Runs `f` on the socket, unless Pingora has let the connection go (or it has no
    /// descriptor yet); `closed` stays locked until `f` returns.
    fn with_socket<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> Option<R> {
        let closed = lock(&self.closed);
        let fd = match &self.own {
            Some(own) => std::os::fd::AsFd::as_fd(own),
            None if *closed => return None,
            None => match self.fd.load(Ordering::Acquire) {
                fd if fd >= 0 => borrow(fd),
                _ => return None,
            },
        };
        let r = f(fd);
        drop(closed);
        Some(r)
    }

    /// Bytes written to the socket and not yet acknowledged by the peer; `None` when the
    /// connection is closed or the count cannot be had.
    fn unsent(&self) -> Option<u32> {
        self.with_socket(send_queue).flatten()
    }

    /// Shuts the socket down, unless Pingora has let the connection go.
    fn shut_down(&self) {
        // shutdown(2) acts on the socket, whichever descriptor names it (TCP or Unix)
        self.with_socket(|fd| {
            let _ = socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Both);
        });
    }
}

// Pingora's `connected_to_upstream` hook lends the connection as a bare descriptor
// number (one of the crate's two `unsafe` blocks, both in this file).
#[allow(unsafe_code)]
fn borrow<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: callers pass a descriptor that is open for as long as the borrow is used:
    // one Pingora's hook is running for, or one whose connection is not yet closed
    // (checked under `Connection::closed`, which the connection's `Drop` takes before
    // the descriptor is closed)
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// `SIOCOUTQ`: the bytes in a TCP socket's send queue (written, not yet acknowledged).
#[allow(unsafe_code)]
fn send_queue(fd: BorrowedFd<'_>) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: `fd` is open for the borrow; SIOCOUTQ (on Linux the same request as
    // TIOCOUTQ, which is how libc names it) writes one c_int to the pointer, which
    // points at `n`
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (r == 0).then(|| u32::try_from(n).unwrap_or(0))
}

/// Put on every HTTP/1 upstream peer: Pingora clones it onto each connection it
/// opens for the peer, which so carries the request's [`Connection`].
#[derive(Debug)]
pub(crate) struct PeerTracer(pub(crate) Arc<Connection>);

impl PeerTracer {
    pub(crate) fn tracer(conn: &Arc<Connection>) -> Tracer {
        Tracer(Box::new(Self(conn.clone())))
    }
}

impl Tracing for PeerTracer {
    fn on_connected(&self) {}
    fn on_disconnected(&self) {}
    fn boxed_clone(&self) -> Box<dyn Tracing> {
        Box::new(ConnTracer(self.0.clone()))
    }
}

/// The tracer of one open connection: marks its [`Connection`] closed when Pingora
/// drops it.
#[derive(Debug)]
struct ConnTracer(Arc<Connection>);

impl Tracing for ConnTracer {
    fn on_connected(&self) {}
    fn on_disconnected(&self) {
        self.0.close();
    }
    fn boxed_clone(&self) -> Box<dyn Tracing> {
        Box::new(ConnTracer(self.0.clone()))
    }
}

/// A running deadline on one upstream connection; disarmed when dropped.
#[derive(Debug)]
pub(crate) struct HeadDeadline {
    id: u64,
}

/// What a deadline waits for.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Anything: it fires when it passes.
    Fixed,
    /// The upstream taking a request body: renewed while the upstream takes bytes (the
    /// send queue shrank since the last look). While the body is still being sent
    /// (`all_written` false) it is also renewed when the upstream has taken all there
    /// is (the request waits for its client); once all is written and taken, a
    /// [`Wait::Fixed`] deadline of `after` for the response head starts.
    Body {
        after: Duration,
        all_written: bool,
        /// The send queue when the deadline was armed or last renewed.
        unsent: Option<u32>,
    },
}

impl Wait {
    /// Looks at the connection once a tick; `true` when the deadline fires.
    fn look(&mut self, at: &mut Instant, now: Instant, conn: &Connection) -> bool {
        let Self::Body {
            after,
            all_written,
            unsent,
        } = self
        else {
            return *at <= now;
        };
        let after = *after;
        let Some(left) = conn.unsent() else {
            return *at <= now;
        };
        if left == 0 && *all_written {
            *self = Self::Fixed;
            *at = now + after;
            return false;
        }
        // the baseline: the queue at the first look after arming, or at a renewal
        let baseline = *unsent.get_or_insert(left);
        if *at > now {
            return false;
        }
        // the upstream took some since, or (while the body is sent) all there is
        if left == 0 || left < baseline {
            *unsent = Some(left);
            *at = now + after;
            return false;
        }
        true
    }
}

#[derive(Default)]
struct Shard {
    /// Each deadline: when, on which connection, and what it waits for.
    armed: HashMap<u64, (Instant, Arc<Connection>, Wait)>,
    fired: HashSet<u64>,
}

/// The process's open connections (by descriptor) and armed deadlines, and the thread
/// that enforces them. One thread and sharded tables instead of a timer task per
/// request: arming is a map insert and wakes nothing unless the thread has gone to
/// sleep after [`QUIET_TICKS`] without work.
struct Registry {
    fds: [Mutex<HashMap<RawFd, Arc<Connection>>>; SHARDS],
    shards: [Mutex<Shard>; SHARDS],
    next_id: AtomicU64,
    armed: AtomicUsize,
    /// The sweeper waits on `wake` (set before it checks `armed`, so an arm that does
    /// not see it set was seen by that check: both sides use `SeqCst`).
    sleeping: AtomicBool,
    idle: Mutex<()>,
    wake: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<&'static Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let r: &'static Registry = Box::leak(Box::new(Registry {
            fds: std::array::from_fn(|_| Mutex::default()),
            shards: std::array::from_fn(|_| Mutex::default()),
            next_id: AtomicU64::new(0),
            armed: AtomicUsize::new(0),
            sleeping: AtomicBool::new(false),
            idle: Mutex::new(()),
            wake: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("head deadlines".into())
            .spawn(move || r.run());
        if let Err(e) = spawned {
            tracing::error!("could not start the response-head deadline thread: {e}");
        }
        r
    })
}

impl Registry {
    fn shard(&self, id: u64) -> MutexGuard<'_, Shard> {
        lock(&self.shards[id as usize % SHARDS])
    }

    fn run(&self) {
        let mut quiet = QUIET_TICKS;
        loop {
            quiet = match self.armed.load(Ordering::SeqCst) {
                0 => quiet + 1,
                _ => 0,
            };
            if quiet >= QUIET_TICKS {
                let idle = lock(&self.idle);
                self.sleeping.store(true, Ordering::SeqCst);
                let _idle = self
                    .wake
                    .wait_while(idle, |_| self.armed.load(Ordering::SeqCst) == 0)
                    .unwrap_or_else(|e| e.into_inner());
                self.sleeping.store(false, Ordering::SeqCst);
                quiet = 0;
            }
            std::thread::sleep(TICK);
            let now = Instant::now();
            let mut due = Vec::new();
            for shard in &self.shards {
                let mut shard = lock(shard);
                let mut ids: Vec<u64> = Vec::new();
                for (id, (at, conn, wait)) in shard.armed.iter_mut() {
                    if wait.look(at, now, conn) {
                        ids.push(*id);
                    }
                }
                for id in ids {
                    if let Some((_, conn, _)) = shard.armed.remove(&id) {
                        self.armed.fetch_sub(1, Ordering::AcqRel);
                        shard.fired.insert(id);
                        due.push(conn);
                    }
                }
            }
            for conn in due {
                conn.shut_down();
            }
        }
    }
}

impl HeadDeadline {
    /// Shuts down `conn`'s socket after `after` (within [`TICK`]), unless disarmed
    /// first or the connection closed.
    pub(crate) fn arm(conn: Arc<Connection>, after: Duration) -> Self {
        Self::arm_as(conn, after, Wait::Fixed)
    }

    /// While a request body is sent: shuts `conn`'s socket down once `after` has passed
    /// with bytes written to it that the upstream did not take any of (its send queue
    /// did not shrink), so an upstream that stops taking the body is cut, even after
    /// Pingora's write gave up and it waits for an answer. An upstream that takes the
    /// body slowly is not; and when it has taken everything written, the request is
    /// waiting for its client, not the upstream.
    pub(crate) fn arm_upload(conn: Arc<Connection>, after: Duration) -> Self {
        Self::arm_as(
            conn,
            after,
            Wait::Body {
                after,
                all_written: false,
                unsent: None,
            },
        )
    }

    /// Once a request body is all written: while the upstream takes the rest of it, as
    /// [`HeadDeadline::arm_upload`]; once it has all of it, the response head must come
    /// within `after` (as [`HeadDeadline::arm`]).
    pub(crate) fn arm_sent(conn: Arc<Connection>, after: Duration) -> Self {
        Self::arm_as(
            conn,
            after,
            Wait::Body {
                after,
                all_written: true,
                unsent: None,
            },
        )
    }

    fn arm_as(conn: Arc<Connection>, after: Duration, wait: Wait) -> Self {
        let r = registry();
        let id = r.next_id.fetch_add(1, Ordering::Relaxed);
        r.shard(id)
            .armed
            .insert(id, (Instant::now() + after, conn, wait));
        r.armed.fetch_add(1, Ordering::SeqCst);
        if r.sleeping.load(Ordering::SeqCst) {
            let _idle = lock(&r.idle);
            r.wake.notify_one();
        }
        Self { id }
    }

    /// Whether the deadline passed (and the connection was shut down).
    pub(crate) fn expired(&self) -> bool {
        registry().shard(self.id).fired.contains(&self.id)
    }
}

impl Drop for HeadDeadline {
    fn drop(&mut self) {
        let r = registry();
        let conn = {
            let mut shard = r.shard(self.id);
            let conn = shard.armed.remove(&self.id);
            if conn.is_none() {
                shard.fired.remove(&self.id);
            }
            conn
        };
        if conn.is_some() {
            r.armed.fetch_sub(1, Ordering::AcqRel);
        }
        // a connection met without a tracer closes its own descriptor here, outside
        // the lock
        drop(conn);
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

    /// Bytes the peer `s` writes still reach `c`: its socket was not shut down.
    async fn assert_still_open(c: &mut tokio::net::TcpStream, s: &mut tokio::net::TcpStream) {
        tokio::io::AsyncWriteExt::write_all(s, b"ok").await.unwrap();
        let mut buf = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .expect("the socket was shut down")
            .unwrap();
        assert_eq!(&buf, b"ok");
    }

    /// A pending read on `c` ends (the socket was shut down) within a few seconds.
    async fn assert_read_ended(c: &mut tokio::net::TcpStream) {
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("the read was not ended by the deadline")
            .unwrap();
        assert_eq!(n, 0);
    }

    /// Waits for a deadline of `after` armed now on another connection to fire: the
    /// time of any deadline armed before with a shorter one has passed.
    async fn witness_passes(after: Duration) {
        let (mut witness, _ws) = pair().await;
        let _w = HeadDeadline::arm(opened(witness.as_raw_fd()), after);
        assert_read_ended(&mut witness).await;
    }

    fn opened(fd: RawFd) -> Arc<Connection> {
        Connection::on(fd, false, Some(Connection::unopened())).unwrap()
    }

    /// Arms a deadline of `after` on a fresh connection and checks that it ends a
    /// pending read within a few seconds.
    async fn a_deadline_ends_a_pending_read(after: Duration) {
        let (mut c, _s) = pair().await;
        let d = HeadDeadline::arm(opened(c.as_raw_fd()), after);
        assert_read_ended(&mut c).await;
        assert!(d.expired());
    }

    #[tokio::test]
    async fn an_expired_deadline_ends_a_pending_read() {
        a_deadline_ends_a_pending_read(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn an_upload_deadline_is_renewed_while_everything_written_was_taken() {
        let (mut c, mut s) = pair().await;
        tokio::io::AsyncWriteExt::write_all(&mut c, b"taken")
            .await
            .unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await.unwrap();
        let d = HeadDeadline::arm_upload(opened(c.as_raw_fd()), Duration::from_millis(20));
        // a later deadline on another connection firing shows the first one's time passed
        witness_passes(Duration::from_millis(200)).await;
        assert!(
            !d.expired(),
            "waiting for the client is not the upstream's fault"
        );
        assert_still_open(&mut c, &mut s).await;
    }

    #[tokio::test]
    async fn an_upload_deadline_fires_when_the_upstream_stops_taking_the_body() {
        let (mut c, _s) = pair().await;
        // the peer reads nothing: write until its window and our buffer are full
        let chunk = vec![b'u'; 64 * 1024];
        let full = Instant::now() + Duration::from_secs(10);
        loop {
            match c.try_write(&chunk) {
                Ok(_) => assert!(Instant::now() < full, "the socket never filled"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let conn = opened(c.as_raw_fd());
        assert!(
            conn.unsent().is_some_and(|n| n > 0),
            "bytes wait in the send queue"
        );
        let d = HeadDeadline::arm_upload(conn, Duration::from_millis(50));
        assert_read_ended(&mut c).await;
        assert!(d.expired());
    }

    #[tokio::test]
    async fn a_reused_connection_is_found_by_its_descriptor_until_it_closes() {
        let (c, _s) = pair().await;
        let fd = c.as_raw_fd();
        let first = opened(fd);
        let again = Connection::on(fd, true, None).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert!(
            again.own.is_none(),
            "a registered connection needs no descriptor of its own"
        );
        // what Pingora's drop of the connection does, through the tracer it carries
        let tracer = PeerTracer(first.clone()).boxed_clone();
        tracer.on_disconnected();
        assert!(*lock(&first.closed));
        // the descriptor is no longer taken for that connection; an untraced connection
        // on it gets a descriptor of its own
        let other = Connection::on(fd, true, None).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        assert!(other.own.is_some());
    }

    #[tokio::test]
    async fn a_closed_connection_is_never_shut_down() {
        let (mut c, mut s) = pair().await;
        let conn = opened(c.as_raw_fd());
        conn.close();
        let d = HeadDeadline::arm(conn, Duration::from_millis(20));
        witness_passes(Duration::from_millis(40)).await;
        assert!(d.expired(), "the deadline passed");
        assert_still_open(&mut c, &mut s).await;
    }

    #[tokio::test]
    async fn a_deadline_armed_while_the_sweeper_sleeps_wakes_it() {
        let r = registry();
        // wait (bounded) for a quiet spell: other tests' deadlines keep it ticking
        let until = Instant::now() + Duration::from_secs(20);
        while !r.sleeping.load(Ordering::SeqCst) {
            assert!(Instant::now() < until, "the sweeper never went to sleep");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        a_deadline_ends_a_pending_read(Duration::from_millis(10)).await;
    }

    #[tokio::test]
    async fn a_dropped_deadline_leaves_the_connection_alone() {
        let (mut c, mut s) = pair().await;
        let d = HeadDeadline::arm(opened(c.as_raw_fd()), Duration::from_millis(20));
        assert!(!d.expired());
        drop(d);
        // a later deadline on another connection firing shows the first one's time passed
        witness_passes(Duration::from_millis(40)).await;
        assert_still_open(&mut c, &mut s).await;
    }
}
