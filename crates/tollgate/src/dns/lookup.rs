//! One lookup of one name and record type (fleet.md §13.4): the hosts file, then the
//! search list, each candidate asked of the resolvers in order, `attempts` rounds,
//! over UDP with EDNS0 (1232 bytes) and again over TCP when the answer is truncated;
//! CNAME chains followed to 8 links.
//!
//! The wire protocol is `hickory-net`'s: a fresh random ID and UDP source port per
//! query, answers accepted only from the resolver with the query's ID and question.
//! The loop over candidates, resolvers and rounds is the gateway's own, so that
//! NXDOMAIN and NODATA are final and every failure moves on (fleet.md §13.4).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::op::{Message, ResponseCode};
use hickory_net::proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::NetError;

use super::{normal, Kind, Resolved};

/// The most CNAME links followed for one lookup.
pub(crate) const MAX_CNAME_LINKS: usize = 8;
/// The most records of one answer that are read (a 64 KiB TCP answer holds fewer).
const MAX_RECORDS: usize = 4096;

/// How a lookup ended (fleet.md §13.4 "Result").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    NxDomain,
    NoData,
    ServFail,
    Refused,
    Timeout,
    Error,
}

impl Status {
    /// The `result` label and admin value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NxDomain => "nxdomain",
            Self::NoData => "nodata",
            Self::ServFail => "servfail",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }

    /// NXDOMAIN or NODATA: an answer that the name has no such records.
    pub(crate) fn is_negative(self) -> bool {
        matches!(self, Self::NxDomain | Self::NoData)
    }

    /// A failed lookup: the last good records are kept.
    pub(crate) fn is_failure(self) -> bool {
        !matches!(self, Self::Ok | Self::NxDomain | Self::NoData)
    }
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Lower case, without the final dot; empty for the root ("no service here").
    pub target: String,
}

/// The records of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Records {
    Addrs(Vec<IpAddr>),
    Srv(Vec<SrvRecord>),
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub status: Status,
    /// With `Status::Ok`.
    pub records: Option<Records>,
    /// The smallest TTL of the records used, CNAME links included (with records).
    pub ttl: u32,
    /// For a failure: what went wrong, for the log and `/admin/status`.
    pub error: Option<String>,
    /// Answered from the hosts file: never expires, never counted as a lookup.
    pub from_hosts: bool,
}

impl Found {
    fn failed(status: Status, error: String) -> Self {
        Self {
            status,
            records: None,
            ttl: 0,
            error: Some(error),
            from_hosts: false,
        }
    }

    fn negative(status: Status) -> Self {
        Self {
            status,
            records: None,
            ttl: 0,
            error: None,
            from_hosts: false,
        }
    }
}

fn rtype(kind: Kind) -> RecordType {
    match kind {
        Kind::A => RecordType::A,
        Kind::Aaaa => RecordType::AAAA,
        Kind::Srv => RecordType::SRV,
    }
}

/// Looks `name` up for `kind` under `r`: the hosts file, else DNS with the search
/// list. `name` may end with `.` (absolute); SRV targets are passed absolute.
pub(crate) async fn lookup(r: &Resolved, name: &str, kind: Kind) -> Found {
    if kind != Kind::Srv {
        if let Some(addrs) = r.hosts.get(&normal(name)) {
            let wanted: Vec<IpAddr> = addrs
                .iter()
                .copied()
                .filter(|ip| ip.is_ipv4() == (kind == Kind::A))
                .collect();
            let status = if wanted.is_empty() {
                Status::NoData
            } else {
                Status::Ok
            };
            return Found {
                status,
                records: (!wanted.is_empty()).then_some(Records::Addrs(wanted)),
                ttl: u32::MAX,
                error: None,
                from_hosts: true,
            };
        }
    }
    let mut saw_nodata = false;
    for candidate in candidates(name, r) {
        // a suffixed form too long to be a name cannot exist: as NXDOMAIN
        let Ok(qname) = Name::from_ascii(&candidate) else {
            continue;
        };
        let found = chase(r, qname, kind).await;
        match found.status {
            Status::NoData => saw_nodata = true,
            Status::NxDomain => {}
            _ => return found,
        }
    }
    Found::negative(if saw_nodata {
        Status::NoData
    } else {
        Status::NxDomain
    })
}

