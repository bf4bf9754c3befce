//! A policy of your own, enabled from TOML like a built-in one: only requests that name
//! a known tenant in a header pass, and the upstream learns the verified tenant.
//!
//! ```toml
//! [routes.orders.policies.tenant]
//! header = "x-tenant"            # default
//! allowed = ["acme", "globex"]   # required, non-empty
//! forward_as = "x-tenant-id"     # optional: send the verified tenant upstream under this name
//! ```
//!
//! No tenant header: 401 `unauthorized`. A tenant not in `allowed`: 403 `forbidden`.
//! Both answers are the gateway's usual JSON refusals.
//!
//! ```sh
//! cargo run -p tollgate-bin --example custom_policy -- gateway.toml
//! ```

use std::collections::HashSet;
use std::process::ExitCode;

use http::HeaderName;
use serde::Deserialize;
use tollgate::pingora::http::RequestHeader;
use tollgate::policy::{BuildCtx, BuildError, Flow, Policy, PolicyConfig};
use tollgate::{async_trait, ErrorCode, GatewayBuilder, Reply, RequestCtx, Session};

/// `[routes.X.policies.tenant]`. Unknown keys are errors with line and column.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantConfig {
    #[serde(default = "default_header")]
    header: String,
    allowed: Vec<String>,
    forward_as: Option<String>,
}

fn default_header() -> String {
    "x-tenant".into()
}

/// The built policy: validated once at load, shared by every request of the route.
struct TenantCheck {
    header: HeaderName,
    allowed: HashSet<String>,
    forward_as: Option<HeaderName>,
}

/// What the policy leaves for its later hooks (and later policies) of the same request.
#[derive(Clone)]
struct VerifiedTenant(String);

fn header_name(field: &str, name: &str) -> Result<HeaderName, BuildError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| BuildError::field(field, format!("{name:?} is not a valid header name")))
}

impl PolicyConfig for TenantConfig {
    type Policy = TenantCheck;

    fn build(self, _cx: &BuildCtx<'_>) -> Result<TenantCheck, BuildError> {
        if self.allowed.is_empty() {
            return Err(BuildError::field("allowed", "name at least one tenant"));
        }
        Ok(TenantCheck {
            header: header_name("header", &self.header)?,
            allowed: self.allowed.into_iter().collect(),
            forward_as: self
                .forward_as
                .map(|h| header_name("forward_as", &h))
                .transpose()?,
        })
    }
}

#[async_trait]
impl Policy for TenantCheck {
    async fn request_filter(
        &self,
        session: &mut Session,
        cx: &mut RequestCtx,
    ) -> tollgate::pingora::Result<Flow> {
        let tenant = session
            .req_header()
            .headers
            .get(&self.header)
            .and_then(|v| v.to_str().ok());
        match tenant {
            None => Ok(Flow::Respond(Reply::refuse_with(
                ErrorCode::Unauthorized,
                format!("the {} header names no tenant", self.header),
            ))),
            Some(t) if !self.allowed.contains(t) => Ok(Flow::Respond(Reply::refuse_with(
                ErrorCode::Forbidden,
                "this tenant may not use this route",
            ))),
            Some(t) => {
                cx.extensions.insert(VerifiedTenant(t.to_string()));
                Ok(Flow::Continue)
            }
        }
    }

    fn upstream_request_filter(
        &self,
        cx: &mut RequestCtx,
        req: &mut RequestHeader,
    ) -> tollgate::pingora::Result<()> {
        if let (Some(name), Some(VerifiedTenant(t))) =
            (&self.forward_as, cx.extensions.get::<VerifiedTenant>())
        {
            req.insert_header(name.clone(), t.as_str())?;
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: custom_policy CONFIG.toml");
        return ExitCode::from(2);
    };
    let gateway = match GatewayBuilder::new()
        .policy::<TenantConfig>("tenant")
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
    gateway.run(server); // until SIGTERM (drains), SIGQUIT (hands over, drains) or SIGINT
    ExitCode::SUCCESS
}
