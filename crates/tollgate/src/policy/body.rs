//! Whole bodies for the policies that need them (`Policy::request_body_limit`,
//! `Policy::response_body_limit`): read once, bounded per request by the largest limit
//! and per process by `[server.limits] body_buffer_total`.
//!
//! Pingora 0.9 has no way to hand a request body that was read before the upstream was
//! chosen back to the proxy, except its retry buffer (64 KiB). A body of known length
//! is read with that buffer switched on for its last 64 KiB only: the proxy then sends
//! that tail, and the gateway puts the whole held body in its place. A body of unknown
//! length (chunked, or HTTP/2 without `Content-Length`) over 64 KiB cannot be handed
//! back and is refused with 411 `length_required` as soon as it is over.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use pingora::proxy::Session;

use crate::reply::{ErrorCode, Reply};

/// How much of a request body Pingora's retry buffer holds (its `BODY_BUF_LIMIT`).
pub(crate) const REPLAY: usize = 64 << 10;

/// The bytes every held body of the process may take together
/// (`[server.limits] body_buffer_total`).
#[derive(Debug)]
pub(crate) struct Budget {
    limit: AtomicUsize,
    used: AtomicUsize,
    /// The longest pause while a held request body arrives (`body_timeout`), in ms.
    pause_ms: AtomicU64,
}

/// The budget of bodies held outside a gateway (a policy run on its own): unbounded.
pub(crate) static UNBOUNDED: Budget = Budget::new(usize::MAX, Duration::from_secs(60));

impl Budget {
    pub(crate) const fn new(limit: usize, pause: Duration) -> Self {
        Self {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
            pause_ms: AtomicU64::new(pause.as_millis() as u64),
        }
    }

    /// A budget for the life of the process (one per gateway, shared by its requests
    /// by reference).
    pub(crate) fn leak(limit: usize, pause: Duration) -> &'static Self {
        Box::leak(Box::new(Self::new(limit, pause)))
    }

    /// New limits, for reservations and reads that start after this.
    pub(crate) fn configure(&self, limit: usize, pause: Duration) {
        self.limit.store(limit, Ordering::Relaxed);
        self.pause_ms
            .store(pause.as_millis() as u64, Ordering::Relaxed);
    }

    /// The longest pause while a held request body arrives.
    pub(crate) fn pause(&self) -> Duration {
        Duration::from_millis(self.pause_ms.load(Ordering::Relaxed))
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes, if they fit (nothing always fits).
    pub(crate) fn reserve(&'static self, n: usize) -> Option<Reservation> {
        let mut r = Reservation {
            budget: self,
            bytes: 0,
        };
        r.grow(n).then_some(r)
    }
}

/// Bytes of the [`Budget`] a held body takes; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: &'static Budget,
    bytes: usize,
}

