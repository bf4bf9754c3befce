//! Request body decoding (`cache.md` §12.7): gzip members decoded whole, stopped at the
//! first byte past a size cap or a decompression ratio.

use std::io::Read;

/// Decoded bytes past which the ratio is checked.
pub(crate) const RATIO_AFTER: usize = 64 << 10;

/// Why a body is not decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not valid gzip: a bad header, CRC or length, truncated, bytes after the last member.
    Invalid,
    /// Decoded, it would pass the size cap.
    TooLarge,
    /// Past [`RATIO_AFTER`] decoded bytes, over the ratio to the bytes consumed.
    Ratio,
}

impl Refused {
    /// `tollgate_decompress_requests_total{outcome}`.
    pub(crate) fn outcome(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::Ratio => "ratio",
        }
    }
}

/// `encoded` (one or more gzip members) decoded, at most `max` bytes, never more than
/// `ratio` times the encoded bytes consumed once [`RATIO_AFTER`] bytes are decoded.
pub(crate) fn gunzip(encoded: &[u8], max: usize, ratio: usize) -> Result<Vec<u8>, Refused> {
    let mut decoder = flate2::bufread::MultiGzDecoder::new(encoded);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(_) => return Err(Refused::Invalid),
        };
        if out.len() + n > max {
            return Err(Refused::TooLarge);
        }
        out.extend_from_slice(&buf[..n]);
        let consumed = encoded.len() - decoder.get_ref().len();
        if out.len() > RATIO_AFTER && out.len() > ratio.saturating_mul(consumed.max(1)) {
            return Err(Refused::Ratio);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn members_decode_as_one_body_within_the_caps() {
        let two = [gzip(b"ab"), gzip(b"cd")].concat();
        assert_eq!(gunzip(&two, 4, 100).unwrap(), b"abcd");
        assert_eq!(gunzip(&two, 3, 100), Err(Refused::TooLarge));
        assert_eq!(gunzip(&gzip(b""), 10, 100).unwrap(), b"");
    }

    #[test]
    fn broken_streams_are_invalid() {
        let g = gzip(b"hello world");
        assert_eq!(gunzip(&g[..g.len() - 3], 100, 100), Err(Refused::Invalid));
        assert_eq!(
            gunzip(&[g.clone(), b"junk".to_vec()].concat(), 100, 100),
            Err(Refused::Invalid)
        );
        assert_eq!(gunzip(b"plain text", 100, 100), Err(Refused::Invalid));
        let mut crc = g.clone();
        let at = crc.len() - 6;
        crc[at] ^= 0xff;
        assert_eq!(gunzip(&crc, 100, 100), Err(Refused::Invalid));
    }

    #[test]
    fn a_bomb_stops_at_the_ratio_after_64_kib() {
        let bomb = gzip(&vec![0u8; 8 << 20]);
        assert_eq!(gunzip(&bomb, usize::MAX, 100), Err(Refused::Ratio));
        // small bodies are never judged by their ratio
        assert!(gunzip(&gzip(&vec![0u8; RATIO_AFTER]), usize::MAX, 2).is_ok());
    }
}
