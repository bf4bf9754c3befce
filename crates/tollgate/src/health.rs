//! Active health checks (`[upstreams.NAME.health_check]`, see
//! [`crate::config`]), run in the background.
//!
//! The checks are Pingora's (`pingora-load-balancing`); one background service runs the
//! due checks of whatever configuration is current, so a reload needs no restart of it.
//! An unhealthy backend gets no traffic; when every backend of an upstream is unhealthy
//! the answer is 503 `no_healthy_upstream` at once. Health is exported as
//! `tollgate_upstream_backend_healthy{upstream,backend}` and in `/admin/status`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::endpoint::CheckHosts;
use crate::metrics::Metrics;
use crate::runtime::{HealthSchedule, Snapshot, Upstream};

// === Service ===

/// Runs the due health checks of the current configuration.
///
/// It sleeps until the next check is due, or until a reload (which may bring checks
/// that are due at once): a gateway without health checks never wakes for them.
pub(crate) struct HealthChecker {
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
    upstream.publish_health(&metrics);
    schedule.finish();
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
            let next_due = schedules.map(HealthSchedule::next_due).min();
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

// === Checks of addresses from names ===

/// A Pingora health check.
pub(crate) type BoxCheck = Box<dyn HealthCheck + Send + Sync>;

/// Makes the check for a (Host, SNI) pair.
type MakeCheck = Box<dyn Fn(&str, &str) -> Option<BoxCheck> + Send + Sync>;

/// The check of an upstream with DNS names: each address is checked with the Host and
/// SNI its requests get (fleet.md §13.6), one Pingora check per such pair.
pub(crate) struct PerHostCheck {
    /// Makes the check for a (Host, SNI) pair.
    build: MakeCheck,
    /// Consecutive results that flip a backend: (to healthy, to unhealthy).
    thresholds: (usize, usize),
    hosts: CheckHosts,
    /// The pair of an address not in `hosts` yet.
    fallback: (String, String),
    /// Checks already made, by pair; cleared when it outgrows the addresses (an SRV
    /// record's port is part of its Host).
    built: std::sync::Mutex<HashMap<(String, String), Arc<dyn HealthCheck + Send + Sync>>>,
}

impl PerHostCheck {
    pub(crate) fn new(
        build: impl Fn(&str, &str) -> Option<BoxCheck> + Send + Sync + 'static,
        thresholds: (usize, usize),
        hosts: CheckHosts,
        fallback: (String, String),
    ) -> Self {
        Self {
            build: Box::new(build),
            thresholds,
            hosts,
            fallback,
            built: Default::default(),
        }
    }
}

#[async_trait]
impl HealthCheck for PerHostCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let pair = self
            .hosts
            .load()
            .get(
                &target
                    .addr
                    .as_inet()
                    .copied()
                    .unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
            )
            .cloned()
            .unwrap_or_else(|| self.fallback.clone());
        let bound = 2 * self.hosts.load().len() + 16;
        let check = {
            let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
            if built.len() > bound {
                built.clear();
            }
            match built.get(&pair) {
                Some(c) => c.clone(),
                None => {
                    let c = (self.build)(&pair.0, &pair.1).ok_or_else(|| {
                        pingora::Error::explain(pingora::ErrorType::InternalError, "no check")
                    })?;
                    let c: Arc<dyn HealthCheck + Send + Sync> = Arc::from(c);
                    built.insert(pair, c.clone());
                    c
                }
            }
        };
        check.check(target).await
    }

    fn health_threshold(&self, success: bool) -> usize {
        let (up, down) = self.thresholds;
        if success {
            up
        } else {
            down
        }
    }
}
