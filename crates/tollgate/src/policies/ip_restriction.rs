//! `ip_restriction`: allow or deny client IPs by CIDR.
//!
//! # Config
//!
//! ```toml
//! [routes.admin.policies.ip_restriction]
//! allow = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
//! deny = ["10.9.0.0/16"]
//! ```
//!
//! Runs first of all policies. The client IP is the peer's address, or, when the peer
//! is one of `[server] trusted_proxies`, the right-most `X-Forwarded-For` address that
//! is not itself trusted. A denied IP, or one outside a non-empty `allow`, gets 403
//! `forbidden`. IPv4-mapped IPv6 addresses are matched as IPv4.

use std::net::IpAddr;

use async_trait::async_trait;
use ipnet::IpNet;
use pingora::proxy::Session;
use pingora::Result;
use serde::Deserialize;

use crate::context::RequestCtx;
use crate::policy::{BuildCtx, BuildError, Flow, Policy, PolicyConfig, Stage};
use crate::reply::{ErrorCode, Reply};

// === Config ===

/// `ip_restriction` config. See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRestrictionConfig {
    /// CIDRs or addresses allowed; empty means any. Default: empty.
    #[serde(default)]
    pub allow: Vec<String>,
    /// CIDRs or addresses refused. Default: empty.
    #[serde(default)]
    pub deny: Vec<String>,
}

fn nets(field: &str, list: &[String]) -> Result<Vec<IpNet>, BuildError> {
    list.iter()
        .map(|s| {
            crate::units::parse_net(s).ok_or_else(|| {
                BuildError::field(
                    field,
                    format!("invalid CIDR {s:?}: expected an address or ADDRESS/PREFIX"),
                )
            })
        })
        .collect()
}

impl PolicyConfig for IpRestrictionConfig {
    type Policy = IpRestriction;
    fn build(self, _cx: &BuildCtx<'_>) -> Result<IpRestriction, BuildError> {
        if self.allow.is_empty() && self.deny.is_empty() {
            return Err(BuildError::new("ip_restriction needs allow or deny"));
        }
        Ok(IpRestriction {
            allow: nets("allow", &self.allow)?,
            deny: nets("deny", &self.deny)?,
        })
    }
}

// === Policy ===

/// CIDR-based access control on the client IP.
#[derive(Debug)]
pub struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpRestriction {
    /// True when `ip` may pass.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

#[async_trait]
impl Policy for IpRestriction {
    fn stage(&self) -> Stage {
        Stage::Access
    }

    async fn request_filter(&self, _session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        Ok(match cx.client_ip {
            Some(ip) if self.allows(ip) => Flow::Continue,
            _ => Flow::Respond(Reply::refuse_with(
                ErrorCode::Forbidden,
                "client address is not allowed",
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(allow: &[&str], deny: &[&str]) -> Result<IpRestriction, BuildError> {
        let cx = BuildCtx::new(std::path::Path::new("."), "p");
        IpRestrictionConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        }
        .build(&cx)
    }

    #[test]
    fn deny_wins_and_allow_restricts_v4_and_v6() {
        let r = build(
            &["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"],
            &["10.9.0.0/16"],
        )
        .unwrap();
        assert!(r.allows("10.1.2.3".parse().unwrap()));
        assert!(!r.allows("10.9.2.3".parse().unwrap()));
        assert!(r.allows("192.0.2.7".parse().unwrap()));
        assert!(!r.allows("192.0.2.8".parse().unwrap()));
        assert!(r.allows("2001:db8::1".parse().unwrap()));
        assert!(!r.allows("2001:db9::1".parse().unwrap()));
        assert!(
            r.allows("::ffff:10.1.2.3".parse().unwrap()),
            "v4-mapped matches as v4"
        );
        assert!(!r.allows("::ffff:10.9.2.3".parse().unwrap()));
    }

    #[test]
    fn bad_cidrs_are_build_errors_on_their_field() {
        assert_eq!(
            build(&["10.0.0.0/33"], &[]).unwrap_err().field.as_deref(),
            Some("allow")
        );
        assert_eq!(
            build(&[], &["nope"]).unwrap_err().field.as_deref(),
            Some("deny")
        );
        assert!(build(&[], &[]).is_err());
    }
}
