//! Active health checks (`[upstreams.NAME.health_check]`), run in the background.
//!
//! ```toml
//! [upstreams.orders.health_check]
//! kind = "http"          # http (default) | tcp
//! path = "/healthz"      # http only; a 2xx answer is healthy. Default: /
//! interval = "1s"        # default
//! timeout = "1s"         # default: the smaller of interval and 1s
//! unhealthy_after = 2    # consecutive failures. Default: 2
//! healthy_after = 1      # consecutive successes. Default: 1
//! ```
//!
//! The checks are Pingora's (`pingora-load-balancing`); one background service runs the
//! due checks of whatever configuration is current, so a reload needs no restart of it.
//! An unhealthy backend gets no traffic; when every backend of an upstream is unhealthy
//! the answer is 503 `no_healthy_upstream` at once. Health is exported as
//! `tollgate_upstream_backend_healthy{upstream,backend}` and in `/admin/status`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::units::ConfigDuration;
use crate::metrics::Metrics;
use crate::runtime::{Snapshot, Upstream};

// === Config ===

/// The kind of check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// An HTTP GET of `path`; 2xx is healthy. The default.
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
}

/// `[upstreams.NAME.health_check]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `http` or `tcp`. Default: `http`.
    #[serde(default)]
    pub kind: CheckKind,
    /// Path of the HTTP check. Default: `/`.
    pub path: Option<String>,
    /// Time between checks. Default: `1s`.
    pub interval: Option<ConfigDuration>,
    /// Deadline of one check. Default: the smaller of `interval` and 1 s.
    pub timeout: Option<ConfigDuration>,
    /// Consecutive failures that make a backend unhealthy. Default: 2.
    pub unhealthy_after: Option<usize>,
    /// Consecutive successes that make it healthy again. Default: 1.
    pub healthy_after: Option<usize>,
}

impl HealthCheckConfig {
    /// Builds Pingora's check and the schedule; `host` is the `Host` (and SNI) to use.
    ///
    /// # Errors
    /// `(key, message)` for an invalid setting.
    pub fn build(
        &self,
        host: &str,
        tls: bool,
    ) -> Result<(Box<dyn HealthCheck + Send + Sync>, Schedule), (String, String)> {
        let interval = self.interval.map_or(Duration::from_secs(1), |d| d.get());
        if interval < Duration::from_millis(50) {
            return Err(("interval".into(), "interval must be at least 50ms".into()));
        }
        let timeout = self
            .timeout
            .map_or(interval.min(Duration::from_secs(1)), |d| d.get());
        let unhealthy_after = self.unhealthy_after.unwrap_or(2);
        let healthy_after = self.healthy_after.unwrap_or(1);
        if unhealthy_after == 0 || healthy_after == 0 {
            let key = if unhealthy_after == 0 {
                "unhealthy_after"
            } else {
                "healthy_after"
            };
            return Err((key.into(), "must be at least 1".into()));
        }
        let check: Box<dyn HealthCheck + Send + Sync> = match self.kind {
            CheckKind::Tcp => {
                if self.path.is_some() {
                    return Err(("path".into(), "path only applies to kind = \"http\"".into()));
                }
                let mut hc = if tls {
                    TcpHealthCheck::new_tls(host)
                } else {
                    TcpHealthCheck::new()
                };
                hc.consecutive_failure = unhealthy_after;
                hc.consecutive_success = healthy_after;
                hc.peer_template.options.connection_timeout = Some(timeout);
                hc.peer_template.options.total_connection_timeout = Some(timeout);
                hc
            }
            CheckKind::Http => {
                let path = self.path.as_deref().unwrap_or("/");
                if !path.starts_with('/') || path.parse::<http::Uri>().is_err() {
                    return Err(("path".into(), format!("invalid check path {path:?}")));
                }
                let mut hc = HttpHealthCheck::new(host, tls);
                let mut req = pingora::http::RequestHeader::build("GET", path.as_bytes(), None)
                    .map_err(|e| ("path".to_string(), e.to_string()))?;
                req.append_header("host", host)
                    .map_err(|e| ("path".to_string(), e.to_string()))?;
                req.append_header("user-agent", "tollgate-health-check")
                    .map_err(|e| ("path".to_string(), e.to_string()))?;
                hc.req = req;
                hc.consecutive_failure = unhealthy_after;
                hc.consecutive_success = healthy_after;
                hc.peer_template.options.connection_timeout = Some(timeout);
                hc.peer_template.options.total_connection_timeout = Some(timeout);
                hc.peer_template.options.read_timeout = Some(timeout);
                hc.validator = Some(Box::new(|resp: &pingora::http::ResponseHeader| {
                    if resp.status.is_success() {
                        Ok(())
                    } else {
                        pingora::Error::e_explain(
                            pingora::ErrorType::HTTPStatus(resp.status.as_u16()),
                            "not 2xx",
                        )
                    }
                }));
                Box::new(hc)
            }
        };
        Ok((check, Schedule::new(interval)))
    }
}