/// The absolute names to try for `name`, in order (fleet.md §13.4 "Search list").
pub(crate) fn candidates(name: &str, r: &Resolved) -> Vec<String> {
    if name.ends_with('.') {
        return vec![name.to_string()];
    }
    let own = format!("{name}.");
    let suffixed = r.search.iter().map(|s| format!("{name}.{s}."));
    let dots = name.bytes().filter(|b| *b == b'.').count();
    if dots < usize::from(r.ndots) {
        suffixed.chain(std::iter::once(own)).collect()
    } else {
        std::iter::once(own).chain(suffixed).collect()
    }
}

/// Asks for `qname` and follows CNAMEs, asking for a chain's target when an answer
/// ends in a CNAME without the target's records.
async fn chase(r: &Resolved, mut qname: Name, kind: Kind) -> Found {
    let mut links = 0;
    let mut ttl = u32::MAX;
    let mut seen = HashSet::new();
    loop {
        let message = match ask(r, &qname, rtype(kind)).await {
            Ok(m) => m,
            Err(failed) => return failed,
        };
        if message.metadata.response_code == ResponseCode::NXDomain {
            return Found::negative(Status::NxDomain);
        }
        match follow(&message, &qname, kind, &mut links, &mut ttl, &mut seen) {
            Chain::Records(records) => {
                return Found {
                    status: Status::Ok,
                    records: Some(records),
                    ttl,
                    error: None,
                    from_hosts: false,
                }
            }
            Chain::NoData => return Found::negative(Status::NoData),
            Chain::Ask(target) => qname = target,
            Chain::Bad(why) => return Found::failed(Status::Error, why),
        }
    }
}

enum Chain {
    Records(Records),
    NoData,
    /// The chain ends at this name without its records: ask for it.
    Ask(Name),
    Bad(String),
}

/// Walks one answer from `qname` through its CNAME records to records of the type.
fn follow(
    m: &Message,
    qname: &Name,
    kind: Kind,
    links: &mut usize,
    ttl: &mut u32,
    seen: &mut HashSet<String>,
) -> Chain {
    let wanted = rtype(kind);
    let answers = &m.answers[..m.answers.len().min(MAX_RECORDS)];
    let mut current = normal(&qname.to_ascii());
    seen.insert(current.clone());
    loop {
        let here = answers
            .iter()
            .filter(|rec| normal(&rec.name.to_ascii()) == current);
        let mut found = Vec::new();
        let mut srv = Vec::new();
        let mut cname = None;
        for rec in here {
            match &rec.data {
                RData::A(a) if wanted == RecordType::A => found.push((IpAddr::V4(a.0), rec.ttl)),
                RData::AAAA(a) if wanted == RecordType::AAAA => {
                    found.push((IpAddr::V6(a.0), rec.ttl))
                }
                RData::SRV(s) if wanted == RecordType::SRV => srv.push((
                    SrvRecord {
                        priority: s.priority,
                        weight: s.weight,
                        port: s.port,
                        target: normal(&s.target.to_ascii()),
                    },
                    rec.ttl,
                )),
                RData::CNAME(c) if cname.is_none() => cname = Some((c.0.clone(), rec.ttl)),
                _ => {}
            }
        }
        if !found.is_empty() {
            *ttl = found.iter().map(|(_, t)| *t).fold(*ttl, u32::min);
            let mut addrs: Vec<IpAddr> = found.into_iter().map(|(ip, _)| ip).collect();
            addrs.sort();
            addrs.dedup();
            return Chain::Records(Records::Addrs(addrs));
        }
        if !srv.is_empty() {
            *ttl = srv.iter().map(|(_, t)| *t).fold(*ttl, u32::min);
            let mut records: Vec<SrvRecord> = srv.into_iter().map(|(s, _)| s).collect();
            records.sort();
            records.dedup();
            return Chain::Records(Records::Srv(records));
        }
        let Some((target, t)) = cname else {
            return if current == normal(&qname.to_ascii()) {
                Chain::NoData
            } else {
                match Name::from_ascii(format!("{current}.")) {
                    Ok(name) => Chain::Ask(name),
                    Err(_) => Chain::Bad(format!("CNAME target {current:?} is not a name")),
                }
            };
        };
        *links += 1;
        *ttl = (*ttl).min(t);
        if *links > MAX_CNAME_LINKS {
            return Chain::Bad(format!("CNAME chain longer than {MAX_CNAME_LINKS} links"));
        }
        current = normal(&target.to_ascii());
        if !seen.insert(current.clone()) {
            return Chain::Bad(format!("CNAME loop at {current}"));
        }
    }
}

