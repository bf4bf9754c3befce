//! The policy extension point: one trait for built-in and user policies alike.
//!
//! A policy is built once from its TOML table (through its [`PolicyConfig`]) and shared by
//! every request of the routes that enable it. Its hooks are named after the Pingora
//! phases they run in; each does nothing by default.
//!
//! ```
//! use tollgate::policy::{BuildCtx, BuildError, Flow, Policy, PolicyConfig};
//! use tollgate::{async_trait, ErrorCode, Reply, RequestCtx, Session};
//!
//! /// Refuses requests without an `x-tenant` header.
//! struct RequireTenant;
//!
//! #[async_trait]
//! impl Policy for RequireTenant {
//!     async fn request_filter(&self, session: &mut Session, _cx: &mut RequestCtx)
//!         -> pingora::Result<Flow> {
//!         if session.req_header().headers.contains_key("x-tenant") {
//!             Ok(Flow::Continue)
//!         } else {
//!             Ok(Flow::Respond(Reply::refuse_with(ErrorCode::Forbidden, "missing x-tenant")))
//!         }
//!     }
//! }
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct RequireTenantConfig {}
//!
//! impl PolicyConfig for RequireTenantConfig {
//!     type Policy = RequireTenant;
//!     fn build(self, _cx: &BuildCtx<'_>) -> Result<RequireTenant, BuildError> {
//!         Ok(RequireTenant)
//!     }
//! }
//!
//! let mut registry = tollgate::policy::Registry::with_builtins();
//! registry.register::<RequireTenantConfig>("require_tenant");
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;
use serde::de::DeserializeOwned;
use toml::de::DeValue;
use toml::Spanned;

use crate::context::ChainProgress;

pub mod answers;
pub(crate) mod body;
pub mod identity;
pub mod metrics;
pub(crate) mod outbound;
pub(crate) mod state;
pub mod template;
mod upstream;
pub use body::{BodyBuffer, Hold, NotHeld};
pub use metrics::{CounterVec, GaugeVec, HistogramVec, PolicyMetrics};
pub use outbound::{Call, HttpClient, OutboundError, Truncated};
pub use upstream::{Peer, Target, UpstreamName};

pub use crate::client_cert::{ClientCertificate, San};
pub use crate::consumer::{CertMatch, Consumer, Consumers, PasswordHash};
pub use crate::context::RequestCtx;
pub use crate::reply::{CustomCode, CustomCodeError, ErrorCode, Reply};
pub use crate::request_key::RequestKey;
pub use crate::store::{RedisStore, StoreError};
pub use crate::trace::TraceContext;
pub use bytes::Bytes;
pub use pingora::proxy::Session;

/// What a policy decided about the request.
#[derive(Debug)]
#[must_use]
pub enum Flow {
    /// Run the next policy, then proxy upstream.
    Continue,
    /// Stop and send this response (a 401, a 429, a preflight's 204…).
    Respond(Reply),
}

/// Where a policy runs in a route's chain. Policies run in stage order, not in file
/// order; within a stage, in the order of their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// `ip_restriction`.
    Access,
    /// `cors` (preflight answers).
    Cors,
    /// `mtls_auth`, `key_auth`, `basic_auth`, `jwt_auth`, `oauth2_introspection` (in
    /// that order, then other authentication policies by name): the first one that
    /// continues authenticates and the later ones are skipped. When none does, the
    /// answer is a 503 `identity_unavailable` of one of them, else a 403, else the
    /// `anonymous` consumer one offered ([`RequestCtx::offer_anonymous`]), else one 401
    /// with each scheme's challenge.
    Authentication,
    /// `acl`, then `ext_authz`.
    Authorization,
    /// User policies, unless they say otherwise.
    Custom,
    /// `rate_limit`, `concurrency_limit`.
    Traffic,
    /// `body_limit`, then `xml_json`, `validate` and `request_body` (in that order,
    /// then other policies of the stage by name). Response hooks run `validate`,
    /// `response_body`, then `xml_json`.
    Body,
    /// `request_headers` / `response_headers`.
    Transform,
}

