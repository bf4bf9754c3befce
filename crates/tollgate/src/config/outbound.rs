//! `[server.outbound]`: the gateway's HTTP client for policies that call other
//! services (see [`crate::policy::HttpClient`]).
//!
//! ```toml
//! [server.outbound]
//! timeout = "10s"          # default; 1ms..=10m
//! max_in_flight = 256      # default; 1..=100000
//! ca_file = "certs/ca.pem" # default: the system's roots
//! ```

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::policy::outbound::{Outbound, Settings};
use crate::units::ConfigDuration;

/// `[server.outbound]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutboundFile {
    pub timeout: Option<Spanned<ConfigDuration>>,
    pub max_in_flight: Option<Spanned<i64>>,
    pub ca_file: Option<Spanned<String>>,
}

/// One error: the key under `server.outbound`, where, and what.
pub(crate) type OutboundError = (&'static str, Range<usize>, String);

impl OutboundFile {
    /// Checks every value; a relative `ca_file` resolves against `config_dir`.
    pub(crate) fn resolve(&self, config_dir: &Path) -> Result<Settings, Vec<OutboundError>> {
        let mut s = Settings::default();
        let mut errors = Vec::new();
        if let Some(t) = &self.timeout {
            let d = t.get_ref().get();
            if d < Duration::from_millis(1) || d > Duration::from_secs(600) {
                errors.push((
                    "timeout",
                    t.span(),
                    "timeout must be between 1ms and 10m".into(),
                ));
            } else {
                s.timeout = d;
            }
        }
        if let Some(n) = &self.max_in_flight {
            match usize::try_from(*n.get_ref()) {
                Ok(v @ 1..=100_000) => s.max_in_flight = v,
                _ => errors.push((
                    "max_in_flight",
                    n.span(),
                    format!("max_in_flight must be 1 to 100000, not {}", n.get_ref()),
                )),
            }
        }
        if let Some(f) = &self.ca_file {
            let path = config_dir.join(f.get_ref());
            match std::fs::read(&path) {
                Ok(pem) => match Outbound::check_ca(&pem) {
                    Ok(()) => s.ca_pem = Some(pem),
                    Err(e) => {
                        errors.push(("ca_file", f.span(), format!("{}: {e}", path.display())))
                    }
                },
                Err(e) => errors.push((
                    "ca_file",
                    f.span(),
                    format!("cannot read {}: {e}", path.display()),
                )),
            }
        }
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(errors)
        }
    }
}
