//! Assembling a gateway from a loaded [`Config`]: the proxy, the admin app, their
//! Pingora services, and reloads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::protocols::http::v2::server::H2Options;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::ServiceWithDependents;

use crate::access_log::AccessLogger;
use crate::admin::Admin;
use crate::config::{Config, LoadError, ServerSettings};
use crate::discovery::{Discovery, Refresher};
use crate::drain::Drain;
use crate::guard::Guarded;
use crate::health::HealthChecker;
use crate::metrics::Metrics;
use crate::otlp::SpanExporter;
use crate::policy::{PolicyConfig, Registry};
use crate::proxy::Gateway;
use crate::runtime::Snapshot;
use crate::server::ShutdownSignals;
use crate::service::ListenerService;

/// Builds a [`GatewayHandle`]: which policies exist (the built-ins plus yours), then
/// the configuration to serve.
///
/// ```no_run
/// use tollgate::GatewayBuilder;
/// # use tollgate::policy::{BuildCtx, BuildError, Policy, PolicyConfig};
/// # struct Tenant;
/// # impl Policy for Tenant {}
/// # #[derive(serde::Deserialize)]
/// # struct TenantConfig {}
/// # impl PolicyConfig for TenantConfig {
/// #     type Policy = Tenant;
/// #     fn build(self, _: &BuildCtx<'_>) -> Result<Tenant, BuildError> { Ok(Tenant) }
/// # }
///
/// let gateway = GatewayBuilder::new()
///     .policy::<TenantConfig>("tenant") // enabled by [routes.X.policies.tenant]
///     .build_from_file("gateway.toml")?;
/// let mut server = gateway.pingora_server(false);
/// gateway.add_to(&mut server);
/// server.run_forever();
/// # Ok::<(), tollgate::StartError>(())
/// ```
#[derive(Debug)]
pub struct GatewayBuilder {
    registry: Registry,
    metrics: Option<Metrics>,
    exit_on_bind_error: bool,
}

impl GatewayBuilder {
    /// Starts with the built-in policies.
    pub fn new() -> Self {
        Self {
            registry: Registry::with_builtins(),
            metrics: None,
            exit_on_bind_error: false,
        }
    }

    /// Exit the process with status 1 when a listener cannot bind its address (the
    /// `tollgate` binary does). Default: the listener logs the error and does not serve,
    /// and the rest of the server keeps running.
    #[must_use]
    pub fn exit_on_bind_error(mut self, exit: bool) -> Self {
        self.exit_on_bind_error = exit;
        self
    }

    /// Makes the policy configured by `C` available as `[routes.X.policies.NAME]` (and
    /// `[policies.NAME]`), exactly like a built-in one. A later registration of the same
    /// name replaces the earlier one. The built-in names
    /// ([`RESERVED_NAMES`](crate::policy::RESERVED_NAMES)) cannot be taken: loading and
    /// building then fail with an error naming the name.
    #[must_use]
    pub fn policy<C: PolicyConfig>(mut self, name: &str) -> Self {
        self.registry.register::<C>(name);
        self
    }

