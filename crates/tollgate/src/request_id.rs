//! `X-Request-Id`: kept when the client sends a valid one, generated otherwise.

use http::HeaderValue;

/// Longest client-supplied id that is kept.
pub(crate) const MAX_LEN: usize = 128;

/// The client's id if it is 1..=128 characters of `[A-Za-z0-9._:-]`.
pub(crate) fn valid(v: &HeaderValue) -> Option<&str> {
    let b = v.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'));
    if ok {
        v.to_str().ok()
    } else {
        None
    }
}

/// A new random id: 32 lower-case hex digits.
pub(crate) fn generate() -> String {
    let mut out = vec![0u8; 32];
    crate::trace::put_hex(&mut out, fastrand::u128(..));
    // hex digits are ASCII: the buffer becomes the string (no copy, no re-check of
    // each byte for replacement)
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_valid_ids_only() {
        assert_eq!(
            valid(&HeaderValue::from_static("abc-123_x.y:z")),
            Some("abc-123_x.y:z")
        );
        assert_eq!(valid(&HeaderValue::from_static("")), None);
        assert_eq!(valid(&HeaderValue::from_static("has space")), None);
        assert_eq!(
            valid(&HeaderValue::from_str(&"a".repeat(129)).unwrap()),
            None
        );
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(valid(&HeaderValue::from_str(&a).unwrap()).is_some());
    }
}
