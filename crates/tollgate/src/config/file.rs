//! The serde mirror of the TOML file: one struct per table, unknown keys rejected.
//!
//! Values that are checked after parsing (names, addresses, CIDRs, regexes) are
//! `Spanned` so their errors point at the right line and column. The `policies`
//! sub-tables are not here: each is deserialised by its own policy's config type
//! (see [`crate::policy::Registry`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::balance::Balance;
use crate::units::ConfigDuration;

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerFile {
    #[serde(default)]
    pub listen: Vec<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub admin_token: Option<String>,
    pub threads: Option<Spanned<usize>>,
    pub upgrade_sock: Option<String>,
    pub pid_file: Option<String>,
    pub grace_period: Option<ConfigDuration>,
    pub graceful_shutdown_timeout: Option<ConfigDuration>,
    pub allow_empty: Option<bool>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    pub access_log: Option<Spanned<String>>,
    pub limits: Option<Spanned<super::limits::LimitsFile>>,
    #[serde(default)]
    pub tls: Vec<Spanned<TlsFile>>,
    pub redis: Option<Spanned<RedisFile>>,
    pub tracing: Option<Spanned<TracingFile>>,
    pub dns: Option<Spanned<super::dns::DnsFile>>,
    pub outbound: Option<Spanned<super::outbound::OutboundFile>>,
    pub cache: Option<Spanned<CacheFile>>,
}

/// `[server.cache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheFile {
    pub memory: Option<Spanned<crate::units::ConfigSize>>,
    pub max_object: Option<Spanned<crate::units::ConfigSize>>,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamFile {
    pub backends: Spanned<Vec<Spanned<BackendFile>>>,
    pub balance: Option<Spanned<Balance>>,
    pub hash_key: Option<Spanned<String>>,
    #[serde(default)]
    pub tls: UpstreamTls,
    pub sni: Option<String>,
    pub ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub http2: bool,
    pub connect_timeout: Option<ConfigDuration>,
    pub read_timeout: Option<ConfigDuration>,
    pub retries: Option<usize>,
    pub health_check: Option<Spanned<super::health_check::HealthCheckConfig>>,
    pub ip_family: Option<crate::dns::IpFamily>,
}

/// An upstream's `tls`: `true`/`false`, or the table `[upstreams.X.tls]` (TLS on, with
/// a client certificate).
#[derive(Debug, Clone, Default)]
pub(crate) enum UpstreamTls {
    #[default]
    Off,
    On(UpstreamTlsTable),
}

impl UpstreamTls {
    pub(crate) fn on(&self) -> bool {
        matches!(self, Self::On(_))
    }
}

/// `[upstreams.X.tls]`: an empty table is `tls = true`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamTlsTable {
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

impl<'de> Deserialize<'de> for UpstreamTls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UpstreamTls;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false, or a table with client_cert and client_key")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<UpstreamTls, E> {
                Ok(if v {
                    UpstreamTls::On(UpstreamTlsTable::default())
                } else {
                    UpstreamTls::Off
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<UpstreamTls, A::Error> {
                let t = UpstreamTlsTable::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(UpstreamTls::On(t))
            }
        }
        d.deserialize_any(V)
    }
}

/// One backend: `"127.0.0.1:9001"`, `"orders.svc:8080"`,
/// `{ addr = "HOST:PORT", weight = 3 }` or `{ srv = "_http._tcp.orders.svc" }`.
/// Which combinations are valid is checked when the upstream is compiled.
#[derive(Debug, Clone, Default)]
pub(crate) struct BackendFile {
    pub addr: Option<String>,
    pub srv: Option<String>,
    pub weight: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendTable {
    addr: Option<String>,
    srv: Option<String>,
    weight: Option<usize>,
}

impl<'de> Deserialize<'de> for BackendFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BackendFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#"an address "HOST:PORT", or a table { addr = "HOST:PORT", weight = N } or { srv = "NAME" }"#,
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BackendFile, E> {
                Ok(BackendFile {
                    addr: Some(v.to_string()),
                    ..BackendFile::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<BackendFile, A::Error> {
                let t = BackendTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(BackendFile {
                    addr: t.addr,
                    srv: t.srv,
                    weight: t.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `[consumers.NAME]` (without its `policies`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumerFile {
    #[serde(default)]
    pub api_keys: Vec<Spanned<String>>,
    pub basic: Option<Spanned<BasicFile>>,
    pub jwt_subject: Option<Spanned<String>>,
    pub mtls: Option<Spanned<MtlsFile>>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A consumer's client certificate identity: `{ san = "…" }`, `{ san = ["…"] }` or
/// `{ cn = "…" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MtlsFile {
    pub san: Option<OneOrMany>,
    pub cn: Option<String>,
}

/// One string or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(crate) fn values(&self) -> &[String] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        }
    }
}

/// A consumer's Basic credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BasicFile {
    pub username: String,
    pub password_hash: String,
}

/// `[routes.NAME]` (without its `policies`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteFile {
    /// Required; optional here so that its absence is reported with the route's other
    /// errors (see `compile::route`).
    pub paths: Option<Spanned<Vec<Spanned<String>>>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub hosts: Option<Vec<Spanned<String>>>,
    pub headers: Option<BTreeMap<Spanned<String>, String>>,
    /// Required, as `paths`.
    pub upstream: Option<Spanned<String>>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub rewrite: Option<RewriteFile>,
    #[serde(default)]
    pub preserve_host: bool,
}

/// `rewrite = { regex = "...", to = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RewriteFile {
    pub regex: Spanned<String>,
    pub to: String,
}

/// `[server.redis]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedisFile {
    pub url: Spanned<String>,
    pub timeout: Option<ConfigDuration>,
}

/// `[server.tracing]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TracingFile {
    pub otlp_endpoint: Spanned<String>,
    pub service_name: Option<String>,
    pub timeout: Option<ConfigDuration>,
}

/// One `[[server.tls]]` listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    pub listen: Spanned<String>,
    pub certs: Spanned<Vec<CertPair>>,
    pub client_ca: Option<Spanned<String>>,
    pub client_auth: Option<Spanned<String>>,
}

/// `{ cert = "...", key = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertPair {
    pub cert: String,
    pub key: String,
}
