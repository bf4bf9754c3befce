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
//! descriptor (and the number been reused) in the meantime. HTTP/2 upstream
//! connections carry many requests and are never armed (their response head comes in
//! one HEADERS frame, which Pingora's `read_timeout` already bounds).

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A running deadline on one upstream connection; disarmed when dropped.
#[derive(Debug)]
pub(crate) struct HeadDeadline {
    task: tokio::task::AbortHandle,
    expired: Arc<AtomicBool>,
}

impl HeadDeadline {
    /// Shuts down the socket behind `fd` after `after`, unless disarmed first.
    ///
    /// `fd` must be open for the duration of the call (Pingora's hook guarantees it).
    // The crate's one `unsafe` block: Pingora's `connected_to_upstream` hook lends
    // the connection as a bare descriptor number.
    #[allow(unsafe_code)]
    pub(crate) fn arm(fd: RawFd, after: Duration) -> io::Result<Self> {
        // SAFETY: the caller passes a descriptor that is open during this call (the
        // connection Pingora's hook was called for); the duplicate made here is owned
        // by the timer task from then on
        let own = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        let expired = Arc::new(AtomicBool::new(false));
        let flag = expired.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(after).await;
            flag.store(true, Ordering::Release);
            // shutdown(2) acts on the socket, whichever descriptor names it; for a
            // Unix-socket peer it is the same call
            let socket = std::net::TcpStream::from(own);
            let _ = socket.shutdown(std::net::Shutdown::Both);
        })
        .abort_handle();
        Ok(Self { task, expired })
    }

    /// Whether the deadline passed (and the connection was shut down).
    pub(crate) fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }
}

impl Drop for HeadDeadline {
    fn drop(&mut self) {
        self.task.abort();
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
