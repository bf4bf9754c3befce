//! OTLP/gRPC export of the gateway's spans (`[server.tracing]`).
//!
//! ```toml
//! [server.tracing]
//! otlp_endpoint = "http://127.0.0.1:4317"   # an OTLP/gRPC collector (plain HTTP/2)
//! service_name = "tollgate"                 # default
//! timeout = "2s"                            # per export call; default 2s
//! ```
//!
//! One server span per sampled request is handed to a bounded queue in the logging
//! phase; a dedicated thread batches the queue and sends it to the collector. A full
//! queue or a collector that is down or slow drops spans (counted in
//! `tollgate_trace_spans_dropped_total`); it never delays or fails a request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prometheus::IntCounter;
use tokio::sync::mpsc;

use crate::trace::TraceContext;

/// Spans waiting for export; more are dropped.
const QUEUE: usize = 8192;
/// Spans per export call.
const BATCH: usize = 512;
/// How long a partial batch waits for more spans.
const LINGER: Duration = Duration::from_millis(200);

/// `[server.tracing]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TracingSettings {
    /// The collector, `http://HOST:PORT`.
    pub endpoint: String,
    /// `service.name` of the exported resource. Default: `tollgate`.
    pub service_name: String,
    /// Deadline of one export call. Default: 2 s.
    pub timeout: Duration,
}

impl TracingSettings {
    /// Checks the endpoint: an absolute `http://` URI with a host.
    ///
    /// # Errors
    /// A message saying what is wrong with it.
    pub(crate) fn check_endpoint(endpoint: &str) -> Result<(), String> {
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| format!("invalid collector URI {endpoint:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") if uri.host().is_some() => Ok(()),
            Some("https") => Err(
                "https collectors are not supported; point it at a collector (or agent) over http://"
                    .into(),
            ),
            _ => Err(format!(
                "the collector must be an http://HOST:PORT URI, not {endpoint:?}"
            )),
        }
    }
}

/// What the gateway knows of a finished request, for its span.
#[derive(Debug)]
pub(crate) struct FinishedRequest<'a> {
    pub trace: &'a TraceContext,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub backend: Option<String>,
    pub consumer: Option<&'a str>,
    pub client_ip: Option<String>,
    pub error: Option<&'a str>,
    pub elapsed: Duration,
}

/// Hands spans to the export thread.
#[derive(Debug, Clone)]
pub(crate) struct SpanExporter {
    tx: mpsc::Sender<Span>,
    dropped: IntCounter,
}

impl SpanExporter {
    /// Starts the export thread. `dropped` counts spans that never reached the collector.
    ///
    /// # Errors
    /// The thread or its runtime cannot be started, or the endpoint is invalid.
    pub(crate) fn start(settings: &TracingSettings, dropped: IntCounter) -> std::io::Result<Self> {
        let endpoint = tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
            .map_err(std::io::Error::other)?
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let resource = Resource {
            attributes: vec![kv("service.name", str_value(&settings.service_name))],
            ..Default::default()
        };
        let counter = dropped.clone();
        std::thread::Builder::new()
            .name("tollgate-otlp".into())
            .spawn(move || {
                rt.block_on(export_loop(endpoint, resource, rx, counter));
            })?;
        Ok(Self { tx, dropped })
    }

    /// Queues the span of a finished, sampled request; drops it when the queue is full.
    pub(crate) fn record(&self, r: &FinishedRequest<'_>) {
        if !r.trace.sampled() {
            return;
        }
        if self.tx.try_send(span(r)).is_err() {
            self.dropped.inc();
        }
    }
}

async fn export_loop(
    endpoint: tonic::transport::Endpoint,
    resource: Resource,
    mut rx: mpsc::Receiver<Span>,
    dropped: IntCounter,
) {
    let mut client = TraceServiceClient::new(endpoint.connect_lazy());
    let mut failing = false;
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => batch.push(s),
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        let n = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "tollgate".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: std::mem::take(&mut batch),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        match client.export(request).await {
            Ok(_) => {
                if failing {
                    tracing::info!("span export to the collector works again");
                    failing = false;
                }
            }
            Err(e) => {
                dropped.inc_by(n);
                if !failing {
                    tracing::warn!("span export failed, dropping spans until it works: {e}");
                    failing = true;
                }
            }
        }
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn str_value(s: &str) -> any_value::Value {
    any_value::Value::StringValue(s.to_string())
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The server span of one request, in OpenTelemetry's HTTP conventions.
fn span(r: &FinishedRequest<'_>) -> Span {
    let end = SystemTime::now();
    let start = end.checked_sub(r.elapsed).unwrap_or(end);
    let mut attributes = vec![
        kv("http.request.method", str_value(r.method)),
        kv("url.path", str_value(r.path)),
        kv(
            "http.response.status_code",
            any_value::Value::IntValue(i64::from(r.status)),
        ),
    ];
    let optional = [
        ("tollgate.route", r.route.map(str::to_string)),
        ("tollgate.upstream", r.upstream.map(str::to_string)),
        ("server.address", r.backend.clone()),
        ("tollgate.consumer", r.consumer.map(str::to_string)),
        ("client.address", r.client_ip.clone()),
        ("error.type", r.error.map(str::to_string)),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            attributes.push(kv(k, any_value::Value::StringValue(v)));
        }
    }
    let name = match r.route {
        Some(route) => format!("{} {route}", r.method),
        None => r.method.to_string(),
    };
    Span {
        trace_id: r.trace.trace_id_bytes().to_vec(),
        span_id: r.trace.span_id_bytes().to_vec(),
        parent_span_id: r
            .trace
            .parent_id_bytes()
            .map(|b| b.to_vec())
            .unwrap_or_default(),
        flags: 0x100 | u32::from(r.trace.sampled()), // has-is-remote flag, sampled
        name,
        kind: SpanKind::Server as i32,
        start_time_unix_nano: unix_nanos(start),
        end_time_unix_nano: unix_nanos(end),
        attributes,
        status: Some(Status {
            code: if r.status >= 500 {
                StatusCode::Error as i32
            } else {
                StatusCode::Unset as i32
            },
            message: String::new(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_collectors_are_accepted() {
        assert!(TracingSettings::check_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(TracingSettings::check_endpoint("http://collector:4317").is_ok());
        for bad in [
            "https://c:4317",
            "127.0.0.1:4317",
            "ftp://c",
            "http://",
            "not a uri",
        ] {
            assert!(TracingSettings::check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_span_carries_the_trace_its_parent_and_the_request() {
        let t =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let s = span(&FinishedRequest {
            trace: &t,
            method: "GET",
            path: "/orders/7",
            status: 502,
            route: Some("orders"),
            upstream: Some("orders"),
            backend: Some("127.0.0.1:9001".into()),
            consumer: None,
            client_ip: Some("10.0.0.1".into()),
            error: Some("bad_gateway"),
            elapsed: Duration::from_millis(5),
        });
        assert_eq!(s.trace_id, t.trace_id_bytes());
        assert_eq!(
            s.parent_span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(s.span_id, t.span_id_bytes());
        assert_eq!(s.name, "GET orders");
        assert_eq!(s.status.unwrap().code, StatusCode::Error as i32);
        assert!(s.end_time_unix_nano - s.start_time_unix_nano >= 5_000_000);
        let keys: Vec<_> = s.attributes.iter().map(|a| a.key.as_str()).collect();
        assert!(keys.contains(&"error.type") && !keys.contains(&"tollgate.consumer"));
    }
}
