//! `compress`: compress responses on their way to the client with zstd, brotli or gzip,
//! chosen per request from `Accept-Encoding` (`cache.md` §12).
//!
//! # Config
//!
//! ```toml
//! [routes.products.policies.compress]     # every key optional; the defaults shown
//! algorithms = ["zstd", "br", "gzip"]     # the gateway's order of preference; [] = off
//! types = ["text/*", "application/json", "application/javascript", "application/xml",
//!          "image/svg+xml", "application/*+json", "application/*+xml"]
//! min_size = "1KiB"                       # a smaller Content-Length is sent as it is
//! level = { zstd = 3, br = 4, gzip = 6 }  # zstd 1..=19, br 0..=11, gzip 1..=9
//! streaming = false                       # true: SSE too, flushed after every read
//! upstream_identity = false               # true: the upstream gets Accept-Encoding: identity
//! decompress_requests = false             # true: gzip request bodies are decoded (§12.7)
//! decompress_max_size = "8MiB"            # 1 byte .. 64MiB
//! decompress_max_ratio = 100              # at least 2
//! ```
//!
//! The gateway compresses as the last step before the client, streaming with a fixed
//! window; this policy declares the rules ([`Policy::compress_rules`]).

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Deserialize;

use crate::compress::{Algorithm, CompressRules, MediaPattern};
use crate::policy::{BuildCtx, BuildError, Policy, PolicyConfig, Stage};
use crate::units::ConfigSize;

// === Config ===

/// `compress` config. See the [module docs](self).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressConfig {
    /// The codings, in order of preference (default `["zstd", "br", "gzip"]`).
    pub algorithms: Option<Vec<String>>,
    /// Media types to compress (a list written replaces the default whole).
    pub types: Option<Vec<String>>,
    /// Smallest `Content-Length` compressed (default `"1KiB"`).
    pub min_size: Option<ConfigSize>,
    /// Per-algorithm levels.
    #[serde(default)]
    pub level: BTreeMap<String, i64>,
    /// Compress `text/event-stream` too and flush after every read (default false).
    #[serde(default)]
    pub streaming: bool,
    /// The upstream gets `Accept-Encoding: identity` (default false).
    #[serde(default)]
    pub upstream_identity: bool,
    /// Decode gzip request bodies (default false).
    #[serde(default)]
    pub decompress_requests: bool,
    /// Largest decoded request body (default `"8MiB"`, at most `"64MiB"`).
    pub decompress_max_size: Option<ConfigSize>,
    /// Largest decoded / encoded ratio of a request body (default 100, at least 2).
    pub decompress_max_ratio: Option<i64>,
}

/// The largest `decompress_max_size`.
const DECOMPRESS_MAX: u64 = 64 << 20;

/// The algorithms of `algorithms`, each known and listed once.
fn algorithms(list: &[String]) -> Result<Vec<Algorithm>, BuildError> {
    let mut out = Vec::new();
    for (i, a) in list.iter().enumerate() {
        let at = format!("algorithms[{i}]");
        let alg = Algorithm::from_name(a).ok_or_else(|| {
            BuildError::field(
                &at,
                format!("unknown algorithm {a:?} (known: zstd, br, gzip)"),
            )
        })?;
        if out.contains(&alg) {
            return Err(BuildError::field(at, format!("{a:?} is listed twice")));
        }
        out.push(alg);
    }
    Ok(out)
}

impl PolicyConfig for CompressConfig {
    type Policy = Compress;

    fn build(self, _cx: &BuildCtx<'_>) -> Result<Compress, BuildError> {
        let mut errors = Vec::new();
        let mut rules = CompressRules::default();
        if let Some(list) = &self.algorithms {
            match algorithms(list) {
                Ok(a) => rules.algorithms = a,
                Err(e) => errors.push(e),
            }
        }
        if let Some(types) = self.types {
            let mut parsed = Vec::new();
            for (i, t) in types.iter().enumerate() {
                match MediaPattern::parse(t) {
                    Some(p) => parsed.push(p),
                    None => errors.push(BuildError::field(
                        format!("types[{i}]"),
                        format!("{t:?} is not type/subtype, type/* or type/*+suffix"),
                    )),
                }
            }
            rules.types = parsed;
        }
        if let Some(m) = self.min_size {
            rules.min_size = m.bytes();
        }
        for (name, level) in &self.level {
            let at = format!("level.{name}");
            let Some(alg) = Algorithm::from_name(name) else {
                errors.push(BuildError::field(
                    &at,
                    format!("unknown algorithm {name:?} (known: zstd, br, gzip)"),
                ));
                continue;
            };
            let (lo, hi, _) = alg.levels();
            let Some(l) = i32::try_from(*level).ok().filter(|l| (lo..=hi).contains(l)) else {
                errors.push(BuildError::field(
                    at,
                    format!("{level} is not a {name} level ({lo}..={hi})"),
                ));
                continue;
            };
            match alg {
                Algorithm::Zstd => rules.zstd_level = l,
                Algorithm::Br => rules.br_level = l.unsigned_abs(),
                Algorithm::Gzip => rules.gzip_level = l.unsigned_abs(),
            }
        }
        rules.streaming = self.streaming;
        rules.upstream_identity = self.upstream_identity;
        rules.decompress_requests = self.decompress_requests;
        if let Some(s) = self.decompress_max_size {
            if s.bytes() == 0 || s.bytes() > DECOMPRESS_MAX {
                errors.push(BuildError::field(
                    "decompress_max_size",
                    "must be between 1 byte and \"64MiB\"",
                ));
            } else {
                rules.decompress_max_size = s.bytes();
            }
        }
        if let Some(r) = self.decompress_max_ratio {
            if r < 2 {
                errors.push(BuildError::field(
                    "decompress_max_ratio",
                    "must be an integer of at least 2",
                ));
            } else {
                rules.decompress_max_ratio = r.unsigned_abs();
            }
        }
        BuildError::all(errors)?;
        Ok(Compress { rules })
    }
}

