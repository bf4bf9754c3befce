//! The connection guard: every HTTP/1 request head passes through a [`HeadScanner`]
//! before Pingora sees a byte of it.
//!
//! [`Guarded`] wraps the proxy's Pingora app; each accepted connection's stream is
//! wrapped in a [`Guard`], which withholds the bytes of a request head until the
//! scanner has seen all of it. A head that breaks a limit or frames ambiguously is
//! answered by the guard itself (400, 408, 414 or 431 with the contract's JSON body)
//! and the connection is closed; Pingora sees a connection that closed before sending
//! anything. Deadlines: a new connection must start a head within `header_timeout`, a
//! head must be complete within `header_timeout` of its first byte, and a keep-alive
//! connection may sit idle between requests for `idle_timeout`; the two idle cases
//! close quietly.
//!
//! The proxy tells the guard that a request is finished (so the next bytes are a new
//! head) through [`ConnState::request_done`], reached with [`conn_state`]. HTTP/2
//! connections (ALPN `h2` or the h2c preface) pass through untouched: their limits are
//! the h2 options of the proxy service.
//!
//! The HTTP/1 head defence lives here whole: the [`scanner`] of request heads, this
//! guard that applies it and the connection deadlines, and the [`head_deadline`] on
//! upstream response heads.

pub(crate) mod head_deadline;
pub(crate) mod scanner;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use http::Method;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::config::limits::Limits;
use crate::drain::{Drain, H2Open};
use crate::metrics::{Metrics, NO_ROUTE};
use crate::reply::{ErrorCode, Reply};
use scanner::{HeadScanner, Scan};

/// A deadline's timer: Pingora's (`pingora-timeout`), which one thread drives for the
/// whole process at 10 ms precision, rather than tokio's: a tokio timer armed on every
/// connection makes each wait of the worker threads compute and set a timeout, which
/// raw Pingora's workers do not do.
type Timer = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

fn timer_until(at: Instant) -> Timer {
    Box::pin(pingora::time::sleep(
        at.saturating_duration_since(Instant::now()),
    ))
}

/// What the proxy and the guard of one connection share.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    next_head: AtomicBool,
}

impl ConnState {
    /// The request in flight is finished: the next bytes are a new head.
    ///
    /// Nothing needs waking: Pingora reads the next request with a new read, which
    /// sees this (a read still pending from the request in flight — Pingora's probe
    /// for a client hanging up — is dropped with that request).
    pub(crate) fn request_done(&self) {
        self.next_head.store(true, Ordering::Release);
    }
}

/// The guard state of the connection `stream` belongs to, if it is guarded.
pub(crate) fn conn_state(stream: &Stream) -> Option<&Arc<ConnState>> {
    (**stream)
        .as_any()
        .downcast_ref::<Guard>()
        .map(|g| &g.state)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A new connection: waiting for the first byte, `header_timeout`.
    Fresh,
    /// Between requests: waiting for the first byte, `idle_timeout`.
    Idle,
    /// Reading a head, `header_timeout` from its first byte.
    Head,
    /// The head went to Pingora; the rest of the request passes through.
    Through,
    /// HTTP/2: everything passes through.
    H2,
    /// Writing a refusal, then closed.
    Refusing,
    /// Closed: reads see the end of the stream.
    Closed,
}

