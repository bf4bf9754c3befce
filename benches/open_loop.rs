//! Open-loop latency for `just bench-load`: requests sent at a fixed rate whatever the
//! proxy's answers do, over keep-alive HTTP/1.1 connections, with each request's latency
//! counted from the moment it was *due* (not the moment it could be sent). A proxy that
//! stalls therefore shows its stall in the latency of every request that was due during
//! it, which a closed-loop tool such as wrk hides (coordinated omission).
//!
//! usage: `open_loop ADDR PATH RATE SECONDS CONNS [HEADER: VALUE]... [-- ADDR PATH [HEADER: VALUE]...]...`
//!
//! Each `-- ADDR PATH [HEADER: VALUE]...` adds a target. Every target gets RATE requests a
//! second on CONNS connections of its own, and the targets' requests are interleaved:
//! with n targets a request is due every 1 / (n × RATE) seconds, to the targets in turn.
//! So every target is measured over the same seconds, and a stall of the machine lands
//! on all of them alike instead of on whichever one happened to be running.
//!
//! Prints one line per target, in the order given: `sent=N done=N errors=N p50_us=..
//! p90_us=.. p99_us=.. p999_us=.. max_us=.. late_p99_us=..`, where `late` is how far after
//! its due time each request was written: the generator's own floor (timer slack, a
//! shared core) plus any wait for an idle connection.
//!
//! One thread and non-blocking sockets, like wrk: a `ppoll(2)` loop whose timeout is the
//! next due time to the nanosecond (a thread per connection, or a millisecond timer,
//! would add more latency than the proxies under test have). A request goes out on an
//! idle connection of its target (never pipelined); when every one is busy it waits, and
//! the wait counts in its latency.

// the two system calls std does not wrap (ppoll, prctl), each with its SAFETY note
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// One proxy under load: its request and what was measured of it.
struct Target {
    request: Vec<u8>,
    /// Its connections (indexes into the connection list) with no request in flight.
    idle: VecDeque<usize>,
    /// Due times of its requests that have no idle connection yet.
    waiting: VecDeque<Instant>,
    latencies_ns: Vec<u64>,
    late_ns: Vec<u64>,
    sent: u64,
    errors: u64,
}

/// One keep-alive connection.
struct Conn {
    stream: TcpStream,
    /// The target it is connected to.
    target: usize,
    /// Due time of the request in flight on it, if one is.
    busy: Option<Instant>,
    /// Bytes of the response being read.
    buf: Vec<u8>,
}

const USAGE: &str = "usage: open_loop ADDR PATH RATE SECONDS CONNS [HEADER: VALUE]... \
                     [-- ADDR PATH [HEADER: VALUE]...]...";

/// What the command line asks for.
struct Plan {
    /// Requests a second to each target.
    rate: f64,
    seconds: f64,
    /// Connections to each target.
    conns: usize,
    /// Address, path and extra header lines of each target.
    targets: Vec<(String, String, Vec<String>)>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let plan = parse(&args).unwrap_or_else(|e| {
        eprintln!("{e}\n{USAGE}");
        std::process::exit(2)
    });

    // Wake-ups to the microsecond, not the default 50 µs of timer slack.
    // SAFETY: prctl with PR_SET_TIMERSLACK takes one integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64) };

    let (mut targets, mut conns) = connect(&plan).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    run(&mut targets, &mut conns, plan.rate, plan.seconds);
    for t in &mut targets {
        println!("{}", t.report());
    }
}

fn parse(args: &[String]) -> Result<Plan, String> {
    let mut groups = args.split(|a| a == "--");
    let first = groups.next().unwrap_or_default();
    if first.len() < 5 {
        return Err("too few arguments".into());
    }
    let number = |i: usize, what: &str| -> Result<f64, String> {
        match first[i].parse::<f64>() {
            Ok(v) if v > 0.0 => Ok(v),
            _ => Err(format!(
                "{what} must be a positive number, got {:?}",
                first[i]
            )),
        }
    };
    let (rate, seconds) = (number(2, "RATE")?, number(3, "SECONDS")?);
    let conns = match first[4].parse::<usize>() {
        Ok(n) if n > 0 => n,
        _ => {
            return Err(format!(
                "CONNS must be a positive integer, got {:?}",
                first[4]
            ))
        }
    };
    let mut targets = vec![(first[0].clone(), first[1].clone(), first[5..].to_vec())];
    for more in groups {
        if more.len() < 2 {
            return Err("each `--` needs ADDR PATH after it".into());
        }
        targets.push((more[0].clone(), more[1].clone(), more[2..].to_vec()));
    }
    Ok(Plan {
        rate,
        seconds,
        conns,
        targets,
    })
}

