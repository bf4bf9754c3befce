//! Values as operators write them: durations and sizes (`"250ms"`, `"5s"`, `"1MiB"`,
//! `1048576`), networks (`10.0.0.0/8`), and files of key material.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written with a unit (`"250ms"`, `"5s"`, `"1m"`), as humantime parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// Wraps a [`Duration`].
    pub const fn new(d: Duration) -> Self {
        Self(d)
    }

    /// The wrapped duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration with a unit, like "250ms", "5s" or "1m""#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                humantime::parse_duration(v.trim())
                    .map(ConfigDuration)
                    .map_err(|e| E::custom(format!("invalid duration {v:?}: {e}")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "durations need a unit: write \"{v}s\" or \"{v}ms\", not {v}"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A size in bytes: an integer, or a string with a unit (`"32KiB"`, `"1MiB"`, `"1MB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigSize(pub u64);

impl ConfigSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for ConfigSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConfigSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a size in bytes, like 1048576 or "1MiB""#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.trim()
                    .parse::<bytesize::ByteSize>()
                    .map(|b| ConfigSize(b.as_u64()))
                    .map_err(|e| E::custom(format!("invalid size {v:?}: {e}")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ConfigSize)
                    .map_err(|_| E::custom(format!("a size cannot be negative: {v}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ConfigSize(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ConfigSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// Parses a CIDR (`10.0.0.0/8`) or a bare address (a /32 or /128).
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The largest key, certificate or JWKS file the config may name.
const MAX_MATERIAL_FILE: u64 = 1024 * 1024;

/// Checks that `path` (named by the config: a key, certificate or JWKS) is a regular
/// file of at most 1 MiB, so that naming a device, a FIFO or a huge file is a config
/// error rather than a load that never ends.
pub(crate) fn check_material_file(path: &Path) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > MAX_MATERIAL_FILE {
        return Err(format!("{} is larger than 1 MiB", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        d: Option<ConfigDuration>,
        s: Option<ConfigSize>,
    }

    fn parse(src: &str) -> Result<T, toml::de::Error> {
        toml::from_str(src)
    }

    #[test]
    fn parses_durations_with_units() {
        assert_eq!(
            parse(r#"d = "250ms""#).unwrap().d.unwrap().get(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse(r#"d = "1m""#).unwrap().d.unwrap().get(),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn rejects_durations_without_unit() {
        let e = parse("d = 5").err().unwrap();
        assert!(e.message().contains("durations need a unit"), "{e}");
        assert!(parse(r#"d = "five""#).is_err());
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse(r#"s = "1MiB""#).unwrap().s.unwrap().bytes(), 1 << 20);
        assert_eq!(
            parse(r#"s = "32KiB""#).unwrap().s.unwrap().bytes(),
            32 << 10
        );
        assert_eq!(parse("s = 1048576").unwrap().s.unwrap().bytes(), 1 << 20);
        assert!(parse("s = -1").is_err());
        assert!(parse(r#"s = "lots""#).is_err());
    }
}
