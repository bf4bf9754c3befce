//! Building a Pingora [`Server`] from the `[server]` table, and the SIGHUP reloader.

use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::config::Config;
use crate::gateway::GatewayHandle;

/// A Pingora server configured from `[server]` (threads, pid file, upgrade socket,
/// grace periods). With `upgrade`, it takes over the listening sockets of the running
/// instance through `upgrade_sock`.
pub fn build(config: &Config, upgrade: bool) -> Server {
    let s = &config.server;
    let secs = |d: std::time::Duration| Some(d.as_secs_f64().ceil() as u64);
    let conf = ServerConf {
        threads: s.threads,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        grace_period_seconds: secs(s.grace_period),
        graceful_shutdown_timeout_seconds: secs(s.graceful_shutdown_timeout),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    server
}

struct Reloader(GatewayHandle);

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot watch SIGHUP, reload by signal is off: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received, reloading");
                    let _ = self.0.reload();
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// A background service that reloads the configuration on SIGHUP.
pub fn sighup_reloader(handle: GatewayHandle) -> impl pingora::services::ServiceWithDependents {
    background_service("sighup reloader", Reloader(handle))
}