    /// Replaces the policy registry as a whole.
    #[must_use]
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Uses these metrics instead of a fresh set (to share a Prometheus registry).
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Reads and validates a config file with this builder's policies, without building
    /// anything (what `tollgate check` does).
    ///
    /// # Errors
    /// The file is unreadable, or every error found in it.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Config, LoadError> {
        Config::load_with(path, &self.registry)
    }

    /// Loads `path` and builds the gateway; see [`GatewayBuilder::build`].
    ///
    /// # Errors
    /// [`StartError::Config`] with every error in the file, or [`StartError::Io`].
    pub fn build_from_file(self, path: impl AsRef<Path>) -> Result<GatewayHandle, StartError> {
        let config = self.load(path)?;
        Ok(self.build(&config)?)
    }

    /// Builds the gateway for `config` (loaded with this builder's policies: reloads
    /// use them too). Starts the access log writer and, with `[server.tracing]`, the
    /// span exporter; nothing listens until the services run.
    ///
    /// # Errors
    /// The access log file cannot be opened, or a writer thread cannot start.
    pub fn build(self, config: &Config) -> std::io::Result<GatewayHandle> {
        if let [_, ..] = self.registry.reserved_taken() {
            let e = LoadError::ReservedName(self.registry.reserved_taken().to_vec());
            return Err(std::io::Error::other(e.to_string()));
        }
        let metrics = self.metrics.unwrap_or_default();
        let access_log = AccessLogger::start(
            &config.server.access_log,
            metrics.access_log_dropped().clone(),
        )?;
        let spans = match &config.server.tracing {
            Some(t) => Some(SpanExporter::start(t, metrics.spans_dropped().clone())?),
            None => None,
        };
        config.snapshot.outbound.attach(&metrics);
        let state = Arc::new(ArcSwap::new(config.snapshot.clone()));
        let dns = Arc::new(Discovery::new(&config.server.dns, metrics.clone()));
        dns.serve(state.clone());
        if config.snapshot.upstreams.values().any(|u| u.has_names()) {
            // fleet.md §13.4: every name is looked up before the listeners open, for
            // at most `startup_wait`
            dns.prepare_blocking(config.snapshot.clone(), config.server.dns.startup_wait)?;
        }
        let cache = Arc::new(crate::cache::Shelf::new());
        cache.configure(
            config.server.cache,
            &config.snapshot.cached_routes(),
            metrics.cache(),
        );
        let streams = Arc::new(crate::compress::Streams::new(
            config.server.limits.compress_streams,
            metrics.compress().active.clone(),
        ));
        let handle = GatewayHandle {
            cache,
            streams,
            dns,
            bodies: crate::policy::body::Budget::leak(
                config.server.limits.body_buffer_total,
                config.server.limits.body_timeout,
            ),
            reload_lock: Arc::default(),
            state,
            metrics,
            spans,
            drain: Arc::default(),
            registry: self.registry,
            path: config.path.clone(),
            server: config.server.clone(),
            access_log,
            exit_on_bind_error: self.exit_on_bind_error,
            started: SystemTime::now(),
            reloads: Arc::new(tokio::sync::watch::channel(()).0),
        };
        handle.publish_health();
        Ok(handle)
    }
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a gateway could not be built from a file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The config file is unreadable or invalid (every error, with line and column).
    #[error("{0}")]
    Config(#[from] LoadError),
    /// The access log could not be opened, or a thread not started.
    #[error("cannot start the gateway: {0}")]
    Io(#[from] std::io::Error),
}

/// What a successful [`GatewayHandle::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reloaded {
    /// The digest of the configuration now serving.
    pub digest: String,
    /// The changed `[server]` keys that were not applied: they need a restart or an
    /// upgrade (`server.listen`, …). Empty when everything was applied.
    pub needs_restart: Vec<&'static str>,
}

/// A running gateway's shared state: the current snapshot, metrics, and what a reload
/// needs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GatewayHandle {
    state: Arc<ArcSwap<Snapshot>>,
    metrics: Metrics,
    registry: Registry,
    path: Option<PathBuf>,
    server: ServerSettings,
    access_log: Option<AccessLogger>,
    spans: Option<SpanExporter>,
    drain: Arc<Drain>,
    exit_on_bind_error: bool,
    started: SystemTime,
    /// Told of every reload (the health checker waits on it).
    reloads: Arc<tokio::sync::watch::Sender<()>>,
    /// The answers for backends named by DNS, kept across reloads.
    dns: Arc<Discovery>,
    /// One reload at a time.
    reload_lock: Arc<tokio::sync::Mutex<()>>,
    /// The memory every whole body the policies hold may take (`body_buffer_total`).
    bodies: &'static crate::policy::body::Budget,
    /// The response store and its lock (`[server.cache]`).
    cache: Arc<crate::cache::Shelf>,
    /// The responses being compressed (`[server.limits] compress_streams`).
    streams: Arc<crate::compress::Streams>,
}

impl GatewayHandle {
    /// The Pingora `ProxyHttp` implementation.
    pub fn gateway(&self) -> Gateway {
        Gateway {
            state: self.state.clone(),
            metrics: self.metrics.clone(),
            access_log: self.access_log.clone(),
            spans: self.spans.clone(),
            drain: self.drain.clone(),
            limits: self.server.limits,
            bodies: self.bodies,
            cache: self.cache.clone(),
            streams: self.streams.clone(),
        }
    }

