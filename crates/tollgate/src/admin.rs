//! The admin listener: `/healthz`, `/metrics`, `/admin/status`, `/admin/config`,
//! `POST /admin/reload`, `DELETE /admin/cache`. With `admin_token`, `/admin/*` needs `Authorization: Bearer`.

use std::time::SystemTime;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::config::LoadError;
use crate::consumer::secret_eq;
use crate::discovery::NameReport;
use crate::gateway::GatewayHandle;
use crate::reply::error_body;

/// Serves the admin endpoints.
pub struct Admin {
    pub(crate) handle: GatewayHandle,
    pub(crate) token: Option<String>,
    pub(crate) started: SystemTime,
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
            ("/admin/reload", _) if method == http::Method::POST => {
                match self.handle.reload().await {
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
                }
            }
            ("/admin/cache", _) if method == http::Method::DELETE => {
                let query = session.req_header().uri.query().unwrap_or("");
                purge_answer(self.handle.purge_cache(query))
            }
            ("/admin/cache", _) => {
                let mut r = json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "use DELETE",
                );
                r.headers_mut().insert(
                    http::header::ALLOW,
                    http::HeaderValue::from_static("DELETE"),
                );
                r
            }
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
                            .map(|b| {
                                serde_json::json!({
                                    "addr": b.addr.to_string(),
                                    "weight": b.weight,
                                    "healthy": b.healthy,
                                    "name": b.name.as_deref(),
                                })
                            })
                            .collect();
                        let mut v = serde_json::json!({ "backends": backends });
                        if u.has_names() {
                            v["names"] =
                                self.handle.dns().report(u).iter().map(name_json).collect();
                        }
                        (u.name.clone(), v)
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

/// The answer to a purge (`cache.md` §4): 200 with the count, 404 when nothing
/// matched, 400 for bad selectors.
fn purge_answer(purged: Result<usize, String>) -> Response<Vec<u8>> {
    let id = crate::request_id::generate();
    let (status, body) = match purged {
        Ok(n) if n > 0 => (
            StatusCode::OK,
            serde_json::json!({ "purged": n, "scope": "instance" }),
        ),
        Ok(_) => (
            StatusCode::NOT_FOUND,
            serde_json::json!({
                "error": "not_found",
                "message": "no cache entry matched",
                "request_id": id,
                "purged": 0,
                "scope": "instance",
            }),
        ),
        Err(why) => (
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "bad_request", "message": why, "request_id": id }),
        ),
    };
    reply(status, "application/json", body.to_string().into_bytes())
}

/// One `names` entry of `/admin/status` (fleet.md §13.9).
fn name_json(r: &NameReport) -> serde_json::Value {
    let time = |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_seconds(t).to_string());
    let mut v = serde_json::json!({
        "name": r.name,
        "type": if r.srv.is_some() { "srv" } else { "host" },
        "source": if r.from_hosts { "hosts_file" } else { "dns" },
        "addresses": r.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "result": r.result,
        "stale": r.stale,
        "resolved_at": time(r.resolved_at),
        "expires_at": time(r.expires_at),
        "error": r.error,
    });
    if let Some(records) = &r.srv {
        v["records"] = records
            .iter()
            .map(|s| {
                serde_json::json!({
                    "target": s.target,
                    "port": s.port,
                    "priority": s.priority,
                    "weight": s.weight,
                })
            })
            .collect();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::secret_eq;

    #[test]
    fn secret_eq_compares_exactly() {
        assert!(secret_eq(b"secret", b"secret"));
        assert!(!secret_eq(b"secret", b"secreT"));
        assert!(!secret_eq(b"secret", b"secret2"));
        assert!(!secret_eq(b"", b"x"));
        assert!(secret_eq(b"", b""));
    }
}
