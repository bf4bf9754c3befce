//! Request-head limits and connection deadlines (`[server.limits]`): their defaults
//! and checks. The connection guard ([`crate::Guarded`]) enforces them.
//!
//! ```toml
//! [server.limits]
//! max_header_bytes = "32KiB"   # request line + headers → 431
//! max_headers = 100            # header lines → 431
//! max_uri_bytes = "8KiB"       # request line → 414
//! header_timeout = "10s"       # first byte of a head to its end → 408, connection closed
//! idle_timeout = "60s"         # between requests on a keep-alive connection → closed
//! body_timeout = "60s"         # the longest pause while a request body is sent → 408
//! send_timeout = "60s"         # the longest pause while the client takes no response → closed
//! body_buffer_total = "256MiB" # every whole body policies hold at once → 503 (CROSSCUTTING.md 4.1)
//! compress_streams = 256       # responses being compressed at once; more go uncompressed
//! ```

use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::units::{ConfigDuration, ConfigSize};

/// The most header lines Pingora's parser accepts; `max_headers` cannot exceed it.
pub const PARSER_MAX_HEADERS: usize = 256;
/// The most header bytes Pingora's parser accepts; `max_header_bytes` cannot exceed it.
pub const PARSER_MAX_HEADER_BYTES: usize = 1024 * 1024 - 1;

/// `[server.limits]` as written, each value with its place in the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    pub max_header_bytes: Option<Spanned<ConfigSize>>,
    pub max_headers: Option<Spanned<usize>>,
    pub max_uri_bytes: Option<Spanned<ConfigSize>>,
    pub header_timeout: Option<Spanned<ConfigDuration>>,
    pub idle_timeout: Option<Spanned<ConfigDuration>>,
    pub body_timeout: Option<Spanned<ConfigDuration>>,
    pub send_timeout: Option<Spanned<ConfigDuration>>,
    pub body_buffer_total: Option<Spanned<ConfigSize>>,
    pub compress_streams: Option<Spanned<usize>>,
}

/// Server-wide request limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers, in bytes. Default 32 KiB.
    pub max_header_bytes: usize,
    /// Header lines. Default 100.
    pub max_headers: usize,
    /// Request line, in bytes. Default: the smaller of 8 KiB and `max_header_bytes`.
    pub max_uri_bytes: usize,
    /// From the first byte of a request head to its end (and from accepting a
    /// connection to its first byte). Default 10 s.
    pub header_timeout: Duration,
    /// Between requests on a keep-alive connection. Default 60 s.
    pub idle_timeout: Duration,
    /// The longest pause while the client sends a request body (a slow-body deadline;
    /// a steady upload of any length is fine). Default 60 s.
    pub body_timeout: Duration,
    /// The longest pause while the gateway cannot write to the client (a client that
    /// stops reading its response; a slow reader of any steady pace is fine): the
    /// connection is closed. Default 60 s.
    pub send_timeout: Duration,
    /// The bytes of every body that policies hold whole, together (a request that
    /// cannot take its bytes is refused 503; a response is passed on as it comes).
    /// Default 256 MiB, at least 64 KiB.
    pub body_buffer_total: usize,
    /// Responses being compressed at one time, process-wide; a response past it is
    /// sent uncompressed. Default 256, at least 1.
    pub compress_streams: usize,
}

/// The default `max_uri_bytes`, when `max_header_bytes` leaves room for it.
const DEFAULT_MAX_URI_BYTES: usize = 8 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_uri_bytes: DEFAULT_MAX_URI_BYTES,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            body_buffer_total: 256 << 20,
            compress_streams: 256,
        }
    }
}

