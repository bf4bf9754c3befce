//! Building a Pingora [`Server`] from the `[server]` table, the shutdown signals
//! (SIGTERM and SIGQUIT drain, SIGINT exits) and the other signal handlers (SIGHUP
//! reload, SIGUSR1 access-log reopen).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::config::ServerSettings;
use crate::drain::Drain;
use crate::gateway::GatewayHandle;

/// A Pingora server configured from `[server]` (threads, pid file, upgrade socket).
/// With `upgrade`, it takes over the listening sockets of the running instance through
/// `upgrade_sock`.
///
/// Pingora's own grace period and shutdown timeout are zero: the gateway drains itself,
/// with `[server] grace_period` and `graceful_shutdown_timeout`, before Pingora is told
/// to shut down. Run the server with [`GatewayHandle::run`] (or pass
/// [`GatewayHandle::shutdown_signals`] to [`Server::run`]); `run_forever` would skip
/// the drain.
pub(crate) fn build(s: &ServerSettings, upgrade: bool) -> Server {
    let conf = ServerConf {
        threads: s.threads,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
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
                    // its own task: a reload may wait for DNS lookups (startup_wait),
                    // and this loop must go on answering signals and phases meanwhile
                    let handle = self.handle.clone();
                    tokio::spawn(async move {
                        let _ = handle.reload().await;
                    });
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
pub(crate) fn signal_handlers(
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

/// The shutdown signals of a gateway, for [`Server::run`]: what the gateway does on each
/// before Pingora is told to shut down.
///
/// - SIGTERM: answers close their connections; the listeners keep accepting for
///   `grace_period`, then stop; requests in flight (HTTP/2 streams and WebSocket
///   tunnels included) get up to `graceful_shutdown_timeout` to finish; then Pingora
///   shuts down, cutting whatever is left, and the process exits 0.
/// - SIGQUIT (graceful upgrade): the listening sockets are sent to the new process on
///   `upgrade_sock` at once, then the same drain as SIGTERM (both processes accept
///   during `grace_period`).
/// - SIGINT, also during a drain: exit at once.
///
/// Pingora's own grace period and shutdown timeout come after this and should be zero,
/// as in [`crate::GatewayHandle::pingora_server`].
#[derive(Debug)]
pub struct ShutdownSignals {
    pub(crate) drain: Arc<Drain>,
    pub(crate) grace_period: Duration,
    pub(crate) timeout: Duration,
    pub(crate) upgrade_sock: String,
}

impl ShutdownSignals {
    /// Sends the listening sockets to the upgrading process (blocking: Pingora retries
    /// for a few seconds while the new process is not ready).
    async fn hand_over(&self) {
        let Some(fds) = self.drain.listen_fds() else {
            tracing::warn!("SIGQUIT: no listening sockets to hand over");
            return;
        };
        let sock = self.upgrade_sock.clone();
        let sent = tokio::task::spawn_blocking(move || {
            let fds = fds.lock();
            if fds.is_empty() {
                return Ok(0);
            }
            fds.send_to_sock(sock.as_str()).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match sent {
            Ok(_) => tracing::info!("listening sockets sent to the new process"),
            Err(e) => tracing::error!("cannot send the listening sockets to the new process: {e}"),
        }
    }

    /// The drain after SIGTERM or SIGQUIT; returns when Pingora may shut down.
    async fn drain(&self, upgrade: bool) {
        self.drain.start();
        if upgrade {
            self.hand_over().await;
        }
        tracing::info!(
            "draining: answers close their connections; accepting for {:?} more",
            self.grace_period
        );
        tokio::time::sleep(self.grace_period).await;
        self.drain.stop_accepting();
        let n = self.drain.in_flight();
        tracing::info!(
            "stopped accepting; waiting up to {:?} for {n} requests in flight",
            self.timeout
        );
        match self.drain.wait_idle(self.timeout).await {
            (0, 0) => tracing::info!("drained: no request in flight"),
            (left, h2) => tracing::warn!(
                "graceful_shutdown_timeout reached: cutting {left} requests in flight \
                 ({h2} HTTP/2 connections still open)"
            ),
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for ShutdownSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut quit, mut term, mut int) = match (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(q), Ok(t), Ok(i)) => (q, t, i),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                tracing::error!("cannot watch SIGTERM/SIGQUIT/SIGINT: {e}");
                eprintln!("tollgate: cannot watch SIGTERM/SIGQUIT/SIGINT: {e}");
                return std::future::pending().await;
            }
        };
        let upgrade = tokio::select! {
            _ = int.recv() => return ShutdownSignal::FastShutdown,
            _ = term.recv() => false,
            _ = quit.recv() => true,
        };
        tracing::info!("{} received", if upgrade { "SIGQUIT" } else { "SIGTERM" });
        tokio::select! {
            () = self.drain(upgrade) => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::FastShutdown,
        }
    }
}
