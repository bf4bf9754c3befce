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
//! server.run_forever();
//! # Ok::<(), tollgate::StartError>(())
//! ```
//!
//! # What is public
//!
//! Three things are meant to be used from outside, and the surface is kept to them:
//!
//! - **Running a gateway**: [`GatewayBuilder`] (policies, then a config file) gives a
//!   [`GatewayHandle`]; [`GatewayHandle::add_to`] puts its services into a Pingora
//!   [`Server`](pingora::server::Server) — one you build with
//!   [`GatewayHandle::pingora_server`], or one your program already has
//!   (`docs/embedding.md`). [`Config`] and [`config`] load and validate files;
//!   [`metrics`] and [`server`] are the pieces [`GatewayHandle`] uses, for programs that
//!   assemble their own.
//! - **Writing a policy** ([`policy`], `docs/writing-policies.md`): implement
//!   [`policy::Policy`] and [`policy::PolicyConfig`], read the request through
//!   [`Session`] and [`RequestCtx`] (route, consumer, typed per-request extensions),
//!   refuse with a [`Reply`] of an [`ErrorCode`], register with
//!   [`GatewayBuilder::policy`]. The built-in policies are modules of [`policy`]; their
//!   config types are public so their options are documented here.
//! - **Types those two need**: [`Snapshot`] and [`runtime`] (the compiled config),
//!   [`consumer`], [`context`], [`reply`], [`trace`], [`tls`], [`store`], [`otlp`],
//!   [`service`], [`router`] (also used by the benchmarks), [`jwt_crypto`] (the JWT
//!   signature backend, for programs that also use `jsonwebtoken`), and re-exports of
//!   [`pingora`] and [`async_trait`](macro@async_trait) so your code uses the same versions.
//!
//! Everything else (balancing, health checking, forwarding rules, the access log
//! writer, the admin app) is private. See `docs/architecture.md` for the path of a
//! request through the phases.

pub mod config;
pub mod consumer;
pub mod context;
pub mod guard;
pub mod jwt_crypto;
pub mod metrics;
pub mod otlp;
pub mod policies;
pub mod policy;
pub mod proxy;
pub mod reply;
pub mod router;
pub mod runtime;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod trace;
pub mod units;

mod access_log;
mod admin;
mod balance;
mod drain;
mod forwarding;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
mod health;
mod request_id;
mod request_key;

pub use async_trait::async_trait;
pub use config::{Config, ConfigError, ConfigErrors, LoadError};
pub use consumer::{Consumer, Consumers};
pub use context::RequestCtx;
pub use gateway::{GatewayBuilder, GatewayHandle, Reloaded, StartError};
pub use pingora;
pub use pingora::proxy::Session;
pub use proxy::Gateway;
pub use reply::{ErrorCode, Reply};
pub use runtime::Snapshot;
