//! Open-loop latency for `just bench-load`: requests sent at a fixed rate whatever the
//! proxy's answers do, over keep-alive HTTP/1.1 connections, with each request's latency
//! counted from the moment it was *due* (not the moment it could be sent). A proxy that
//! stalls therefore shows its stall in the latency of every request that was due during
//! it, which a closed-loop tool such as wrk hides (coordinated omission).
//!
//! usage: `open_loop ADDR PATH RATE SECONDS CONNS [HEADER: VALUE]...`
//!
//! Prints one line: `sent=N done=N errors=N p50_us=.. p90_us=.. p99_us=.. p999_us=..
//! max_us=.. late_p99_us=..`, where `late` is how far after its due time each request
//! was written: the generator's own floor (timer slack, a shared core) plus any wait for
//! an idle connection.
//!
//! One thread and non-blocking sockets, like wrk: a `ppoll(2)` loop whose timeout is the
//! next due time to the nanosecond (a thread per connection, or a millisecond timer,
//! would add more latency than the proxies under test have). A request goes out on an
//! idle connection (never pipelined); when every connection is busy it waits, and the
//! wait counts in its latency.

// the two system calls std does not wrap (ppoll, prctl), each with its SAFETY note
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// One keep-alive connection.
struct Conn {
    stream: TcpStream,
    /// Due time of the request in flight on it, if one is.
    busy: Option<Instant>,
    /// Bytes of the response being read.
    buf: Vec<u8>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: open_loop ADDR PATH RATE SECONDS CONNS [HEADER: VALUE]...");
        std::process::exit(2);
    }
    let (addr, path) = (&args[0], &args[1]);
    let number = |i: usize, what: &str| -> f64 {
        args[i].parse().unwrap_or_else(|_| {
            eprintln!("{what} must be a number, got {:?}", args[i]);
            std::process::exit(2)
        })
    };
    let rate = number(2, "RATE");
    let seconds = number(3, "SECONDS");
    let conns = number(4, "CONNS") as usize;
    if rate <= 0.0 || seconds <= 0.0 || conns == 0 {
        eprintln!("RATE, SECONDS and CONNS must be positive");
        std::process::exit(2);
    }
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for header in &args[5..] {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let request = request.into_bytes();

    // Wake-ups to the microsecond, not the default 50 µs of timer slack.
    // SAFETY: prctl with PR_SET_TIMERSLACK takes one integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64) };

    let mut conns: Vec<Conn> = (0..conns)
        .map(|_| {
            let stream = TcpStream::connect(addr).unwrap_or_else(|e| {
                eprintln!("cannot connect to {addr}: {e}");
                std::process::exit(1)
            });
            stream.set_nodelay(true).expect("TCP_NODELAY");
            stream.set_nonblocking(true).expect("non-blocking");
            Conn {
                stream,
                busy: None,
                buf: Vec::with_capacity(4096),
            }
        })
        .collect();
    let mut idle: VecDeque<usize> = (0..conns.len()).collect();

    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * seconds) as u64;
    let start = Instant::now() + Duration::from_millis(10);
    // whatever is still in flight this long after the last request is due is an error
    let give_up = start + Duration::from_secs_f64(seconds) + Duration::from_secs(10);
    let mut next = 0u64; // requests made due so far
    let mut waiting: VecDeque<Instant> = VecDeque::new(); // due, no idle connection yet
    let mut latencies_ns: Vec<u64> = Vec::with_capacity(total as usize);
    let mut late_ns: Vec<u64> = Vec::with_capacity(total as usize);
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(conns.len());
    let mut polled: Vec<usize> = Vec::with_capacity(conns.len());
    let mut chunk = vec![0u8; 16 * 1024];

    loop {
        let now = Instant::now();
        while next < total && start + interval.mul_f64(next as f64) <= now {
            waiting.push_back(start + interval.mul_f64(next as f64));
            next += 1;
        }
        while !waiting.is_empty() && !idle.is_empty() {
            let (due, id) = (waiting.pop_front().unwrap(), idle.pop_front().unwrap());
            let conn = &mut conns[id];
            // a request of a few dozen bytes fits an empty socket buffer at once
            match conn.stream.write(&request) {
                Ok(n) if n == request.len() => {
                    late_ns.push(now.saturating_duration_since(due).as_nanos() as u64);
                    conn.busy = Some(due);
                    sent += 1;
                }
                _ => errors += 1, // the connection is left out from now on
            }
        }
        let in_flight = conns.iter().any(|c| c.busy.is_some());
        if next == total && waiting.is_empty() && !in_flight {
            break;
        }
        if now >= give_up {
            errors +=
                waiting.len() as u64 + conns.iter().filter(|c| c.busy.is_some()).count() as u64;
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
        let until = if next < total {
            start + interval.mul_f64(next as f64)
        } else {
            give_up
        };
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
            let mut closed = false;
            loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
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
                    latencies_ns.push(Instant::now().duration_since(due).as_nanos() as u64);
                    if !ok {
                        errors += 1;
                    }
                    conn.buf.drain(..len);
                    if !closed {
                        idle.push_back(id);
                    }
                }
                Ok(None) if !closed => {}
                // a broken or closed connection: its request failed; it is not reused
                _ => {
                    conn.busy = None;
                    errors += 1;
                }
            }
        }
    }

    latencies_ns.sort_unstable();
    late_ns.sort_unstable();
    let us = |v: &[u64], q: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1e3
    };
    println!(
        "sent={sent} done={} errors={errors} p50_us={:.0} p90_us={:.0} p99_us={:.0} \
         p999_us={:.0} max_us={:.0} late_p99_us={:.0}",
        latencies_ns.len(),
        us(&latencies_ns, 0.50),
        us(&latencies_ns, 0.90),
        us(&latencies_ns, 0.99),
        us(&latencies_ns, 0.999),
        us(&latencies_ns, 1.0),
        us(&late_ns, 0.99),
    );
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
    use super::response_len;

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
