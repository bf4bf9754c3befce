//! The JSON access log: one object per request, written off the request path.
//!
//! Lines go through a bounded channel to a writer thread; when the channel is full
//! the line is dropped and counted rather than making a request wait.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pingora::proxy::Session;

use crate::config::AccessLog;
use crate::context::RequestCtx;

const QUEUE: usize = 16 * 1024;

/// Sends access log lines to the writer thread.
#[derive(Debug, Clone)]
pub struct AccessLogger {
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

impl AccessLogger {
    /// Starts the writer for `dest`; `None` for [`AccessLog::Off`].
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub fn start(dest: &AccessLog) -> std::io::Result<Option<Self>> {
        let out: Box<dyn Write + Send> = match dest {
            AccessLog::Off => return Ok(None),
            AccessLog::Stdout => Box::new(std::io::stdout()),
            AccessLog::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("tollgate-access-log".into())
            .spawn(move || writer(rx, out))?;
        Ok(Some(Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }))
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn log(
        &self,
        session: &Session,
        cx: &RequestCtx,
        status: u16,
        elapsed: Duration,
        bytes: usize,
    ) {
        let req = session.req_header();
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let line = serde_json::json!({
            "ts": ts,
            "request_id": cx.request_id,
            "trace_id": cx.trace.as_ref().map(|t| t.trace_id.as_str()),
            "client_ip": cx.client_ip.map(|ip| ip.to_string()),
            "method": req.method.as_str(),
            "path": if cx.path.is_empty() { req.uri.path() } else { cx.path.as_str() },
            "status": status,
            "route": cx.route_name(),
            "upstream": cx.backend().map(|a| a.to_string()),
            "consumer": cx.consumer.as_ref().map(|c| c.name.as_str()),
            "duration_ms": elapsed.as_secs_f64() * 1000.0,
            "upstream_ms": cx.upstream_elapsed.map(|d| d.as_secs_f64() * 1000.0),
            "bytes_sent": bytes,
            "error": cx.refusal().map(|c| c.as_str()),
        });
        match self.tx.try_send(line.to_string()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn writer(rx: Receiver<String>, mut out: Box<dyn Write + Send>) {
    let mut failed = false;
    while let Ok(line) = rx.recv() {
        let mut res = writeln!(out, "{line}");
        // drain what is queued before flushing once
        while let Ok(more) = rx.try_recv() {
            res = res.and_then(|()| writeln!(out, "{more}"));
        }
        res = res.and_then(|()| out.flush());
        match (res, failed) {
            (Err(e), false) => {
                tracing::error!("access log write failed: {e}");
                failed = true;
            }
            (Ok(()), true) => failed = false,
            _ => {}
        }
    }
}
