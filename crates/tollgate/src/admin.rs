//! The admin listener: `/healthz`, `/metrics`, `/admin/status`, `/admin/config`,
//! `POST /admin/reload`. With `admin_token`, `/admin/*` needs `Authorization: Bearer`.

use std::time::SystemTime;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::config::LoadError;
use crate::consumer::secret_eq;
use crate::gateway::GatewayHandle;
use crate::reply::error_body;

/// Serves the admin endpoints.
pub struct Admin {
    pub(crate) handle: GatewayHandle,
    pub(crate) token: Option<String>,
    pub(crate) started: SystemTime,
}

/// Keys whose values are secrets, wherever they appear in the config.
const SECRET_KEYS: &[&str] = &["admin_token", "api_keys", "password_hash", "secret"];

/// The config source as JSON with every secret replaced by `"***"`.
pub(crate) fn redacted_config(src: &str) -> serde_json::Value {
    let mut v = toml::from_str::<toml::Table>(src)
        .ok()
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or(serde_json::Value::Null);
    redact(&mut v, "");
    v
}

fn redact(v: &mut serde_json::Value, parent: &str) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                // a Redis URL may carry a password
                if SECRET_KEYS.contains(&k.as_str()) || (k == "url" && parent == "redis") {
                    *val = serde_json::Value::String("***".into());
                } else {
                    redact(val, k);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| redact(i, parent)),
        _ => {}
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Vec<u8>> {
    reply(
        status,
        "application/json",
        error_body(code, message, "").to_vec(),
    )
}

fn authorized(token: Option<&str>, session: &ServerSession) -> bool {
    let Some(token) = token else { return true };
    let given = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    secret_eq(given.as_bytes(), token.as_bytes())
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.clone();
        let get = method == http::Method::GET;
        match (path.as_str(), get) {
            ("/healthz", true) => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            ("/metrics", true) => {
                self.handle.publish_health();
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.handle.metrics().render(),
                )
            }
            (p, _) if p.starts_with("/admin/") && !authorized(self.token.as_deref(), session) => {
                let mut r = json_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing or wrong admin token",
                );
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                r
            }
            ("/admin/reload", _) if method == http::Method::POST => match self.handle.reload() {
                Ok(done) => {
                    let body = serde_json::json!({
                        "ok": true,
                        "config_digest": done.digest,
                        "needs_restart": done.needs_restart,
                    });
                    reply(
                        StatusCode::OK,
                        "application/json",
                        body.to_string().into_bytes(),
                    )
                }
                Err(e) => {
                    let errors: Vec<String> = match &e {
                        LoadError::Invalid(errs) => {
                            errs.errors().iter().map(|x| x.to_string()).collect()
                        }
                        other => vec![other.to_string()],
                    };
                    let body = serde_json::json!({
                        "error": "bad_request",
                        "message": "the configuration is invalid; nothing changed",
                        "errors": errors,
                    });
                    reply(
                        StatusCode::BAD_REQUEST,
                        "application/json",
                        body.to_string().into_bytes(),
                    )
                }
            },
            ("/admin/config", true) => {
                let body = self.handle.snapshot().redacted.to_string().into_bytes();
                reply(StatusCode::OK, "application/json", body)
            }
            ("/admin/status", true) => {
                let snap = self.handle.snapshot();
                let upstreams: serde_json::Map<String, serde_json::Value> = snap
                    .upstreams
                    .values()
                    .map(|u| {
                        let backends: Vec<_> = u
                            .backend_health()
                            .into_iter()
                            .map(|(addr, w, healthy)| serde_json::json!({"addr": addr, "weight": w, "healthy": healthy}))
                            .collect();
                        (u.name.clone(), serde_json::json!({ "backends": backends }))
                    })
                    .collect();
                let uptime = SystemTime::now()
                    .duration_since(self.started)
                    .unwrap_or_default()
                    .as_secs();
                let body = serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_seconds": uptime,
                    "config_digest": snap.digest,
                    "loaded_at": humantime::format_rfc3339_seconds(snap.loaded_at).to_string(),
                    "routes": snap.routes.len(),
                    "upstreams": upstreams,
                });
                reply(
                    StatusCode::OK,
                    "application/json",
                    body.to_string().into_bytes(),
                )
            }
            ("/healthz" | "/metrics" | "/admin/status", false) => json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET",
            ),
            _ => json_error(StatusCode::NOT_FOUND, "no_route", "unknown admin endpoint"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{redacted_config, secret_eq};

    #[test]
    fn secrets_are_redacted_everywhere() {
        let v = redacted_config(
            "[server]\nadmin_token = \"t0p\"\n[server.redis]\nurl = \"redis://:pw@h:6379\"\n\
             [consumers.a]\napi_keys = [\"k1\", \"k2\"]\nbasic = { username = \"a\", password_hash = \"$argon2id$x\" }\n\
             [routes.r.policies.jwt_auth]\nsecret = \"s3\"\nalgorithms = [\"HS256\"]\n",
        );
        let text = v.to_string();
        for secret in ["t0p", "pw@", "k1", "k2", "$argon2id$x", "s3"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(v["consumers"]["a"]["basic"]["username"], "a");
        assert_eq!(
            v["routes"]["r"]["policies"]["jwt_auth"]["algorithms"][0],
            "HS256"
        );
        assert_eq!(v["server"]["admin_token"], "***");
    }

    #[test]
    fn secret_eq_compares_exactly() {
        assert!(secret_eq(b"secret", b"secret"));
        assert!(!secret_eq(b"secret", b"secreT"));
        assert!(!secret_eq(b"secret", b"secret2"));
        assert!(!secret_eq(b"", b"x"));
        assert!(secret_eq(b"", b""));
    }
}
