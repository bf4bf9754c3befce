//! A policy's own metric families, in the gateway's Prometheus registry.
//!
//! A policy asks for its families when it is built ([`BuildCtx::metrics`]) and counts
//! with them at run time. A family is registered on first use, once per gateway, and
//! stays across reloads: every instance of a policy (every route, every reload) that
//! asks for the same name gets the same family. Label values must come from config
//! names and fixed sets, never from request data, so the output stays bounded.
//!
//! [`BuildCtx::metrics`]: crate::policy::BuildCtx::metrics

use std::sync::{Arc, OnceLock};

use crate::metrics::Metrics;

/// Where a policy's metric families go. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct PolicyMetrics {
    gateway: Option<Arc<OnceLock<Metrics>>>,
}

/// What a family is: its name, help and label names.
#[derive(Debug, Clone, Copy)]
struct Def {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

/// A family resolved on first use, in the gateway's registry once it has one.
#[derive(Debug)]
struct Lazy<T> {
    gateway: Option<Arc<OnceLock<Metrics>>>,
    def: Def,
    family: OnceLock<Option<T>>,
}

impl<T: Clone> Lazy<T> {
    fn get(&self, make: impl FnOnce(&Metrics, Def) -> Option<T>) -> Option<&T> {
        let metrics = self.gateway.as_ref()?.get()?;
        self.family.get_or_init(|| make(metrics, self.def)).as_ref()
    }
}

impl PolicyMetrics {
    pub(crate) fn new(gateway: Option<Arc<OnceLock<Metrics>>>) -> Self {
        Self { gateway }
    }

    fn lazy<T>(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Lazy<T> {
        Lazy {
            gateway: self.gateway.clone(),
            def: Def { name, help, labels },
            family: OnceLock::new(),
        }
    }

    /// A counter family `name` with these label names.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> CounterVec {
        CounterVec(self.lazy(name, help, labels))
    }

    /// A gauge family `name` with these label names.
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> GaugeVec {
        GaugeVec(self.lazy(name, help, labels))
    }

    /// A histogram family `name` (latency buckets from 0.5 ms to 30 s) with these label
    /// names.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> HistogramVec {
        HistogramVec(self.lazy(name, help, labels))
    }
}

/// A counter family of a policy ([`PolicyMetrics::counter`]).
#[derive(Debug)]
pub struct CounterVec(Lazy<prometheus::IntCounterVec>);

impl CounterVec {
    /// Adds one to the series of these label values (in the family's label order).
    pub fn inc(&self, labels: &[&str]) {
        if let Some(f) = self
            .0
            .get(|m, d| m.policy_counter(d.name, d.help, d.labels))
        {
            if let Ok(c) = f.get_metric_with_label_values(labels) {
                c.inc();
            }
        }
    }
}

/// A gauge family of a policy ([`PolicyMetrics::gauge`]).
#[derive(Debug)]
pub struct GaugeVec(Lazy<prometheus::IntGaugeVec>);

impl GaugeVec {
    /// Sets the series of these label values.
    pub fn set(&self, labels: &[&str], value: i64) {
        if let Some(f) = self.0.get(|m, d| m.policy_gauge(d.name, d.help, d.labels)) {
            if let Ok(g) = f.get_metric_with_label_values(labels) {
                g.set(value);
            }
        }
    }
}

/// A histogram family of a policy ([`PolicyMetrics::histogram`]).
#[derive(Debug)]
pub struct HistogramVec(Lazy<prometheus::HistogramVec>);

impl HistogramVec {
    /// Records `value` in the series of these label values.
    pub fn observe(&self, labels: &[&str], value: f64) {
        if let Some(f) = self
            .0
            .get(|m, d| m.policy_histogram(d.name, d.help, d.labels))
        {
            if let Ok(h) = f.get_metric_with_label_values(labels) {
                h.observe(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_count_in_the_gateway_registry_once_attached_and_are_shared_by_name() {
        let slot = Arc::new(OnceLock::new());
        let pm = PolicyMetrics::new(Some(slot.clone()));
        let a = pm.counter("tollgate_test_total", "A test.", &["route", "result"]);
        a.inc(&["r", "ok"]); // not attached yet: counts nowhere
        let m = Metrics::new();
        let _ = slot.set(m.clone());
        a.inc(&["r", "ok"]);
        // another instance (another route, a reload) asking for the same family
        let b = pm.counter("tollgate_test_total", "A test.", &["route", "result"]);
        b.inc(&["r", "ok"]);
        b.inc(&["r", "wrong", "arity"]); // ignored, never a panic
        let g = pm.gauge("tollgate_test_keys", "Keys.", &["route"]);
        g.set(&["r"], 7);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"tollgate_test_total{result="ok",route="r"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tollgate_test_keys{route="r"} 7"#),
            "{text}"
        );
        // a family of another type under a taken name is refused, not a panic
        pm.gauge("tollgate_test_total", "Clash.", &["route"])
            .set(&["r"], 1);
        // outside a gateway nothing counts
        PolicyMetrics::default()
            .counter("x_total", "x", &[])
            .inc(&[]);
    }
}