/// A request/response policy attached to routes.
///
/// Hooks run in the matched route's chain, in [`Stage`] order; see `docs/architecture.md`.
/// A rejection is not an error: return [`Flow::Respond`]. An `Err` means the gateway
/// itself failed and the client gets a 500.
#[async_trait]
pub trait Policy: Send + Sync + 'static {
    /// Where the policy runs in the chain. Default: [`Stage::Custom`].
    fn stage(&self) -> Stage {
        Stage::Custom
    }

    /// Runs in Pingora's `request_filter` phase, after routing. By default continues.
    async fn request_filter(&self, session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        let _ = (session, cx);
        Ok(Flow::Continue)
    }

    /// Runs in `request_body_filter` for each piece of the request body as it streams
    /// to the upstream (never buffered whole). An `Err` aborts the request. By default
    /// does nothing.
    fn request_body_filter(
        &self,
        cx: &mut RequestCtx,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<()> {
        let _ = (cx, body, end_of_stream);
        Ok(())
    }

    /// The largest request body this policy needs whole before the request goes
    /// upstream; `None` (the default): it never does. Asked once, when the chain is
    /// built. See [`Policy::request_body`].
    fn request_body_limit(&self) -> Option<usize> {
        None
    }

    /// Whether this request's body is one this policy reads whole (its media type, its
    /// encoding): asked after its `request_filter` continued, when
    /// [`Policy::request_body_limit`] is some. `false`: [`Policy::request_body`] is
    /// not called, and a body no policy of the route wants streams unbuffered. By
    /// default every body is.
    fn wants_request_body(&self, session: &Session, cx: &RequestCtx) -> bool {
        let _ = (session, cx);
        true
    }

    /// Runs right after this policy's `request_filter` continued, with the whole
    /// request body, when [`Policy::request_body_limit`] says so. The gateway reads the
    /// body once for every policy of the route that needs it (up to the largest
    /// limit; a larger body is 413 `payload_too_large`, as is one over this policy's
    /// own limit), within `[server.limits] body_buffer_total` (past it, 503
    /// `overloaded`), and sends upstream what the last policy left in `body`, with its
    /// `Content-Length`. Replace `*body` to change it; refuse with `Flow::Respond`.
    /// Later hooks read it with [`RequestCtx::request_body`]. A route without such a
    /// policy streams its bodies and holds none.
    async fn request_body(
        &self,
        session: &mut Session,
        cx: &mut RequestCtx,
        body: &mut Bytes,
    ) -> Result<Flow> {
        let _ = (session, cx, body);
        Ok(Flow::Continue)
    }

    /// The largest request body this policy lets through, for a policy that limits
    /// bodies (`body_limit`); `None` (the default): it does not. When another policy
    /// of the route needs the body whole (an earlier one, such as `ext_authz` with
    /// `include_body`), the gateway reads at most the smallest such limit: a larger body
    /// is 413 `payload_too_large` before any policy sees it.
    fn request_body_max(&self) -> Option<usize> {
        None
    }

    /// The route's caching, for a policy that declares it (`cache`): the gateway then
    /// looks requests up in its store before they go upstream and stores what comes
    /// back, as the [`CacheRules`](crate::cache::CacheRules) say. The first policy of
    /// the chain that returns some decides. `None` (the default): it does not.
    fn cache_rules(&self) -> Option<&crate::cache::CacheRules> {
        None
    }

    /// The route's response compression (and request decompression), for a policy
    /// that declares it (`compress`): the gateway compresses responses as the last step
    /// before the client, as the [`CompressRules`](crate::compress::CompressRules) say.
    /// The first policy of the chain that returns some decides. `None` (the default):
    /// it does not.
    fn compress_rules(&self) -> Option<&crate::compress::CompressRules> {
        None
    }

    /// The largest response body this policy needs whole; `None` (the default): it
    /// never does. See [`Policy::response_body`].
    fn response_body_limit(&self) -> Option<usize> {
        None
    }

    /// Runs once the whole response body has arrived, before any of it is sent, when
    /// [`Policy::response_body_limit`] says so: replace `*body` to change what the
    /// client gets (`Content-Length` is dropped, the body goes chunked). A response
    /// larger than the largest limit of the route's policies, or one that cannot be
    /// held within `[server.limits] body_buffer_total`, is passed on as it comes,
    /// never cut, and counted in `tollgate_response_bodies_passed_total`; this hook is
    /// then not called. The response head has been sent already: edit headers in
    /// [`Policy::response_filter`]. Not called for the gateway's own answers.
    fn response_body(&self, cx: &mut RequestCtx, body: &mut Bytes) -> Result<()> {
        let _ = (cx, body);
        Ok(())
    }

    /// Runs in Pingora's `upstream_peer` phase, once per request, before the first
    /// try: return a [`Target`] to send the request elsewhere than its route's
    /// upstream (a canary, a tenant's own backend, a model provider). The first policy
    /// of the chain that returns one decides; later ones are not asked. Retries stay
    /// within the choice. By default leaves the choice to the route.
    ///
    /// Upstreams are named by an [`UpstreamName`] from
    /// [`BuildCtx::upstream`], so `tollgate check` reports a name that does not exist.
    /// Not async, so that routes pay no future for it: a choice that needs I/O (a
    /// store, another service) is made in `request_filter` and left in
    /// [`RequestCtx::extensions`] for this hook to return.
    fn upstream_peer(&self, session: &Session, cx: &mut RequestCtx) -> Result<Option<Target>> {
        let _ = (session, cx);
        Ok(None)
    }

    /// Runs in `upstream_request_filter`: edit the request sent upstream. By default
    /// does nothing.
    fn upstream_request_filter(&self, cx: &mut RequestCtx, req: &mut RequestHeader) -> Result<()> {
        let _ = (cx, req);
        Ok(())
    }

    /// Runs in `response_filter`: edit the response sent downstream, including the
    /// gateway's own refusals on this route. By default does nothing.
    fn response_filter(&self, cx: &mut RequestCtx, resp: &mut ResponseHeader) -> Result<()> {
        let _ = (cx, resp);
        Ok(())
    }

    /// Runs in `response_body_filter` for each piece of the response body as it streams
    /// to the client: change it, replace it, drop it (`*body = None`), or add to the end
    /// (set `*body` when `end_of_stream` is true). Pieces are never buffered whole.
    ///
    /// A policy that changes the body's length calls [`body_length_changes`] in
    /// [`Policy::response_filter`] (no `Content-Length`, the body chunked). Trailers
    /// pass through untouched; a response with trailers (gRPC) ends without
    /// `end_of_stream` before them. An `Err` aborts the
    /// response. Not called for the gateway's own answers. By default does nothing.
    fn response_body_filter(
        &self,
        cx: &mut RequestCtx,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<()> {
        let _ = (cx, body, end_of_stream);
        Ok(())
    }

    /// Runs once per request in `logging`, also after errors. By default does nothing.
    fn logging(&self, cx: &RequestCtx, error: Option<&pingora::Error>) {
        let _ = (cx, error);
    }

    /// The identity headers this policy may set ([`RequestCtx::set_identity_header`]):
    /// asked once, when the configuration is built. Client copies of every such name of
    /// the configuration are removed on arrival, on every route, so that an upstream
    /// only ever sees the gateway's value (as for `X-Consumer-*`). Check names with
    /// [`identity::header_name`]. By default none.
    fn identity_headers(&self) -> Vec<http::HeaderName> {
        Vec::new()
    }
}

/// For a policy whose `response_body_filter` changes the length of the body: call it
/// in [`Policy::response_filter`]. It removes `Content-Length` and frames the body by
/// chunks (HTTP/1.1; HTTP/2 frames every body anyway) instead of by closing the
/// connection. Not for a response without a body (`204`, `304`, an answer to `HEAD`).
///
/// # Errors
/// Never in practice (the header is a valid static value).
pub fn body_length_changes(resp: &mut ResponseHeader) -> Result<()> {
    resp.remove_header(&http::header::CONTENT_LENGTH);
    resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")
}

/// A shared, type-erased policy.
pub type BoxPolicy = Arc<dyn Policy>;

/// Turns a policy's TOML table into a ready [`Policy`].
///
/// The type is deserialised from the `[routes.X.policies.NAME]` table; give it
/// `#[serde(deny_unknown_fields)]` so typos are errors with line and column.
pub trait PolicyConfig: DeserializeOwned + Send + 'static {
    /// The policy this config builds.
    type Policy: Policy;

    /// Checks what serde cannot (cross-field rules, files, key material) and builds.
    ///
    /// # Errors
    /// A [`BuildError`], reported with the policy's key path and location.
    fn build(self, cx: &BuildCtx<'_>) -> std::result::Result<Self::Policy, BuildError>;
}

/// What a policy's `build` can see.
#[derive(Debug)]
#[non_exhaustive]
pub struct BuildCtx<'a> {
    /// The directory of the config file, for relative paths (key files…).
    pub config_dir: &'a Path,
    /// The dotted key path of the policy's table (`routes.orders.policies.key_auth`).
    pub path: &'a str,
    /// The shared store of `[server.redis]`, when configured.
    pub redis: Option<&'a Arc<crate::store::RedisStore>>,
    /// The names of the configuration's `[upstreams.*]` tables.
    pub(crate) upstreams: Option<&'a BTreeSet<String>>,
    /// The state of the configuration being built, and this policy's table.
    pub(crate) state: Option<state::StateCx<'a>>,
    /// The gateway's HTTP client (`[server.outbound]`).
    pub(crate) outbound: Option<&'a Arc<outbound::Outbound>>,
    /// The configuration's consumers (for a policy's `anonymous` consumer).
    pub(crate) consumers: Option<&'a Consumers>,
    /// The route whose policy this is; `None` for a top-level policy.
    pub(crate) route: Option<&'a str>,
    /// The `{name}`s of the route's paths (empty for a top-level policy).
    pub(crate) route_params: &'a [String],
    /// Whether a `[[server.tls]]` listener asks clients for certificates.
    pub(crate) client_certs: bool,
}

