//! Prometheus metrics. Label values come from config names and fixed sets only, never
//! from raw client input, so a flood of random paths or methods cannot grow the output.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use http::Method;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `route` label of requests refused before a route was chosen (and of 405s).
pub(crate) const NO_ROUTE: &str = "_none";

/// Latency buckets in seconds: 0.5 ms .. 30 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A route's `tollgate_request_duration_seconds` and
/// `tollgate_upstream_duration_seconds` series, and its `tollgate_requests_total`
/// series of status 200 for each method, resolved on first use (a label look-up
/// hashes the labels and takes a lock), for the [`Metrics`] that resolved them.
#[derive(Debug, Default)]
pub(crate) struct RouteMetrics {
    histograms: OnceLock<(u64, Histogram, Histogram)>,
    ok: [OnceLock<(u64, IntCounter)>; METHOD_LABELS.len()],
}

/// The `method` label values.
const METHOD_LABELS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER",
];

/// The gateway's metric families, in their own registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Tells these metrics from another gateway's (for [`RouteMetrics`]).
    id: u64,
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_duration: HistogramVec,
    refusals: IntCounterVec,
    reloads: IntCounterVec,
    backend_healthy: IntGaugeVec,
    backends: IntGaugeVec,
    dns_resolutions: IntCounterVec,
    dns_stale: IntGaugeVec,
    log_dropped: IntCounter,
    spans_dropped: IntCounter,
    outbound_requests: IntCounterVec,
    outbound_duration: HistogramVec,
    bodies_passed: IntCounterVec,
    body_buffer_refusals: IntCounterVec,
    cache: CacheMetrics,
    compress: CompressMetrics,
    /// The policies' own families ([`crate::policy::PolicyMetrics`]), by name.
    policy_families: Arc<Mutex<HashMap<&'static str, PolicyFamily>>>,
}

/// The response cache's families (`cache.md` §8).
#[derive(Debug, Clone)]
pub(crate) struct CacheMetrics {
    /// `tollgate_cache_lookups_total{route,status}`.
    pub lookups: IntCounterVec,
    /// `tollgate_cache_not_stored_total{route,reason}`.
    pub not_stored: IntCounterVec,
    /// `tollgate_cache_stored_bytes`.
    pub bytes: IntGauge,
    /// `tollgate_cache_stored_objects`.
    pub objects: IntGauge,
    /// `tollgate_cache_evictions_total`.
    pub evictions: IntCounter,
    /// `tollgate_cache_lock_wait_seconds{route}`.
    pub lock_wait: HistogramVec,
}

impl CacheMetrics {
    fn new(registry: &Registry) -> Self {
        let m = Self {
            lookups: must(IntCounterVec::new(
                Opts::new(
                    "tollgate_cache_lookups_total",
                    "Requests of cached routes by how they were answered: hit, miss, expired, \
                     revalidated, stale or bypass.",
                ),
                &["route", "status"],
            )),
            not_stored: must(IntCounterVec::new(
                Opts::new(
                    "tollgate_cache_not_stored_total",
                    "Looked-up responses that were not stored, by reason.",
                ),
                &["route", "reason"],
            )),
            bytes: must(IntGauge::new(
                "tollgate_cache_stored_bytes",
                "Bytes held by the response store (bodies, headers, keys).",
            )),
            objects: must(IntGauge::new(
                "tollgate_cache_stored_objects",
                "Entries held by the response store (every variant counts).",
            )),
            evictions: must(IntCounter::new(
                "tollgate_cache_evictions_total",
                "Entries removed, or new entries refused, to stay within the store's memory.",
            )),
            lock_wait: must(HistogramVec::new(
                HistogramOpts::new(
                    "tollgate_cache_lock_wait_seconds",
                    "Time requests waited for another request's fetch of the same key.",
                )
                .buckets(BUCKETS.to_vec()),
                &["route"],
            )),
        };
        for c in [
            Box::new(m.lookups.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.not_stored.clone()),
            Box::new(m.bytes.clone()),
            Box::new(m.objects.clone()),
            Box::new(m.evictions.clone()),
            Box::new(m.lock_wait.clone()),
        ] {
            must(registry.register(c));
        }
        m
    }
}

