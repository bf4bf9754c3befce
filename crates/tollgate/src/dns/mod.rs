//! DNS for backends named by DNS (fleet.md §13): names and their checks, the
//! `[server.dns]` settings with the system files read, and lookups ([`lookup`]).
//! [`crate::discovery`] keeps the answers and the upstreams in line with them.
//!
//! Nothing here runs on the request path.

pub(crate) mod lookup;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which address records a name is looked up for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum IpFamily {
    /// A and AAAA, asked in parallel.
    #[default]
    Any,
    /// A only.
    V4,
    /// AAAA only.
    V6,
}

impl IpFamily {
    /// The record types this family asks for.
    pub(crate) fn kinds(self) -> &'static [Kind] {
        match self {
            Self::Any => &[Kind::A, Kind::Aaaa],
            Self::V4 => &[Kind::A],
            Self::V6 => &[Kind::Aaaa],
        }
    }
}

/// A record type the gateway looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    A,
    Aaaa,
    Srv,
}

/// `[server.dns]`, checked: what `tollgate check` accepts. The system files are read
/// later, by [`Settings::resolve`], when names are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `None`: the `nameserver` lines of `/etc/resolv.conf`.
    pub resolvers: Option<Vec<SocketAddr>>,
    /// `None`: the `search` line of `/etc/resolv.conf` (when `resolvers` is unset).
    pub search: Option<Vec<String>>,
    /// `None`: `options ndots:N` of `/etc/resolv.conf` (when `resolvers` is unset), or 1.
    pub ndots: Option<u8>,
    /// `None`: off.
    pub hosts_file: Option<PathBuf>,
    pub ip_family: IpFamily,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub negative_ttl: Duration,
    pub timeout: Duration,
    pub attempts: u8,
    pub startup_wait: Duration,
    pub max_addresses: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            resolvers: None,
            search: None,
            ndots: None,
            hosts_file: Some(PathBuf::from(DEFAULT_HOSTS_FILE)),
            ip_family: IpFamily::Any,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            attempts: 2,
            startup_wait: Duration::from_secs(5),
            max_addresses: 64,
        }
    }
}

/// The hosts file used unless `hosts_file` says otherwise.
pub(crate) const DEFAULT_HOSTS_FILE: &str = "/etc/hosts";
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// [`Settings`] with the system files read: what lookups use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub resolvers: Vec<SocketAddr>,
    /// Suffixes, without a leading or final dot.
    pub search: Vec<String>,
    pub ndots: u8,
    /// Lower-case name (no final dot) → its addresses, in file order.
    pub hosts: HashMap<String, Vec<IpAddr>>,
    pub settings: Settings,
}

impl Settings {
    /// Reads `/etc/resolv.conf` (only when `resolvers` is unset) and the hosts file.
    /// A hosts file that cannot be read counts as empty (`check` refused a configured
    /// one that was unreadable then).
    pub(crate) fn resolve(&self) -> Resolved {
        let conf = match &self.resolvers {
            Some(_) => None,
            None => std::fs::read_to_string(RESOLV_CONF).ok(),
        };
        self.resolve_with(conf.as_deref())
    }

    /// [`Settings::resolve`] with `resolv_conf`'s text (`None`: unreadable or not read).
    fn resolve_with(&self, resolv_conf: Option<&str>) -> Resolved {
        let conf = resolv_conf.map(ResolvConf::parse).unwrap_or_default();
        let resolvers = match &self.resolvers {
            Some(r) => r.clone(),
            None if conf.nameservers.is_empty() => vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            None => conf.nameservers.clone(),
        };
        let search = match (&self.search, &self.resolvers) {
            (Some(s), _) => s.clone(),
            (None, None) => conf.search.clone(),
            (None, Some(_)) => Vec::new(),
        };
        let search = search
            .iter()
            .map(|s| s.trim_matches('.').to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        let ndots = match (self.ndots, &self.resolvers) {
            (Some(n), _) => n,
            (None, None) => conf.ndots.unwrap_or(1),
            (None, Some(_)) => 1,
        };
        let hosts = self
            .hosts_file
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| parse_hosts(&s))
            .unwrap_or_default();
        Resolved {
            resolvers,
            search,
            ndots,
            hosts,
            settings: self.clone(),
        }
    }
}

/// What the gateway reads of `/etc/resolv.conf`.
#[derive(Debug, Default, PartialEq, Eq)]
struct ResolvConf {
    nameservers: Vec<SocketAddr>,
    search: Vec<String>,
    ndots: Option<u8>,
}