impl<'a> BuildCtx<'a> {
    /// A context for a policy at `path`, with files relative to `config_dir`, no store
    /// and no upstreams.
    pub fn new(config_dir: &'a Path, path: &'a str) -> Self {
        Self {
            config_dir,
            path,
            redis: None,
            upstreams: None,
            state: None,
            outbound: None,
            consumers: None,
            route: None,
            route_params: &[],
            client_certs: true,
        }
    }

    /// The `{name}` path parameters of the route this policy belongs to
    /// ([`RequestCtx::path_param`]); `None` for a top-level policy, which serves every
    /// route, and outside a gateway.
    pub fn route_path_params(&self) -> Option<&[String]> {
        self.route.map(|_| self.route_params)
    }

    /// Whether a `[[server.tls]]` listener of the configuration asks clients for a
    /// certificate (`client_ca`): a policy that authenticates by client certificate is
    /// useless without one. Outside a gateway (`BuildCtx::new`), true.
    pub fn client_certificates_asked(&self) -> bool {
        self.client_certs
    }

    /// This context, with `consumers` as the configured consumers (for testing a policy
    /// that names one, such as an `anonymous` consumer).
    #[must_use]
    pub fn with_consumers(mut self, consumers: &'a Consumers) -> Self {
        self.consumers = Some(consumers);
        self
    }

    /// The route this policy instance belongs to, or `_global` for a top-level
    /// `[policies.*]` instance shared by routes: the `route` label of the instance's
    /// own metrics (its state, its background work).
    pub fn instance_route(&self) -> &str {
        self.route.unwrap_or("_global")
    }

    /// The consumer called `name`, checked to exist when the policy is built (an
    /// `anonymous` option): reported at the policy's key `field` when the
    /// configuration has no such consumer. Look it up per request with
    /// [`Consumers::get`] on [`RequestCtx::consumers`] (a reload brings new consumers).
    ///
    /// # Errors
    /// No `[consumers.NAME]` table exists.
    pub fn consumer(&self, field: &str, name: &str) -> std::result::Result<Arc<str>, BuildError> {
        if self.consumers.is_some_and(|c| c.get(name).is_some()) {
            Ok(Arc::from(name))
        } else {
            Err(BuildError::field(
                field,
                format!("unknown consumer {name:?}"),
            ))
        }
    }

    /// Where this policy's own metric families go: the gateway's registry, next to its
    /// own families. Outside a gateway they count nowhere.
    pub fn metrics(&self) -> PolicyMetrics {
        PolicyMetrics::new(self.outbound.map(|o| o.metrics_slot()))
    }

    /// This context, with `names` as the configured upstreams (for testing a policy
    /// that chooses upstreams).
    #[must_use]
    pub fn with_upstreams(mut self, names: &'a BTreeSet<String>) -> Self {
        self.upstreams = Some(names);
        self
    }