/// Response compression's families (`cache.md` §12.9).
#[derive(Debug, Clone)]
pub(crate) struct CompressMetrics {
    /// `tollgate_compress_responses_total{route,algorithm}`.
    pub responses: IntCounterVec,
    /// `tollgate_compress_bytes_in_total{route,algorithm}`.
    pub bytes_in: IntCounterVec,
    /// `tollgate_compress_bytes_out_total{route,algorithm}`.
    pub bytes_out: IntCounterVec,
    /// `tollgate_compress_skipped_total{route,reason}`.
    pub skipped: IntCounterVec,
    /// `tollgate_compress_active`.
    pub active: IntGauge,
    /// `tollgate_decompress_requests_total{route,outcome}`.
    pub decompressed: IntCounterVec,
}

impl CompressMetrics {
    fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            must(IntCounterVec::new(Opts::new(name, help), labels))
        };
        let m = Self {
            responses: counter(
                "tollgate_compress_responses_total",
                "Responses compressed, by algorithm.",
                &["route", "algorithm"],
            ),
            bytes_in: counter(
                "tollgate_compress_bytes_in_total",
                "Body bytes given to the compressor (the uncompressed size).",
                &["route", "algorithm"],
            ),
            bytes_out: counter(
                "tollgate_compress_bytes_out_total",
                "Compressed body bytes sent to clients (chunk framing not counted).",
                &["route", "algorithm"],
            ),
            skipped: counter(
                "tollgate_compress_skipped_total",
                "Responses of routes that compress that were sent uncompressed, by reason.",
                &["route", "reason"],
            ),
            active: must(IntGauge::new(
                "tollgate_compress_active",
                "Responses being compressed now; never above compress_streams.",
            )),
            decompressed: counter(
                "tollgate_decompress_requests_total",
                "Requests with an encoded body on routes that decode them, by outcome.",
                &["route", "outcome"],
            ),
        };
        for c in [
            Box::new(m.responses.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.bytes_in.clone()),
            Box::new(m.bytes_out.clone()),
            Box::new(m.skipped.clone()),
            Box::new(m.active.clone()),
            Box::new(m.decompressed.clone()),
        ] {
            must(registry.register(c));
        }
        m
    }
}

