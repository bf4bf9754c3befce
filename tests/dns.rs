//! A small, real, authoritative DNS server for the end-to-end tests.
//!
//! [`DnsServer`] answers A, AAAA, SRV and CNAME questions from an in-memory zone over
//! UDP and TCP (RFC 7766 framing) on one loopback port, keeps a record of every query,
//! and can be told to fail per name ([`Rule`]). Messages are encoded and decoded with
//! `hickory-proto`, so what goes on the wire is real DNS.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// How the server treats queries for a name (see [`DnsServer::set_rule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rule {
    /// Answer from the zone.
    #[default]
    Answer,
    /// Answer NXDOMAIN, with no records.
    NxDomain,
    /// Answer SERVFAIL.
    ServFail,
    /// Answer REFUSED.
    Refused,
    /// Never answer.
    Drop,
    /// Over UDP, answer with TC set and no records; over TCP, answer in full.
    Truncate,
    /// For a name with a CNAME: answer the CNAME record alone, without its target's
    /// records (as some resolvers do), so the client must ask for the target.
    CnameOnly,
}

/// A query the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The name asked for, lower-case, without the final dot.
    pub name: String,
    /// The record type asked for: "A", "AAAA", "SRV", … (`TYPEn` for unknown types).
    pub rtype: String,
    /// Whether it came over TCP.
    pub tcp: bool,
}

/// The records of one name: either a CNAME or records of other types.
#[derive(Default)]
struct Entry {
    cname: Option<(Name, u32)>,
    records: Vec<(RData, u32)>,
}

/// The zone, the rules and the query log, shared with the serving thread.
#[derive(Default)]
struct Shared {
    zone: HashMap<String, Entry>,
    rules: HashMap<String, Rule>,
    queries: Vec<Query>,
}

/// A DNS server on `127.0.0.1`, UDP and TCP on the same port, served on its own thread
/// with its own current-thread tokio runtime. Names are case-insensitive and compared
/// without the final dot. Dropping it stops the thread and closes both sockets.
pub struct DnsServer {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// `name` lower-case and without its final dot, the form the zone is keyed by.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `name` as a fully qualified DNS name; panics (a test's mistake) if it is not valid.
fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .unwrap_or_else(|e| panic!("bad DNS name {name:?}: {e}"))
}