    /// State of this policy instance that outlives reloads while the policy's table is
    /// unchanged: a cache, a key set, counters. The running configuration's value is
    /// handed over when this instance (its key path, [`BuildCtx::path`]) asked for a
    /// `T` before and its table is the same; else `init` makes one. A reload that
    /// changes the table or removes the policy drops it (with its
    /// [`background`](BuildCtx::background) tasks) once no request uses the old
    /// configuration.
    ///
    /// Outside a gateway (`BuildCtx::new`), every call makes a new value.
    pub fn state<T: Send + Sync + 'static>(&self, init: impl FnOnce() -> T) -> Arc<T> {
        self.state_in(Some(self.path), None, init)
    }

    /// [`BuildCtx::state`], kept while `key` (the part of the table the state depends
    /// on) is unchanged, whatever else of the table changes.
    pub fn state_keyed<T: Send + Sync + 'static>(
        &self,
        key: &impl Hash,
        init: impl FnOnce() -> T,
    ) -> Arc<T> {
        self.state_in(Some(self.path), Some(hash_of(key)), init)
    }

    /// State shared by every instance of the policy (by its type `T` and `key`), on
    /// every route: kept across reloads while some instance asks for it.
    pub fn shared_state<T: Send + Sync + 'static>(
        &self,
        key: &impl Hash,
        init: impl FnOnce() -> T,
    ) -> Arc<T> {
        self.state_in(None, Some(hash_of(key)), init)
    }

    /// The state of `scope` (an instance's path; `None`: every instance) under `key`
    /// (`None`: the policy's table).
    fn state_in<T: Send + Sync + 'static>(
        &self,
        scope: Option<&str>,
        key: Option<u64>,
        init: impl FnOnce() -> T,
    ) -> Arc<T> {
        match &self.state {
            Some(s) => s.get(scope, key, init),
            None => Arc::new(init()),
        }
    }

    /// Runs `task` in the background for as long as `state` (from this context's
    /// [`state`](BuildCtx::state) methods) is kept: a periodic refresh of a key set, an
    /// expiry sweep. One task per state value: the first call for a value made in this
    /// build registers it; later calls for the same value (another instance of shared
    /// state) and calls for a value handed over by a reload (its task runs already)
    /// start none. It gets the state weakly, and stops when the state is dropped: at
    /// the reload that no longer asks for it. Tasks start once the gateway runs;
    /// `tollgate check` and `BuildCtx::new` start none.
    pub fn background<T, F, Fut>(&self, state: &Arc<T>, task: F)
    where
        T: Send + Sync + 'static,
        F: FnOnce(std::sync::Weak<T>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(s) = &self.state {
            s.background(state, task);
        }
    }

    /// Work to finish before a configuration with new `state` takes effect, at most
    /// `limit`: the first fetch of a key set. A reload waits for it (the preparations of
    /// every new state run in parallel) before the new configuration takes effect, and
    /// a process started with `--upgrade` before it takes the sockets over; a plain
    /// start does not wait (do the same work in [`BuildCtx::background`] when it has not
    /// been done). Only for state made by this build (not handed over); `check` and
    /// `BuildCtx::new` run nothing.
    pub fn prepare<T, F, Fut>(&self, state: &Arc<T>, limit: std::time::Duration, work: F)
    where
        T: Send + Sync + 'static,
        F: FnOnce(Arc<T>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(s) = &self.state {
            s.prepare(state, limit, work);
        }
    }

    /// The gateway's HTTP client, for calls to other services; its metrics carry this
    /// policy's name. Outside a gateway (`BuildCtx::new`), a client with the default
    /// `[server.outbound]` settings and no metrics.
    pub fn http_client(&self) -> HttpClient {
        let name = self.path.rsplit('.').next().unwrap_or(self.path);
        let outbound = self.outbound.cloned().unwrap_or_default();
        HttpClient::new(outbound, name)
    }

    /// The gateway's HTTP client trusting only the certificates in the PEM file at
    /// `path` (relative to the config file), for a policy with a CA of its own (an
    /// identity provider on a private CA); its calls share the gateway's bound on calls
    /// in flight and its metrics. Clients with the same file's contents share one pool,
    /// kept across reloads.
    ///
    /// # Errors
    /// The file cannot be read or holds no certificate: reported at `field`.
    pub fn http_client_with_ca(
        &self,
        field: &str,
        path: &str,
    ) -> std::result::Result<HttpClient, BuildError> {
        let file = self.config_dir.join(path);
        let pem = std::fs::read(&file).map_err(|e| {
            BuildError::field(field, format!("cannot read {}: {e}", file.display()))
        })?;
        outbound::Outbound::check_ca(&pem)
            .map_err(|e| BuildError::field(field, format!("{}: {e}", file.display())))?;
        let name = self.path.rsplit('.').next().unwrap_or(self.path);
        let base = self.outbound.cloned().unwrap_or_default();
        let client = self.shared_state(&("outbound-ca", &pem, base.settings()), || {
            base.with_ca(pem.clone())
        });
        Ok(HttpClient::new(client, name))
    }

    /// The upstream called `name`, for a [`Target`] of [`Policy::upstream_peer`]:
    /// an error, reported at the policy's key `field`, when the configuration has
    /// no such upstream.
    ///
    /// # Errors
    /// No `[upstreams.NAME]` table exists.
    pub fn upstream(
        &self,
        field: &str,
        name: &str,
    ) -> std::result::Result<UpstreamName, BuildError> {
        let known = self.upstreams.is_some_and(|u| u.contains(name));
        if known {
            Ok(UpstreamName(Arc::from(name)))
        } else {
            Err(BuildError::field(
                field,
                format!("unknown upstream {name:?}"),
            ))
        }
    }
}

/// A stable hash of a state key (within the process).
fn hash_of(key: &impl Hash) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// A policy config that is well-formed TOML but cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BuildError {
    /// What is wrong.
    pub message: String,
    /// The key inside the policy table the error is about, if any.
    pub field: Option<String>,
    /// Further errors of the same table, reported with this one ([`BuildError::all`]).
    more: Vec<BuildError>,
}

