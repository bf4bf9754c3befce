//! The JSON access log: one object per request, written off the request path.
//!
//! Lines go through a bounded channel to a writer thread; when the channel is full
//! the line is dropped and counted rather than making a request wait. Lines that cannot
//! be written (disk full, file removed) are counted the same way, and serving goes on.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pingora::proxy::Session;
use prometheus::IntCounter;

use crate::config::AccessLog;
use crate::context::RequestCtx;

const QUEUE: usize = 16 * 1024;

/// Sends access log lines to the writer thread.
#[derive(Debug, Clone)]
pub(crate) struct AccessLogger {
    tx: SyncSender<String>,
    dropped: IntCounter,
    reopen: Arc<AtomicBool>,
}

impl AccessLogger {
    /// Starts the writer for `dest`; `None` for [`AccessLog::Off`]. Lines that cannot
    /// be queued are counted in `dropped`.
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub(crate) fn start(dest: &AccessLog, dropped: IntCounter) -> std::io::Result<Option<Self>> {
        let out = match dest {
            AccessLog::Off => return Ok(None),
            AccessLog::Stdout => Output::Stdout(std::io::stdout()),
            AccessLog::File(p) => Output::File(p.clone(), open(p)?),
        };
        let (tx, rx) = sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        let lost = dropped.clone();
        std::thread::Builder::new()
            .name("tollgate-access-log".into())
            .spawn(move || writer(rx, out, &flag, &lost))?;
        Ok(Some(Self {
            tx,
            dropped,
            reopen,
        }))
    }

    /// Asks the writer to reopen the log file (after rotation moved it away); lines
    /// queued before are written to the old file, later ones to the new. No-op for stdout.
    pub(crate) fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        // wake the writer; if the queue is full it is awake anyway
        let _ = self.tx.try_send(String::new());
    }

    pub(crate) fn log(&self, session: &Session, cx: &RequestCtx, done: &Done<'_>) {
        let Done {
            status,
            elapsed,
            upstream_elapsed,
            bytes,
            upstream_name,
            cache,
            compress,
            decompress,
        } = *done;
        let req = session.req_header();
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut line = serde_json::json!({
            "ts": ts,
            "request_id": cx.request_id,
            "trace_id": cx.trace.as_ref().map(|t| t.trace_id_hex()),
            "client_ip": cx.client_ip.map(|ip| ip.to_string()),
            "method": req.method.as_str(),
            "path": if cx.path.is_empty() { req.uri.path() } else { cx.path.as_str() },
            "status": status,
            "route": cx.route_name(),
            "upstream": cx.backend().map(|a| a.to_string()),
            "upstream_name": upstream_name,
            "consumer": cx.consumer.as_ref().map(|c| c.name.as_str()),
            "auth": cx.authenticated_by(),
            "client_cert_sha256": cx.client_certificate().map(|c| c.sha256.as_str()),
            "authz": null,
            "cache": cache,
            "compress": compress,
            "decompress": decompress,
            "request_body": null,
            "response_body": null,
            "xml_request": null,
            "xml_response": null,
            "validation": null,
            "validation_response": null,
            "duration_ms": elapsed.as_secs_f64() * 1000.0,
            "upstream_ms": upstream_elapsed.map(|d| d.as_secs_f64() * 1000.0),
            "bytes_sent": bytes,
            "error": cx.refusal().map(|c| c.as_str()),
        });
        if let Some(fields) = line.as_object_mut() {
            for (name, value) in &cx.log_fields {
                // the gateway's own fields stay its own; an area's (`authz`) may be set,
                // and `error` by a policy that aborted a response it had started
                // (`response_aborted`, CROSSCUTTING.md rule 6.3)
                let aborted = *name == "error";
                if !fields.contains_key(*name) || fields[*name].is_null() || aborted {
                    fields.insert((*name).to_string(), value.clone());
                }
            }
        }
        match self.tx.try_send(line.to_string()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

/// How a request ended, for its log line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done<'a> {
    pub status: u16,
    pub elapsed: Duration,
    pub upstream_elapsed: Option<Duration>,
    pub bytes: usize,
    /// The backend entry the address connected to came from (a DNS name).
    pub upstream_name: Option<&'a str>,
    /// How the cache answered (`X-Cache-Status`), on a route that caches.
    pub cache: Option<&'static str>,
    /// The algorithm that compressed the response.
    pub compress: Option<&'static str>,
    /// `gzip` when the request body was decoded.
    pub decompress: Option<&'static str>,
}

enum Output {
    Stdout(std::io::Stdout),
    File(PathBuf, std::fs::File),
}

impl Output {
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        if line.is_empty() {
            return Ok(()); // a wake-up, not a line
        }
        match self {
            Self::Stdout(o) => writeln!(o, "{line}"),
            Self::File(_, f) => writeln!(f, "{line}"),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Stdout(o) => o.flush(),
            Self::File(_, f) => f.flush(),
        }
    }
}

fn open(p: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
}

/// Writes lines until every sender is gone. Lines of a batch whose write fails (disk
/// full, file gone) are counted in `lost` with the dropped ones; serving goes on.
fn writer(rx: Receiver<String>, mut out: Output, reopen: &AtomicBool, lost: &IntCounter) {
    let mut failed = false;
    while let Ok(line) = rx.recv() {
        let mut batch = u64::from(!line.is_empty());
        let mut res = out.write_line(&line);
        // drain what is queued before flushing once
        while let Ok(more) = rx.try_recv() {
            batch += u64::from(!more.is_empty());
            res = res.and_then(|()| out.write_line(&more));
        }
        res = res.and_then(|()| out.flush());
        if res.is_err() {
            lost.inc_by(batch);
        }
        if reopen.swap(false, Ordering::AcqRel) {
            if let Output::File(path, file) = &mut out {
                match open(path) {
                    Ok(f) => *file = f,
                    Err(e) => tracing::error!(
                        "cannot reopen access log {}, keeping the old file: {e}",
                        path.display()
                    ),
                }
            }
        }
        match (res, failed) {
            (Err(e), false) => {
                tracing::error!(
                    "access log write failed, counting lost lines in \
                     tollgate_access_log_dropped_total until it works again: {e}"
                );
                failed = true;
            }
            (Ok(()), true) => failed = false,
            _ => {}
        }
    }
}
