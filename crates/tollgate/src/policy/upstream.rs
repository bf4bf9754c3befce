//! Where a request goes when a policy chooses: what [`Policy::upstream_peer`] returns.
//!
//! [`Policy::upstream_peer`]: crate::policy::Policy::upstream_peer

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// The name of a configured upstream, checked when the policy was built
/// ([`BuildCtx::upstream`](crate::policy::BuildCtx::upstream)): a policy can only
/// choose upstreams that `tollgate check` has seen exist.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UpstreamName(pub(crate) Arc<str>);

impl UpstreamName {
    /// The upstream's name, as in its `[upstreams.NAME]` table.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UpstreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for UpstreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A backend that is not in the configuration: an address, and whether to speak TLS
/// to it (verified against the system roots, with `sni` as the server name).
///
/// The request keeps its route's upstream settings (timeouts, retries, HTTP version);
/// an ad-hoc peer has no health checks and no passive health, and its `Host` is `sni`
/// with TLS, else the address.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Peer {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Whether to speak TLS.
    pub tls: bool,
    /// The TLS server name, and `Host` with TLS; empty: none.
    pub sni: String,
}

impl Peer {
    /// A plain-HTTP peer at `addr`.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: false,
            sni: String::new(),
        }
    }

    /// A TLS peer at `addr`, verified as `sni`.
    pub fn tls(addr: SocketAddr, sni: impl Into<String>) -> Self {
        Self {
            addr,
            tls: true,
            sni: sni.into(),
        }
    }
}

/// Where a policy sends the request instead of its route's upstream.
///
/// Whatever is chosen, the gateway's machinery follows it: the chosen upstream's
/// balancing, active and passive health, retries (to its other backends) and timeouts,
/// and the access log's `upstream` field and the `upstream` label of
/// `tollgate_upstream_duration_seconds`. A choice that has no healthy backend is
/// answered 503 `no_healthy_upstream`, as on any route.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// Another configured upstream, balanced as its table says.
    Upstream(UpstreamName),
    /// One backend of a configured upstream, by address (as in its `backends`, or as
    /// DNS gave it): only it is tried; while it is unhealthy or not (or no longer)
    /// one of the upstream's, the answer is 503 `no_healthy_upstream`.
    Backend(UpstreamName, SocketAddr),
    /// An address outside the configuration.
    Peer(Peer),
}
