//! End-to-end tests: the real `tollgate` binary against real upstreams on loopback.

mod support;

mod admin;
mod auth;
mod balancing;
mod cli;
mod dns;
mod examples;
mod hardening;
mod jwt;
mod operations;
mod policies;
mod protocols;
mod proxying;
mod routing;
mod shutdown;
mod tls;
mod traffic;
