//! Pingora services for the gateway and its admin listener.
//!
//! [`ListenerService`] wraps Pingora's listening service. Before delegating to it, it
//! binds each address itself and records the socket in Pingora's listener table under
//! its real address, so that:
//! - port 0 works and the bound address is reported ([`ListenerService::bound`] and a
//!   `tollgate: NAME listening on ADDR` line on stderr);
//! - a bind failure is a clear error, not a panic in a worker: the service logs it and
//!   does not serve (the rest of the server keeps running), or, with
//!   [`ListenerService::exit_on_bind_error`] (the binary), the process exits with status 1;
//! - a graceful upgrade still hands the very same sockets to the new process.

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::TlsSettings;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::listening::Service as PingoraListening;
use pingora::services::Service;
use tokio::net::TcpSocket;
use tokio::sync::watch;

use crate::drain::Drain;
use crate::tls::{HelloDeadline, TlsListener};

/// Accept backlog of the listening sockets.
const BACKLOG: u32 = 65535;

/// Accepts connections on its addresses and serves them with an HTTP app.
pub struct ListenerService<A> {
    name: String,
    addrs: Vec<SocketAddr>,
    tls: Vec<TlsListener>,
    hello_deadline: Option<std::time::Duration>,
    inner: PingoraListening<A>,
    threads: Option<usize>,
    exit_on_bind_error: bool,
    bound_tx: watch::Sender<Vec<SocketAddr>>,
    drain: Option<Arc<Drain>>,
}

impl<A> ListenerService<A> {
    /// A service named `name` serving `app` on `addrs` (port 0 picks a free port).
    pub fn new(name: impl Into<String>, addrs: Vec<SocketAddr>, app: A) -> Self {
        let name = name.into();
        Self {
            inner: PingoraListening::new(name.clone(), app),
            name,
            addrs,
            tls: Vec::new(),
            hello_deadline: None,
            threads: None,
            exit_on_bind_error: false,
            bound_tx: watch::channel(Vec::new()).0,
            drain: None,
        }
    }

    /// Worker threads for this service's runtime. Default: the server's `threads`.
    #[must_use]
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// Exit the process with status 1 when an address cannot be bound (what a
    /// stand-alone gateway wants). Default: log the error and do not serve.
    #[must_use]
    pub fn exit_on_bind_error(mut self, exit: bool) -> Self {
        self.exit_on_bind_error = exit;
        self
    }

    /// Adds TLS listeners (certificates chosen by SNI, ALPN h2 and http/1.1).
    #[must_use]
    pub(crate) fn tls(mut self, listeners: Vec<TlsListener>) -> Self {
        self.tls = listeners;
        self
    }

    /// On the TLS listeners, drop a connection whose client sends no ClientHello within
    /// `deadline` (see [`HelloDeadline`]). Default: Pingora's 60 s for the whole
    /// handshake alone.
    #[must_use]
    pub(crate) fn tls_hello_deadline(mut self, deadline: std::time::Duration) -> Self {
        self.hello_deadline = Some(deadline);
        self
    }

    /// Stop accepting when `drain` says so (its grace period is over), before the
    /// server's own shutdown; and give it the server's listening sockets for a hand-over.
    #[must_use]
    pub(crate) fn drain(mut self, drain: Arc<Drain>) -> Self {
        self.drain = Some(drain);
        self
    }

    /// The bound addresses, published once every listener is bound.
    pub fn bound(&self) -> watch::Receiver<Vec<SocketAddr>> {
        self.bound_tx.subscribe()
    }
}

impl<A> ListenerService<A> {
    /// Reports a listener that cannot start; exits if so configured.
    fn fail(&self, msg: &str) {
        tracing::error!("{}: {msg}; this service does not serve", self.name);
        eprintln!("tollgate: {}: {msg}", self.name);
        if self.exit_on_bind_error {
            std::process::exit(1);
        }
    }
}

/// Binds `addr` with `SO_REUSEADDR` and a large backlog; returns the socket and its
/// real address.
fn bind(addr: SocketAddr) -> std::io::Result<(std::net::TcpListener, SocketAddr)> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    let l = sock.listen(BACKLOG)?.into_std()?;
    l.set_nonblocking(true)?;
    let actual = l.local_addr()?;
    Ok((l, actual))
}

/// A shutdown watch that turns `true` when `server` does or when `stop` does, whichever
/// is first.
fn stop_early(mut server: ShutdownWatch, mut stop: watch::Receiver<bool>) -> ShutdownWatch {
    let (tx, rx) = watch::channel(*server.borrow() || *stop.borrow());
    tokio::spawn(async move {
        tokio::select! {
            _ = server.wait_for(|s| *s) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        tx.send_replace(true);
        // kept until the last receiver is gone: a closed channel would wake them
        tx.closed().await;
    });
    rx
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for ListenerService<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let mut bound = Vec::new();
        if let Some(d) = self.hello_deadline.filter(|_| !self.tls.is_empty()) {
            let hello: pingora::listeners::PreTlsCallback = std::sync::Arc::new(HelloDeadline(d));
            self.inner.endpoints().set_pre_tls_callback(hello);
        }
        let plain = self.addrs.iter().map(|a| (*a, None));
        let tls = self
            .tls
            .iter()
            .map(|t| (t.addr, Some((t.resolver.clone(), t.client.clone()))));
        let all: Vec<_> = plain.chain(tls).collect();
        for (addr, resolver) in all {
            let inherited = fds
                .as_ref()
                .is_some_and(|f| f.lock().get(&addr.to_string()).is_some());
            let actual = if inherited {
                addr
            } else {
                match bind(addr) {
                    Ok((l, actual)) => {
                        if let Some(f) = &fds {
                            f.lock().add(actual.to_string(), l.into_raw_fd());
                        }
                        actual
                    }
                    Err(e) => {
                        self.fail(&format!("cannot listen on {addr}: {e}"));
                        return;
                    }
                }
            };
            let kind = match resolver {
                None => {
                    self.inner.add_tcp(&actual.to_string());
                    ""
                }
                Some((r, client)) => {
                    let settings = match &client {
                        // the verified client certificate is kept with the connection
                        Some(_) => {
                            TlsSettings::with_callbacks(Box::new(crate::tls::KeepClientCert))
                        }
                        None => TlsSettings::intermediate("", ""),
                    };
                    let mut settings = match settings {
                        Ok(s) => s,
                        Err(e) => {
                            self.fail(&format!("TLS settings for {actual}: {e}"));
                            return;
                        }
                    };
                    if let Some(c) = client {
                        settings.set_client_cert_verifier(c.verifier);
                    }
                    settings.set_cert_resolver(r);
                    settings.enable_h2();
                    self.inner
                        .add_tls_with_settings(&actual.to_string(), None, settings);
                    "-tls"
                }
            };
            tracing::info!("{}{kind} listening on {actual}", self.name);
            eprintln!("tollgate: {}{kind} listening on {actual}", self.name);
            bound.push(actual);
        }
        let _ = self.bound_tx.send(bound);
        let shutdown = match &self.drain {
            Some(drain) => {
                if let Some(f) = &fds {
                    drain.keep_listen_fds(f.clone());
                }
                stop_early(shutdown, drain.stop_watch())
            }
            None => shutdown,
        };
        Service::start_service(&mut self.inner, fds, shutdown, listeners_per_fd).await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        self.threads
    }
}