impl DnsServer {
    /// Starts a server on a free loopback port (UDP and TCP both bound to it).
    pub fn start() -> DnsServer {
        let (udp, tcp) = (0..100)
            .find_map(|_| {
                let udp = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
                let tcp = std::net::TcpListener::bind(udp.local_addr().ok()?).ok()?;
                Some((udp, tcp))
            })
            .expect("a loopback port free for both UDP and TCP");
        let addr = udp.local_addr().expect("dns addr");
        udp.set_nonblocking(true).expect("nonblocking udp");
        tcp.set_nonblocking(true).expect("nonblocking tcp");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("dns runtime");
        let (udp, tcp) = {
            let _guard = rt.enter();
            let udp = UdpSocket::from_std(udp).expect("tokio udp");
            (udp, TcpListener::from_std(tcp).expect("tokio tcp"))
        };
        let shared: Arc<Mutex<Shared>> = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (for_udp, for_tcp) = (shared.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name("dns-server".into())
            .spawn(move || {
                rt.block_on(async move {
                    tokio::select! {
                        _ = stopped => {}
                        () = serve_udp(udp, for_udp) => {}
                        () = serve_tcp(tcp, for_tcp) => {}
                    }
                });
                // dropping `rt` here ends the connection tasks and closes their sockets
            })
            .expect("spawn dns thread");
        DnsServer {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where it listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn with<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        f(&mut self.shared.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the records of type `rtype` of `name` with `records` (removing a CNAME);
    /// a name left with no records at all is removed.
    fn set(&self, name: &str, rtype: RecordType, records: Vec<RData>, ttl: u32) {
        self.with(|s| {
            let entry = s.zone.entry(key(name)).or_default();
            entry.cname = None;
            entry.records.retain(|(d, _)| d.record_type() != rtype);
            entry.records.extend(records.into_iter().map(|d| (d, ttl)));
            if entry.records.is_empty() {
                s.zone.remove(&key(name));
            }
        });
    }

    /// Replaces the A records of `name` with `addrs` (such as `"127.0.0.2"`).
    pub fn set_a(&self, name: &str, addrs: &[&str], ttl: u32) {
        let parse = |a: &&str| {
            a.parse::<Ipv4Addr>()
                .unwrap_or_else(|e| panic!("{a:?}: {e}"))
        };
        let data = addrs.iter().map(|a| RData::A(A(parse(a)))).collect();
        self.set(name, RecordType::A, data, ttl);
    }

    /// Replaces the AAAA records of `name` with `addrs` (such as `"::1"`).
    pub fn set_aaaa(&self, name: &str, addrs: &[&str], ttl: u32) {
        let parse = |a: &&str| {
            a.parse::<Ipv6Addr>()
                .unwrap_or_else(|e| panic!("{a:?}: {e}"))
        };
        let data = addrs.iter().map(|a| RData::AAAA(AAAA(parse(a)))).collect();
        self.set(name, RecordType::AAAA, data, ttl);
    }

    /// Replaces the SRV records of `name` with `(priority, weight, port, target)` records.
    pub fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)], ttl: u32) {
        let data = records
            .iter()
            .map(|&(prio, weight, port, target)| {
                RData::SRV(SRV::new(prio, weight, port, fqdn(target)))
            })
            .collect();
        self.set(name, RecordType::SRV, data, ttl);
    }

    /// Makes `name` an alias of `target`; a name with a CNAME has no other records.
    pub fn set_cname(&self, name: &str, target: &str, ttl: u32) {
        let entry = Entry {
            cname: Some((fqdn(target), ttl)),
            records: Vec::new(),
        };
        self.with(|s| s.zone.insert(key(name), entry));
    }

    /// Removes `name` and all its records: it is answered NXDOMAIN.
    pub fn remove(&self, name: &str) {
        self.with(|s| s.zone.remove(&key(name)));
    }

    /// Sets how queries for `name` are treated. `"*"` applies to every name (a whole
    /// server outage) and, unless it is [`Rule::Answer`], wins over a name's own rule.
    pub fn set_rule(&self, name: &str, rule: Rule) {
        self.with(|s| s.rules.insert(key(name), rule));
    }

    /// Every query received so far, in order (malformed messages are not recorded).
    pub fn queries(&self) -> Vec<Query> {
        self.with(|s| s.queries.clone())
    }

    /// How many queries for `name` (case-insensitive, final dot ignored) of type `rtype`
    /// (`"A"`, `"AAAA"`, `"SRV"`, …) it received, over UDP and TCP.
    pub fn query_count(&self, name: &str, rtype: &str) -> usize {
        let name = key(name);
        self.with(|s| {
            let same = |q: &&Query| q.name == name && q.rtype.eq_ignore_ascii_case(rtype);
            s.queries.iter().filter(same).count()
        })
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    /// The rule for `name`: `"*"` when it is set to fail, else the name's own.
    fn rule(&self, name: &str) -> Rule {
        match self.rules.get("*") {
            Some(&all) if all != Rule::Answer => all,
            _ => self.rules.get(name).copied().unwrap_or_default(),
        }
    }

    /// Fills `resp` with the answer to `qname`/`qtype` from the zone, following CNAMEs
    /// inside the zone (at most 10 links, stopping on loops). The first owner name is
    /// the question's, as the client spelled it.
    fn resolve(&self, qname: &Name, qtype: RecordType, resp: &mut Message) {
        let (mut owner, mut name) = (qname.clone(), key(&qname.to_ascii()));
        let mut seen = HashSet::new();
        while seen.insert(name.clone()) && seen.len() <= 11 {
            let Some(entry) = self.zone.get(&name) else {
                if seen.len() == 1 {
                    resp.metadata.response_code = ResponseCode::NXDomain;
                }
                return;
            };
            let Some((target, ttl)) = &entry.cname else {
                resp.answers.extend(
                    entry
                        .records
                        .iter()
                        .filter(|(d, _)| d.record_type() == qtype)
                        .map(|(d, ttl)| Record::from_rdata(owner.clone(), *ttl, d.clone())),
                );
                return;
            };
            let alias = RData::CNAME(CNAME(target.clone()));
            resp.answers.push(Record::from_rdata(owner, *ttl, alias));
            if qtype == RecordType::CNAME {
                return;
            }
            (owner, name) = (target.clone(), key(&target.to_ascii()));
        }
    }
}

/// The wire answer to the DNS message `packet`, or `None` when it gets no answer
/// (malformed, not a query, or [`Rule::Drop`]).
fn answer(shared: &Mutex<Shared>, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let req = Message::from_vec(packet).ok()?;
    if req.metadata.message_type != MessageType::Query || req.queries.len() != 1 {
        return None;
    }
    let question = &req.queries[0];
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_available = true;
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        resp.set_edns(edns);
    }
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return resp.to_vec().ok();
    }
    let qtype = question.query_type();
    let rule = {
        let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let name = key(&question.name().to_ascii());
        let rtype = match qtype {
            RecordType::Unknown(code) => format!("TYPE{code}"),
            known => known.to_string(),
        };
        s.queries.push(Query {
            name: name.clone(),
            rtype,
            tcp,
        });
        let rule = s.rule(&name);
        if matches!(rule, Rule::Answer | Rule::Truncate | Rule::CnameOnly) {
            s.resolve(question.name(), qtype, &mut resp);
        }
        if rule == Rule::CnameOnly {
            resp.answers.truncate(1);
        }
        rule
    };
    resp.metadata.response_code = match rule {
        Rule::Drop => return None,
        Rule::NxDomain => ResponseCode::NXDomain,
        Rule::ServFail => ResponseCode::ServFail,
        Rule::Refused => ResponseCode::Refused,
        Rule::Answer | Rule::Truncate | Rule::CnameOnly => resp.metadata.response_code,
    };
    let mut wire = resp.to_vec().ok()?;
    // over UDP: truncate when told to, or when the answer is over the client's limit
    if !tcp && (rule == Rule::Truncate || wire.len() > usize::from(req.max_payload())) {
        resp.answers.clear();
        resp.metadata.truncation = true;
        wire = resp.to_vec().ok()?;
    }
    Some(wire)
}

/// Answers each datagram on `socket`.
async fn serve_udp(socket: UdpSocket, shared: Arc<Mutex<Shared>>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(wire) = answer(&shared, &buf[..n], false) {
            let _ = socket.send_to(&wire, peer).await;
        }
    }
}

/// Accepts TCP connections, each served in its own task.
async fn serve_tcp(listener: TcpListener, shared: Arc<Mutex<Shared>>) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(stream, shared.clone()));
        }
    }
}

/// Answers length-prefixed queries (RFC 7766) on one connection until the client closes it.
async fn serve_connection(mut stream: TcpStream, shared: Arc<Mutex<Shared>>) {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut packet).await.is_err() {
            return;
        }
        let Some(wire) = answer(&shared, &packet, true) else {
            continue;
        };
        let Ok(len) = u16::try_from(wire.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(wire.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&wire);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
