//! Building a Pingora [`Server`] from the `[server]` table, and the signal handlers
//! (SIGHUP reload, SIGUSR1 access-log reopen).

use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::config::ServerSettings;
use crate::gateway::GatewayHandle;

/// A Pingora server configured from `[server]` (threads, pid file, upgrade socket,
/// grace periods). With `upgrade`, it takes over the listening sockets of the running
/// instance through `upgrade_sock`.
pub fn build(s: &ServerSettings, upgrade: bool) -> Server {
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

struct Signals {
    handle: GatewayHandle,
    phases: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
}

#[async_trait]
impl BackgroundService for Signals {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut hup, mut usr1) = match (
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined1()),
        ) {
            (Ok(h), Ok(u)) => (h, u),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(
                    "cannot watch SIGHUP/SIGUSR1, reload and log reopening by signal are off: {e}"
                );
                return;
            }
        };
        let mut phases = self.phases.lock().ok().and_then(|mut p| p.take());
        loop {
            let phase = async {
                match phases.as_mut() {
                    Some(p) => p.recv().await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received, reloading");
                    let _ = self.handle.reload();
                }
                _ = usr1.recv() => {
                    tracing::info!("SIGUSR1 received, reopening the access log");
                    self.handle.reopen_logs();
                }
                p = phase => match p {
                    Some(
                        ExecutionPhase::GracefulUpgradeTransferringFds
                        | ExecutionPhase::GracefulTerminate,
                    ) => self.handle.start_draining(),
                    Some(_) => {}
                    None => phases = None,
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// A background service that reloads the configuration on SIGHUP, reopens the access
/// log on SIGUSR1, and makes the gateway drain ([`GatewayHandle::start_draining`]) when
/// `server` starts a graceful upgrade (SIGQUIT) or shutdown (SIGTERM).
pub fn signal_handlers(
    handle: GatewayHandle,
    server: &Server,
) -> impl pingora::services::ServiceWithDependents {
    background_service(
        "signal handlers",
        Signals {
            handle,
            phases: std::sync::Mutex::new(Some(server.watch_execution_phase())),
        },
    )
}
