//! Media types of `Content-Type` and `Accept` values: the type/subtype and the
//! parameters the body policies read.

/// A `Content-Type` value read: its media type (`type/subtype`, lower case) and its
/// `charset` parameter (lower case), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    /// `type/subtype`, lower case, without parameters.
    pub essence: String,
    /// The `charset` parameter's value, unquoted and lower case.
    pub charset: Option<String>,
}

impl MediaType {
    /// Reads a `Content-Type` value; `None` when it has no `type/subtype`.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let value = std::str::from_utf8(value).ok()?;
        let mut parts = value.split(';');
        let essence = parts.next()?.trim().to_ascii_lowercase();
        let (kind, sub) = essence.split_once('/')?;
        if kind.is_empty() || sub.is_empty() || sub.contains('/') {
            return None;
        }
        let charset = parts.find_map(|p| {
            let (name, v) = p.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("charset")
                .then(|| v.trim().trim_matches('"').to_ascii_lowercase())
        });
        Some(Self { essence, charset })
    }

    /// Whether the charset is absent or UTF-8.
    pub fn is_utf8(&self) -> bool {
        self.charset.as_deref().is_none_or(|c| c == "utf-8")
    }

    /// Whether it is a JSON type: `application/json` or `application/*+json`.
    pub fn is_json(&self) -> bool {
        is_json(&self.essence)
    }

    /// The media type of a request or response head (`None` without one).
    pub fn of(headers: &http::HeaderMap) -> Option<Self> {
        Self::parse(headers.get(http::header::CONTENT_TYPE)?.as_bytes())
    }
}

/// Whether `essence` (a lower-case `type/subtype`) is `application/json` or
/// `application/*+json`.
pub fn is_json(essence: &str) -> bool {
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A head's `Content-Length`, when it has a valid one.
pub fn content_length(headers: &http::HeaderMap) -> Option<usize> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Whether a head's `Content-Encoding` is absent or only `identity`.
pub fn identity_encoding(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .all(|c| c.trim().eq_ignore_ascii_case("identity") || c.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_type_and_charset() {
        let m = MediaType::parse(b"Application/JSON; Charset=\"UTF-8\"").unwrap();
        assert_eq!(m.essence, "application/json");
        assert!(m.is_utf8());
        let m = MediaType::parse(b"text/xml;charset=latin1").unwrap();
        assert!(!m.is_utf8());
        assert!(MediaType::parse(b"json").is_none());
        assert!(MediaType::parse(b"a/b/c").is_none());
    }

    #[test]
    fn identity_is_no_encoding() {
        let mut h = http::HeaderMap::new();
        assert!(identity_encoding(&h));
        h.insert(http::header::CONTENT_ENCODING, "Identity".parse().unwrap());
        assert!(identity_encoding(&h));
        h.append(http::header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert!(!identity_encoding(&h));
    }
}
