//! End-to-end tests: the real `tollgate` binary against real upstreams on loopback.

mod support;

mod admin;
mod auth;
mod balancing;
mod cache;
mod cli;
mod compress;
mod dns;
mod examples;
mod ext_authz;
mod hardening;
mod identity;
mod introspection;
mod jwt;
mod mtls;
mod operations;
mod policies;
mod protocols;
mod proxying;
/// `examples/redact.rs` as a module, for its unit tests (written with
/// `tollgate::testing`); as an example target it is built as a program, whose tests
/// cargo would not run.
#[path = "../../examples/redact.rs"]
#[allow(dead_code)]
mod redact_example;
mod routing;
mod shutdown;
mod tls;
mod traffic;
mod transform;
mod validate;
mod xml;