// === Schedule ===

/// When an upstream's checks are due.
#[derive(Debug)]
pub struct Schedule {
    interval: Duration,
    next_due_ms: AtomicU64,
    running: AtomicBool,
}

impl Schedule {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            next_due_ms: AtomicU64::new(0),
            running: AtomicBool::new(false),
        }
    }

    /// Claims the next run if it is due at `elapsed_ms` and none is running.
    fn claim(&self, elapsed_ms: u64) -> bool {
        if elapsed_ms < self.next_due_ms.load(Ordering::Acquire) {
            return false;
        }
        if self.running.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.next_due_ms.store(
            elapsed_ms + self.interval.as_millis() as u64,
            Ordering::Release,
        );
        true
    }

    /// When the next run is due (ms since the checker started). A run that overruns
    /// its interval is past due; the checker then looks again after a [`TICK`].
    fn next_due(&self) -> u64 {
        self.next_due_ms.load(Ordering::Acquire)
    }
}

// === Service ===

/// Runs the due health checks of the current configuration.
///
/// It sleeps until the next check is due, or until a reload (which may bring checks
/// that are due at once): a gateway without health checks never wakes for them.
pub struct HealthChecker {
    pub(crate) state: Arc<ArcSwap<Snapshot>>,
    pub(crate) metrics: Metrics,
    /// Changes on every reload.
    pub(crate) reloads: watch::Receiver<()>,
}

/// The shortest sleep between two looks for due checks.
const TICK: Duration = Duration::from_millis(25);

async fn run(upstream: Arc<Upstream>, metrics: Metrics) {
    let Some(schedule) = upstream.health.as_ref() else {
        return;
    };
    upstream.selector.backends().run_health_check(true).await;
    for (addr, _, healthy) in upstream.backend_health() {
        metrics.backend_health(&upstream.name, &addr, healthy);
    }
    schedule.running.store(false, Ordering::Release);
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let epoch = Instant::now();
        let mut reloads = self.reloads.clone();
        // false once the gateway handle (the sender) is gone: no reload can come
        let mut reloadable = true;
        loop {
            // seen before the snapshot is read: a reload after this wakes the wait below
            reloads.borrow_and_update();
            let elapsed = epoch.elapsed().as_millis() as u64;
            let snapshot = self.state.load_full();
            for upstream in snapshot.upstreams.values() {
                if upstream.health.as_ref().is_some_and(|s| s.claim(elapsed)) {
                    tokio::spawn(run(upstream.clone(), self.metrics.clone()));
                }
            }
            let schedules = snapshot
                .upstreams
                .values()
                .filter_map(|u| u.health.as_ref());
            let next_due = schedules.map(Schedule::next_due).min();
            drop(snapshot);
            let wake = next_due.map(|due| {
                let floor = elapsed + TICK.as_millis() as u64;
                epoch + Duration::from_millis(due.max(floor))
            });
            tokio::select! {
                _ = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
                changed = reloads.changed(), if reloadable => reloadable = changed.is_ok(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(src: &str) -> HealthCheckConfig {
        toml::from_str(src).unwrap()
    }

    #[test]
    fn builds_http_and_tcp_checks_and_refuses_bad_settings() {
        assert!(config("path = \"/healthz\"\ninterval = \"200ms\"")
            .build("h", false)
            .is_ok());
        assert!(config("kind = \"tcp\"").build("h", false).is_ok());
        assert_eq!(
            config("kind = \"tcp\"\npath = \"/x\"")
                .build("h", false)
                .err()
                .unwrap()
                .0,
            "path"
        );
        assert_eq!(
            config("unhealthy_after = 0")
                .build("h", false)
                .err()
                .unwrap()
                .0,
            "unhealthy_after"
        );
        assert_eq!(
            config("interval = \"1ms\"")
                .build("h", false)
                .err()
                .unwrap()
                .0,
            "interval"
        );
        assert_eq!(
            config("path = \"healthz\"")
                .build("h", false)
                .err()
                .unwrap()
                .0,
            "path"
        );
        assert!(toml::from_str::<HealthCheckConfig>("kind = \"udp\"").is_err());
    }

    #[test]
    fn schedule_runs_once_per_interval_and_never_overlaps() {
        let s = Schedule::new(Duration::from_millis(100));
        assert!(s.claim(0));
        assert!(!s.claim(10), "not due yet");
        assert!(!s.claim(150), "previous run still going");
        s.running.store(false, Ordering::Release);
        assert!(s.claim(150));
        assert!(!s.claim(200));
    }
}