impl ResolvConf {
    /// `nameserver` (at most 3, as the C library), the last `search` or `domain`
    /// line, and `options ndots:N` (at most 15).
    fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let ip = words.next().and_then(|w| {
                        // a zone index (fe80::1%eth0) is not kept: link-local resolvers
                        // are rare and the index is not portable
                        w.split('%').next()?.parse::<IpAddr>().ok()
                    });
                    if let (Some(ip), true) = (ip, conf.nameservers.len() < 3) {
                        conf.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("search") | Some("domain") => {
                    conf.search = words
                        .filter(|w| valid_name(w))
                        .take(8)
                        .map(str::to_string)
                        .collect();
                }
                Some("options") => {
                    for o in words {
                        if let Some(n) = o.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                            conf.ndots = Some(u8::min(n, 15));
                        }
                    }
                }
                _ => {}
            }
        }
        conf
    }
}

/// A hosts file: `IP NAME [ALIAS…]` lines, `#` comments.
fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut hosts: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(ip) = words
            .next()
            .and_then(|w| w.split('%').next()?.parse::<IpAddr>().ok())
        else {
            continue;
        };
        for name in words {
            let name = normal(name);
            let addrs = hosts.entry(name).or_default();
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
    }
    hosts
}

/// A name as compared: lower case, without a final dot.
pub(crate) fn normal(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Checks a hosts file setting: `None` when it can be read (the default file missing
/// counts as empty), else why not.
pub(crate) fn check_hosts_file(path: &Path, is_default: bool) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(_) => None,
        Err(e) if is_default && e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(format!("cannot read {}: {e}", path.display())),
    }
}

/// A DNS name under fleet.md §13.3: 1..253 characters of letters, digits, `-`, `_`
/// and `.` in labels of 1..63 characters, no label starting or ending with `-`, a last
/// label that is not all digits; a final `.` is allowed.
pub(crate) fn valid_name(name: &str) -> bool {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() || bare.len() > 253 {
        return false;
    }
    let labels_ok = bare.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let last_numeric = bare
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_numeric
}

/// A backend `HOST:PORT`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPort {
    /// An IP literal.
    Ip(SocketAddr),
    /// A DNS name (as written) and a port.
    Name(String, u16),
}

/// Parses a backend address: an IPv4 literal, a bracketed IPv6 literal or a DNS name,
/// then `:PORT` (1..65535). The error says what is wrong.
pub(crate) fn parse_host_port(s: &str) -> Result<HostPort, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return if a.port() == 0 {
            Err("port 0 is not a port".into())
        } else {
            Ok(HostPort::Ip(a))
        };
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("missing port: expected HOST:PORT".into());
    };
    let port = match port.parse::<u32>() {
        Ok(0) => return Err("port 0 is not a port".into()),
        Ok(p) if p > 65535 => return Err(format!("port {p} is above 65535")),
        Ok(p) => p as u16,
        Err(_) => return Err(format!("invalid port {port:?}")),
    };
    if host.starts_with('[') || host.contains(':') || host.parse::<IpAddr>().is_ok() {
        return Err(format!("invalid IP address {host:?}"));
    }
    if !valid_name(host) {
        return Err(format!(
            "{host:?} is neither an IP address nor a DNS name (letters, digits, '-', '_' \
             in dot-separated labels, the last not all digits)"
        ));
    }
    Ok(HostPort::Name(host.to_string(), port))
}

/// Parses a resolver: `IP`, `IP:PORT` or `[IPv6]:PORT` (port 53 by default, never 0).
pub(crate) fn parse_resolver(s: &str) -> Option<SocketAddr> {
    let addr = match s.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, 53),
        Err(_) => s.parse::<SocketAddr>().ok()?,
    };
    (addr.port() != 0).then_some(addr)
}

/// Addresses never taken from DNS (fleet.md §13.12): "this network", link-local (cloud
/// metadata), multicast and reserved; IPv4-mapped IPv6 is judged as its IPv4 address.
pub(crate) fn blocked(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 0 || (o[0] == 169 && o[1] == 254) || o[0] >= 224
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_unspecified() || (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xff00) == 0xff00
        }
    }
}

/// The service name of an SRV name: without its leading labels that begin with `_`
/// (`_http._tcp.orders.svc` → `orders.svc`).
pub(crate) fn service_name(srv: &str) -> &str {
    let mut rest = srv.strip_suffix('.').unwrap_or(srv);
    while let Some(after) = rest.strip_prefix('_').and_then(|_| rest.split_once('.')) {
        rest = after.1;
    }
    rest
}