    /// Removes the cache entries `query`'s selectors choose (`DELETE /admin/cache`,
    /// `cache.md` §4): how many went, or why the selectors are refused.
    pub(crate) fn purge_cache(&self, query: &str) -> Result<usize, String> {
        let snap = self.state.load_full();
        let purge = crate::cache::purge::Purge::parse(query, |name| {
            snap.routes
                .iter()
                .find(|r| r.name == name)
                .and_then(|r| r.chain.cache_rules())
        })?;
        Ok(self.cache.store().map_or(0, |s| purge.run(s)))
    }

    /// From now on every answer closes its HTTP/1 connection (`Connection: close`), so
    /// that clients reconnect. Called when the process hands its sockets to a new one
    /// (graceful upgrade) or begins a graceful shutdown (see [`ShutdownSignals`]).
    pub fn start_draining(&self) {
        if self.drain.start() {
            tracing::info!("draining: answers now close their connections");
        }
    }

    /// Reopens the access log file (SIGUSR1), for log rotation.
    pub fn reopen_logs(&self) {
        if let Some(l) = &self.access_log {
            l.reopen();
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The snapshot new requests use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.load_full()
    }

    /// Re-reads the config file and, if it is valid, swaps it in for new requests.
    /// Requests in flight finish on the snapshot they started with. `[server]` keys
    /// that need a restart or upgrade (listeners, threads, …) are not applied: they are
    /// logged and listed in the answer ([`ServerSettings::needs_restart`]).
    ///
    /// Backend names new in the file (every name, when `[server.dns]` changed) are
    /// looked up before the new config takes effect, for at most
    /// `server.dns.startup_wait`; DNS being down never fails a reload. One reload runs
    /// at a time.
    ///
    /// # Errors
    /// The file is unreadable or invalid; nothing changed. The errors are logged, and
    /// written to stderr too, so that a program without a tracing subscriber sees them.
    pub async fn reload(&self) -> Result<Reloaded, LoadError> {
        let _one = self.reload_lock.lock().await;
        let Some(path) = &self.path else {
            return Err(LoadError::Unreadable {
                path: PathBuf::new(),
                source: std::io::Error::other("this gateway was not loaded from a file"),
            });
        };
        let prior = self.state.load_full();
        match Config::reload_from(path, &self.registry, Some(&prior)) {
            Ok(c) => {
                c.snapshot.outbound.attach(&self.metrics);
                // CROSSCUTTING.md 7.2: new key sets are fetched before the config takes
                // effect (each within its own bound)
                c.snapshot.states.prepare().await;
                self.streams.configure(c.server.limits.compress_streams);
                // body_buffer_total applies on reload; body_timeout needs a restart
                self.bodies.configure(
                    c.server.limits.body_buffer_total,
                    self.server.limits.body_timeout,
                );
                // fleet.md §13.5: new names (every name, when [server.dns] changed) are
                // looked up before the new config takes effect, for at most
                // `startup_wait`; names that stay keep their answers
                let pinned = self.dns.pin(c.snapshot.clone());
                let has_names = c.snapshot.upstreams.values().any(|u| u.has_names());
                self.dns.configure(&c.server.dns, has_names);
                self.dns
                    .prepare(&c.snapshot, c.server.dns.startup_wait)
                    .await;
                let digest = c.snapshot.digest.clone();
                let needs_restart = self.server.needs_restart(&c.server);
                // cache.md §5: entries of removed routes and changed rules go before
                // the new configuration serves; other changes keep them
                self.cache.configure(
                    c.server.cache,
                    &c.snapshot.cached_routes(),
                    self.metrics.cache(),
                );
                self.state.store(c.snapshot.clone());
                // the old configuration's state that the new one did not take over goes
                // now (its tasks stop), whoever still holds that configuration
                prior.states.retire();
                drop(pinned);
                self.dns.prune();
                forget_left(&self.metrics, &prior, &c.snapshot);
                // lookups that ended meanwhile updated the snapshot then in force
                self.dns.resync(&c.snapshot).await;
                self.reloads.send_replace(());
                self.metrics.reload(true);
                self.publish_health();
                tracing::info!("configuration reloaded, digest {digest}");
                if !needs_restart.is_empty() {
                    tracing::warn!(
                        "reload: not applied until a restart or upgrade: {}",
                        needs_restart.join(", ")
                    );
                }
                Ok(Reloaded {
                    digest,
                    needs_restart,
                })
            }
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!("reload failed, keeping the running configuration:\n{e}");
                eprintln!("tollgate: reload failed, keeping the running configuration:\n{e}");
                Err(e)
            }
        }
    }