/// A family a policy registered.
#[derive(Debug, Clone)]
enum PolicyFamily {
    Counter(IntCounterVec),
    Gauge(IntGaugeVec),
    Histogram(HistogramVec),
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure here is a programming error caught by tests.
    r.unwrap_or_else(|e| panic!("invalid metric definition: {e}"))
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = must(IntCounterVec::new(
            Opts::new(
                "tollgate_requests_total",
                "Requests answered, by route, method and status.",
            ),
            &["route", "method", "status"],
        ));
        let duration = must(HistogramVec::new(
            HistogramOpts::new(
                "tollgate_request_duration_seconds",
                "Time from request head to the end of logging.",
            )
            .buckets(BUCKETS.to_vec()),
            &["route"],
        ));
        let upstream_duration = must(HistogramVec::new(
            HistogramOpts::new(
                "tollgate_upstream_duration_seconds",
                "Time from choosing a backend to its response header.",
            )
            .buckets(BUCKETS.to_vec()),
            &["upstream"],
        ));
        let refusals = must(IntCounterVec::new(
            Opts::new(
                "tollgate_refusals_total",
                "Responses made by the gateway itself, by route and error code.",
            ),
            &["route", "reason"],
        ));
        let reloads = must(IntCounterVec::new(
            Opts::new(
                "tollgate_config_reloads_total",
                "Configuration reloads by result.",
            ),
            &["result"],
        ));
        let backend_healthy = must(IntGaugeVec::new(
            Opts::new(
                "tollgate_upstream_backend_healthy",
                "1 when the backend receives traffic, 0 when unhealthy.",
            ),
            &["upstream", "backend"],
        ));
        let backends = must(IntGaugeVec::new(
            Opts::new(
                "tollgate_upstream_backends",
                "Backends in force, healthy or not (addresses of DNS names included).",
            ),
            &["upstream"],
        ));
        let dns_resolutions = must(IntCounterVec::new(
            Opts::new(
                "tollgate_dns_resolutions_total",
                "Lookups of the upstream's DNS names, by result.",
            ),
            &["upstream", "result"],
        ));
        let dns_stale = must(IntGaugeVec::new(
            Opts::new(
                "tollgate_dns_stale_names",
                "The upstream's names serving kept addresses after a failed lookup.",
            ),
            &["upstream"],
        ));
        let outbound_requests = must(IntCounterVec::new(
            Opts::new(
                "tollgate_outbound_requests_total",
                "Calls policies made to other services, by policy and status \
                 (the HTTP status, or timeout or error).",
            ),
            &["policy", "status"],
        ));
        let outbound_duration = must(HistogramVec::new(
            HistogramOpts::new(
                "tollgate_outbound_request_duration_seconds",
                "Time of a policy's call to another service, to its response's last byte.",
            )
            .buckets(BUCKETS.to_vec()),
            &["policy"],
        ));
        let bodies_passed = must(IntCounterVec::new(
            Opts::new(
                "tollgate_response_bodies_passed_total",
                "Responses a policy wanted whole that were passed on as they came: \
                 too_large (over the largest limit of the route's policies) or no_room \
                 (body_buffer_total was full).",
            ),
            &["route", "reason"],
        ));
        let body_buffer_refusals = must(IntCounterVec::new(
            Opts::new(
                "tollgate_body_buffer_refusals_total",
                "Requests refused because body_buffer_total was full (also counted as \
                 refusals with reason overloaded).",
            ),
            &["route"],
        ));
        let build = must(IntGaugeVec::new(
            Opts::new("tollgate_build_info", "Build information; always 1."),
            &["version"],
        ));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let log_dropped = must(IntCounter::new(
            "tollgate_access_log_dropped_total",
            "Access log lines dropped because the writer could not keep up.",
        ));
        let spans_dropped = must(IntCounter::new(
            "tollgate_trace_spans_dropped_total",
            "Spans not delivered to the OTLP collector (queue full, collector down or slow).",
        ));
        let cache = CacheMetrics::new(&registry);
        let compress = CompressMetrics::new(&registry);
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(refusals.clone()),
            Box::new(reloads.clone()),
            Box::new(backend_healthy.clone()),
            Box::new(backends.clone()),
            Box::new(dns_resolutions.clone()),
            Box::new(dns_stale.clone()),
            Box::new(build),
            Box::new(log_dropped.clone()),
            Box::new(spans_dropped.clone()),
            Box::new(outbound_requests.clone()),
            Box::new(outbound_duration.clone()),
            Box::new(bodies_passed.clone()),
            Box::new(body_buffer_refusals.clone()),
        ] {
            must(registry.register(c));
        }
        // both results exist from the start, so a scrape sees 0 rather than nothing
        reloads.with_label_values(&["ok"]);
        reloads.with_label_values(&["error"]);
        static IDS: AtomicU64 = AtomicU64::new(0);
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            registry,
            requests,
            duration,
            upstream_duration,
            refusals,
            reloads,
            backend_healthy,
            backends,
            dns_resolutions,
            dns_stale,
            log_dropped,
            spans_dropped,
            outbound_requests,
            outbound_duration,
            bodies_passed,
            body_buffer_refusals,
            cache,
            compress,
            policy_families: Arc::default(),
        }
    }

    /// The response cache's families (`cache.md` §8).
    pub(crate) fn cache(&self) -> &CacheMetrics {
        &self.cache
    }

    /// Response compression's families (`cache.md` §12.9).
    pub(crate) fn compress(&self) -> &CompressMetrics {
        &self.compress
    }

    /// Counts a response passed on as it came although a policy wanted it whole.
    pub(crate) fn response_body_passed(&self, route: &str, reason: &str) {
        self.bodies_passed.with_label_values(&[route, reason]).inc();
    }

    /// Counts a request refused because the body buffers were full.
    pub(crate) fn body_buffer_refusal(&self, route: &str) {
        self.body_buffer_refusals.with_label_values(&[route]).inc();
    }

    /// Records one outbound call of `policy`.
    pub(crate) fn outbound(&self, policy: &str, status: &str, seconds: f64) {
        self.outbound_requests
            .with_label_values(&[policy, status])
            .inc();
        self.outbound_duration
            .with_label_values(&[policy])
            .observe(seconds);
    }

    /// `tollgate_access_log_dropped_total`.
    pub(crate) fn access_log_dropped(&self) -> &IntCounter {
        &self.log_dropped
    }

    /// `tollgate_trace_spans_dropped_total`.
    pub(crate) fn spans_dropped(&self) -> &IntCounter {
        &self.spans_dropped
    }

    /// Records one finished request.
    pub(crate) fn observe_request(&self, route: &str, method: &Method, status: u16, seconds: f64) {
        let mut buf = [0u8; 3];
        self.requests
            .with_label_values(&[route, method_label(method), status_label(status, &mut buf)])
            .inc();
        self.duration.with_label_values(&[route]).observe(seconds);
    }

    /// Records one finished request of `route` (to `upstream`), with the time the
    /// upstream took to answer if it did.
    pub(crate) fn observe_routed(
        &self,
        (route, upstream, histograms): (&str, &str, &RouteMetrics),
        method: &Method,
        status: u16,
        seconds: f64,
        upstream_seconds: Option<f64>,
    ) {
        let method = method_index(method);
        let ok = (status == 200).then(|| {
            histograms.ok[method].get_or_init(|| {
                let labels = [route, METHOD_LABELS[method], "200"];
                (self.id, self.requests.with_label_values(&labels))
            })
        });
        match ok {
            Some((id, counter)) if *id == self.id => counter.inc(),
            _ => {
                let mut buf = [0u8; 3];
                let status = status_label(status, &mut buf);
                let labels = [route, METHOD_LABELS[method], status];
                self.requests.with_label_values(&labels).inc();
            }
        }
        let (id, duration, upstream_duration) = histograms.histograms.get_or_init(|| {
            (
                self.id,
                self.duration.with_label_values(&[route]),
                self.upstream_duration.with_label_values(&[upstream]),
            )
        });
        if *id == self.id {
            duration.observe(seconds);
            if let Some(s) = upstream_seconds {
                upstream_duration.observe(s);
            }
        } else {
            // the route's handles belong to another gateway's metrics
            self.duration.with_label_values(&[route]).observe(seconds);
            if let Some(s) = upstream_seconds {
                self.observe_upstream(upstream, s);
            }
        }
    }

    /// Records the time an upstream took to answer.
    pub(crate) fn observe_upstream(&self, upstream: &str, seconds: f64) {
        self.upstream_duration
            .with_label_values(&[upstream])
            .observe(seconds);
    }

    /// Records a refusal made by the gateway.
    pub(crate) fn refusal(&self, route: &str, reason: &str) {
        self.refusals.with_label_values(&[route, reason]).inc();
    }

    /// Sets a backend's health gauge. Labels are config names and configured addresses.
    pub(crate) fn backend_health(&self, upstream: &str, backend: &str, healthy: bool) {
        self.backend_healthy
            .with_label_values(&[upstream, backend])
            .set(i64::from(healthy));
    }

    /// Removes a backend's series (its address left the upstream).
    pub(crate) fn forget_backend(&self, upstream: &str, backend: &str) {
        let _ = self
            .backend_healthy
            .remove_label_values(&[upstream, backend]);
    }

    /// Removes an upstream's own series (a reload took it away).
    pub(crate) fn forget_upstream(&self, upstream: &str) {
        let _ = self.backends.remove_label_values(&[upstream]);
        let _ = self.dns_stale.remove_label_values(&[upstream]);
    }

    /// Sets `tollgate_upstream_backends`.
    pub(crate) fn upstream_backends(&self, upstream: &str, n: usize) {
        self.backends
            .with_label_values(&[upstream])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts one lookup of one of the upstream's names.
    pub(crate) fn dns_resolution(&self, upstream: &str, result: &str) {
        self.dns_resolutions
            .with_label_values(&[upstream, result])
            .inc();
    }

    /// Sets `tollgate_dns_stale_names`.
    pub(crate) fn dns_stale(&self, upstream: &str, n: usize) {
        self.dns_stale
            .with_label_values(&[upstream])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Records a configuration reload.
    pub(crate) fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The policy family `name`, registered on first use; `None` when the name is
    /// taken by a family of another kind or cannot be registered (logged).
    fn policy_family(
        &self,
        name: &'static str,
        pick: impl Fn(&PolicyFamily) -> bool,
        make: impl FnOnce() -> prometheus::Result<PolicyFamily>,
    ) -> Option<PolicyFamily> {
        let mut families = self
            .policy_families
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = families.get(name) {
            return pick(f).then(|| f.clone());
        }
        let made = make().and_then(|f| {
            let c: Box<dyn prometheus::core::Collector> = match &f {
                PolicyFamily::Counter(c) => Box::new(c.clone()),
                PolicyFamily::Gauge(g) => Box::new(g.clone()),
                PolicyFamily::Histogram(h) => Box::new(h.clone()),
            };
            self.registry.register(c).map(|()| f)
        });
        match made {
            Ok(f) => {
                families.insert(name, f.clone());
                Some(f)
            }
            Err(e) => {
                tracing::error!("metric family {name} cannot be registered: {e}");
                None
            }
        }
    }

    /// A policy's counter family (see [`crate::policy::PolicyMetrics`]).
    pub(crate) fn policy_counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[&str],
    ) -> Option<IntCounterVec> {
        let f = self.policy_family(
            name,
            |f| matches!(f, PolicyFamily::Counter(_)),
            || IntCounterVec::new(Opts::new(name, help), labels).map(PolicyFamily::Counter),
        );
        match f {
            Some(PolicyFamily::Counter(c)) => Some(c),
            _ => None,
        }
    }

    /// A policy's gauge family.
    pub(crate) fn policy_gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[&str],
    ) -> Option<IntGaugeVec> {
        let f = self.policy_family(
            name,
            |f| matches!(f, PolicyFamily::Gauge(_)),
            || IntGaugeVec::new(Opts::new(name, help), labels).map(PolicyFamily::Gauge),
        );
        match f {
            Some(PolicyFamily::Gauge(g)) => Some(g),
            _ => None,
        }
    }

    /// A policy's histogram family, with the gateway's latency buckets.
    pub(crate) fn policy_histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[&str],
    ) -> Option<HistogramVec> {
        let f = self.policy_family(
            name,
            |f| matches!(f, PolicyFamily::Histogram(_)),
            || {
                let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
                HistogramVec::new(opts, labels).map(PolicyFamily::Histogram)
            },
        );
        match f {
            Some(PolicyFamily::Histogram(h)) => Some(h),
            _ => None,
        }
    }

    /// The Prometheus registry, to add families of your own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format 0.0.4.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("encoding metrics failed: {e}");
        }
        out
    }
}

