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
//! use tollgate::{Config, GatewayBuilder};
//!
//! let config = Config::load("examples/quickstart.toml").expect("valid config");
//! let mut server = tollgate::server::build(&config, false);
//! let gateway = GatewayBuilder::new(&config).build().expect("access log opens");
//! for service in gateway.services(&server.configuration) {
//!     server.add_boxed_service(service);
//! }
//! server.run_forever();
//! ```
//!
//! See `docs/architecture.md` for the path of a request through the phases.

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod config;
pub mod consumer;
pub mod context;
pub mod forwarding;
pub mod health;
pub mod metrics;
pub mod otlp;
pub mod policy;
pub mod proxy;
pub mod reply;
pub mod request_id;
pub mod request_key;
pub mod router;
pub mod runtime;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod trace;

mod gateway;

pub use async_trait::async_trait;
pub use config::{Config, ConfigError, ConfigErrors, LoadError};
pub use consumer::{Consumer, Consumers};
pub use context::RequestCtx;
pub use gateway::{GatewayBuilder, GatewayHandle};
pub use pingora;
pub use pingora::proxy::Session;
pub use proxy::Gateway;
pub use reply::{ErrorCode, Reply};
pub use runtime::Snapshot;
