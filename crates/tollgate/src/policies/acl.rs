//! `acl`: allow or deny authenticated consumers by group.
//!
//! # Config
//!
//! ```toml
//! [routes.orders.policies.acl]
//! allow_groups = ["partners"]   # the consumer needs one of these (when non-empty)
//! deny_groups = ["suspended"]   # any of these refuses, whatever allow_groups says
//! ```
//!
//! Runs after authentication. A request without an authenticated consumer, a consumer in
//! a denied group, or one in none of the allowed groups gets 403 `forbidden`.

use async_trait::async_trait;
use pingora::proxy::Session;
use pingora::Result;
use serde::Deserialize;

use crate::context::RequestCtx;
use crate::policy::{BuildCtx, BuildError, Flow, Policy, PolicyConfig, Stage};
use crate::reply::{ErrorCode, Reply};

// === Config ===

/// `acl` config. See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// Groups allowed; empty means any group. Default: empty.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// Groups refused. Default: empty.
    #[serde(default)]
    pub deny_groups: Vec<String>,
}

impl PolicyConfig for AclConfig {
    type Policy = Acl;
    fn build(self, _cx: &BuildCtx<'_>) -> Result<Acl, BuildError> {
        if self.allow_groups.is_empty() && self.deny_groups.is_empty() {
            return Err(BuildError::new("acl needs allow_groups or deny_groups"));
        }
        Ok(Acl {
            allow: self.allow_groups,
            deny: self.deny_groups,
        })
    }
}

// === Policy ===

/// Group-based access control.
#[derive(Debug)]
pub struct Acl {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl Acl {
    /// Why `groups` are refused, or `None` when allowed.
    fn check(&self, groups: &[String]) -> Option<&'static str> {
        if groups.iter().any(|g| self.deny.contains(g)) {
            return Some("consumer group is denied on this route");
        }
        if !self.allow.is_empty() && !groups.iter().any(|g| self.allow.contains(g)) {
            return Some("consumer is not in an allowed group");
        }
        None
    }
}

#[async_trait]
impl Policy for Acl {
    fn stage(&self) -> Stage {
        Stage::Authorization
    }

    async fn request_filter(&self, _session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        let refusal = match &cx.consumer {
            None => Some("this route requires an authenticated consumer"),
            Some(c) => self.check(&c.groups),
        };
        Ok(match refusal {
            Some(msg) => Flow::Respond(Reply::refuse_with(ErrorCode::Forbidden, msg)),
            None => Flow::Continue,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(allow: &[&str], deny: &[&str]) -> Acl {
        let cx = BuildCtx::new(std::path::Path::new("."), "p");
        AclConfig {
            allow_groups: allow.iter().map(|s| s.to_string()).collect(),
            deny_groups: deny.iter().map(|s| s.to_string()).collect(),
        }
        .build(&cx)
        .unwrap()
    }

    fn g(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn deny_wins_then_allow_is_required() {
        let a = acl(&["partners"], &["suspended"]);
        assert!(a.check(&g(&["partners"])).is_none());
        assert!(a.check(&g(&["partners", "suspended"])).is_some());
        assert!(a.check(&g(&["staff"])).is_some());
        assert!(a.check(&[]).is_some());
        let deny_only = acl(&[], &["suspended"]);
        assert!(deny_only.check(&g(&["anyone"])).is_none());
    }

    #[test]
    fn empty_acl_is_a_build_error() {
        let cx = BuildCtx::new(std::path::Path::new("."), "p");
        assert!(AclConfig::default().build(&cx).is_err());
        assert!(toml::from_str::<AclConfig>("allow = []").is_err());
    }
}
