//! W3C Trace Context: `traceparent` is propagated with a new span id for the upstream
//! hop, or started when the client sent none (or an invalid one).
//!
//! The gateway's own span for a request gets a fresh span id; the client's span (if it
//! sent a `traceparent`) is its parent, and it is the parent of the upstream's span.

/// A parsed or generated trace context, with the gateway's span in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 2 hex digits of flags (`01` = sampled).
    pub flags: String,
    /// The caller's span id (16 hex digits), when the client sent a `traceparent`.
    pub parent_id: Option<String>,
    /// The gateway's span id for this request (16 hex digits).
    pub span_id: String,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl TraceContext {
    /// Parses a `traceparent` value; `None` when it is not a valid version-00 context.
    pub fn parse(v: &str) -> Option<Self> {
        let mut parts = v.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let valid = version == "00"
            && parts.next().is_none()
            && is_hex(trace, 32)
            && trace.bytes().any(|b| b != b'0')
            && is_hex(parent, 16)
            && parent.bytes().any(|b| b != b'0')
            && is_hex(flags, 2);
        valid.then(|| Self {
            trace_id: trace.to_string(),
            flags: flags.to_string(),
            parent_id: Some(parent.to_string()),
            span_id: new_span_id(),
        })
    }

    /// A new trace, sampled.
    pub fn generate() -> Self {
        Self {
            trace_id: format!("{:032x}", fastrand::u128(1..)),
            flags: "01".into(),
            parent_id: None,
            span_id: new_span_id(),
        }
    }

    /// The `traceparent` for the upstream hop: this trace, the gateway's span as parent.
    pub fn child(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }

    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.flags, 16).is_ok_and(|f| f & 1 == 1)
    }

    /// The trace id as 16 bytes.
    pub fn trace_id_bytes(&self) -> [u8; 16] {
        u128::from_str_radix(&self.trace_id, 16)
            .unwrap_or(0)
            .to_be_bytes()
    }

    /// The gateway's span id as 8 bytes.
    pub fn span_id_bytes(&self) -> [u8; 8] {
        u64::from_str_radix(&self.span_id, 16)
            .unwrap_or(0)
            .to_be_bytes()
    }

    /// The caller's span id as 8 bytes, if there is one.
    pub fn parent_id_bytes(&self) -> Option<[u8; 8]> {
        let p = self.parent_id.as_deref()?;
        u64::from_str_radix(p, 16).ok().map(u64::to_be_bytes)
    }
}

fn new_span_id() -> String {
    format!("{:016x}", fastrand::u64(1..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_contexts_only() {
        let t =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, "01");
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
    fn children_keep_the_trace_and_change_the_span() {
        let t =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        let c = t.child();
        let parsed = TraceContext::parse(&c).unwrap();
        assert_eq!(parsed.trace_id, t.trace_id);
        assert_eq!(parsed.flags, "00");
        assert_eq!(parsed.parent_id.as_deref(), Some(t.span_id.as_str()));
        assert_eq!(t.parent_id.as_deref(), Some("00f067aa0ba902b7"));
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