/// An invalid limit: its key, where its value is written, and what is wrong.
pub(crate) type LimitError = (&'static str, Range<usize>, String);

impl LimitsFile {
    /// Applies the defaults (a default that depends on another limit follows it) and
    /// checks the values written; every invalid one on error, located at its value.
    pub(crate) fn resolve(&self) -> Result<Limits, Vec<LimitError>> {
        let d = Limits::default();
        let size =
            |s: &Option<Spanned<ConfigSize>>| s.as_ref().map(|s| s.get_ref().bytes() as usize);
        let time =
            |t: &Option<Spanned<ConfigDuration>>, d| t.as_ref().map_or(d, |t| t.get_ref().get());
        let max_header_bytes = size(&self.max_header_bytes).unwrap_or(d.max_header_bytes);
        let l = Limits {
            max_header_bytes,
            max_headers: self
                .max_headers
                .as_ref()
                .map_or(d.max_headers, |n| *n.get_ref()),
            max_uri_bytes: size(&self.max_uri_bytes)
                .unwrap_or(DEFAULT_MAX_URI_BYTES.min(max_header_bytes)),
            header_timeout: time(&self.header_timeout, d.header_timeout),
            idle_timeout: time(&self.idle_timeout, d.idle_timeout),
            body_timeout: time(&self.body_timeout, d.body_timeout),
            send_timeout: time(&self.send_timeout, d.send_timeout),
            body_buffer_total: size(&self.body_buffer_total).unwrap_or(d.body_buffer_total),
            compress_streams: self
                .compress_streams
                .as_ref()
                .map_or(d.compress_streams, |n| *n.get_ref()),
        };
        let mut errors = Vec::new();
        if let Some(s) = &self.max_header_bytes {
            if !(1024..=PARSER_MAX_HEADER_BYTES).contains(&l.max_header_bytes) {
                errors.push((
                    "max_header_bytes",
                    s.span(),
                    format!("must be between 1KiB and {PARSER_MAX_HEADER_BYTES} bytes"),
                ));
            }
        }
        if let Some(n) = &self.max_headers {
            if !(1..=PARSER_MAX_HEADERS).contains(&l.max_headers) {
                errors.push((
                    "max_headers",
                    n.span(),
                    format!("must be between 1 and {PARSER_MAX_HEADERS}"),
                ));
            }
        }
        if let Some(s) = &self.max_uri_bytes {
            if l.max_uri_bytes < 64 {
                errors.push((
                    "max_uri_bytes",
                    s.span(),
                    "must be at least 64 bytes".into(),
                ));
            } else if l.max_uri_bytes > l.max_header_bytes {
                let of = if self.max_header_bytes.is_some() {
                    ""
                } else {
                    ", its default"
                };
                errors.push((
                    "max_uri_bytes",
                    s.span(),
                    format!(
                        "must be at most max_header_bytes ({} bytes{of}): the request line is part of the head",
                        l.max_header_bytes
                    ),
                ));
            }
        }
        if let Some(s) = &self.body_buffer_total {
            if l.body_buffer_total < 64 << 10 {
                errors.push((
                    "body_buffer_total",
                    s.span(),
                    "must be at least 64KiB".into(),
                ));
            }
        }
        if let Some(n) = &self.compress_streams {
            if l.compress_streams < 1 {
                errors.push(("compress_streams", n.span(), "must be at least 1".into()));
            }
        }
        for (key, t) in [
            ("header_timeout", &self.header_timeout),
            ("idle_timeout", &self.idle_timeout),
            ("body_timeout", &self.body_timeout),
            ("send_timeout", &self.send_timeout),
        ] {
            if let Some(t) = t {
                if t.get_ref().get() < Duration::from_millis(10) {
                    errors.push((key, t.span(), "must be at least 10ms".into()));
                }
            }
        }
        if errors.is_empty() {
            Ok(l)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_against_the_parser_and_each_other() {
        let f = |src: &str| toml::from_str::<LimitsFile>(src).unwrap().resolve();
        let keys = |src: &str| -> Vec<&'static str> {
            f(src).unwrap_err().into_iter().map(|e| e.0).collect()
        };
        assert_eq!(f("").unwrap(), Limits::default());
        assert_eq!(keys("max_headers = 300"), ["max_headers"]);
        assert_eq!(keys("max_header_bytes = \"2MiB\""), ["max_header_bytes"]);
        assert_eq!(
            keys("max_header_bytes = \"4KiB\"\nmax_uri_bytes = \"8KiB\""),
            ["max_uri_bytes"]
        );
        assert_eq!(keys("max_uri_bytes = \"64KiB\""), ["max_uri_bytes"]);
        assert_eq!(keys("idle_timeout = \"1ms\""), ["idle_timeout"]);
        assert_eq!(keys("send_timeout = \"5ms\""), ["send_timeout"]);
        assert_eq!(
            f("send_timeout = \"2s\"").unwrap().send_timeout,
            Duration::from_secs(2)
        );
        assert!(toml::from_str::<LimitsFile>("max_body = 1").is_err());
    }

    #[test]
    fn max_uri_bytes_follows_a_smaller_max_header_bytes_when_not_written() {
        let f = |src: &str| toml::from_str::<LimitsFile>(src).unwrap().resolve();
        let l = f("max_header_bytes = \"4KiB\"").expect("one limit alone is valid");
        assert_eq!((l.max_header_bytes, l.max_uri_bytes), (4096, 4096));
        let l = f("max_header_bytes = \"64KiB\"").unwrap();
        assert_eq!(
            l.max_uri_bytes,
            8 * 1024,
            "the default is 8 KiB when there is room"
        );
    }

    #[test]
    fn every_invalid_limit_is_reported_at_its_own_value() {
        let src = "max_headers = 0\nidle_timeout = \"1ms\"\n";
        let errors = toml::from_str::<LimitsFile>(src)
            .unwrap()
            .resolve()
            .unwrap_err();
        let found: Vec<_> = errors
            .iter()
            .map(|(k, span, _)| (*k, &src[span.clone()]))
            .collect();
        assert_eq!(found, [("max_headers", "0"), ("idle_timeout", "\"1ms\"")]);
    }
}
