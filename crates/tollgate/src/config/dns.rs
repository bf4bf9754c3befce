//! `[server.dns]` (fleet.md §13.2): the resolver settings for backends named by DNS,
//! checked offline. `check` never contacts DNS nor reads `/etc/resolv.conf`.
//!
//! ```toml
//! [server.dns]
//! resolvers = ["10.96.0.10:53"]   # default: /etc/resolv.conf's nameservers
//! search = ["shop.svc.cluster.local"]
//! ndots = 1
//! hosts_file = "/etc/hosts"       # "" turns it off
//! ip_family = "any"               # any | v4 | v6
//! min_ttl = "1s"
//! max_ttl = "5m"
//! negative_ttl = "5s"
//! timeout = "2s"
//! attempts = 2
//! startup_wait = "5s"
//! max_addresses = 64
//! ```

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::dns::{self, IpFamily, Settings};
use crate::units::ConfigDuration;

/// `[server.dns]` as written, each value with its place in the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnsFile {
    pub resolvers: Option<Spanned<Vec<Spanned<String>>>>,
    pub search: Option<Spanned<Vec<Spanned<String>>>>,
    pub ndots: Option<Spanned<i64>>,
    pub hosts_file: Option<Spanned<String>>,
    pub ip_family: Option<Spanned<IpFamily>>,
    pub min_ttl: Option<Spanned<ConfigDuration>>,
    pub max_ttl: Option<Spanned<ConfigDuration>>,
    pub negative_ttl: Option<Spanned<ConfigDuration>>,
    pub timeout: Option<Spanned<ConfigDuration>>,
    pub attempts: Option<Spanned<i64>>,
    pub startup_wait: Option<Spanned<ConfigDuration>>,
    pub max_addresses: Option<Spanned<i64>>,
}

