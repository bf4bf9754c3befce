//! W3C Trace Context: `traceparent` is propagated with a new span id for the upstream
//! hop, or started when the client sent none (or an invalid one).
//!
//! The gateway's own span for a request gets a fresh span id; the client's span (if it
//! sent a `traceparent`) is its parent, and it is the parent of the upstream's span.
//! Ids are kept as integers and written as hex only where they leave the gateway.

/// A parsed or generated trace context, with the gateway's span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id (never zero).
    pub trace_id: u128,
    /// The trace flags (bit 0 = sampled).
    pub flags: u8,
    /// The caller's span id, when the client sent a `traceparent`.
    pub parent_id: Option<u64>,
    /// The gateway's span id for this request (never zero).
    pub span_id: u64,
}

/// Lower-case hex of `v`, `N` digits; `None` if `s` is not exactly that.
fn parse_hex<const N: usize>(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != N {
        return None;
    }
    b.iter().try_fold(0u128, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(d))
    })
}

/// Writes the last `out.len()` (at most 32) hex digits of `v` into `out`, lower case.
pub(crate) fn put_hex(out: &mut [u8], v: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // two digits per byte of `v`, by table: ids and trace contexts are made per request
    const PAIRS: [[u8; 2]; 256] = {
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
            i += 1;
        }
        t
    };
    let mut pairs = out.rchunks_exact_mut(2);
    let mut bytes = v.to_le_bytes().into_iter();
    for (pair, b) in (&mut pairs).zip(&mut bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(b)]);
    }
    if let ([digit], Some(b)) = (pairs.into_remainder(), bytes.next()) {
        *digit = DIGITS[usize::from(b & 0xf)];
    }
}

impl TraceContext {
    /// Parses a `traceparent` value; `None` when it is not a valid version-00 context.
    pub fn parse(v: &str) -> Option<Self> {
        let mut parts = v.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let trace_id = parse_hex::<32>(trace).filter(|t| *t != 0)?;
        let parent = parse_hex::<16>(parent).filter(|p| *p != 0)? as u64;
        let flags = parse_hex::<2>(flags)? as u8;
        Some(Self {
            trace_id,
            flags,
            parent_id: Some(parent),
            span_id: new_span_id(),
        })
    }

    /// A new trace, sampled.
    pub fn generate() -> Self {
        Self {
            trace_id: fastrand::u128(1..),
            flags: 1,
            parent_id: None,
            span_id: new_span_id(),
        }
    }

    /// The `traceparent` for the upstream hop: this trace, the gateway's span as parent.
    pub fn child(&self) -> String {
        String::from_utf8_lossy(&self.child_bytes()).into_owned()
    }

    /// [`Self::child`] as a header value.
    pub fn child_header(&self) -> http::HeaderValue {
        // 55 bytes of hex and dashes: always a valid header value
        http::HeaderValue::from_bytes(&self.child_bytes())
            .unwrap_or_else(|_| http::HeaderValue::from_static(""))
    }

    fn child_bytes(&self) -> [u8; 55] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        put_hex(&mut out[3..35], self.trace_id);
        put_hex(&mut out[36..52], u128::from(self.span_id));
        put_hex(&mut out[53..55], u128::from(self.flags));
        out
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The trace id as 16 bytes.
    pub fn trace_id_bytes(&self) -> [u8; 16] {
        self.trace_id.to_be_bytes()
    }

    /// The gateway's span id as 8 bytes.
    pub fn span_id_bytes(&self) -> [u8; 8] {
        self.span_id.to_be_bytes()
    }

    /// The caller's span id as 8 bytes, if there is one.
    pub fn parent_id_bytes(&self) -> Option<[u8; 8]> {
        self.parent_id.map(u64::to_be_bytes)
    }
}

fn new_span_id() -> u64 {
    fastrand::u64(1..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_the_last_digits_zero_padded() {
        let mut rng = fastrand::Rng::with_seed(3);
        for v in [0, 1, 0xab, u128::MAX, rng.u128(..), rng.u128(..) >> 7] {
            let full = format!("{v:032x}");
            for n in 1..=32 {
                let mut out = vec![b'?'; n];
                put_hex(&mut out, v);
                assert_eq!(out, &full.as_bytes()[32 - n..], "{v:x} in {n} digits");
            }
        }
    }

    #[test]
    fn parses_valid_contexts_only() {
        let t =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, 1);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_upstream_traceparent_is_exactly_the_w3c_form() {
        let t = TraceContext {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            flags: 1,
            parent_id: None,
            span_id: 0x00f0_67aa_0ba9_02b7,
        };
        assert_eq!(
            t.child(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(t.child_header().to_str().unwrap(), t.child());
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn children_keep_the_trace_and_change_the_span() {
        let t =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        let c = t.child();
        let parsed = TraceContext::parse(&c).unwrap();
        assert_eq!(parsed.trace_id, t.trace_id);
        assert_eq!(parsed.flags, 0);
        assert_eq!(parsed.parent_id, Some(t.span_id));
        assert_eq!(t.parent_id, Some(0x00f0_67aa_0ba9_02b7));
        assert!(!c.contains("00f067aa0ba902b7"));
        assert!(!t.sampled());
        let g = TraceContext::generate();
        assert!(g.sampled() && g.parent_id.is_none() && g.parent_id_bytes().is_none());
        assert_eq!(
            TraceContext::parse(&g.child()).unwrap().trace_id,
            g.trace_id
        );
        assert_eq!(
            t.trace_id_bytes()[..4],
            [0x4b, 0xf9, 0x2f, 0x35],
            "big-endian, as OTLP wants"
        );
    }
}