/// How long an answer is used: its TTL clamped to `min_ttl..max_ttl` (0 counts as
/// `min_ttl`).
pub(crate) fn clamp_ttl(ttl: u32, s: &Settings) -> Duration {
    Duration::from_secs(u64::from(ttl)).clamp(s.min_ttl, s.max_ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules_and_numeric_last_labels_are_refused() {
        for ok in [
            "orders",
            "orders.shop.svc.cluster.local",
            "orders.",
            "_http._tcp.search.svc",
            "a-b.c_d",
            "x1.y2z",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        let long_label = "a".repeat(64);
        let long_name = ["a"; 128].join(".");
        for bad in [
            "",
            ".",
            "127.1",
            "10.0.0.300",
            "a..b",
            "-a.b",
            "a-.b",
            "a b",
            "a.b/c",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn host_port_parses_ips_names_and_says_why_not() {
        assert_eq!(
            parse_host_port("10.0.0.1:80").unwrap(),
            HostPort::Ip("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            parse_host_port("[::1]:8080").unwrap(),
            HostPort::Ip("[::1]:8080".parse().unwrap())
        );
        assert_eq!(
            parse_host_port("Orders.svc.:8080").unwrap(),
            HostPort::Name("Orders.svc.".into(), 8080)
        );
        for (bad, why) in [
            ("orders", "missing port"),
            ("orders:0", "port 0"),
            ("orders:70000", "above 65535"),
            ("orders:http", "invalid port"),
            ("127.1:80", "neither"),
            ("10.0.0.300:80", "neither"),
            ("[::1:80", "invalid IP"),
            ("10.0.0.1:0", "port 0"),
        ] {
            let e = parse_host_port(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn blocked_ranges_include_mapped_ipv4_and_allow_loopback_and_private() {
        for b in [
            "0.1.2.3",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:169.254.169.254",
        ] {
            assert!(blocked(b.parse().unwrap()), "{b}");
        }
        for ok in ["127.0.0.2", "10.0.0.1", "192.168.1.1", "::1", "fd00::1"] {
            assert!(!blocked(ok.parse().unwrap()), "{ok}");
        }
    }

    #[test]
    fn service_names_drop_the_underscore_labels() {
        assert_eq!(service_name("_http._tcp.orders.svc"), "orders.svc");
        assert_eq!(
            service_name("orders.service.consul"),
            "orders.service.consul"
        );
        assert_eq!(service_name("_web._tcp.service.consul."), "service.consul");
    }

    #[test]
    fn resolv_conf_and_hosts_files_are_read_as_the_c_library_does() {
        let conf = ResolvConf::parse(
            "# comment\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\nsearch a.svc b.svc\n\
             nameserver 10.0.0.2\nnameserver 10.0.0.3\noptions ndots:5 timeout:1\n",
        );
        assert_eq!(conf.nameservers.len(), 3, "at most 3: {conf:?}");
        assert_eq!(conf.search, ["a.svc", "b.svc"]);
        assert_eq!(conf.ndots, Some(5));
        let hosts = parse_hosts("127.0.0.2 Orders orders.local # c\n::1 orders\nbad line\n");
        assert_eq!(
            hosts["orders"],
            [
                "127.0.0.2".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(hosts["orders.local"].len(), 1);
    }

    #[test]
    fn resolv_conf_gives_the_defaults_only_when_resolvers_are_not_set() {
        let conf = "nameserver 10.96.0.10\nsearch shop.svc svc\noptions ndots:5\n";
        let r = Settings::default().resolve_with(Some(conf));
        assert_eq!(
            r.resolvers,
            ["10.96.0.10:53".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(r.search, ["shop.svc", "svc"]);
        assert_eq!(r.ndots, 5);
        // none in it, or unreadable: 127.0.0.1:53
        for conf in [Some("# empty\n"), None] {
            let r = Settings::default().resolve_with(conf);
            assert_eq!(r.resolvers, ["127.0.0.1:53".parse::<SocketAddr>().unwrap()]);
            assert_eq!((r.search.len(), r.ndots), (0, 1));
        }
        // resolvers set: search and ndots do not come from the file
        let own = Settings {
            resolvers: Some(vec!["10.0.0.9:5353".parse().unwrap()]),
            ..Settings::default()
        };
        let r = own.resolve_with(Some(conf));
        assert_eq!(
            r.resolvers,
            ["10.0.0.9:5353".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!((r.search.len(), r.ndots), (0, 1));
        let set = Settings {
            search: Some(vec!["a.svc".into()]),
            ndots: Some(3),
            ..own
        };
        let r = set.resolve_with(None);
        assert_eq!((r.search.clone(), r.ndots), (vec!["a.svc".to_string()], 3));
    }

    #[test]
    fn ttls_are_clamped_and_zero_counts_as_min() {
        let s = Settings::default();
        assert_eq!(clamp_ttl(0, &s), Duration::from_secs(1));
        assert_eq!(clamp_ttl(30, &s), Duration::from_secs(30));
        assert_eq!(clamp_ttl(86400, &s), Duration::from_secs(300));
    }
}