/// Standard methods keep their name; anything else is `OTHER`.
pub(crate) fn method_label(m: &Method) -> &'static str {
    METHOD_LABELS[method_index(m)]
}

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => 9,
    }
}

pub(crate) fn status_label(status: u16, buf: &mut [u8; 3]) -> &str {
    let s = status.min(999);
    buf[0] = b'0' + (s / 100) as u8;
    buf[1] = b'0' + (s / 10 % 10) as u8;
    buf[2] = b'0' + (s % 10) as u8;
    std::str::from_utf8(buf).unwrap_or("000")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_with_config_labels() {
        let m = Metrics::new();
        m.observe_request("orders", &Method::GET, 200, 0.01);
        m.observe_request(NO_ROUTE, &Method::from_bytes(b"BREW").unwrap(), 404, 0.001);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"tollgate_requests_total{method="GET",route="orders",status="200"} 1"#),
            "{text}"
        );
        assert!(text
            .contains(r#"tollgate_requests_total{method="OTHER",route="_none",status="404"} 1"#));
        assert!(text.contains("tollgate_request_duration_seconds_bucket"));
        assert!(text.contains(r#"tollgate_config_reloads_total{result="ok"} 0"#));
        assert!(text.contains(&format!(
            "tollgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }

    #[test]
    fn route_handles_count_for_the_gateway_that_observes() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let h = RouteMetrics::default();
        a.observe_routed(("r", "u", &h), &Method::GET, 200, 0.01, Some(0.005));
        a.observe_routed(("r", "u", &h), &Method::GET, 200, 0.01, None);
        a.observe_routed(("r", "u", &h), &Method::GET, 404, 0.01, None);
        // another gateway's metrics with the same (already resolved) route
        b.observe_routed(("r", "u", &h), &Method::POST, 201, 0.01, Some(0.005));
        b.observe_routed(("r", "u", &h), &Method::GET, 200, 0.01, None);
        let text = |m: &Metrics| String::from_utf8(m.render()).unwrap();
        let (ta, tb) = (text(&a), text(&b));
        for (text, line) in [
            (
                &ta,
                r#"tollgate_request_duration_seconds_count{route="r"} 3"#,
            ),
            (
                &ta,
                r#"tollgate_upstream_duration_seconds_count{upstream="u"} 1"#,
            ),
            (
                &ta,
                r#"tollgate_requests_total{method="GET",route="r",status="200"} 2"#,
            ),
            (
                &ta,
                r#"tollgate_requests_total{method="GET",route="r",status="404"} 1"#,
            ),
            (
                &tb,
                r#"tollgate_request_duration_seconds_count{route="r"} 2"#,
            ),
            (
                &tb,
                r#"tollgate_upstream_duration_seconds_count{upstream="u"} 1"#,
            ),
            (
                &tb,
                r#"tollgate_requests_total{method="POST",route="r",status="201"} 1"#,
            ),
            (
                &tb,
                r#"tollgate_requests_total{method="GET",route="r",status="200"} 1"#,
            ),
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
    }

    #[test]
    fn status_labels_are_three_digits() {
        let mut b = [0u8; 3];
        assert_eq!(status_label(200, &mut b), "200");
        assert_eq!(status_label(5, &mut b), "005");
    }
}