/// Asks the resolvers in order, `attempts` rounds: the first NOERROR or NXDOMAIN
/// answer, else the failure the last resolver of the last round gave.
async fn ask(r: &Resolved, qname: &Name, rtype: RecordType) -> Result<Message, Found> {
    let s = &r.settings;
    let mut last = Found::failed(Status::Error, "no resolver".into());
    for _ in 0..s.attempts.max(1) {
        for &ns in &r.resolvers {
            last = match query(ns, qname, rtype, s.timeout).await {
                Ok(m) => match m.metadata.response_code {
                    ResponseCode::NoError | ResponseCode::NXDomain => return Ok(m),
                    ResponseCode::ServFail => {
                        Found::failed(Status::ServFail, format!("{ns} answered SERVFAIL"))
                    }
                    ResponseCode::Refused => {
                        Found::failed(Status::Refused, format!("{ns} answered REFUSED"))
                    }
                    code => Found::failed(Status::Error, format!("{ns} answered {code}")),
                },
                Err((status, why)) => Found::failed(status, format!("{ns}: {why}")),
            };
        }
    }
    Err(last)
}

/// One query to one resolver: UDP, then TCP when the answer is truncated.
async fn query(
    ns: SocketAddr,
    qname: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Message, (Status, String)> {
    let provider = TokioRuntimeProvider::default();
    let udp = UdpClientStream::builder(ns, provider.clone())
        .with_timeout(Some(timeout))
        .build();
    let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(udp);
    let m = exchange(client, bg, qname, rtype, timeout).await?;
    if !m.metadata.truncation {
        return Ok(m);
    }
    // again over TCP: connecting and asking within one more `timeout`
    let over_tcp = async {
        let (connect, handle) = TcpClientStream::new(ns, None, Some(timeout), provider);
        let stream = connect.await.map_err(|e| net_error(&e))?;
        let (client, bg) = Client::<TokioRuntimeProvider>::with_timeout(stream, handle, timeout);
        exchange(client, bg, qname, rtype, timeout).await
    };
    match tokio::time::timeout(timeout, over_tcp).await {
        Ok(result) => result,
        Err(_) => Err((Status::Timeout, "timed out over TCP".into())),
    }
}

/// Sends the question over `client`, its background task running beside it.
async fn exchange<F>(
    mut client: Client<TokioRuntimeProvider>,
    bg: F,
    qname: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Message, (Status, String)>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let bg = tokio::spawn(bg);
    let answer = tokio::time::timeout(timeout, client.query(qname.clone(), DNSClass::IN, rtype));
    let result = match answer.await {
        Ok(Ok(response)) => Ok(response.into_message()),
        Ok(Err(e)) => Err(net_error(&e)),
        Err(_) => Err((Status::Timeout, "timed out".into())),
    };
    drop(client);
    bg.abort();
    result
}

fn net_error(e: &NetError) -> (Status, String) {
    match e {
        NetError::Timeout => (Status::Timeout, "timed out".into()),
        other => {
            let text = other.to_string();
            let mut end = text.len().min(200);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            (Status::Error, text[..end].to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tollgate_tests::{DnsServer, Rule};

    use super::*;
    use crate::dns::Settings;

    fn resolved(resolvers: &[SocketAddr], search: &[&str], ndots: u8) -> Resolved {
        Resolved {
            resolvers: resolvers.to_vec(),
            search: search.iter().map(|s| s.to_string()).collect(),
            ndots,
            hosts: Default::default(),
            settings: Settings {
                timeout: Duration::from_millis(300),
                attempts: 2,
                ..Settings::default()
            },
        }
    }

    fn addrs(f: &Found) -> Vec<String> {
        match &f.records {
            Some(Records::Addrs(a)) => a.iter().map(ToString::to_string).collect(),
            other => panic!("no addresses: {f:?} {other:?}"),
        }
    }

    #[test]
    fn the_search_list_comes_first_for_names_with_few_dots() {
        let r = resolved(&[], &["shop.svc", "svc"], 2);
        assert_eq!(
            candidates("orders", &r),
            ["orders.shop.svc.", "orders.svc.", "orders."]
        );
        assert_eq!(
            candidates("a.b.c", &r),
            ["a.b.c.", "a.b.c.shop.svc.", "a.b.c.svc."]
        );
        assert_eq!(
            candidates("orders.", &r),
            ["orders."],
            "absolute: no search"
        );
        assert_eq!(candidates("orders", &resolved(&[], &[], 1)), ["orders."]);
    }

    #[tokio::test]
    async fn answers_nxdomain_and_nodata_are_final_from_the_first_resolver() {
        let (one, two) = (DnsServer::start(), DnsServer::start());
        one.set_a("a.test", &["127.0.0.3", "127.0.0.2"], 30);
        one.set_aaaa("v6.test", &["::1"], 30);
        two.set_a("nosuch.test", &["127.0.0.9"], 30);
        let r = resolved(&[one.addr(), two.addr()], &[], 1);
        let found = lookup(&r, "a.test", Kind::A).await;
        assert_eq!(found.status, Status::Ok);
        assert_eq!(addrs(&found), ["127.0.0.2", "127.0.0.3"]);
        assert_eq!(found.ttl, 30);
        assert_eq!(lookup(&r, "v6.test", Kind::A).await.status, Status::NoData);
        assert_eq!(
            lookup(&r, "nosuch.test", Kind::A).await.status,
            Status::NxDomain,
            "the second resolver knows it, but NXDOMAIN is final"
        );
        assert_eq!(two.queries().len(), 0, "{:?}", two.queries());
    }

    #[tokio::test]
    async fn failures_move_on_to_the_next_resolver_and_round() {
        let (one, two) = (DnsServer::start(), DnsServer::start());
        for s in [&one, &two] {
            s.set_a("a.test", &["127.0.0.2"], 30);
        }
        let r = resolved(&[one.addr(), two.addr()], &[], 1);
        for (rule, status) in [
            (Rule::ServFail, Status::ServFail),
            (Rule::Refused, Status::Refused),
            (Rule::Drop, Status::Timeout),
        ] {
            one.set_rule("a.test", rule);
            two.set_rule("a.test", Rule::Answer);
            let found = lookup(&r, "a.test", Kind::A).await;
            assert_eq!(
                found.status,
                Status::Ok,
                "{rule:?}: the next resolver answers"
            );
            // both fail: the last resolver's result after `attempts` rounds
            two.set_rule("a.test", rule);
            let before = (
                one.query_count("a.test", "A"),
                two.query_count("a.test", "A"),
            );
            let found = lookup(&r, "a.test", Kind::A).await;
            assert_eq!(found.status, status, "{rule:?}: {found:?}");
            assert!(found
                .error
                .as_deref()
                .unwrap_or("")
                .contains(&two.addr().to_string()));
            let asked = (
                one.query_count("a.test", "A") - before.0,
                two.query_count("a.test", "A") - before.1,
            );
            if rule != Rule::Drop {
                // (a UDP query may be sent again within its own timeout)
                assert_eq!(asked, (2, 2), "{rule:?}: two rounds over both resolvers");
            }
        }
    }

    #[tokio::test]
    async fn a_truncated_answer_is_asked_again_over_tcp() {
        let dns = DnsServer::start();
        let many: Vec<String> = (1..=200)
            .map(|i| format!("127.0.{}.{}", i / 250, i % 250 + 1))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        dns.set_a("big.test", &many, 30);
        dns.set_a("small.test", &["127.0.0.2"], 30);
        dns.set_rule("small.test", Rule::Truncate);
        let r = resolved(&[dns.addr()], &[], 1);
        assert_eq!(
            addrs(&lookup(&r, "small.test", Kind::A).await),
            ["127.0.0.2"]
        );
        let found = lookup(&r, "big.test", Kind::A).await;
        assert_eq!(
            addrs(&found).len(),
            200,
            "larger than 1232 bytes: whole over TCP"
        );
        for name in ["small.test", "big.test"] {
            let transports: Vec<bool> = dns
                .queries()
                .iter()
                .filter(|q| q.name == name)
                .map(|q| q.tcp)
                .collect();
            assert_eq!(transports, [false, true], "{name}: UDP, then TCP");
        }
    }

    #[tokio::test]
    async fn cname_chains_are_followed_to_8_links_and_loops_fail() {
        let dns = DnsServer::start();
        dns.set_cname("alias.test", "mid.test", 20);
        dns.set_cname("mid.test", "real.test", 40);
        dns.set_a("real.test", &["127.0.0.4"], 60);
        // a chain that ends at a name the answer leaves out: asked in turn
        dns.set_cname("short.test", "real.test", 10);
        dns.set_rule("short.test", Rule::CnameOnly);
        for i in 0..9 {
            dns.set_cname(&format!("c{i}.test"), &format!("c{}.test", i + 1), 30);
        }
        dns.set_a("c9.test", &["127.0.0.5"], 30);
        dns.set_cname("loop1.test", "loop2.test", 30);
        dns.set_cname("loop2.test", "loop1.test", 30);
        let r = resolved(&[dns.addr()], &[], 1);
        let found = lookup(&r, "alias.test", Kind::A).await;
        assert_eq!(addrs(&found), ["127.0.0.4"]);
        assert_eq!(found.ttl, 20, "the smallest TTL along the chain");
        let found = lookup(&r, "short.test", Kind::A).await;
        assert_eq!(addrs(&found), ["127.0.0.4"]);
        assert_eq!(found.ttl, 10);
        assert_eq!(dns.query_count("real.test", "A"), 1, "the target was asked");
        assert_eq!(
            addrs(&lookup(&r, "c1.test", Kind::A).await),
            ["127.0.0.5"],
            "8 links"
        );
        let nine = lookup(&r, "c0.test", Kind::A).await;
        assert_eq!(nine.status, Status::Error, "9 links: {nine:?}");
        let looped = lookup(&r, "loop1.test", Kind::A).await;
        assert_eq!(looped.status, Status::Error, "{looped:?}");
    }

    #[tokio::test]
    async fn the_search_list_is_tried_in_order_and_nodata_beats_nxdomain() {
        let dns = DnsServer::start();
        dns.set_a("orders.two.test", &["127.0.0.6"], 30);
        dns.set_aaaa("v6only.one.test", &["::1"], 30);
        let r = resolved(&[dns.addr()], &["one.test", "two.test"], 1);
        assert_eq!(addrs(&lookup(&r, "orders", Kind::A).await), ["127.0.0.6"]);
        let asked: Vec<String> = dns.queries().into_iter().map(|q| q.name).collect();
        assert_eq!(asked, ["orders.one.test", "orders.two.test"]);
        assert_eq!(lookup(&r, "v6only", Kind::A).await.status, Status::NoData);
        assert_eq!(
            lookup(&r, "nothing", Kind::A).await.status,
            Status::NxDomain
        );
        // absolute: the search list is skipped
        assert_eq!(
            lookup(&r, "orders.", Kind::A).await.status,
            Status::NxDomain
        );
        assert_eq!(dns.query_count("orders.one.test", "A"), 1);
    }

    #[tokio::test]
    async fn a_failure_stops_the_search_list() {
        let dns = DnsServer::start();
        dns.set_a("orders.one.test", &["127.0.0.2"], 30);
        dns.set_rule("orders.one.test", Rule::ServFail);
        dns.set_a("orders.two.test", &["127.0.0.3"], 30);
        let r = resolved(&[dns.addr()], &["one.test", "two.test"], 1);
        let found = lookup(&r, "orders", Kind::A).await;
        assert_eq!(found.status, Status::ServFail, "{found:?}");
        assert_eq!(
            dns.query_count("orders.two.test", "A"),
            0,
            "the search went on"
        );
    }

    #[tokio::test]
    async fn srv_records_are_read_with_their_targets() {
        let dns = DnsServer::start();
        dns.set_srv(
            "_http._tcp.search.test",
            &[
                (20, 1, 8082, "s2.test"),
                (10, 3, 8081, "S1.test."),
                (10, 0, 0, "."),
            ],
            30,
        );
        let r = resolved(&[dns.addr()], &[], 1);
        let found = lookup(&r, "_http._tcp.search.test", Kind::Srv).await;
        let Some(Records::Srv(records)) = found.records else {
            panic!("{found:?}")
        };
        let targets: Vec<(u16, u16, &str)> = records
            .iter()
            .map(|s| (s.priority, s.port, s.target.as_str()))
            .collect();
        assert_eq!(
            targets,
            [(10, 0, ""), (10, 8081, "s1.test"), (20, 8082, "s2.test")]
        );
    }

    #[tokio::test]
    async fn names_in_the_hosts_file_are_never_asked_of_dns() {
        let dns = DnsServer::start();
        dns.set_a("listed.test", &["127.0.0.9"], 30);
        let mut r = resolved(&[dns.addr()], &[], 1);
        r.hosts.insert(
            "listed.test".into(),
            vec!["127.0.0.7".parse().unwrap(), "::1".parse().unwrap()],
        );
        let found = lookup(&r, "Listed.test.", Kind::A).await;
        assert!(found.from_hosts);
        assert_eq!(addrs(&found), ["127.0.0.7"]);
        assert_eq!(addrs(&lookup(&r, "listed.test", Kind::Aaaa).await), ["::1"]);
        assert!(dns.queries().is_empty(), "{:?}", dns.queries());
    }
}
