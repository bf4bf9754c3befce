//! `basic_auth`: authenticate a consumer with HTTP Basic credentials.
//!
//! # Config
//!
//! ```toml
//! [routes.orders.policies.basic_auth]
//! realm = "tollgate"         # default
//! hide_credentials = true    # default: Authorization is not forwarded upstream
//!
//! [consumers.alice]
//! basic = { username = "alice", password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..." }
//! ```
//!
//! Passwords are checked against the consumer's argon2 or bcrypt hash on a blocking
//! thread, so slow hashing never stalls other requests. A user name that no consumer
//! has is checked against a dummy argon2 hash, so it costs the same as a wrong
//! password. Missing, malformed or wrong credentials get 401 `unauthorized` with
//! `WWW-Authenticate: Basic realm="…"`.

use async_trait::async_trait;
use base64::Engine;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use serde::Deserialize;

use crate::context::RequestCtx;
use crate::policy::{BuildCtx, BuildError, Flow, Policy, PolicyConfig, Stage};
use crate::reply::{ErrorCode, Reply};

// === Config ===

/// `basic_auth` config. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// The realm named in the challenge. Default: `tollgate`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Remove `Authorization` before forwarding. Default: `true`.
    #[serde(default = "crate::policies::default_true")]
    pub hide_credentials: bool,
}

fn default_realm() -> String {
    "tollgate".into()
}

impl PolicyConfig for BasicAuthConfig {
    type Policy = BasicAuth;
    fn build(self, _cx: &BuildCtx<'_>) -> Result<BasicAuth, BuildError> {
        let bad = |c: char| c == '"' || c == '\\' || c.is_control();
        if self.realm.chars().any(bad) {
            return Err(BuildError::field(
                "realm",
                "a realm cannot contain quotes, backslashes or control characters",
            ));
        }
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{}\"", self.realm))
            .map_err(|_| BuildError::field("realm", "the realm must be visible ASCII"))?;
        Ok(BasicAuth {
            challenge,
            hide: self.hide_credentials,
        })
    }
}

// === Policy ===

/// Authenticates with HTTP Basic credentials.
#[derive(Debug)]
pub struct BasicAuth {
    challenge: HeaderValue,
    hide: bool,
}

/// Longest `Authorization` value looked at.
const MAX_CREDENTIALS: usize = 4096;

/// Splits `Basic base64(user:password)`.
pub(crate) fn parse_basic(value: &[u8]) -> Option<(String, Vec<u8>)> {
    if value.len() > MAX_CREDENTIALS {
        return None;
    }
    let s = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

impl BasicAuth {
    fn refuse(&self, message: &str) -> Flow {
        Flow::Respond(
            Reply::refuse_with(ErrorCode::Unauthorized, message)
                .header(http::header::WWW_AUTHENTICATE, self.challenge.clone()),
        )
    }
}

#[async_trait]
impl Policy for BasicAuth {
    fn stage(&self) -> Stage {
        Stage::Authentication
    }

    async fn request_filter(&self, session: &mut Session, cx: &mut RequestCtx) -> Result<Flow> {
        let Some(value) = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
        else {
            return Ok(self.refuse("missing Basic credentials"));
        };
        let Some((user, password)) = parse_basic(value.as_bytes()) else {
            return Ok(self.refuse("malformed Basic credentials"));
        };
        let Some(consumers) = cx.consumers_shared() else {
            return Error::e_explain(ErrorType::InternalError, "basic_auth ran before routing");
        };
        let verified =
            tokio::task::spawn_blocking(move || consumers.verify_basic(&user, &password))
                .await
                .map_err(|e| {
                    Error::because(ErrorType::InternalError, "password check failed", e)
                })?;
        match verified {
            Some(c) => {
                cx.consumer = Some(c);
                Ok(Flow::Continue)
            }
            None => Ok(self.refuse("invalid user name or password")),
        }
    }

    fn upstream_request_filter(&self, _cx: &mut RequestCtx, req: &mut RequestHeader) -> Result<()> {
        if self.hide {
            req.remove_header(&http::header::AUTHORIZATION);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn parses_basic_credentials() {
        let v = format!("Basic {}", b64("alice:pa:ss"));
        assert_eq!(
            parse_basic(v.as_bytes()),
            Some(("alice".into(), b"pa:ss".to_vec()))
        );
        let v = format!("basic  {}", b64("bob:"));
        assert_eq!(parse_basic(v.as_bytes()), Some(("bob".into(), Vec::new())));
        assert_eq!(
            parse_basic(format!("Bearer {}", b64("a:b")).as_bytes()),
            None
        );
        assert_eq!(parse_basic(b"Basic !!!"), None);
        assert_eq!(
            parse_basic(format!("Basic {}", b64("nocolon")).as_bytes()),
            None
        );
        assert_eq!(
            parse_basic(format!("Basic {}", "A".repeat(5000)).as_bytes()),
            None
        );
    }

    #[test]
    fn config_defaults_and_realm_checks() {
        let c: BasicAuthConfig = toml::from_str("").unwrap();
        assert_eq!(c.realm, "tollgate");
        assert!(c.hide_credentials);
        let cx = BuildCtx::new(std::path::Path::new("."), "p");
        let p = c.build(&cx).unwrap();
        assert_eq!(p.challenge, "Basic realm=\"tollgate\"");
        let bad = BasicAuthConfig {
            realm: "a\"b".into(),
            hide_credentials: true,
        };
        assert_eq!(bad.build(&cx).unwrap_err().field.as_deref(), Some("realm"));
    }
}