impl Reservation {
    /// Takes `n` more bytes, if they fit.
    pub(crate) fn grow(&mut self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let limit = self.budget.limit.load(Ordering::Relaxed);
        let took = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&u| u <= limit)
            })
            .is_ok();
        if took {
            self.bytes += n;
        }
        took
    }

    /// Takes up to `total` bytes in all (what a body that turned out to be `total`
    /// bytes long needs beyond what was reserved).
    pub(crate) fn grow_to(&mut self, total: usize) -> bool {
        total <= self.bytes || self.grow(total - self.bytes)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A whole request body, held for the policies and then sent upstream in place of the
/// one the client sent.
#[derive(Debug)]
pub(crate) struct HeldBody {
    pub(crate) bytes: Bytes,
    room: Reservation,
}

impl HeldBody {
    /// Frames the upstream request for this body, which the gateway read (and answered
    /// `100 Continue` for): no `Expect`, and the body's own `Content-Length` when there
    /// is a body to send (`client_sent_body`, or one a policy gave it).
    pub(crate) fn frame(
        &self,
        req: &mut pingora::http::RequestHeader,
        client_sent_body: bool,
    ) -> pingora::Result<()> {
        req.remove_header(&http::header::EXPECT);
        if !self.bytes.is_empty() || client_sent_body {
            req.remove_header(&http::header::TRANSFER_ENCODING);
            req.insert_header(http::header::CONTENT_LENGTH, self.bytes.len())?;
        }
        Ok(())
    }

    /// Takes room for what `bytes` holds now (a policy may have made it longer).
    pub(crate) fn fits(&mut self) -> bool {
        self.room.grow_to(self.bytes.len())
    }
}

/// The message of [`no_room`]'s refusal (how the gateway tells it from other 503s).
pub(crate) const NO_ROOM: &str = "the gateway's body buffers are full";

/// The refusal of a request whose body finds no room.
pub(crate) fn no_room() -> Reply {
    Reply::refuse_with(ErrorCode::Overloaded, NO_ROOM)
        .header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
}

/// Reads the whole request body, up to `cap` bytes, into memory taken from `budget`,
/// each piece within `pause` of the last. `Ok(Err(reply))` is the refusal: 413 past
/// `cap`, 503 when the budget is full, 408 for a pause, 411 for a body of unknown length
/// that cannot be handed back to the proxy.
pub(crate) async fn read_request(
    session: &mut Session,
    cap: usize,
    budget: &'static Budget,
    pause: Duration,
) -> pingora::Result<Result<HeldBody, Reply>> {
    let too_large = || {
        Reply::refuse_with(
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than {cap} bytes"),
        )
    };
    let headers = &session.req_header().headers;
    let declared = crate::media::content_length(headers);
    let expects = headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if declared.is_some_and(|n| n > cap) {
        return Ok(Err(too_large()));
    }
    let Some(mut room) = budget.reserve(declared.unwrap_or(0)) else {
        return Ok(Err(no_room()));
    };
    if expects && !session.as_mut().is_body_empty() {
        // the body is read before any upstream is asked: the gateway says go on
        session.as_mut().write_continue_response().await?;
    }
    let mut held = BytesMut::with_capacity(declared.unwrap_or(0));
    let mut replaying = false;
    loop {
        // the proxy sends the retry buffer's bytes upstream (the gateway swaps in
        // the whole body): only the last 64 KiB go in it, or a body whose length is
        // not known from the start
        let tail = declared.is_none_or(|n| n.saturating_sub(held.len()) <= REPLAY);
        if tail && !replaying {
            session.as_mut().enable_retry_buffering();
            replaying = true;
        }
        // the session's own read timeout is the same pause (the proxy sets it to
        // body_timeout): whichever fires first, the answer is the 408
        let paused = || {
            Reply::refuse_with(
                ErrorCode::RequestTimeout,
                "the request body paused for too long",
            )
        };
        let piece = match tokio::time::timeout(pause, session.read_request_body()).await {
            Ok(Err(e)) if *e.etype() == pingora::ErrorType::ReadTimedout => {
                return Ok(Err(paused()))
            }
            Ok(piece) => piece?,
            Err(_) => return Ok(Err(paused())),
        };
        let Some(piece) = piece else {
            break;
        };
        if held.len() + piece.len() > cap {
            return Ok(Err(too_large()));
        }
        if declared.is_none() && held.len() + piece.len() > REPLAY {
            return Ok(Err(Reply::refuse_with(
                ErrorCode::LengthRequired,
                format!("a request body over {REPLAY} bytes on this route needs a Content-Length"),
            )));
        }
        if !room.grow_to(held.len() + piece.len()) {
            return Ok(Err(no_room()));
        }
        held.extend_from_slice(&piece);
    }
    Ok(Ok(HeldBody {
        bytes: held.freeze(),
        room,
    }))
}

/// A body collected whole (a response body a policy transforms, a copy it checks),
/// within a cap of the policy's and the process's `[server.limits] body_buffer_total`,
/// which every body held by every policy shares. The bytes are given back to the
/// budget when the buffer is dropped.
#[derive(Debug)]
pub struct BodyBuffer {
    buf: BytesMut,
    room: Reservation,
    cap: usize,
}

/// What collecting a body's next piece came to.
#[derive(Debug)]
pub enum Hold {
    /// Collected.
    Held,
    /// Over the cap, or no room in the budget: the buffer is empty now and these are
    /// the bytes it held followed by the piece (pass them on, and the rest as it comes).
    Release(Bytes, NotHeld),
}

/// Why a body is not collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotHeld {
    /// Larger than the cap.
    TooLarge,
    /// `body_buffer_total` is full.
    NoRoom,
}

