//! Response compression (`cache.md` §12): what a route compresses ([`CompressRules`],
//! declared by the `compress` policy or one of yours through
//! [`Policy::compress_rules`](crate::policy::Policy::compress_rules)), the choice of a
//! coding from `Accept-Encoding`, and the streaming encoders (zstd, brotli, gzip) whose
//! memory is fixed by their window, never by the body's size.

pub(crate) mod decode;

pub use decode::Coding;
pub(crate) mod encoder;
pub(crate) mod negotiate;

/// A content coding the gateway can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// Zstandard (RFC 8878).
    Zstd,
    /// Brotli (RFC 7932).
    Br,
    /// gzip (RFC 1952).
    Gzip,
}

impl Algorithm {
    /// Every algorithm, in the default order of preference.
    pub const ALL: [Algorithm; 3] = [Algorithm::Zstd, Algorithm::Br, Algorithm::Gzip];

    /// The coding's name (`Content-Encoding`, metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Br => "br",
            Self::Gzip => "gzip",
        }
    }

    /// The algorithm called `name` (exactly as written in a config).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Its levels: the lowest, the highest and the default.
    pub fn levels(self) -> (i32, i32, i32) {
        match self {
            Self::Zstd => (1, 19, 3),
            Self::Br => (0, 11, 4),
            Self::Gzip => (1, 9, 6),
        }
    }
}

/// A media type pattern of `types`: `type/subtype`, `type/*` or `type/*+suffix`,
/// lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MediaPattern {
    kind: String,
    sub: SubType,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SubType {
    Exact(String),
    Any,
    Suffix(String),
}

impl MediaPattern {
    /// Parses one pattern; `None` when it is not one of the three forms.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        let (kind, sub) = s.split_once('/')?;
        let token = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        if !token(kind) {
            return None;
        }
        let sub = if sub == "*" {
            SubType::Any
        } else if let Some(suffix) = sub.strip_prefix("*+") {
            if !token(suffix) {
                return None;
            }
            SubType::Suffix(suffix.to_string())
        } else if token(sub) {
            SubType::Exact(sub.to_string())
        } else {
            return None;
        };
        Some(Self {
            kind: kind.to_string(),
            sub,
        })
    }

    /// Whether `media` (a `Content-Type`'s type/subtype, lowercase, no parameters)
    /// matches.
    pub fn matches(&self, media: &str) -> bool {
        let Some((kind, sub)) = media.split_once('/') else {
            return false;
        };
        if kind != self.kind {
            return false;
        }
        match &self.sub {
            SubType::Any => true,
            SubType::Exact(s) => sub == s,
            SubType::Suffix(s) => sub.rsplit_once('+').is_some_and(|(_, suffix)| suffix == s),
        }
    }
}

/// How a route compresses its responses (`[routes.X.policies.compress]`).
///
/// Build one with [`CompressRules::default`] and set its fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct CompressRules {
    /// The codings the gateway may use, in its order of preference; empty: responses
    /// are not compressed.
    pub algorithms: Vec<Algorithm>,
    /// The media types that are compressed.
    pub types: Vec<MediaPattern>,
    /// A response whose `Content-Length` is below this is sent as it is.
    pub min_size: u64,
    /// The level of each algorithm.
    pub zstd_level: i32,
    /// Brotli's quality.
    pub br_level: u32,
    /// gzip's level.
    pub gzip_level: u32,
    /// Compress `text/event-stream` too, and flush after every read from the upstream.
    pub streaming: bool,
    /// Ask the upstream for `Accept-Encoding: identity`.
    pub upstream_identity: bool,
    /// Decode gzip request bodies before they go upstream.
    pub decompress_requests: bool,
    /// The largest decoded request body.
    pub decompress_max_size: u64,
    /// The largest decoded / encoded ratio of a request body (checked past 64 KiB).
    pub decompress_max_ratio: u64,
}

/// The default `types`.
pub const DEFAULT_TYPES: [&str; 7] = [
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "image/svg+xml",
    "application/*+json",
    "application/*+xml",
];

impl Default for CompressRules {
    /// `cache.md` §12.2's defaults.
    fn default() -> Self {
        Self {
            algorithms: Algorithm::ALL.to_vec(),
            types: DEFAULT_TYPES
                .iter()
                .filter_map(|t| MediaPattern::parse(t))
                .collect(),
            min_size: 1024,
            zstd_level: 3,
            br_level: 4,
            gzip_level: 6,
            streaming: false,
            upstream_identity: false,
            decompress_requests: false,
            decompress_max_size: 8 << 20,
            decompress_max_ratio: 100,
        }
    }
}

impl CompressRules {
    /// Whether `content_type` (a whole `Content-Type` value) is one to compress.
    pub(crate) fn compresses_type(&self, content_type: &str) -> bool {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media == "text/event-stream" && !self.streaming {
            return false;
        }
        self.types.iter().any(|p| p.matches(&media))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_take_three_forms_and_match_case_insensitively() {
        for bad in ["json", "*/*", "text/", "/json", "text/*+", "te xt/html"] {
            assert!(MediaPattern::parse(bad).is_none(), "{bad}");
        }
        let rules = CompressRules::default();
        for yes in [
            "text/html; charset=utf-8",
            "Application/JSON",
            "application/problem+json",
            "image/svg+xml",
            "application/atom+xml",
        ] {
            assert!(rules.compresses_type(yes), "{yes}");
        }
        for no in [
            "image/png",
            "application/octet-stream",
            "text/event-stream",
            "",
            "json",
        ] {
            assert!(!rules.compresses_type(no), "{no}");
        }
        let streaming = CompressRules {
            streaming: true,
            ..CompressRules::default()
        };
        assert!(streaming.compresses_type("text/event-stream"));
    }

    #[test]
    fn streams_hold_at_most_their_limit_and_give_places_back() {
        let gauge = prometheus::IntGauge::new("g", "g").unwrap();
        let streams = std::sync::Arc::new(Streams::new(2, gauge.clone()));
        let a = streams.take().unwrap();
        let b = streams.take().unwrap();
        assert!(streams.take().is_none(), "a third is busy");
        assert_eq!(gauge.get(), 2);
        drop(a);
        assert_eq!(gauge.get(), 1);
        let c = streams.take().unwrap();
        streams.configure(1);
        assert!(streams.take().is_none());
        drop((b, c));
        assert!(streams.take().is_some());
    }
}

/// The responses being compressed at once, process-wide (`[server.limits]
/// compress_streams`): a response that would go past the limit is sent as it is.
#[derive(Debug)]
pub(crate) struct Streams {
    limit: std::sync::atomic::AtomicUsize,
    active: std::sync::atomic::AtomicUsize,
    gauge: prometheus::IntGauge,
}

/// One response's place among [`Streams`], given back when dropped.
#[derive(Debug)]
pub(crate) struct StreamSlot(std::sync::Arc<Streams>);

impl Streams {
    pub(crate) fn new(limit: usize, gauge: prometheus::IntGauge) -> Self {
        Self {
            limit: limit.into(),
            active: 0.into(),
            gauge,
        }
    }

    /// A new limit, for responses that start after it (a reload).
    pub(crate) fn configure(&self, limit: usize) {
        self.limit
            .store(limit, std::sync::atomic::Ordering::Relaxed);
    }

    /// A place for one more response, unless `compress_streams` are in use.
    pub(crate) fn take(self: &std::sync::Arc<Self>) -> Option<StreamSlot> {
        use std::sync::atomic::Ordering;
        let limit = self.limit.load(Ordering::Relaxed);
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        self.gauge.inc();
        Some(StreamSlot(self.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.gauge.dec();
    }
}
