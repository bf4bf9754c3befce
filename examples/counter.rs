//! A policy with state that outlives a reload, a background task, and answers of its
//! own: it counts a route's requests, and answers `GET <path>` itself with the count.
//!
//! ```toml
//! [routes.api.policies.counter]
//! path = "/_count"      # default; answered by the policy, never proxied
//! tick = "1s"           # default; how often the background task ticks
//! ```
//!
//! Every proxied response carries `x-request-count`. The count survives a reload
//! (SIGHUP) that leaves this table as it is, and starts again from zero when the table
//! changes. The `ticks` the answer reports come from the policy's background task,
//! which stops when the state is dropped.
//!
//! ```sh
//! cargo run -p tollgate-bin --example counter -- gateway.toml
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use tollgate::policy::{BuildCtx, BuildError, Flow, Policy, PolicyConfig};
use tollgate::units::ConfigDuration;
use tollgate::{async_trait, GatewayBuilder, Reply, RequestCtx, Session};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterConfig {
    #[serde(default = "default_path")]
    path: String,
    tick: Option<ConfigDuration>,
}

fn default_path() -> String {
    "/_count".into()
}

/// What outlives a reload.
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    ticks: AtomicU64,
}

struct Counter {
    path: String,
    counts: Arc<Counts>,
}

static COUNT: HeaderName = HeaderName::from_static("x-request-count");

impl PolicyConfig for CounterConfig {
    type Policy = Counter;

    fn build(self, cx: &BuildCtx<'_>) -> Result<Counter, BuildError> {
        if !self.path.starts_with('/') {
            return Err(BuildError::field("path", "a path starts with /"));
        }
        let tick = self.tick.map_or(Duration::from_secs(1), |t| t.get());
        if tick < Duration::from_millis(10) {
            return Err(BuildError::field("tick", "tick must be at least 10ms"));
        }
        // the running config's counts when this table is unchanged, else new ones
        let counts = cx.state(Counts::default);
        // started once per state; stops when the state is dropped
        cx.background(&counts, move |counts| async move {
            let mut every = tokio::time::interval(tick);
            loop {
                every.tick().await;
                let Some(c) = counts.upgrade() else { return };
                c.ticks.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Counter {
            path: self.path,
            counts,
        })
    }
}

#[async_trait]
impl Policy for Counter {
    async fn request_filter(
        &self,
        session: &mut Session,
        cx: &mut RequestCtx,
    ) -> tollgate::pingora::Result<Flow> {
        if cx.path == self.path && session.req_header().method == http::Method::GET {
            let body = serde_json::json!({
                "requests": self.counts.requests.load(Ordering::Relaxed),
                "ticks": self.counts.ticks.load(Ordering::Relaxed),
            });
            return Ok(Flow::Respond(Reply::with_body(
                StatusCode::OK,
                HeaderValue::from_static("application/json"),
                body.to_string(),
            )));
        }
        let n = self.counts.requests.fetch_add(1, Ordering::Relaxed) + 1;
        cx.set_response_header(COUNT.clone(), HeaderValue::from(n));
        Ok(Flow::Continue)
    }
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: counter CONFIG.toml");
        return ExitCode::from(2);
    };
    let gateway = match GatewayBuilder::new()
        .policy::<CounterConfig>("counter")
        .build_from_file(&path)
    {
        Ok(gateway) => gateway,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let mut server = gateway.pingora_server(false);
    gateway.add_to(&mut server);
    gateway.run(server);
    ExitCode::SUCCESS
}