/// Opens every target's connections.
fn connect(plan: &Plan) -> Result<(Vec<Target>, Vec<Conn>), String> {
    let per_target = (plan.rate * plan.seconds) as usize;
    let mut targets = Vec::with_capacity(plan.targets.len());
    let mut conns = Vec::with_capacity(plan.targets.len() * plan.conns);
    for (t, (addr, path, headers)) in plan.targets.iter().enumerate() {
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for header in headers {
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let first = conns.len();
        for _ in 0..plan.conns {
            let stream =
                TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            stream.set_nonblocking(true).map_err(|e| e.to_string())?;
            conns.push(Conn {
                stream,
                target: t,
                busy: None,
                buf: Vec::with_capacity(4096),
            });
        }
        targets.push(Target {
            request: request.into_bytes(),
            idle: (first..conns.len()).collect(),
            waiting: VecDeque::new(),
            latencies_ns: Vec::with_capacity(per_target),
            late_ns: Vec::with_capacity(per_target),
            sent: 0,
            errors: 0,
        });
    }
    Ok((targets, conns))
}

impl Target {
    /// Its output line (sorts the samples).
    fn report(&mut self) -> String {
        self.latencies_ns.sort_unstable();
        self.late_ns.sort_unstable();
        let us = |v: &[u64], q: f64| -> f64 {
            if v.is_empty() {
                return f64::NAN;
            }
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            v[i] as f64 / 1e3
        };
        let l = &self.latencies_ns;
        format!(
            "sent={} done={} errors={} p50_us={:.0} p90_us={:.0} p99_us={:.0} \
             p999_us={:.0} max_us={:.0} late_p99_us={:.0}",
            self.sent,
            l.len(),
            self.errors,
            us(l, 0.50),
            us(l, 0.90),
            us(l, 0.99),
            us(l, 0.999),
            us(l, 1.0),
            us(&self.late_ns, 0.99),
        )
    }
}

/// Sends RATE requests a second to each target for SECONDS, interleaved, and records
/// each answer's latency from its due time in its target.
fn run(targets: &mut [Target], conns: &mut [Conn], rate: f64, seconds: f64) {
    let n = targets.len() as u64;
    let interval = Duration::from_secs_f64(1.0 / (rate * n as f64));
    let total = (rate * seconds) as u64 * n;
    let start = Instant::now() + Duration::from_millis(10);
    // computed from k each time, not summed, so rounding does not drift over a run
    let due = |k: u64| start + interval.mul_f64(k as f64);
    // whatever is still in flight this long after the last request is due is an error
    let give_up = start + Duration::from_secs_f64(seconds) + Duration::from_secs(10);
    let mut next = 0u64; // requests made due so far
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(conns.len());
    let mut polled: Vec<usize> = Vec::with_capacity(conns.len());
    let mut chunk = vec![0u8; 16 * 1024];

    loop {
        let now = Instant::now();
        while next < total && due(next) <= now {
            targets[(next % n) as usize].waiting.push_back(due(next));
            next += 1;
        }
        for t in targets.iter_mut() {
            while !t.waiting.is_empty() && !t.idle.is_empty() {
                let (due, id) = (t.waiting.pop_front().unwrap(), t.idle.pop_front().unwrap());
                let conn = &mut conns[id];
                // a request of a few dozen bytes fits an empty socket buffer at once
                match conn.stream.write(&t.request) {
                    Ok(len) if len == t.request.len() => {
                        t.late_ns
                            .push(now.saturating_duration_since(due).as_nanos() as u64);
                        conn.busy = Some(due);
                        t.sent += 1;
                    }
                    _ => t.errors += 1, // the connection is left out from now on
                }
            }
        }
        let in_flight = conns.iter().any(|c| c.busy.is_some());
        let queued = targets.iter().any(|t| !t.waiting.is_empty());
        if next == total && !queued && !in_flight {
            break;
        }
        if now >= give_up {
            for t in targets.iter_mut() {
                t.errors += t.waiting.len() as u64;
            }
            for c in conns.iter().filter(|c| c.busy.is_some()) {
                targets[c.target].errors += 1;
            }
            break;
        }

        // wait for a response or the next due time, whichever comes first
        fds.clear();
        polled.clear();
        for (id, c) in conns.iter().enumerate().filter(|(_, c)| c.busy.is_some()) {
            fds.push(libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            polled.push(id);
        }
        let until = if next < total { due(next) } else { give_up };
        let wait = until.saturating_duration_since(Instant::now());
        let timeout = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call.
        let ready = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &timeout,
                std::ptr::null(),
            )
        };
        if ready <= 0 {
            continue; // the next request is due (or a signal)
        }
        for (fd, &id) in fds.iter().zip(&polled) {
            if fd.revents == 0 {
                continue;
            }
            let conn = &mut conns[id];
            let t = &mut targets[conn.target];
            let mut closed = false;
            loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(len) => conn.buf.extend_from_slice(&chunk[..len]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            match response_len(&conn.buf) {
                Ok(Some((len, ok))) => {
                    let due = conn.busy.take().expect("a response to a request");
                    t.latencies_ns
                        .push(Instant::now().duration_since(due).as_nanos() as u64);
                    if !ok {
                        t.errors += 1;
                    }
                    conn.buf.drain(..len);
                    if !closed {
                        t.idle.push_back(id);
                    }
                }
                Ok(None) if !closed => {}
                // a broken or closed connection: its request failed; it is not reused
                _ => {
                    conn.busy = None;
                    t.errors += 1;
                }
            }
        }
    }
}

/// The length of the complete HTTP/1.1 response at the start of `buf`, if it holds
/// one, and whether its status is 2xx. Content-Length or chunked framing.
fn response_len(buf: &[u8]) -> Result<Option<(usize, bool)>, &'static str> {
    let Some(head_end) = find(buf, b"\r\n\r\n").map(|i| i + 4) else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let ok = status.split(' ').nth(1).is_some_and(|s| s.starts_with('2'));
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    if !chunked {
        let len = head_end + length.ok_or("no framing")?;
        return Ok((buf.len() >= len).then_some((len, ok)));
    }
    // chunks: size line, data, CRLF; the last has size 0 (no trailers expected)
    let mut at = head_end;
    loop {
        let Some(line_end) = find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[at..at + line_end]).map_err(|_| "chunk size")?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        at += line_end + 2 + size + 2;
        if buf.len() < at {
            return Ok(None);
        }
        if size == 0 {
            return Ok(Some((at, ok)));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::{connect, parse, response_len, run};
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A keep-alive HTTP/1.1 server on loopback answering `ok` to every request; each
    /// request's first and last header lines go to the channel.
    fn server(heads: mpsc::Sender<(String, String)>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let (heads, mut stream) = (heads.clone(), stream.unwrap());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    loop {
                        let (mut first, mut last, mut line) =
                            (String::new(), String::new(), String::new());
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if first.is_empty() {
                                first = line.trim_end().to_string();
                            }
                            last = line.trim_end().to_string();
                        }
                        let _ = heads.send((first, last));
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(ok).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn several_targets_get_the_rate_each_with_their_own_requests() {
        let (one_tx, one) = mpsc::channel();
        let (two_tx, two) = mpsc::channel();
        let (a, b) = (server(one_tx), server(two_tx));
        let args: Vec<String> = [
            &a, "/one", "100", "0.5", "2", "x-a: 1", "--", &b, "/two/2", "x-b: 2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let plan = parse(&args).unwrap();
        let (mut targets, mut conns) = connect(&plan).unwrap();
        run(&mut targets, &mut conns, plan.rate, plan.seconds);
        for t in &mut targets {
            let line = t.report();
            assert!(line.starts_with("sent=50 done=50 errors=0 "), "{line}");
        }
        let heads: Vec<_> = one.try_iter().collect();
        assert_eq!(heads.len(), 50);
        assert!(heads
            .iter()
            .all(|h| h == &("GET /one HTTP/1.1".into(), "x-a: 1".into())));
        let heads: Vec<_> = two.try_iter().collect();
        assert_eq!(heads.len(), 50);
        assert!(heads
            .iter()
            .all(|h| h == &("GET /two/2 HTTP/1.1".into(), "x-b: 2".into())));
    }

    #[test]
    fn bad_command_lines_are_refused() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(parse(&args("127.0.0.1:1 / 100 1")).is_err());
        assert!(parse(&args("127.0.0.1:1 / 0 1 1")).is_err());
        assert!(parse(&args("127.0.0.1:1 / 100 x 1")).is_err());
        assert!(parse(&args("127.0.0.1:1 / 100 1 0.5")).is_err());
        assert!(parse(&args("127.0.0.1:1 / 100 1 1 -- 127.0.0.1:2")).is_err());
        let plan = parse(&args("127.0.0.1:1 / 100 1 4 h: v -- 127.0.0.1:2 /p")).unwrap();
        assert_eq!(plan.targets.len(), 2);
        assert_eq!((plan.rate, plan.seconds, plan.conns), (100.0, 1.0, 4));
    }

    #[test]
    fn a_response_is_complete_only_with_its_whole_body() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        for cut in 0..r.len() {
            assert_eq!(response_len(&r[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(response_len(r), Ok(Some((r.len(), true))));
        // the next response's bytes are not counted in this one
        let two = [&r[..], &r[..]].concat();
        assert_eq!(response_len(&two), Ok(Some((r.len(), true))));
    }

    #[test]
    fn chunked_bodies_end_at_the_last_chunk() {
        let r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n3;x=y\r\nabc\r\n0\r\n\r\n";
        for cut in 0..r.len() {
            assert_eq!(response_len(&r[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(response_len(r), Ok(Some((r.len(), true))));
    }

    #[test]
    fn refusals_and_unframed_responses_are_told_apart() {
        let r = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(response_len(r), Ok(Some((r.len(), false))));
        assert!(response_len(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(response_len(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
    }
}