    /// The proxy service on `[server] listen` (and the TLS listeners), with h2c prior
    /// knowledge accepted, HTTP/1 heads checked by the [`Guarded`] connection guard
    /// against `[server.limits]`, and HTTP/2 bounded by [`GatewayHandle::h2_options`].
    pub fn proxy_service(
        &self,
        conf: &Arc<ServerConf>,
    ) -> ListenerService<Guarded<HttpProxy<Gateway>>> {
        let mut proxy = HttpProxy::new(self.gateway(), conf.clone());
        proxy.handle_init_modules();
        let mut opts = HttpServerOptions::default();
        opts.h2c = true;
        proxy.server_options = Some(opts);
        proxy.h2_options = Some(self.h2_options());
        let guarded = Guarded::new(
            proxy,
            self.server.limits,
            self.metrics.clone(),
            self.drain.clone(),
        );
        ListenerService::new("proxy", self.server.listen.clone(), guarded)
            .tls(self.server.tls.clone())
            .tls_hello_deadline(self.server.limits.header_timeout)
            .drain(self.drain.clone())
            .threads(self.server.threads)
            .exit_on_bind_error(self.exit_on_bind_error)
    }

    /// The HTTP/2 server settings of the proxy: a decoded header list of at most
    /// `max_header_bytes`, 100 concurrent streams per connection, at most 20 streams
    /// reset by the client before the gateway accepted them (rapid reset) and 256 reset
    /// by the gateway for errors, before the connection is closed with GOAWAY.
    pub fn h2_options(&self) -> H2Options {
        let mut o = pingora::protocols::http::v2::server::default_h2_options();
        o.max_header_list_size(
            u32::try_from(self.server.limits.max_header_bytes).unwrap_or(u32::MAX),
        );
        o.max_concurrent_streams(100);
        o.max_pending_accept_reset_streams(20);
        o.max_local_error_reset_streams(Some(256));
        o
    }

    /// The admin service on `[server] admin_listen`, if configured.
    pub fn admin_service(&self) -> Option<ListenerService<HttpServer<Admin>>> {
        let addr = self.server.admin_listen?;
        let admin = Admin {
            handle: self.clone(),
            token: self.server.admin_token.clone(),
            started: self.started,
        };
        Some(
            ListenerService::new("admin", vec![addr], HttpServer::new_app(admin))
                .threads(1)
                .drain(self.drain.clone())
                .exit_on_bind_error(self.exit_on_bind_error),
        )
    }

    /// The background service running active health checks of the current config.
    pub fn health_service(&self) -> impl ServiceWithDependents {
        pingora::services::background::background_service(
            "health checks",
            HealthChecker {
                state: self.state.clone(),
                metrics: self.metrics.clone(),
                reloads: self.reloads.subscribe(),
            },
        )
    }

    /// The background service that looks backends named by DNS up again as their
    /// answers expire (idle when no upstream names one).
    pub fn discovery_service(&self) -> impl ServiceWithDependents {
        pingora::services::background::background_service(
            "dns discovery",
            Refresher {
                dns: self.dns.clone(),
                state: self.state.clone(),
                reloads: self.reloads.subscribe(),
            },
        )
    }

    /// The background service that runs the policies' background tasks
    /// ([`BuildCtx::background`](crate::policy::BuildCtx::background)): those of the
    /// loaded config when it starts, and those of each reload's.
    pub fn policy_tasks_service(&self) -> impl ServiceWithDependents {
        pingora::services::background::background_service(
            "policy tasks",
            PolicyTasks {
                state: self.state.clone(),
                reloads: self.reloads.subscribe(),
            },
        )
    }

    /// Sets the health gauge of every backend of the current config, as traffic sees
    /// it (also on every `/metrics` scrape: a passive ejection starts and ends on the
    /// request path, which does not touch the gauges).
    pub(crate) fn publish_health(&self) {
        for u in self.state.load().upstreams.values() {
            u.publish_health(&self.metrics);
        }
    }

    /// The DNS answers of backends named by DNS.
    pub(crate) fn dns(&self) -> &Discovery {
        &self.dns
    }

    /// The `[server]` settings this gateway was built with.
    pub fn settings(&self) -> &ServerSettings {
        &self.server
    }