/// A connection's stream behind the guard.
pub(crate) struct Guard {
    inner: Stream,
    /// The drain, told of an HTTP/2 connection while it is open.
    drain: Arc<Drain>,
    h2: Option<H2Open>,
    state: Arc<ConnState>,
    limits: Limits,
    metrics: Metrics,
    mode: Mode,
    scanner: HeadScanner,
    /// Bytes of the head being read, withheld from Pingora.
    held: BytesMut,
    /// Bytes ready for Pingora (a complete head and whatever followed it).
    ready: BytesMut,
    /// The refusal being written.
    refusal: BytesMut,
    /// The deadline's timer and when it fires, made at the first wait (most
    /// connections have their next head at hand when they read) and dropped once it has
    /// fired. It fires never after `deadline_at`, but often before it: a deadline that
    /// moves later (the idle deadline moves with every request) is left where it was,
    /// and moved when it fires, so a busy connection sets its timer once per timeout,
    /// not once per request.
    timer: Option<(Instant, Timer)>,
    deadline_at: Instant,
    /// A deadline that starts when the guard first waits (`idle_timeout` after a
    /// request): set on the first read that finds no data, so a connection whose next
    /// request is already there reads no clock and sets no timer.
    deadline_from_wait: Option<Duration>,
    head_started: Instant,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("inner", &self.inner)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Guard {
    fn new(inner: Stream, limits: Limits, metrics: Metrics, drain: Arc<Drain>) -> Self {
        let h2 = matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        let now = Instant::now();
        Self {
            inner,
            h2: h2.then(|| drain.open_h2()),
            drain,
            state: Arc::default(),
            limits,
            metrics,
            mode: if h2 { Mode::H2 } else { Mode::Fresh },
            scanner: HeadScanner::new(limits),
            held: BytesMut::new(),
            ready: BytesMut::new(),
            refusal: BytesMut::new(),
            timer: None,
            deadline_at: now + limits.header_timeout,
            deadline_from_wait: None,
            head_started: now,
        }
    }

    /// The deadline in force, fixing one that starts with this wait.
    fn deadline(&mut self) -> Instant {
        if let Some(after) = self.deadline_from_wait.take() {
            self.deadline_at = Instant::now() + after;
        }
        self.deadline_at
    }

    /// Polls the deadline (its clock read lazily: most reads never wait).
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let at = self.deadline();
        loop {
            let timer = match &mut self.timer {
                Some((fires, t)) if *fires <= at => t,
                _ => &mut self.timer.insert((at, timer_until(at))).1,
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.timer = None;
            // (the clock, not the timer, says whether the deadline has passed: a timer
            // may fire a little early, and always does when armed for an earlier one)
            if Instant::now() >= at {
                return Poll::Ready(());
            }
            // fired early: on to the deadline
        }
    }

    /// Prepares the refusal for `code`, counted in the metrics like any refusal made
    /// before a route was chosen.
    fn refuse(&mut self, code: ErrorCode) {
        let id = crate::request_id::generate();
        let reply = Reply::refuse(code).render(&id);
        let status = reply.status;
        self.refusal.clear();
        let line = format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        self.refusal.extend_from_slice(line.as_bytes());
        for (name, value) in &reply.headers {
            self.refusal.extend_from_slice(name.as_str().as_bytes());
            self.refusal.extend_from_slice(b": ");
            self.refusal.extend_from_slice(value.as_bytes());
            self.refusal.extend_from_slice(b"\r\n");
        }
        self.refusal.extend_from_slice(b"connection: close\r\n\r\n");
        self.refusal.extend_from_slice(&reply.body);
        let method = self
            .scanner
            .method()
            .and_then(|m| Method::from_bytes(m).ok())
            .unwrap_or_else(|| Method::from_bytes(b"OTHER").unwrap_or_default());
        self.metrics.observe_request(
            NO_ROUTE,
            &method,
            status.as_u16(),
            self.head_started.elapsed().as_secs_f64(),
        );
        self.metrics.refusal(NO_ROUTE, code.as_str());
        tracing::debug!("refused a request head: {}", code.as_str());
        self.held.clear();
        self.mode = Mode::Refusing;
    }

    /// Takes in freshly read bytes of a head: `Complete` when the head is whole (the
    /// bytes can go to Pingora), `Partial` when they were kept to wait for more.
    fn scan(&mut self, data: &[u8], keep: bool) -> Scan {
        let first = matches!(self.mode, Mode::Fresh | Mode::Idle);
        let scan = self.scanner.feed(data);
        match scan {
            Scan::Partial => {
                if first {
                    // a new connection's head is due `header_timeout` after the accept;
                    // a later head, `header_timeout` after its first byte
                    let now = Instant::now();
                    if self.mode == Mode::Idle {
                        self.deadline_from_wait = None;
                        self.deadline_at = now + self.limits.header_timeout;
                    }
                    self.head_started = now;
                }
                self.mode = Mode::Head;
                self.held.extend_from_slice(data);
            }
            Scan::Complete(_) => {
                if keep {
                    self.held.extend_from_slice(data);
                    self.ready = std::mem::take(&mut self.held);
                }
                self.mode = if self.scanner.is_h2_preface() {
                    self.h2 = Some(self.drain.open_h2());
                    Mode::H2
                } else {
                    Mode::Through
                };
            }
            Scan::Refuse(code) => {
                if first {
                    self.head_started = Instant::now();
                }
                self.refuse(code);
            }
        }
        scan
    }

    /// Writes the refusal; then the connection is closed.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while !self.refusal.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.refusal) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                Poll::Ready(Ok(n)) => self.refusal.advance(n),
                Poll::Pending => return Poll::Pending,
            }
        }
        if Pin::new(&mut self.inner).poll_flush(cx).is_pending() {
            return Poll::Pending;
        }
        self.refusal.clear();
        self.mode = Mode::Closed;
        Poll::Ready(())
    }
}