/// One error: the key under `server.dns`, where, and what.
pub(crate) type DnsError = (&'static str, Range<usize>, String);

const MS: fn(u64) -> Duration = Duration::from_millis;
const S: fn(u64) -> Duration = Duration::from_secs;

impl DnsFile {
    /// Checks every value; relative `hosts_file` paths resolve against `config_dir`.
    pub(crate) fn resolve(&self, config_dir: &Path) -> Result<Settings, Vec<DnsError>> {
        let mut s = Settings::default();
        let mut errors = Vec::new();
        if let Some(list) = &self.resolvers {
            if list.get_ref().is_empty() || list.get_ref().len() > 8 {
                errors.push(("resolvers", list.span(), "needs 1 to 8 entries".into()));
            }
            let mut ok = Vec::new();
            for r in list.get_ref() {
                match dns::parse_resolver(r.get_ref()) {
                    Some(a) => ok.push(a),
                    None => errors.push((
                        "resolvers",
                        r.span(),
                        format!(
                            "invalid resolver {:?}: expected IP, IP:PORT or [IPv6]:PORT, \
                             port not 0",
                            r.get_ref()
                        ),
                    )),
                }
            }
            s.resolvers = Some(ok);
        }
        if let Some(list) = &self.search {
            if list.get_ref().len() > 8 {
                errors.push(("search", list.span(), "at most 8 suffixes".into()));
            }
            for n in list.get_ref() {
                if !dns::valid_name(n.get_ref()) {
                    errors.push((
                        "search",
                        n.span(),
                        format!("{:?} is not a DNS name", n.get_ref()),
                    ));
                }
            }
            s.search = Some(list.get_ref().iter().map(|n| n.get_ref().clone()).collect());
        }
        if let Some(n) = &self.ndots {
            match u8::try_from(*n.get_ref()) {
                Ok(v) if v <= 15 => s.ndots = Some(v),
                _ => errors.push(("ndots", n.span(), "must be between 0 and 15".into())),
            }
        }
        if let Some(h) = &self.hosts_file {
            s.hosts_file = match h.get_ref().as_str() {
                "" => None,
                p => {
                    let path = config_dir.join(p);
                    if let Some(why) = dns::check_hosts_file(&path, false) {
                        errors.push(("hosts_file", h.span(), why));
                    }
                    Some(path)
                }
            };
        }
        if let Some(f) = &self.ip_family {
            s.ip_family = *f.get_ref();
        }
        let mut time = |key, v: &Option<Spanned<ConfigDuration>>, lo: Duration, hi: Duration| {
            let v = v.as_ref()?;
            let d = v.get_ref().get();
            if d < lo || d > hi {
                errors.push((
                    key,
                    v.span(),
                    format!(
                        "must be between {} and {}",
                        humantime::format_duration(lo),
                        humantime::format_duration(hi)
                    ),
                ));
            }
            Some(d)
        };
        s.min_ttl = time("min_ttl", &self.min_ttl, MS(100), S(3600)).unwrap_or(s.min_ttl);
        s.max_ttl = time("max_ttl", &self.max_ttl, MS(0), S(86400)).unwrap_or(s.max_ttl);
        s.negative_ttl =
            time("negative_ttl", &self.negative_ttl, MS(100), S(3600)).unwrap_or(s.negative_ttl);
        s.timeout = time("timeout", &self.timeout, MS(10), S(30)).unwrap_or(s.timeout);
        s.startup_wait =
            time("startup_wait", &self.startup_wait, S(0), S(60)).unwrap_or(s.startup_wait);
        if s.max_ttl < s.min_ttl {
            let at = self.max_ttl.as_ref().map_or(0..0, |m| m.span());
            errors.push(("max_ttl", at, "must not be below min_ttl".into()));
        }
        if let Some(n) = &self.attempts {
            match u8::try_from(*n.get_ref()) {
                Ok(v @ 1..=5) => s.attempts = v,
                _ => errors.push(("attempts", n.span(), "must be between 1 and 5".into())),
            }
        }
        if let Some(n) = &self.max_addresses {
            match usize::try_from(*n.get_ref()) {
                Ok(v @ 1..=1024) => s.max_addresses = v,
                _ => errors.push((
                    "max_addresses",
                    n.span(),
                    "must be between 1 and 1024".into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(src: &str) -> Vec<&'static str> {
        let f: DnsFile = toml::from_str(src).unwrap();
        match f.resolve(Path::new(".")) {
            Ok(_) => vec![],
            Err(e) => e.into_iter().map(|(k, _, _)| k).collect(),
        }
    }

    #[test]
    fn defaults_and_a_full_table_are_accepted() {
        let f: DnsFile = toml::from_str(
            r#"resolvers = ["10.96.0.10:53", "10.96.0.11", "[::1]:5353"]
               search = ["shop.svc.cluster.local"]
               ndots = 5
               hosts_file = ""
               ip_family = "v4"
               min_ttl = "100ms"
               max_ttl = "24h"
               negative_ttl = "1h"
               timeout = "10ms"
               attempts = 5
               startup_wait = "0s"
               max_addresses = 1024"#,
        )
        .unwrap();
        let s = f.resolve(Path::new(".")).unwrap();
        assert_eq!(s.resolvers.as_ref().unwrap()[1].port(), 53);
        assert_eq!(s.hosts_file, None);
        assert_eq!(s.ip_family, IpFamily::V4);
        assert_eq!(
            DnsFile::default().resolve(Path::new(".")).unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn a_relative_hosts_file_is_read_beside_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hosts"), "127.0.0.2 orders.test\n").unwrap();
        let f: DnsFile = toml::from_str("hosts_file = \"hosts\"").unwrap();
        let s = f.resolve(dir.path()).unwrap();
        assert_eq!(
            s.hosts_file.as_deref(),
            Some(dir.path().join("hosts").as_path())
        );
        assert_eq!(s.resolve().hosts["orders.test"].len(), 1);
        let missing = f.resolve(&dir.path().join("elsewhere")).unwrap_err();
        assert_eq!(
            missing[0].0, "hosts_file",
            "a configured file must be readable"
        );
    }

    #[test]
    fn every_bad_value_is_reported() {
        assert_eq!(
            keys(
                r#"resolvers = ["10.0.0.1:0", "nosuch", "1.2.3.4:53:1"]
                   search = ["ok.svc", "bad..name"]
                   ndots = 16
                   hosts_file = "/nonexistent/hosts"
                   min_ttl = "10ms"
                   timeout = "31s"
                   attempts = 0
                   startup_wait = "61s"
                   max_addresses = 1025"#
            ),
            [
                "resolvers",
                "resolvers",
                "resolvers",
                "search",
                "ndots",
                "hosts_file",
                "min_ttl",
                "timeout",
                "startup_wait",
                "attempts",
                "max_addresses"
            ]
        );
        assert_eq!(keys("resolvers = []"), ["resolvers"]);
        assert_eq!(keys("min_ttl = \"10s\""), Vec::<&str>::new());
        assert_eq!(keys("min_ttl = \"10m\"\nmax_ttl = \"5m\""), ["max_ttl"]);
        assert_eq!(
            keys(&format!("search = [{}]", ["\"a\""; 9].join(","))),
            ["search"]
        );
        assert!(toml::from_str::<DnsFile>("ip_family = \"v5\"").is_err());
    }
}