impl NotHeld {
    /// `too_large` or `no_room`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::NoRoom => "no_room",
        }
    }
}

impl BodyBuffer {
    /// Starts collecting a body of `declared` length (if known; that much is reserved
    /// at once) up to `cap` bytes, for the request of `cx`.
    ///
    /// # Errors
    /// `declared` is over `cap`, or cannot be reserved.
    pub fn start(
        cx: &crate::context::RequestCtx,
        declared: Option<usize>,
        cap: usize,
    ) -> Result<Self, NotHeld> {
        Self::start_in(cx.bodies, declared, cap)
    }

    pub(crate) fn start_in(
        budget: &'static Budget,
        declared: Option<usize>,
        cap: usize,
    ) -> Result<Self, NotHeld> {
        if declared.is_some_and(|n| n > cap) {
            return Err(NotHeld::TooLarge);
        }
        let room = budget
            .reserve(declared.unwrap_or(0))
            .ok_or(NotHeld::NoRoom)?;
        Ok(Self {
            buf: BytesMut::with_capacity(declared.unwrap_or(0)),
            room,
            cap,
        })
    }

    /// Collects `piece`.
    pub fn push(&mut self, piece: &[u8]) -> Hold {
        let total = self.buf.len() + piece.len();
        let not = if total > self.cap {
            Some(NotHeld::TooLarge)
        } else if !self.room.grow_to(total) {
            Some(NotHeld::NoRoom)
        } else {
            None
        };
        match not {
            Some(why) => {
                let mut out = std::mem::take(&mut self.buf);
                out.extend_from_slice(piece);
                Hold::Release(out.freeze(), why)
            }
            None => {
                self.buf.extend_from_slice(piece);
                Hold::Held
            }
        }
    }

    /// The bytes collected so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is collected.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The whole body; the buffer is empty after (its reservation stays until it is
    /// dropped).
    pub fn take(&mut self) -> Bytes {
        std::mem::take(&mut self.buf).freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_and_given_back() {
        let b = Budget::leak(100, Duration::from_secs(1));
        let mut one = b.reserve(60).unwrap();
        assert!(b.reserve(50).is_none(), "60 + 50 > 100");
        let two = b.reserve(40).unwrap();
        assert!(!one.grow(1));
        assert_eq!(b.used(), 100);
        drop(two);
        assert!(one.grow_to(90));
        assert!(one.grow_to(80), "already has it");
        assert_eq!(b.used(), 90);
        drop(one);
        assert_eq!(b.used(), 0);
        b.configure(10, Duration::from_secs(1));
        assert!(b.reserve(11).is_none());
    }

    #[test]
    fn a_response_over_the_cap_is_released_whole_never_cut() {
        let b = Budget::leak(1 << 20, Duration::from_secs(1));
        let mut h = BodyBuffer::start_in(b, None, 10).unwrap();
        assert!(matches!(h.push(b"12345"), Hold::Held));
        match h.push(b"678901") {
            Hold::Release(out, NotHeld::TooLarge) => assert_eq!(&out[..], b"12345678901"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            BodyBuffer::start_in(b, Some(11), 10),
            Err(NotHeld::TooLarge)
        ));
        let tight = Budget::leak(4, Duration::from_secs(1));
        let mut h = BodyBuffer::start_in(tight, None, 10).unwrap();
        assert!(matches!(h.push(b"1234"), Hold::Held));
        assert!(matches!(h.push(b"5"), Hold::Release(_, NotHeld::NoRoom)));
    }
}
