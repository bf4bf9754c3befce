//! The scanner that checks the bytes of an HTTP/1 request head against the limits
//! before Pingora parses it.
//!
//! It also refuses, with 400, framing that two parsers could read differently:
//! `Content-Length` with `Transfer-Encoding`, differing `Content-Length` values, a
//! `Transfer-Encoding` whose final coding is not `chunked`, obs-fold (a header line
//! starting with white space), a bare CR, and NUL or other control characters.

use crate::config::limits::Limits;
use crate::reply::ErrorCode;

/// What the scanner made of the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// The head is not complete yet.
    Partial,
    /// The head ends just before this offset of the last chunk.
    Complete(usize),
    /// Refuse the request with this code.
    Refuse(ErrorCode),
}

/// Incremental checker of one HTTP/1 request head (request line and header lines).
#[derive(Debug)]
pub(crate) struct HeadScanner {
    limits: Limits,
    total: usize,
    /// The line being read: its length and whether it has a CR pending.
    line_len: usize,
    cr: bool,
    /// Lines completed so far (0 = still on the request line), not counting blank
    /// lines before the request line.
    lines: usize,
    /// Request line: spaces seen, whether the last byte was one, the version.
    rl_spaces: u8,
    rl_prev_space: bool,
    rl_version: Vec<u8>,
    /// The first bytes of the current line, for header names (lower-cased).
    name: Vec<u8>,
    name_done: bool,
    /// The current header line's value, when it is one we check.
    value: Vec<u8>,
    tracked: Tracked,
    content_lengths: Vec<Vec<u8>>,
    transfer_encoding: Option<Vec<u8>>,
    request_line: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracked {
    None,
    ContentLength,
    TransferEncoding,
}

impl Tracked {
    /// Whether the header `name` (any case) is one whose value the scanner keeps.
    fn of(name: &[u8]) -> Self {
        if name.eq_ignore_ascii_case(b"content-length") {
            Self::ContentLength
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            Self::TransferEncoding
        } else {
            Self::None
        }
    }
}

/// The request-line versions the gateway takes.
fn known_version(v: &[u8]) -> bool {
    matches!(v, b"HTTP/1.1" | b"HTTP/1.0" | b"HTTP/2.0")
}

/// `tchar` of RFC 9110: the characters of methods and header names.
fn is_tchar(b: u8) -> bool {
    const TCHAR: [bool; 256] = {
        let mut t = [false; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            t[c] = b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                );
            c += 1;
        }
        t
    };
    TCHAR[usize::from(b)]
}

/// How much of the request line is kept (for the method, in metrics).
const KEEP_REQUEST_LINE: usize = 16;

