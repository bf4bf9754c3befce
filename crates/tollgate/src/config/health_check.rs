//! `[upstreams.NAME.health_check]` as written, and its build into Pingora's check and
//! the runtime's schedule.
//!
//! ```toml
//! [upstreams.orders.health_check]
//! kind = "http"          # http (default) | tcp
//! path = "/healthz"      # http only; a 2xx answer is healthy. Default: /
//! interval = "1s"        # default
//! timeout = "1s"         # default: the smaller of interval and 1s
//! unhealthy_after = 2    # consecutive failures. Default: 2
//! healthy_after = 1      # consecutive successes. Default: 1
//! ```

use std::time::Duration;

use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use serde::Deserialize;

use crate::runtime::HealthSchedule;
use crate::units::ConfigDuration;

/// The kind of check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CheckKind {
    /// An HTTP GET of `path`; 2xx is healthy. The default.
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
}

/// `[upstreams.NAME.health_check]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthCheckConfig {
    /// `http` or `tcp`. Default: `http`.
    #[serde(default)]
    pub kind: CheckKind,
    /// Path of the HTTP check. Default: `/`.
    pub path: Option<String>,
    /// Time between checks. Default: `1s`.
    pub interval: Option<ConfigDuration>,
    /// Deadline of one check. Default: the smaller of `interval` and 1 s.
    pub timeout: Option<ConfigDuration>,
    /// Consecutive failures that make a backend unhealthy. Default: 2.
    pub unhealthy_after: Option<usize>,
    /// Consecutive successes that make it healthy again. Default: 1.
    pub healthy_after: Option<usize>,
}

impl HealthCheckConfig {
    /// Consecutive results that flip a backend: (to healthy, to unhealthy).
    pub(crate) fn thresholds(&self) -> (usize, usize) {
        (
            self.healthy_after.unwrap_or(1),
            self.unhealthy_after.unwrap_or(2),
        )
    }

    /// Builds Pingora's check and the schedule; `host` is the `Host` to send and `sni`
    /// the TLS server name.
    ///
    /// # Errors
    /// `(key, message)` for an invalid setting.
    pub(crate) fn build(
        &self,
        host: &str,
        sni: &str,
        peer_tls: &crate::tls::PeerTls,
    ) -> Result<(Box<dyn HealthCheck + Send + Sync>, HealthSchedule), (String, String)> {
        let tls = peer_tls.on;
        let interval = self.interval.map_or(Duration::from_secs(1), |d| d.get());
        if interval < Duration::from_millis(50) {
            return Err(("interval".into(), "interval must be at least 50ms".into()));
        }
        let timeout = self
            .timeout
            .map_or(interval.min(Duration::from_secs(1)), |d| d.get());
        let unhealthy_after = self.unhealthy_after.unwrap_or(2);
        let healthy_after = self.healthy_after.unwrap_or(1);
        if unhealthy_after == 0 || healthy_after == 0 {
            let key = if unhealthy_after == 0 {
                "unhealthy_after"
            } else {
                "healthy_after"
            };
            return Err((key.into(), "must be at least 1".into()));
        }
        let check: Box<dyn HealthCheck + Send + Sync> = match self.kind {
            CheckKind::Tcp => {
                if self.path.is_some() {
                    return Err(("path".into(), "path only applies to kind = \"http\"".into()));
                }
                let mut hc = if tls {
                    TcpHealthCheck::new_tls(sni)
                } else {
                    TcpHealthCheck::new()
                };
                hc.consecutive_failure = unhealthy_after;
                hc.consecutive_success = healthy_after;
                hc.peer_template.options.connection_timeout = Some(timeout);
                hc.peer_template.options.total_connection_timeout = Some(timeout);
                peer_tls.apply_ca(&mut hc.peer_template.options);
                hc
            }
            CheckKind::Http => {
                let path = self.path.as_deref().unwrap_or("/");
                if !path.starts_with('/') || path.parse::<http::Uri>().is_err() {
                    return Err(("path".into(), format!("invalid check path {path:?}")));
                }
                let mut hc = HttpHealthCheck::new(host, tls);
                hc.peer_template.sni = sni.to_string();
                let mut req = pingora::http::RequestHeader::build("GET", path.as_bytes(), None)
                    .map_err(|e| ("path".to_string(), e.to_string()))?;
                req.append_header("host", host)
                    .map_err(|e| ("path".to_string(), e.to_string()))?;
                req.append_header("user-agent", "tollgate-health-check")
                    .map_err(|e| ("path".to_string(), e.to_string()))?;
                hc.req = req;
                hc.consecutive_failure = unhealthy_after;
                hc.consecutive_success = healthy_after;
                hc.peer_template.options.connection_timeout = Some(timeout);
                hc.peer_template.options.total_connection_timeout = Some(timeout);
                hc.peer_template.options.read_timeout = Some(timeout);
                peer_tls.apply(&mut hc.peer_template);
                hc.validator = Some(Box::new(|resp: &pingora::http::ResponseHeader| {
                    if resp.status.is_success() {
                        Ok(())
                    } else {
                        pingora::Error::e_explain(
                            pingora::ErrorType::HTTPStatus(resp.status.as_u16()),
                            "not 2xx",
                        )
                    }
                }));
                Box::new(hc)
            }
        };
        Ok((check, HealthSchedule::new(interval)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(src: &str) -> HealthCheckConfig {
        toml::from_str(src).unwrap()
    }

    #[test]
    fn builds_http_and_tcp_checks_and_refuses_bad_settings() {
        assert!(config("path = \"/healthz\"\ninterval = \"200ms\"")
            .build("h", "h", &Default::default())
            .is_ok());
        assert!(config("kind = \"tcp\"")
            .build("h", "h", &Default::default())
            .is_ok());
        assert_eq!(
            config("kind = \"tcp\"\npath = \"/x\"")
                .build("h", "h", &Default::default())
                .err()
                .unwrap()
                .0,
            "path"
        );
        assert_eq!(
            config("unhealthy_after = 0")
                .build("h", "h", &Default::default())
                .err()
                .unwrap()
                .0,
            "unhealthy_after"
        );
        assert_eq!(
            config("interval = \"1ms\"")
                .build("h", "h", &Default::default())
                .err()
                .unwrap()
                .0,
            "interval"
        );
        assert_eq!(
            config("path = \"healthz\"")
                .build("h", "h", &Default::default())
                .err()
                .unwrap()
                .0,
            "path"
        );
        assert!(toml::from_str::<HealthCheckConfig>("kind = \"udp\"").is_err());
    }
}