    /// A Pingora [`Server`] configured from `[server]` (threads, pid file, upgrade
    /// socket, grace periods), bootstrapped; with `upgrade`, it takes the listening
    /// sockets over from the running instance. For a program that has no server yet.
    pub fn pingora_server(&self, upgrade: bool) -> Server {
        if upgrade {
            // CROSSCUTTING.md 7.2: remote key sets are fetched before the sockets move
            let snap = self.state.load_full();
            if let Err(e) = crate::blocking::run("tollgate-prepare", async move {
                snap.states.prepare().await;
            }) {
                tracing::warn!("upgrade: the policies' preparations did not run: {e}");
            }
        }
        crate::server::build(&self.server, upgrade)
    }

    /// Runs `server` (with the gateway's services added, see [`GatewayHandle::add_to`])
    /// until it is told to stop, draining as [`ShutdownSignals`] describes on SIGTERM
    /// and SIGQUIT; returns when it has shut down. A server from
    /// [`GatewayHandle::pingora_server`] leaves the whole drain to the gateway.
    pub fn run(&self, server: Server) {
        let signals = self.shutdown_signals(&server);
        server.run(pingora::server::RunArgs {
            shutdown_signal: Box::new(signals),
        });
    }

    /// The gateway's shutdown signals, for a program that calls Pingora's
    /// [`Server::run`] itself: SIGTERM and SIGQUIT drain with `[server] grace_period`
    /// and `graceful_shutdown_timeout` before Pingora shuts down (whose own grace period
    /// then follows: set it to zero).
    /// A SIGQUIT hands the sockets over on `server`'s `upgrade_sock`.
    pub fn shutdown_signals(&self, server: &Server) -> ShutdownSignals {
        ShutdownSignals {
            drain: self.drain.clone(),
            grace_period: self.server.grace_period,
            timeout: self.server.graceful_shutdown_timeout,
            upgrade_sock: server.configuration.upgrade_sock.clone(),
        }
    }

    /// Adds every service of the gateway to `server`: the proxy listeners, the health
    /// checker, DNS discovery, the admin listener (if `admin_listen` is set), and the
    /// signal handlers (SIGHUP reload, SIGUSR1 log reopen, draining on upgrade and
    /// shutdown). The server's own services are untouched. Use [`GatewayHandle::services`] to pick instead.
    pub fn add_to(&self, server: &mut Server) {
        let signals = crate::server::signal_handlers(self.clone(), server);
        for s in self.services(&server.configuration) {
            server.add_boxed_service(s);
        }
        server.add_service(signals);
    }

    /// Every service of the gateway except the signal handlers (the proxy, health
    /// checks, DNS discovery, admin), ready for
    /// `Server::add_boxed_service`.
    pub fn services(&self, conf: &Arc<ServerConf>) -> Vec<Box<dyn ServiceWithDependents>> {
        let mut v: Vec<Box<dyn ServiceWithDependents>> = vec![
            Box::new(self.proxy_service(conf)),
            Box::new(self.health_service()),
            Box::new(self.discovery_service()),
            Box::new(self.policy_tasks_service()),
        ];
        if let Some(a) = self.admin_service() {
            v.push(Box::new(a));
        }
        v
    }
}

/// Removes the metric series of backends and upstreams a reload took away (an address
/// leaving by a DNS change is removed when it leaves).
fn forget_left(metrics: &Metrics, prior: &Snapshot, new: &Snapshot) {
    for (name, old) in &prior.upstreams {
        let kept = new.upstreams.get(name);
        for e in &old.endpoints.current().list {
            let stays = kept.is_some_and(|u| u.endpoints.current().by_addr.contains_key(&e.addr));
            if !stays {
                metrics.forget_backend(name, &e.addr.to_string());
            }
        }
        if kept.is_none() {
            metrics.forget_upstream(name);
        }
    }
}

/// Starts the policies' background tasks of each configuration that comes into force;
/// they run on this service's runtime, and stop with their state.
struct PolicyTasks {
    state: Arc<ArcSwap<Snapshot>>,
    reloads: tokio::sync::watch::Receiver<()>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for PolicyTasks {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut reloads = self.reloads.clone();
        let mut reloadable = true;
        loop {
            // seen before the snapshot is read: a reload after this wakes the wait below
            reloads.borrow_and_update();
            self.state.load().states.start_pending();
            tokio::select! {
                changed = reloads.changed(), if reloadable => reloadable = changed.is_ok(),
                _ = shutdown.changed() => return,
            }
        }
    }
}
