//! Assembling a gateway from a loaded [`Config`]: the proxy, the admin app, their
//! Pingora services, and reloads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::services::ServiceWithDependents;

use crate::access_log::AccessLogger;
use crate::admin::Admin;
use crate::config::{Config, LoadError, ServerSettings};
use crate::health::HealthChecker;
use crate::metrics::Metrics;
use crate::otlp::SpanExporter;
use crate::policy::Registry;
use crate::proxy::Gateway;
use crate::runtime::Snapshot;
use crate::service::ListenerService;

/// Builds a [`GatewayHandle`] from a loaded configuration.
#[derive(Debug)]
pub struct GatewayBuilder<'a> {
    config: &'a Config,
    registry: Registry,
    metrics: Option<Metrics>,
}

impl<'a> GatewayBuilder<'a> {
    /// Starts from `config`, with the built-in policies for later reloads.
    pub fn new(config: &'a Config) -> Self {
        Self {
            config,
            registry: Registry::with_builtins(),
            metrics: None,
        }
    }

    /// The registry reloads build policies with; use the one the config was loaded with.
    #[must_use]
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Uses these metrics instead of a fresh set.
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Builds the gateway. Starts the access log writer and, with `[server.tracing]`,
    /// the span exporter.
    ///
    /// # Errors
    /// The access log file cannot be opened, or a writer thread cannot start.
    pub fn build(self) -> std::io::Result<GatewayHandle> {
        let metrics = self.metrics.unwrap_or_default();
        let access_log = AccessLogger::start(
            &self.config.server.access_log,
            metrics.access_log_dropped().clone(),
        )?;
        let spans = match &self.config.server.tracing {
            Some(t) => Some(SpanExporter::start(t, metrics.spans_dropped().clone())?),
            None => None,
        };
        let handle = GatewayHandle {
            state: Arc::new(ArcSwap::new(self.config.snapshot.clone())),
            metrics,
            spans,
            draining: Arc::default(),
            registry: self.registry,
            path: self.config.path.clone(),
            server: self.config.server.clone(),
            access_log,
            started: SystemTime::now(),
        };
        handle.publish_health();
        Ok(handle)
    }
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
    draining: Arc<AtomicBool>,
    started: SystemTime,
}

impl GatewayHandle {
    /// The Pingora `ProxyHttp` implementation.
    pub fn gateway(&self) -> Gateway {
        Gateway {
            state: self.state.clone(),
            metrics: self.metrics.clone(),
            access_log: self.access_log.clone(),
            spans: self.spans.clone(),
            draining: self.draining.clone(),
        }
    }

    /// From now on every answer closes its HTTP/1 connection (`Connection: close`), so
    /// that clients reconnect. Called when the process hands its sockets to a new one
    /// (graceful upgrade) or begins a graceful shutdown; see
    /// [`crate::server::signal_handlers`].
    pub fn start_draining(&self) {
        if !self.draining.swap(true, Ordering::AcqRel) {
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
    /// Requests in flight finish on the snapshot they started with. `[server]`
    /// changes (listeners, threads) need a restart or upgrade and are not applied.
    ///
    /// # Errors
    /// The file is unreadable or invalid; nothing changed.
    pub fn reload(&self) -> Result<String, LoadError> {
        let Some(path) = &self.path else {
            return Err(LoadError::Unreadable {
                path: PathBuf::new(),
                source: std::io::Error::other("this gateway was not loaded from a file"),
            });
        };
        let prior = self.state.load_full();
        match Config::reload_from(path, &self.registry, Some(&prior)) {
            Ok(c) => {
                let digest = c.snapshot.digest.clone();
                self.state.store(c.snapshot);
                self.metrics.reload(true);
                self.publish_health();
                tracing::info!("configuration reloaded, digest {digest}");
                Ok(digest)
            }
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!("reload failed, keeping the running configuration:\n{e}");
                Err(e)
            }
        }
    }

    /// The proxy service on `[server] listen`, with h2c prior knowledge accepted.
    pub fn proxy_service(&self, conf: &Arc<ServerConf>) -> ListenerService<HttpProxy<Gateway>> {
        let mut proxy = HttpProxy::new(self.gateway(), conf.clone());
        proxy.handle_init_modules();
        let mut opts = HttpServerOptions::default();
        opts.h2c = true;
        proxy.server_options = Some(opts);
        ListenerService::new("proxy", self.server.listen.clone(), proxy)
            .tls(self.server.tls.clone())
            .threads(self.server.threads)
    }

    /// The admin service on `[server] admin_listen`, if configured.
    pub fn admin_service(&self) -> Option<ListenerService<HttpServer<Admin>>> {
        let addr = self.server.admin_listen?;
        let admin = Admin {
            handle: self.clone(),
            token: self.server.admin_token.clone(),
            started: self.started,
        };
        Some(ListenerService::new("admin", vec![addr], HttpServer::new_app(admin)).threads(1))
    }

    /// The background service running active health checks of the current config.
    pub fn health_service(&self) -> impl ServiceWithDependents {
        pingora::services::background::background_service(
            "health checks",
            HealthChecker {
                state: self.state.clone(),
                metrics: self.metrics.clone(),
            },
        )
    }

    /// Sets the health gauge of every backend of the current config.
    fn publish_health(&self) {
        for u in self.state.load().upstreams.values() {
            for (addr, _, healthy) in u.backend_health() {
                self.metrics.backend_health(&u.name, &addr, healthy);
            }
        }
    }

    /// Every service of the gateway, ready for `Server::add_boxed_service`.
    pub fn services(&self, conf: &Arc<ServerConf>) -> Vec<Box<dyn ServiceWithDependents>> {
        let mut v: Vec<Box<dyn ServiceWithDependents>> = vec![
            Box::new(self.proxy_service(conf)),
            Box::new(self.health_service()),
        ];
        if let Some(a) = self.admin_service() {
            v.push(Box::new(a));
        }
        v
    }
}
