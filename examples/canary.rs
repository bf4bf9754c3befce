//! A policy that chooses the upstream: a canary split. Requests that carry a header go
//! to the canary upstream, and a share of the rest too; or every request of a tenant
//! goes to one backend.
//!
//! ```toml
//! [routes.shop.policies.canary]
//! upstream = "shop-canary"     # required: a configured upstream (`check` says if not)
//! header = "x-canary"          # default: a request with `x-canary: 1` goes there
//! percent = 5                  # default 0: this share of the other requests too
//! pin_header = "x-tenant"      # optional: with `pins`, a tenant's requests go to one backend
//! pins = { acme = "10.0.0.7:8080" }   # tenant = backend of `upstream`
//! ```
//!
//! The chosen upstream's balancing, health checks, passive health and retries apply;
//! when it has no healthy backend the client gets 503 `no_healthy_upstream`.
//!
//! ```sh
//! cargo run -p tollgate-bin --example canary -- gateway.toml
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;

use http::HeaderName;
use serde::Deserialize;
use tollgate::policy::{BuildCtx, BuildError, Policy, PolicyConfig, Target, UpstreamName};
use tollgate::{async_trait, GatewayBuilder, RequestCtx, Session};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryConfig {
    upstream: String,
    #[serde(default = "default_header")]
    header: String,
    #[serde(default)]
    percent: u8,
    pin_header: Option<String>,
    #[serde(default)]
    pins: HashMap<String, String>,
}

fn default_header() -> String {
    "x-canary".into()
}

struct Canary {
    upstream: UpstreamName,
    header: HeaderName,
    percent: u8,
    pin_header: Option<HeaderName>,
    pins: HashMap<String, SocketAddr>,
}

fn header_name(field: &str, name: &str) -> Result<HeaderName, BuildError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| BuildError::field(field, format!("{name:?} is not a valid header name")))
}

impl PolicyConfig for CanaryConfig {
    type Policy = Canary;

    fn build(self, cx: &BuildCtx<'_>) -> Result<Canary, BuildError> {
        if self.percent > 100 {
            return Err(BuildError::field("percent", "percent must be 0 to 100"));
        }
        if !self.pins.is_empty() && self.pin_header.is_none() {
            return Err(BuildError::field("pins", "pins need a pin_header"));
        }
        let pins = self
            .pins
            .into_iter()
            .map(|(tenant, addr)| match addr.parse() {
                Ok(a) => Ok((tenant, a)),
                Err(_) => Err(BuildError::field(
                    "pins",
                    format!("{addr:?} is not an IP:PORT backend address"),
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(Canary {
            // checked against the configuration's upstreams, reported at `upstream`
            upstream: cx.upstream("upstream", &self.upstream)?,
            header: header_name("header", &self.header)?,
            percent: self.percent,
            pin_header: self
                .pin_header
                .map(|h| header_name("pin_header", &h))
                .transpose()?,
            pins,
        })
    }
}

#[async_trait]
impl Policy for Canary {
    fn upstream_peer(
        &self,
        session: &Session,
        _cx: &mut RequestCtx,
    ) -> tollgate::pingora::Result<Option<Target>> {
        let headers = &session.req_header().headers;
        let pinned = self
            .pin_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok())
            .and_then(|tenant| self.pins.get(tenant));
        if let Some(addr) = pinned {
            return Ok(Some(Target::Backend(self.upstream.clone(), *addr)));
        }
        let asked = headers
            .get(&self.header)
            .is_some_and(|v| v.as_bytes() == b"1");
        let drawn = self.percent > 0 && fastrand::u8(0..100) < self.percent;
        Ok((asked || drawn).then(|| Target::Upstream(self.upstream.clone())))
    }
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: canary CONFIG.toml");
        return ExitCode::from(2);
    };
    let gateway = match GatewayBuilder::new()
        .policy::<CanaryConfig>("canary")
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