// === Policy ===

/// Declares its route's compression.
#[derive(Debug)]
pub struct Compress {
    rules: CompressRules,
}

#[async_trait]
impl Policy for Compress {
    fn stage(&self) -> Stage {
        Stage::Transform
    }

    fn compress_rules(&self) -> Option<&CompressRules> {
        Some(&self.rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn build(src: &str) -> Result<Compress, BuildError> {
        let c: CompressConfig = toml::from_str(src).map_err(|e| BuildError::new(e.to_string()))?;
        c.build(&BuildCtx::new(Path::new("."), "routes.r.policies.compress"))
    }

    fn error(src: &str) -> (String, String) {
        let e = build(src).unwrap_err();
        (e.field.unwrap_or_default(), e.message)
    }

    #[test]
    fn defaults_are_the_contracts() {
        let c = build("").unwrap();
        assert_eq!(c.rules, CompressRules::default());
        let d = build(
            "decompress_requests = true\ndecompress_max_size = \"1MiB\"\ndecompress_max_ratio = 2",
        )
        .unwrap()
        .rules;
        assert!(d.decompress_requests);
        assert_eq!(
            (d.decompress_max_size, d.decompress_max_ratio),
            (1 << 20, 2)
        );
    }

    #[test]
    fn every_bad_value_names_its_key() {
        assert_eq!(
            error("algorithms = [\"zstd\", \"lz4\"]"),
            (
                "algorithms[1]".into(),
                "unknown algorithm \"lz4\" (known: zstd, br, gzip)".into()
            )
        );
        assert_eq!(error("algorithms = [\"br\", \"br\"]").0, "algorithms[1]");
        for t in ["json", "*/*", "text/"] {
            assert_eq!(error(&format!("types = [\"{t}\"]")).0, "types[0]", "{t}");
        }
        assert_eq!(error("level = { lz4 = 1 }").0, "level.lz4");
        assert_eq!(error("level = { zstd = 20 }").0, "level.zstd");
        assert_eq!(error("level = { br = 12 }").0, "level.br");
        assert_eq!(error("level = { gzip = 0 }").0, "level.gzip");
        assert_eq!(error("decompress_max_size = 0").0, "decompress_max_size");
        assert_eq!(
            error("decompress_max_size = \"65MiB\"").0,
            "decompress_max_size"
        );
        assert_eq!(error("decompress_max_ratio = 1").0, "decompress_max_ratio");
        assert!(build("decompress_max_ratio = 2.5").is_err());
        assert!(build("streaming = \"yes\"").is_err());
        assert!(build("min_size = \"big\"").is_err());
        assert!(build("nope = 1").is_err());
    }

    #[test]
    fn every_error_of_a_table_is_reported_at_once() {
        let e = build("algorithms = [\"lz4\"]\ntypes = [\"json\"]\nlevel = { gzip = 10 }\ndecompress_max_ratio = 1")
            .unwrap_err();
        let fields: Vec<_> = e.each().filter_map(|e| e.field.as_deref()).collect();
        assert_eq!(
            fields,
            [
                "algorithms[0]",
                "types[0]",
                "level.gzip",
                "decompress_max_ratio"
            ]
        );
    }

    #[test]
    fn values_are_taken() {
        let c = build(
            "algorithms = [\"gzip\"]\ntypes = [\"application/*+json\"]\nmin_size = 10\n\
             level = { gzip = 9, br = 0 }\nstreaming = true\nupstream_identity = true",
        )
        .unwrap();
        assert_eq!(c.rules.algorithms, [Algorithm::Gzip]);
        assert_eq!(c.rules.min_size, 10);
        assert_eq!(
            (c.rules.gzip_level, c.rules.br_level, c.rules.zstd_level),
            (9, 0, 3)
        );
        assert!(c.rules.streaming && c.rules.upstream_identity);
        assert!(build("algorithms = []")
            .unwrap()
            .rules
            .algorithms
            .is_empty());
    }
}