impl AsyncRead for Guard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            match this.mode {
                Mode::H2 => return Pin::new(&mut this.inner).poll_read(cx, buf),
                Mode::Closed => return Poll::Ready(Ok(())),
                Mode::Refusing => {
                    if this.poll_refusal(cx).is_pending() {
                        return Poll::Pending;
                    }
                    return Poll::Ready(Ok(()));
                }
                Mode::Through => {
                    if !this.state.next_head.swap(false, Ordering::AcqRel) {
                        return Pin::new(&mut this.inner).poll_read(cx, buf);
                    }
                    this.scanner.reset();
                    this.mode = Mode::Idle;
                    this.deadline_from_wait = Some(this.limits.idle_timeout);
                }
                Mode::Fresh | Mode::Idle if this.held.is_empty() && buf.remaining() >= 1024 => {
                    // the common case: a head read whole into the caller's buffer, scanned
                    // there and handed over without a copy
                    let before = buf.filled().len();
                    match Pin::new(&mut this.inner).poll_read(cx, buf) {
                        Poll::Ready(Ok(())) if buf.filled().len() == before => {
                            this.mode = Mode::Closed;
                        }
                        Poll::Ready(Ok(())) => {
                            let scan = this.scan(&buf.filled()[before..], false);
                            if matches!(scan, Scan::Complete(_)) {
                                return Poll::Ready(Ok(()));
                            }
                            // withheld (kept in `held`) or refused
                            buf.set_filled(before);
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            if this.poll_deadline(cx).is_pending() {
                                return Poll::Pending;
                            }
                            this.mode = Mode::Closed; // idle or silent: close quietly
                        }
                    }
                }
                Mode::Fresh | Mode::Idle | Mode::Head => {
                    let mut tmp = [0u8; 4096];
                    let mut rb = ReadBuf::new(&mut tmp);
                    let polled = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
                    let n = rb.filled().len();
                    match polled {
                        Poll::Ready(Ok(())) if n == 0 => {
                            // the client closed: mid-head, Pingora never sees the part
                            this.held.clear();
                            this.mode = Mode::Closed;
                        }
                        Poll::Ready(Ok(())) => {
                            this.scan(&tmp[..n], true);
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            if this.poll_deadline(cx).is_pending() {
                                return Poll::Pending;
                            }
                            if this.mode == Mode::Head {
                                this.refuse(ErrorCode::RequestTimeout);
                            } else {
                                this.mode = Mode::Closed; // idle: close quietly
                            }
                        }
                    }
                }
            }
        }
    }
}

impl AsyncWrite for Guard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Guard {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Guard {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guard {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guard {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guard {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Guard {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

/// Pingora peeks at the first bytes of a plain connection for the h2c preface. The guard
/// reads them itself (under its deadline, through the scanner) and keeps them for the
/// reads that follow; once the bytes are known not to be the preface (a complete HTTP/1
/// head, a refusal, a closed connection) it answers with what it has.
#[async_trait]
impl Peek for Guard {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        use tokio::io::AsyncReadExt;
        loop {
            match self.mode {
                Mode::Fresh | Mode::Head => {}
                Mode::H2 if self.ready.len() < buf.len() => {}
                _ => {
                    let n = self.ready.len().min(buf.len());
                    buf[..n].copy_from_slice(&self.ready[..n]);
                    return Ok(true);
                }
            }
            let mut tmp = [0u8; 4096];
            let left = self.deadline().saturating_duration_since(Instant::now());
            match pingora::time::timeout(left, self.inner.read(&mut tmp)).await {
                Err(_) => {
                    if self.mode == Mode::Head {
                        self.refuse(ErrorCode::RequestTimeout);
                    } else {
                        self.mode = Mode::Closed;
                    }
                }
                Ok(Ok(0)) => {
                    self.held.clear();
                    self.mode = Mode::Closed;
                }
                Ok(Ok(n)) if self.mode == Mode::H2 => self.ready.extend_from_slice(&tmp[..n]),
                Ok(Ok(n)) => {
                    self.scan(&tmp[..n], true);
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    }
}

/// A Pingora app whose connections go through the connection guard: HTTP/1 request
/// heads are checked against `[server.limits]` before the app sees them.
pub struct Guarded<A> {
    app: Arc<A>,
    limits: Limits,
    metrics: Metrics,
    drain: Arc<Drain>,
}

impl<A> Guarded<A> {
    /// Guards `app`'s connections with `limits`; refusals are counted in `metrics`, and
    /// HTTP/2 connections in `drain`.
    pub(crate) fn new(app: A, limits: Limits, metrics: Metrics, drain: Arc<Drain>) -> Self {
        Self {
            app: Arc::new(app),
            limits,
            metrics,
            drain,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream: Stream = if (*stream).as_any().is::<Guard>() {
            stream
        } else {
            Box::new(Guard::new(
                stream,
                self.limits,
                self.metrics.clone(),
                self.drain.clone(),
            ))
        };
        self.app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}
