#![warn(unreachable_pub)]
//! Tollgate: a programmable API gateway built on Cloudflare Pingora.
//!
//! Routes, upstreams, consumers and policies are declared in TOML (see
//! `docs/config.md`), compiled once into a [`Snapshot`], and served by [`Gateway`],
//! an implementation of Pingora's `ProxyHttp`. Policies, built-in or your own, implement
//! [`policy::Policy`] and are enabled per route from TOML through a [`policy::Registry`].
//!
//! # Quick start
//!
//! ```no_run
//! let gateway = tollgate::GatewayBuilder::new().build_from_file("examples/quickstart.toml")?;
//! let mut server = gateway.pingora_server(false);
//! gateway.add_to(&mut server);
//! gateway.run(server); // until SIGTERM (drains), SIGQUIT (hands over) or SIGINT
//! # Ok::<(), tollgate::StartError>(())
//! ```
//!
//! # What is public
//!
//! The crate root and [`policy`] are the API; the rest is private. Two kinds of users
//! need it:
//!
//! - **Writing a policy** ([`policy`], `docs/writing-policies.md`): implement
//!   [`policy::Policy`] and [`policy::PolicyConfig`], read the request through
//!   [`Session`] and [`RequestCtx`] (route, consumer, typed per-request extensions),
//!   refuse with a [`Reply`] of an [`ErrorCode`] (a built-in one, or your own with
//!   [`ErrorCode::custom`]), register with [`GatewayBuilder::policy`]. [`units`] parses
//!   durations and sizes in your config type. The built-in policies, in [`policies`],
//!   use nothing else; their config types are public so their options are documented.
//! - **Running or embedding a gateway** (`docs/embedding.md`): [`GatewayBuilder`]
//!   (policies, then a config file) gives a [`GatewayHandle`];
//!   [`GatewayHandle::add_to`] puts its services into a Pingora
//!   [`Server`](pingora::server::Server), one you build with
//!   [`GatewayHandle::pingora_server`] or one your program already has, and
//!   [`GatewayHandle::run`] runs it with the gateway's drain ([`ShutdownSignals`]).
//!   [`Config`] and [`config`] load and validate files; [`metrics::Metrics`] shares a
//!   Prometheus registry; [`ListenerService`], [`Guarded`], [`Admin`] and [`Gateway`]
//!   are the services' types, for a program that picks them one by one;
//!   [`jwt_crypto`] is the JWT signature backend, for a program that also uses
//!   `jsonwebtoken`.
//!
//! [`pingora`], [`async_trait`](macro@async_trait) and [`bytes`] are re-exported so
//! your code uses the same versions. [`router`] is a leaf with no gateway knowledge,
//! public for the benchmarks.
//!
//! The modules are layered, and nothing below reaches anything above
//! (`docs/architecture.md`): the assembly (`gateway`, `server`, `service`, `admin`),
//! the request path (`proxy`, `guard`, `access_log`, `drain`), [`config`], the compiled
//! runtime (`runtime`, `balance`, `health`), the built-in [`policies`], the [`policy`]
//! API (with `context`, `consumer`, `store`, `request_key`), and leaves ([`router`],
//! `reply`, [`units`], [`json`], [`media`], [`xml`], `trace`, `request_id`, [`metrics`], `forwarding`, `tls`, `otlp`).

pub mod cache;
pub mod compress;
pub mod config;
pub mod json;
pub mod jwt_crypto;
pub mod media;
pub mod metrics;
pub mod policies;
pub mod policy;
pub mod router;
pub mod units;
pub mod xml;

mod access_log;
mod admin;
mod balance;
mod blocking;
mod client_cert;
mod consumer;
mod context;
mod discovery;
mod dns;
mod drain;
mod endpoint;
mod forwarding;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
mod guard;
mod health;
mod otlp;
mod proxy;
mod reply;
mod request_id;
mod request_key;
mod runtime;
mod server;
mod service;
mod store;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
mod tls;
mod trace;

pub use admin::Admin;
pub use async_trait::async_trait;
pub use bytes;
pub use config::{Config, ConfigError, ConfigErrors, LoadError};
pub use consumer::{Consumer, Consumers};
pub use context::RequestCtx;
pub use gateway::{GatewayBuilder, GatewayHandle, Reloaded, StartError};
pub use guard::Guarded;
pub use pingora;
pub use pingora::proxy::Session;
pub use proxy::{Exchange, Gateway};
pub use reply::{CustomCode, CustomCodeError, ErrorCode, Reply};
pub use runtime::Snapshot;
pub use server::ShutdownSignals;
pub use service::ListenerService;
