//! Async work run to completion before the gateway's runtime exists (before an
//! upgrading process takes the sockets over, before the listeners open): on a runtime
//! of its own, on a thread of its own, so that it works whether or not the caller is
//! inside another runtime.

use std::future::Future;

/// Runs `work` on a current-thread runtime on a new thread named `name`, and waits.
///
/// # Errors
/// The thread or the runtime could not start, or the work panicked.
pub(crate) fn run<F>(name: &str, work: F) -> std::io::Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(work))
        })?
        .join()
        .map_err(|_| std::io::Error::other(format!("{name} panicked")))?
}
