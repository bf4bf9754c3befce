//! JSON Pointers (RFC 6901) with `*`, as the body policies address fields (`transform.md`
//! §3.3).

use std::fmt;

/// One segment of a pointer, unescaped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Segment(String);

impl Segment {
    /// The segment's text (`~1` read as `/`, `~0` as `~`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `*`: every element of an array (the member `*` of an object).
    pub fn is_star(&self) -> bool {
        self.0 == "*"
    }

    /// The array index it names: decimal digits without a leading zero.
    pub fn index(&self) -> Option<usize> {
        let s = self.0.as_bytes();
        let canonical =
            !s.is_empty() && s.iter().all(u8::is_ascii_digit) && (s.len() == 1 || s[0] != b'0');
        if canonical {
            self.0.parse().ok()
        } else {
            None
        }
    }
}

/// A pointer of at least one segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pointer {
    segments: Vec<Segment>,
    text: String,
}

/// Why a pointer is refused; the message quotes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointerError(String);

impl fmt::Display for PointerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PointerError {}

impl Pointer {
    /// Reads `/seg/seg/…`.
    ///
    /// # Errors
    /// The empty pointer, one not starting with `/`, a `~` not followed by `0` or `1`,
    /// or a `-` segment.
    pub fn parse(text: &str) -> Result<Self, PointerError> {
        if text.is_empty() {
            return Err(PointerError(
                "the empty JSON Pointer (the whole document) is not allowed".into(),
            ));
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(PointerError(format!(
                "malformed JSON Pointer {text:?} (must start with \"/\")"
            )));
        };
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            let mut seg = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    seg.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => seg.push('~'),
                    Some('1') => seg.push('/'),
                    _ => {
                        return Err(PointerError(format!(
                            "malformed JSON Pointer {text:?} (\"~\" must be followed by 0 or 1)"
                        )))
                    }
                }
            }
            if raw == "-" {
                return Err(PointerError(format!(
                    "JSON Pointer {text:?}: the \"-\" segment is not allowed"
                )));
            }
            segments.push(Segment(seg));
        }
        Ok(Self {
            segments,
            text: text.to_string(),
        })
    }

    /// The segments, outermost first.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `self`'s segments begin with all of `other`'s (a pointer is a prefix of
    /// itself).
    pub fn starts_with(&self, other: &Pointer) -> bool {
        self.segments.starts_with(&other.segments)
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<String> {
        let p = Pointer::parse(p).unwrap();
        p.segments()
            .iter()
            .map(|s| s.as_str().to_string())
            .collect()
    }

    #[test]
    fn reads_escapes_and_stars() {
        assert_eq!(segs("/a~1b/~0c/*/a.b"), ["a/b", "~c", "*", "a.b"]);
        assert_eq!(segs("/"), [""], "the member named \"\"");
        assert_eq!(segs("/~01"), ["~1"]);
    }

    #[test]
    fn refuses_malformed_pointers() {
        for (p, says) in [
            ("", "empty"),
            ("items/0", r#"must start with "/""#),
            ("/a~2", "followed by 0 or 1"),
            ("/a~", "followed by 0 or 1"),
            ("/items/-", r#""-" segment"#),
        ] {
            let e = Pointer::parse(p).unwrap_err().to_string();
            assert!(e.contains(says), "{p}: {e}");
        }
    }

    #[test]
    fn indexes_have_no_leading_zero() {
        let idx = |s: &str| Segment(s.into()).index();
        assert_eq!(idx("0"), Some(0));
        assert_eq!(idx("12"), Some(12));
        assert_eq!(idx("01"), None);
        assert_eq!(idx("-1"), None);
        assert_eq!(idx("*"), None);
        assert_eq!(idx(""), None);
    }
}