impl BuildError {
    /// An error about the policy table as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            field: None,
            more: Vec::new(),
        }
    }

    /// An error about one key of the policy table.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            field: Some(field.into()),
            more: Vec::new(),
        }
    }

    /// Every error of `errors`, reported at once (`tollgate check` lists each at its
    /// key); `Ok` when there is none.
    ///
    /// # Errors
    /// `errors` is not empty.
    pub fn all(errors: Vec<BuildError>) -> Result<(), Self> {
        let mut errors = errors.into_iter();
        match errors.next() {
            None => Ok(()),
            Some(mut first) => {
                for mut e in errors {
                    let nested = std::mem::take(&mut e.more);
                    first.more.push(e);
                    first.more.extend(nested);
                }
                Err(first)
            }
        }
    }

    /// This error and the ones reported with it.
    pub fn each(&self) -> impl Iterator<Item = &BuildError> {
        std::iter::once(self).chain(&self.more)
    }

    /// What `value`, the option at `field`, stands for among `choices`; an error naming
    /// them otherwise (`unknown mode "grpc" (expected forward or opa)`).
    ///
    /// # Errors
    /// `value` is none of the choices.
    pub fn choose<T: Copy>(field: &str, value: &str, choices: &[(&str, T)]) -> Result<T, Self> {
        if let Some((_, t)) = choices.iter().find(|(name, _)| *name == value) {
            return Ok(*t);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let expected = match names.split_last() {
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        Err(Self::field(
            field,
            format!("unknown {field} {value:?} (expected {expected})"),
        ))
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(k) => write!(f, "{k}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for BuildError {}

/// Why a policy table failed to build.
#[derive(Debug)]
pub(crate) enum Failure {
    Toml(toml::de::Error),
    Build(BuildError),
}

type Builder = Arc<
    dyn Fn(Spanned<DeValue<'_>>, &BuildCtx<'_>) -> std::result::Result<BoxPolicy, Failure>
        + Send
        + Sync,
>;

/// The policy names of the contract (GATEWAY.md and every area of wave 2): a library
/// policy cannot take them (CROSSCUTTING.md rule 8.4).
pub const RESERVED_NAMES: &[&str] = &[
    "acl",
    "adaptive_concurrency",
    "aggregate",
    "ai_prompt_guard",
    "ai_proxy",
    "ai_token_limit",
    "basic_auth",
    "body_limit",
    "cache",
    "compress",
    "concurrency_limit",
    "cors",
    "ext_authz",
    "grpc_transcode",
    "ip_restriction",
    "jwt_auth",
    "key_auth",
    "mtls_auth",
    "oauth2_introspection",
    "rate_limit",
    "request_body",
    "request_headers",
    "response_body",
    "response_headers",
    "validate",
    "xml_json",
];

/// Maps the TOML name of a policy (`key_auth`, `my_policy`) to its config type.
#[derive(Clone)]
pub struct Registry {
    builders: BTreeMap<String, Builder>,
    /// Reserved names a caller tried to register (loading any config then fails).
    taken: Vec<String>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("policies", &self.builders.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// A registry with no policies at all.
    pub fn empty() -> Self {
        Self {
            builders: BTreeMap::new(),
            taken: Vec::new(),
        }
    }

    /// Registers config type `C` under `name`, so `[routes.X.policies.NAME]` builds it.
    /// A later registration of the same name replaces the earlier one. A name of
    /// [`RESERVED_NAMES`] is not registered, and loading any configuration with this
    /// registry then fails with an error naming it.
    pub fn register<C: PolicyConfig>(&mut self, name: &str) -> &mut Self {
        if RESERVED_NAMES.contains(&name) {
            self.taken.push(name.to_string());
            return self;
        }
        self.register_builtin::<C>(name)
    }

    /// The reserved names this registry was asked to register, in order.
    pub fn reserved_taken(&self) -> &[String] {
        &self.taken
    }

    /// [`Registry::register`] without the reserved names' check: the built-ins.
    pub(crate) fn register_builtin<C: PolicyConfig>(&mut self, name: &str) -> &mut Self {
        let builder: Builder = Arc::new(|value, cx| {
            let config = C::deserialize(serde::de::IntoDeserializer::into_deserializer(value))
                .map_err(Failure::Toml)?;
            let policy = config.build(cx).map_err(Failure::Build)?;
            Ok(Arc::new(policy) as BoxPolicy)
        });
        self.builders.insert(name.to_string(), builder);
        self
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.builders.keys().map(String::as_str)
    }

    pub(crate) fn build(
        &self,
        name: &str,
        value: Spanned<DeValue<'_>>,
        cx: &BuildCtx<'_>,
    ) -> Option<std::result::Result<BoxPolicy, Failure>> {
        self.builders.get(name).map(|b| b(value, cx))
    }
}

/// The policies of one route, in stage order.
#[derive(Clone, Default)]
pub struct Chain {
    policies: Vec<Link>,
    /// The same policies in the order their response hooks run.
    responses: Vec<Link>,
    /// Where the body stages after `body_limit` start: request decompression runs
    /// before this index.
    body_at: usize,
    /// The largest request and response bodies a policy of the chain (or a consumer's
    /// own entry of one) needs whole.
    request_cap: Option<usize>,
    response_cap: Option<usize>,
    /// The policy that declares the route's caching, if one does, and the generation
    /// of its rules ([`crate::cache::CacheRules`]), computed once.
    cache: Option<(usize, u64)>,
    /// The policy that declares the route's compression, if one does.
    compress: Option<usize>,
    /// The consumers' own entries of policies (`[consumers.NAME.policies.*]`); `None`
    /// when no consumer has one.
    overrides: Option<Arc<ConsumerPolicies>>,
}

/// The consumers' own policies (`[consumers.NAME.policies.*]`): for a consumer's
/// requests, each replaces the route's policy of the same name, among the policies that
/// run after authentication.
#[derive(Clone, Default)]
pub(crate) struct ConsumerPolicies {
    by_consumer: std::collections::HashMap<String, Vec<(Arc<str>, BoxPolicy)>>,
}

impl ConsumerPolicies {
    /// Gives `consumer` its own `policies` (none: nothing is kept).
    pub(crate) fn insert(&mut self, consumer: &str, policies: Vec<(Arc<str>, BoxPolicy)>) {
        if !policies.is_empty() {
            self.by_consumer.insert(consumer.to_string(), policies);
        }
    }

    /// Whether no consumer has a policy of its own.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_consumer.is_empty()
    }
}

/// The built-in authentication policies in the order they run (identity.md §3.7);
/// other authentication policies run after them, by name.
const AUTH_ORDER: [&str; 5] = [
    "mtls_auth",
    "key_auth",
    "basic_auth",
    "jwt_auth",
    "oauth2_introspection",
];

/// The built-in authorization policies in the order they run (CROSSCUTTING.md §1:
/// `acl`, then `ext_authz`); others of the stage after them, by name.
const AUTHZ_ORDER: [&str; 2] = ["acl", "ext_authz"];

/// The body policies in the order their request hooks run (CROSSCUTTING.md §1, stages
/// 12 to 16); other policies of the stage after them, by name.
const BODY_ORDER: [&str; 4] = ["body_limit", "xml_json", "validate", "request_body"];

/// The body policies in the order their response hooks run (stages 24 to 26).
const RESPONSE_BODY_ORDER: [&str; 3] = ["validate", "response_body", "xml_json"];

/// Where a policy runs within its stage among the built-ins ordered by the contract
/// (0 in other stages).
fn auth_rank(l: &Link) -> usize {
    rank(l, &BODY_ORDER)
}

/// [`auth_rank`], with `body` as the order of the body stage.
fn rank(l: &Link, body: &[&str]) -> usize {
    let order: &[&str] = match l.stage {
        Stage::Authentication => &AUTH_ORDER,
        Stage::Authorization => &AUTHZ_ORDER,
        Stage::Body => body,
        _ => return 0,
    };
    order
        .iter()
        .position(|n| *n == &*l.name)
        .unwrap_or(order.len())
}

/// One policy of a chain, with its stage asked once, at load.
#[derive(Clone)]
struct Link {
    name: Arc<str>,
    stage: Stage,
    policy: BoxPolicy,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.policies.iter().map(|l| &l.name))
            .finish()
    }
}

impl Chain {
    /// Orders named policies by stage, then name.
    pub fn new(policies: Vec<(Arc<str>, BoxPolicy)>) -> Self {
        let mut policies: Vec<Link> = policies
            .into_iter()
            .map(|(name, policy)| Link {
                stage: policy.stage(),
                name,
                policy,
            })
            .collect();
        policies.sort_by(|a, b| {
            (a.stage, auth_rank(a))
                .cmp(&(b.stage, auth_rank(b)))
                .then_with(|| a.name.cmp(&b.name))
        });
        let caps = |f: fn(&dyn Policy) -> Option<usize>| {
            policies.iter().filter_map(|l| f(&*l.policy)).max()
        };
        let mut responses = policies.clone();
        responses.sort_by(|a, b| {
            (a.stage, rank(a, &RESPONSE_BODY_ORDER))
                .cmp(&(b.stage, rank(b, &RESPONSE_BODY_ORDER)))
                .then_with(|| a.name.cmp(&b.name))
        });
        let body_at = policies
            .iter()
            .position(|l| l.stage > Stage::Body || (l.stage == Stage::Body && auth_rank(l) > 0))
            .unwrap_or(policies.len());
        Self {
            responses,
            body_at,
            request_cap: caps(|p| p.request_body_limit()),
            response_cap: caps(|p| p.response_body_limit()),
            cache: policies
                .iter()
                .enumerate()
                .find_map(|(i, l)| Some((i, l.policy.cache_rules()?.generation()))),
            compress: policies
                .iter()
                .position(|l| l.policy.compress_rules().is_some()),
            policies,
            overrides: None,
        }
    }

    /// The chain with the consumers' own policies in it (kept only when there are some).
    pub(crate) fn with_consumer_policies(mut self, overrides: &Arc<ConsumerPolicies>) -> Self {
        self.overrides = (!overrides.is_empty()).then(|| overrides.clone());
        // a consumer's own entry of a policy of this chain may need more
        let own = overrides
            .by_consumer
            .values()
            .flatten()
            .filter(|(name, _)| self.policies.iter().any(|l| l.name == *name))
            .map(|(_, p)| p);
        for p in own {
            self.request_cap = self.request_cap.max(p.request_body_limit());
            self.response_cap = self.response_cap.max(p.response_body_limit());
        }
        self
    }

    /// The request's consumer's own policies, if it has some: looked up in the chain,
    /// so it stays borrowed across hooks that need `&mut RequestCtx`.
    fn overrides(&self, cx: &RequestCtx) -> Option<&[(Arc<str>, BoxPolicy)]> {
        let (map, consumer) = (self.overrides.as_deref()?, cx.consumer.as_deref()?);
        map.by_consumer.get(&consumer.name).map(Vec::as_slice)
    }

    /// The policy names in run order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().map(|l| &*l.name)
    }

    /// True when a policy of `stage` is in the chain.
    pub fn has_stage(&self, stage: Stage) -> bool {
        self.policies.iter().any(|l| l.stage == stage)
    }

    /// The route's caching ([`Policy::cache_rules`]), if a policy declares it.
    pub fn cache_rules(&self) -> Option<&crate::cache::CacheRules> {
        self.policies[self.cache?.0].policy.cache_rules()
    }

    /// The generation of the route's cache rules (0 without).
    pub(crate) fn cache_generation(&self) -> u64 {
        self.cache.map_or(0, |(_, g)| g)
    }

    /// The route's compression ([`Policy::compress_rules`]), if a policy declares it.
    pub fn compress_rules(&self) -> Option<&crate::compress::CompressRules> {
        self.policies[self.compress?].policy.compress_rules()
    }

    /// True when the route has no policies.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Runs every policy's `request_filter`; the first [`Flow::Respond`] stops the chain.
    /// In the authentication stage, the first policy that continues authenticates; if
    /// none does, their answers combine as [`Stage::Authentication`] says. After
    /// authentication, a consumer's
    /// own entry of a policy (`[consumers.NAME.policies.*]`) replaces the route's.
    pub async fn request_filter(&self, session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        self.request_filter_in(session, cx, 0..self.policies.len())
            .await
    }

    /// The policies of [`Chain::request_filter`] up to the body stages after
    /// `body_limit` (the rest: [`Chain::request_filter_rest`]), for a gateway that
    /// decodes request bodies in between.
    pub(crate) async fn request_filter_first(
        &self,
        session: &mut Session,
        cx: &mut RequestCtx,
    ) -> Result<Flow> {
        self.request_filter_in(session, cx, 0..self.body_at).await
    }

    /// The policies after [`Chain::request_filter_first`].
    pub(crate) async fn request_filter_rest(
        &self,
        session: &mut Session,
        cx: &mut RequestCtx,
    ) -> Result<Flow> {
        self.request_filter_in(session, cx, self.body_at..self.policies.len())
            .await
    }

    /// [`Chain::request_filter`] for the policies of `range` (authentication, when it
    /// is in the chain, is all in the first part).
    async fn request_filter_in(
        &self,
        session: &mut Session,
        cx: &mut RequestCtx,
        range: std::ops::Range<usize>,
    ) -> Result<Flow> {
        // the refusals of the authentication policies that did not authenticate
        let mut refusals: Vec<Reply> = Vec::new();
        // the policy that offered the anonymous consumer, and the identity headers it set
        let mut anonymous = None;
        let mut authenticated = false;
        if range.start == 0 {
            cx.chain = ChainProgress::default();
        }
        let links = self.policies.iter().enumerate();
        for (i, link) in links.skip(range.start).take(range.len()) {
            if link.stage == Stage::Authentication {
                if authenticated {
                    continue;
                }
                cx.chain.reached = i + 1;
                let offered = cx.anonymous.is_some();
                let mark = cx.identity_headers.len();
                match link.policy.request_filter(session, cx).await? {
                    Flow::Continue => {
                        authenticated = true;
                        cx.chain.authenticated_by = Some(i);
                        cx.auth = Some(link.name.clone());
                        if self.request_cap.is_some() {
                            if let Some(r) =
                                Box::pin(self.body_hook(&link.policy, session, cx)).await?
                            {
                                return Ok(Flow::Respond(r));
                            }
                        }
                    }
                    Flow::Respond(r) => {
                        // what a policy that did not authenticate set goes nowhere,
                        // unless its anonymous consumer is taken
                        let set = cx.identity_headers.split_off(mark);
                        if !offered && cx.anonymous.is_some() {
                            anonymous = Some((i, set));
                        }
                        refusals.push(r);
                    }
                }
                continue;
            }
            if !authenticated && !refusals.is_empty() {
                let refusals = std::mem::take(&mut refusals);
                if let Some(r) = self.settle_authentication(refusals, anonymous.take(), cx) {
                    return Ok(Flow::Respond(r));
                }
                authenticated = true;
            }
            cx.chain.reached = i + 1;
            let p = link.effective(self.overrides(cx));
            if let Flow::Respond(r) = p.request_filter(session, cx).await? {
                return Ok(Flow::Respond(r));
            }
            if self.request_cap.is_some() {
                // boxed: the chain's own future stays small on routes without bodies
                if let Some(r) = Box::pin(self.body_hook(p, session, cx)).await? {
                    return Ok(Flow::Respond(r));
                }
            }
        }
        if !authenticated && !refusals.is_empty() {
            if let Some(r) = self.settle_authentication(refusals, anonymous, cx) {
                return Ok(Flow::Respond(r));
            }
        }
        Ok(Flow::Continue)
    }

    /// The answer when no authentication policy authenticated (CROSSCUTTING.md rule
    /// 2.1): a 503 `identity_unavailable` (a policy could not check its credential),
    /// else a 403 (a valid credential lacked a scope or audience), else the `anonymous`
    /// consumer the first policy offered (`None`: it authenticates, with the identity
    /// headers that policy set), else the first refusal, a 401 then carrying one
    /// challenge per scheme of every 401 (rule 3.10).
    fn settle_authentication(
        &self,
        mut refusals: Vec<Reply>,
        anonymous: Option<(usize, Vec<(http::HeaderName, http::HeaderValue)>)>,
        cx: &mut RequestCtx,
    ) -> Option<Reply> {
        for code in [ErrorCode::IdentityUnavailable, ErrorCode::Forbidden] {
            if let Some(at) = refusals.iter().position(|r| r.code == Some(code)) {
                return Some(refusals.swap_remove(at));
            }
        }
        if let (Some((i, mut headers)), Some(c)) = (anonymous, cx.anonymous.take()) {
            cx.consumer = Some(c);
            cx.auth = Some(self.policies[i].name.clone());
            cx.identity_headers.append(&mut headers);
            return None;
        }
        let mut rest = refusals.into_iter();
        let mut first = rest.next()?;
        if first.status == http::StatusCode::UNAUTHORIZED {
            let www = http::header::WWW_AUTHENTICATE;
            let scheme = |v: &http::HeaderValue| {
                let v = v.to_str().unwrap_or_default().trim_start();
                v.split(' ').next().unwrap_or_default().to_ascii_lowercase()
            };
            for r in rest.filter(|r| r.status == http::StatusCode::UNAUTHORIZED) {
                for (n, v) in r.headers.into_iter().filter(|(n, _)| *n == www) {
                    let s = scheme(&v);
                    if !first.headers.iter().any(|(m, w)| *m == n && scheme(w) == s) {
                        first.headers.push((n, v));
                    }
                }
            }
        }
        Some(first)
    }

    /// The identity header names the chain's policies declare
    /// ([`Policy::identity_headers`]).
    pub(crate) fn identity_headers(&self) -> impl Iterator<Item = http::HeaderName> + '_ {
        self.policies
            .iter()
            .flat_map(|l| l.policy.identity_headers())
    }

    /// Runs every policy's `request_body_filter`.
    pub fn request_body_filter(
        &self,
        cx: &mut RequestCtx,
        body: &mut Option<Bytes>,
        end: bool,
    ) -> Result<()> {
        let o = self.overrides(cx);
        self.policies
            .iter()
            .try_for_each(|l| l.effective(o).request_body_filter(cx, body, end))
    }

    /// Runs `p`'s `request_body` if it needs the body, reading the body first if no
    /// earlier policy did; `Some` is the answer to send instead.
    async fn body_hook(
        &self,
        p: &BoxPolicy,
        session: &mut Session,
        cx: &mut RequestCtx,
    ) -> Result<Option<Reply>> {
        let Some(limit) = p.request_body_limit() else {
            return Ok(None);
        };
        if !p.wants_request_body(session, cx) {
            return Ok(None);
        }
        if cx.body.is_none() {
            let budget = cx.bodies;
            // the largest limit among the policies this request runs (a consumer's
            // own entries included), not among every consumer's
            let o = self.overrides(cx);
            let cap = self
                .policies
                .iter()
                .filter_map(|l| l.effective(o).request_body_limit());
            let cap = cap.max().unwrap_or(limit);
            // a route's body limit bounds what is read for any policy (CROSSCUTTING.md 2.4)
            let most = self
                .policies
                .iter()
                .filter_map(|l| l.effective(o).request_body_max())
                .min();
            let cap = most.map_or(cap, |m| cap.min(m));
            match body::read_request(session, cap, budget, budget.pause()).await? {
                Ok(held) => cx.body = Some(held),
                Err(reply) => return Ok(Some(reply)),
            }
        }
        let Some(held) = cx.body.as_mut() else {
            return Ok(None);
        };
        if held.bytes.len() > limit {
            return Ok(Some(Reply::refuse_with(
                ErrorCode::PayloadTooLarge,
                format!("the request body is larger than {limit} bytes"),
            )));
        }
        let mut bytes = std::mem::take(&mut held.bytes);
        let flow = p.request_body(session, cx, &mut bytes).await;
        let Some(held) = cx.body.as_mut() else {
            return Ok(None);
        };
        held.bytes = bytes;
        Ok(match flow? {
            // a longer body takes more room
            Flow::Continue if !held.fits() => Some(body::no_room()),
            Flow::Continue => None,
            Flow::Respond(r) => Some(r),
        })
    }

    /// The smallest body limit among this request's policies ([`Policy::request_body_max`]),
    /// if one limits bodies.
    pub(crate) fn request_body_max_for(&self, cx: &RequestCtx) -> Option<usize> {
        let o = self.overrides(cx);
        self.policies
            .iter()
            .filter_map(|l| l.effective(o).request_body_max())
            .min()
    }

    /// The largest response body this request's policies need whole (a consumer's own
    /// entries included), if one does.
    pub(crate) fn response_cap_for(&self, cx: &RequestCtx) -> Option<usize> {
        self.response_cap?;
        let o = self.overrides(cx);
        self.policies
            .iter()
            .filter_map(|l| l.effective(o).response_body_limit())
            .max()
    }

    /// Runs every policy's `response_body` on the whole response body.
    pub(crate) fn response_body(&self, cx: &mut RequestCtx, body: &mut Bytes) -> Result<()> {
        let o = self.overrides(cx);
        for l in &self.responses {
            let p = l.effective(o);
            if p.response_body_limit()
                .is_some_and(|limit| body.len() <= limit)
            {
                p.response_body(cx, body)?;
            }
        }
        Ok(())
    }

    /// Asks each policy's `upstream_peer` in order; the first choice made wins.
    pub fn upstream_peer(&self, session: &Session, cx: &mut RequestCtx) -> Result<Option<Target>> {
        let o = self.overrides(cx);
        for l in &self.policies {
            if let Some(t) = l.effective(o).upstream_peer(session, cx)? {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// Runs every policy's `response_body_filter`.
    pub fn response_body_filter(
        &self,
        cx: &mut RequestCtx,
        body: &mut Option<Bytes>,
        end: bool,
    ) -> Result<()> {
        let o = self.overrides(cx);
        self.responses
            .iter()
            .try_for_each(|l| l.effective(o).response_body_filter(cx, body, end))
    }

    /// Runs every policy's `upstream_request_filter`.
    pub fn upstream_request_filter(
        &self,
        cx: &mut RequestCtx,
        req: &mut RequestHeader,
    ) -> Result<()> {
        let o = self.overrides(cx);
        self.policies
            .iter()
            .try_for_each(|l| l.effective(o).upstream_request_filter(cx, req))
    }

    /// Runs every policy's `response_filter`.
    pub fn response_filter(&self, cx: &mut RequestCtx, resp: &mut ResponseHeader) -> Result<()> {
        let o = self.overrides(cx);
        self.responses
            .iter()
            .try_for_each(|l| l.effective(o).response_filter(cx, resp))
    }

    /// Runs the `logging` of every policy whose `request_filter` ran for this request
    /// (not of those after a refusal, nor of the authentication policies skipped once
    /// one authenticated): a policy's logging sees only requests it saw.
    pub fn logging(&self, cx: &RequestCtx, error: Option<&pingora::Error>) {
        let ran = cx.chain;
        let o = self.overrides(cx);
        for (i, l) in self.policies.iter().enumerate().take(ran.reached) {
            let skipped =
                l.stage == Stage::Authentication && ran.authenticated_by.is_some_and(|by| i > by);
            if !skipped {
                l.effective(o).logging(cx, error);
            }
        }
    }
}

impl Link {
    /// The consumer's own entry of this policy when it runs after authentication, or
    /// the route's.
    fn effective<'a>(&'a self, overrides: Option<&'a [(Arc<str>, BoxPolicy)]>) -> &'a BoxPolicy {
        if self.stage > Stage::Authentication {
            if let Some((_, p)) = overrides.and_then(|o| o.iter().find(|(n, _)| *n == self.name)) {
                return p;
            }
        }
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::ErrorCode;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;

    /// Counts its `logging` calls; continues or refuses in `request_filter`.
    struct Counting {
        stage: Stage,
        refuse: bool,
        logged: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Policy for Counting {
        fn stage(&self) -> Stage {
            self.stage
        }
        async fn request_filter(&self, _: &mut Session, _: &mut RequestCtx) -> Result<Flow> {
            Ok(if self.refuse {
                Flow::Respond(Reply::refuse(ErrorCode::Forbidden))
            } else {
                Flow::Continue
            })
        }
        fn logging(&self, _: &RequestCtx, _: Option<&pingora::Error>) {
            self.logged.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn session() -> Session {
        let (mut client, server) = tokio::io::duplex(4096);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let mut s = Session::new_h1(Box::new(server));
        assert!(s.read_request().await.unwrap());
        // the client end must outlive the session's use
        std::mem::forget(client);
        s
    }

    #[tokio::test]
    async fn a_policy_logs_only_requests_its_request_filter_saw() {
        // run order: auth a (refuses), auth b (authenticates), auth c (skipped),
        // custom x (refuses), traffic y (never reached)
        let spec = [
            ("a", Stage::Authentication, true),
            ("b", Stage::Authentication, false),
            ("c", Stage::Authentication, false),
            ("x", Stage::Custom, true),
            ("y", Stage::Traffic, false),
        ];
        let counts: Vec<Arc<AtomicUsize>> = spec.iter().map(|_| Arc::default()).collect();
        let chain = Chain::new(
            spec.iter()
                .zip(&counts)
                .map(|((name, stage, refuse), logged)| {
                    let p = Counting {
                        stage: *stage,
                        refuse: *refuse,
                        logged: logged.clone(),
                    };
                    (Arc::from(*name), Arc::new(p) as BoxPolicy)
                })
                .collect(),
        );
        let mut session = session().await;
        let mut cx = RequestCtx::new();
        let flow = chain.request_filter(&mut session, &mut cx).await.unwrap();
        assert!(matches!(flow, Flow::Respond(_)), "x refused");
        chain.logging(&cx, None);
        let logged: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(
            logged,
            [1, 1, 0, 1, 0],
            "a, b and x ran; c was skipped, y not reached"
        );
    }
}