impl HeadScanner {
    /// A scanner for a new head.
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            total: 0,
            line_len: 0,
            cr: false,
            lines: 0,
            name: Vec::new(),
            name_done: false,
            value: Vec::new(),
            tracked: Tracked::None,
            content_lengths: Vec::new(),
            transfer_encoding: None,
            request_line: Vec::new(),
            rl_spaces: 0,
            rl_prev_space: false,
            rl_version: Vec::new(),
        }
    }

    /// Starts over for the next head, with the same limits (keeping its buffers).
    pub(crate) fn reset(&mut self) {
        self.total = 0;
        self.line_len = 0;
        self.cr = false;
        self.lines = 0;
        self.name.clear();
        self.name_done = false;
        self.value.clear();
        self.tracked = Tracked::None;
        self.content_lengths.clear();
        self.transfer_encoding = None;
        self.request_line.clear();
        self.rl_spaces = 0;
        self.rl_prev_space = false;
        self.rl_version.clear();
    }

    /// The method of the request line, when that much has been seen.
    pub(crate) fn method(&self) -> Option<&[u8]> {
        let sp = self.request_line.iter().position(|b| *b == b' ')?;
        Some(&self.request_line[..sp])
    }

    /// Whether this head is the HTTP/2 connection preface (`PRI * HTTP/2.0`).
    pub(crate) fn is_h2_preface(&self) -> bool {
        self.request_line.starts_with(b"PRI * HTTP/2.0")
    }

    /// Feeds the next bytes of the head.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Scan {
        let mut i = 0;
        while i < chunk.len() {
            // a line that starts here and ends in this chunk is taken whole when it is
            // well-formed; anything else goes byte by byte below
            if self.line_len == 0 && !self.cr {
                if let Some(n) = memchr::memchr(b'\n', &chunk[i..]) {
                    if self.whole_line(&chunk[i..i + n]) {
                        i += n + 1;
                        continue;
                    }
                }
            }
            let b = chunk[i];
            self.total += 1;
            if self.cr && b != b'\n' {
                return Scan::Refuse(ErrorCode::BadRequest); // bare CR
            }
            match b {
                b'\r' => {
                    self.cr = true;
                    i += 1;
                    continue;
                }
                b'\n' => {
                    self.cr = false;
                    match self.end_line() {
                        Some(Scan::Complete(_)) => return self.finish(i + 1),
                        Some(refuse @ Scan::Refuse(_)) => return refuse,
                        _ => {}
                    }
                    i += 1;
                    continue;
                }
                0..=8 | 11..=31 | 127 => return Scan::Refuse(ErrorCode::BadRequest),
                b'\t' if self.lines == 0 && self.line_len > 0 => {
                    return Scan::Refuse(ErrorCode::BadRequest); // not in a request line
                }
                _ => {}
            }
            if self.lines == 0 {
                if self.line_len >= self.limits.max_uri_bytes {
                    return Scan::Refuse(ErrorCode::UriTooLong);
                }
                if self.request_line.len() < KEEP_REQUEST_LINE {
                    self.request_line.push(b);
                }
                if !self.request_line_byte(b) {
                    return Scan::Refuse(ErrorCode::BadRequest);
                }
            } else {
                if self.line_len == 0 && (b == b' ' || b == b'\t') {
                    return Scan::Refuse(ErrorCode::BadRequest); // obs-fold
                }
                if !self.header_byte(b) {
                    return Scan::Refuse(ErrorCode::BadRequest);
                }
            }
            self.line_len += 1;
            i += 1;
            // The rest of a header value nobody reads (most of a head's bytes) only
            // needs checking for control characters: taken in one sweep.
            if self.lines > 0 && self.name_done && self.tracked == Tracked::None {
                let rest = &chunk[i..];
                let n = rest
                    .iter()
                    .position(|&c| (c < 0x20 && c != b'\t') || c == 0x7f)
                    .unwrap_or(rest.len());
                self.total += n;
                self.line_len += n;
                i += n;
            }
            if self.total > self.limits.max_header_bytes {
                return Scan::Refuse(ErrorCode::HeadersTooLarge);
            }
        }
        if self.total > self.limits.max_header_bytes {
            return Scan::Refuse(ErrorCode::HeadersTooLarge);
        }
        Scan::Partial
    }

    /// Takes a whole line (without its LF) that is well-formed and breaks no limit, as
    /// the byte-by-byte path would: `false`, having changed nothing, for anything else
    /// (a blank line, a line to refuse), which that path then takes. Most heads are
    /// read in one piece, so this is how most of them are checked.
    fn whole_line(&mut self, line: &[u8]) -> bool {
        let content = line.strip_suffix(b"\r").unwrap_or(line);
        let total = self.total + line.len() + 1;
        // control characters other than tab, counted without stopping at the first
        // (a loop the compiler vectorises: a line to refuse is rare)
        let controls = content.iter().fold(0u8, |n, &c| {
            n | u8::from((c < 0x20 && c != b'\t') || c == 0x7f)
        });
        if content.is_empty() || total > self.limits.max_header_bytes || controls != 0 {
            return false;
        }
        if self.lines == 0 {
            if !self.whole_request_line(content) {
                return false;
            }
        } else {
            if self.lines > self.limits.max_headers || matches!(content[0], b' ' | b'\t') {
                return false;
            }
            let Some(colon) = memchr::memchr(b':', content) else {
                return false;
            };
            let (name, value) = (&content[..colon], &content[colon + 1..]);
            if name.is_empty() || !name.iter().all(|&c| is_tchar(c)) {
                return false;
            }
            let tracked = Tracked::of(name);
            if tracked != Tracked::None {
                self.keep(tracked, value[..value.len().min(256)].to_ascii_lowercase());
            }
        }
        self.total = total;
        self.lines += 1;
        true
    }

    /// [`HeadScanner::whole_line`] for the request line: `METHOD SP TARGET SP VERSION`
    /// (control characters other than tab were ruled out), `false` for anything else.
    fn whole_request_line(&mut self, line: &[u8]) -> bool {
        if line.len() > self.limits.max_uri_bytes {
            return false;
        }
        let mut parts = line.split(|&c| c == b' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        if !known_version(version)
            || method.is_empty()
            || !method.iter().all(|&c| is_tchar(c))
            || target.is_empty()
            || target.iter().any(|&c| matches!(c, b'#' | b'\\' | b'\t'))
        {
            return false;
        }
        self.request_line.clear();
        self.request_line
            .extend_from_slice(&line[..line.len().min(KEEP_REQUEST_LINE)]);
        self.rl_spaces = 2;
        self.rl_prev_space = false;
        self.rl_version.clear();
        self.rl_version.extend_from_slice(version);
        true
    }

    /// Checks a byte of the request line: `METHOD SP TARGET SP VERSION`, a token for
    /// the method, no `#` (fragments are not sent) or `\` in the target.
    fn request_line_byte(&mut self, b: u8) -> bool {
        if b == b' ' {
            let ok = !self.rl_prev_space && self.rl_spaces < 2 && self.line_len > 0;
            self.rl_spaces += 1;
            self.rl_prev_space = true;
            return ok;
        }
        self.rl_prev_space = false;
        match self.rl_spaces {
            0 => is_tchar(b),
            1 => b != b'#' && b != b'\\',
            _ => {
                self.rl_version.push(b);
                self.rl_version.len() <= 8
            }
        }
    }

    /// Checks a byte of a header line; the name is a token.
    fn header_byte(&mut self, b: u8) -> bool {
        if !self.name_done {
            if b == b':' {
                if self.name.is_empty() {
                    return false;
                }
                self.name_done = true;
                self.tracked = Tracked::of(&self.name);
            } else if !is_tchar(b) {
                return false;
            } else if self.name.len() < 32 {
                self.name.push(b.to_ascii_lowercase());
            } else {
                self.name.clear();
                self.name.extend_from_slice(b"-long-");
            }
        } else if self.tracked != Tracked::None && self.value.len() < 256 {
            self.value.push(b.to_ascii_lowercase());
        }
        true
    }

    /// Keeps the (lower-cased) value of a header line for the framing checks.
    fn keep(&mut self, tracked: Tracked, value: Vec<u8>) {
        match tracked {
            Tracked::ContentLength => self.content_lengths.push(value),
            Tracked::TransferEncoding => {
                let te = self.transfer_encoding.get_or_insert_with(Vec::new);
                if !te.is_empty() {
                    te.push(b',');
                }
                te.extend_from_slice(&value);
            }
            Tracked::None => {}
        }
    }

    /// A line ended. `Some(Complete)` for the blank line ending the head.
    fn end_line(&mut self) -> Option<Scan> {
        let len = std::mem::take(&mut self.line_len);
        if len == 0 {
            if self.lines == 0 {
                return None; // blank lines before the request line are ignored
            }
            return Some(Scan::Complete(0));
        }
        let request_line_ok =
            self.rl_spaces == 2 && !self.rl_prev_space && known_version(&self.rl_version);
        if self.lines == 0 && !request_line_ok {
            return Some(Scan::Refuse(ErrorCode::BadRequest));
        }
        if self.lines > 0 {
            if !self.name_done {
                return Some(Scan::Refuse(ErrorCode::BadRequest)); // a header line without ':'
            }
            let value = std::mem::take(&mut self.value);
            self.keep(self.tracked, value);
            if self.lines > self.limits.max_headers {
                return Some(Scan::Refuse(ErrorCode::HeadersTooLarge));
            }
        }
        self.name.clear();
        self.name_done = false;
        self.tracked = Tracked::None;
        self.lines += 1;
        Some(Scan::Partial)
    }

    /// The head is complete at `end`: check its framing.
    fn finish(&self, end: usize) -> Scan {
        let trim = |v: &[u8]| -> Vec<u8> {
            let s = v
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(v.len());
            let e = v
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())
                .map_or(s, |e| e + 1);
            v[s..e.max(s)].to_vec()
        };
        if let Some(te) = &self.transfer_encoding {
            if !self.content_lengths.is_empty() || self.rl_version == b"HTTP/1.0" {
                return Scan::Refuse(ErrorCode::BadRequest);
            }
            let last = te
                .rsplit(|b| *b == b',')
                .next()
                .map(trim)
                .unwrap_or_default();
            if last != b"chunked" {
                return Scan::Refuse(ErrorCode::BadRequest);
            }
        }
        let mut values = self
            .content_lengths
            .iter()
            .flat_map(|v| v.split(|b| *b == b','))
            .map(trim);
        if let Some(first) = values.next() {
            if first.is_empty()
                || !first.iter().all(u8::is_ascii_digit)
                || values.any(|v| v != first)
            {
                return Scan::Refuse(ErrorCode::BadRequest);
            }
        }
        Scan::Complete(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(head: &[u8]) -> Scan {
        HeadScanner::new(Limits::default()).feed(head)
    }

    fn bad(head: &str) {
        assert_eq!(
            scan(head.as_bytes()),
            Scan::Refuse(ErrorCode::BadRequest),
            "{head:?}"
        );
    }

    #[test]
    fn finds_the_end_of_a_head_in_one_or_many_chunks() {
        let head = b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(scan(head), Scan::Complete(head.len() - 3));
        let mut s = HeadScanner::new(Limits::default());
        let mut result = Scan::Partial;
        for (i, b) in head.iter().enumerate() {
            result = s.feed(std::slice::from_ref(b));
            if result != Scan::Partial {
                assert_eq!(i, head.len() - 4);
                break;
            }
        }
        assert_eq!(result, Scan::Complete(1));
        assert_eq!(s.method(), Some(&b"GET"[..]));
        // LF-only line ends and leading blank lines are accepted, as parsers do
        assert!(matches!(
            scan(b"\r\nGET / HTTP/1.1\nHost: h\n\n"),
            Scan::Complete(_)
        ));
    }

    #[test]
    fn refuses_ambiguous_framing() {
        bad("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        bad("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n");
        bad("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
        bad("POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n");
        bad("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
        bad("POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n");
        bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        bad("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n");
        bad("GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n");
        bad("GET / HTTP/1.1\r\nX-A: 1\r\n\tfolded\r\n\r\n");
        bad("GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n");
        bad("GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n");
        bad("GET / HTTP/1.1\r\nX-A: a\x1bb\r\n\r\n");
        bad("GET /\x7f HTTP/1.1\r\n\r\n");
        bad("GET\t/ HTTP/1.1\r\n\r\n");
        bad("GET / HTTP/7.1\r\n\r\n");
        bad("GET /\r\n\r\n");
        bad("GET  / HTTP/1.1\r\n\r\n");
        bad("GET / HTTP/1.1 \r\n\r\n");
        bad("G(T / HTTP/1.1\r\n\r\n");
        bad("GET /a#b HTTP/1.1\r\n\r\n");
        bad("GET /a\\b HTTP/1.1\r\n\r\n");
        bad("GET / HTTP/1.1\r\nX A: 1\r\n\r\n");
        bad("GET / HTTP/1.1\r\nX-A : 1\r\n\r\n");
        bad("GET / HTTP/1.1\r\n: 1\r\n\r\n");
        bad("GET / HTTP/1.1\r\nno colon\r\n\r\n");
        // same value twice is one length, and a tab inside a value is fine
        assert!(matches!(
            scan(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\nX: a\tb\r\n\r\n"),
            Scan::Complete(_)
        ));
        assert!(matches!(
            scan(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
            Scan::Complete(_)
        ));
    }

    #[test]
    fn enforces_size_count_and_uri_limits() {
        let limits = Limits {
            max_header_bytes: 2048,
            max_headers: 3,
            max_uri_bytes: 100,
            ..Limits::default()
        };
        let mut s = HeadScanner::new(limits);
        let long_uri = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100));
        assert_eq!(
            s.feed(long_uri.as_bytes()),
            Scan::Refuse(ErrorCode::UriTooLong)
        );
        s.reset();
        let ok = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert!(matches!(s.feed(ok.as_bytes()), Scan::Complete(_)));
        s.reset();
        let four = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        assert_eq!(
            s.feed(four.as_bytes()),
            Scan::Refuse(ErrorCode::HeadersTooLarge)
        );
        s.reset();
        let big = format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "x".repeat(2048));
        assert_eq!(
            s.feed(big.as_bytes()),
            Scan::Refuse(ErrorCode::HeadersTooLarge)
        );
        // an endless header line is refused as soon as it passes the limit, not at its end
        s.reset();
        assert_eq!(s.feed(b"GET / HTTP/1.1\r\nA: "), Scan::Partial);
        let mut r = Scan::Partial;
        for _ in 0..100 {
            r = s.feed(&[b'x'; 64]);
            if r != Scan::Partial {
                break;
            }
        }
        assert_eq!(r, Scan::Refuse(ErrorCode::HeadersTooLarge));
    }

    /// The head fed one byte at a time, which never takes a line whole: the result as
    /// `feed` of the whole head would give it.
    fn bytewise(limits: Limits, head: &[u8]) -> (Scan, Option<Vec<u8>>) {
        let mut s = HeadScanner::new(limits);
        for (i, b) in head.iter().enumerate() {
            match s.feed(std::slice::from_ref(b)) {
                Scan::Partial => {}
                Scan::Complete(_) => {
                    return (Scan::Complete(i + 1), s.method().map(<[u8]>::to_vec))
                }
                refuse => return (refuse, s.method().map(<[u8]>::to_vec)),
            }
        }
        (Scan::Partial, s.method().map(<[u8]>::to_vec))
    }

    #[test]
    fn whole_lines_are_judged_as_bytes_are() {
        let limits = Limits {
            max_header_bytes: 1024,
            max_headers: 4,
            max_uri_bytes: 64,
            ..Limits::default()
        };
        let heads: &[&[u8]] = &[
            b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
            b"POST /x HTTP/1.0\r\ncontent-length:  7 \r\nX-Y: a\tb\r\n\r\n",
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip,\r\nTRANSFER-ENCODING: chunked\r\n\r\n",
            b"\r\n\nGET / HTTP/1.1\nHost: h\n\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n",
        ];
        let noise = [
            b' ', b'\t', b'\r', b'\n', b':', b'#', b'\\', 0, b'a', b'A', b'-', 0x7f, 0x80, b',',
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        let mut cases: Vec<Vec<u8>> = heads.iter().map(|h| h.to_vec()).collect();
        cases.push(format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(70)).into_bytes());
        cases.push(format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "x".repeat(1100)).into_bytes());
        for _ in 0..5000 {
            let mut h = heads[rng.usize(..heads.len())].to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..=h.len());
                if rng.bool() && at < h.len() {
                    h.remove(at);
                } else {
                    h.insert(at, noise[rng.usize(..noise.len())]);
                }
            }
            cases.push(h);
        }
        for h in &cases {
            let mut s = HeadScanner::new(limits);
            let whole = s.feed(h);
            let whole = (whole, s.method().map(<[u8]>::to_vec));
            assert_eq!(
                whole,
                bytewise(limits, h),
                "{:?}",
                h.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn recognises_the_h2_preface() {
        let mut s = HeadScanner::new(Limits::default());
        assert!(matches!(
            s.feed(b"PRI * HTTP/2.0\r\n\r\n"),
            Scan::Complete(_)
        ));
        assert!(s.is_h2_preface());
    }
}
