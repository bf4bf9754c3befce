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

/// A coding a body policy decodes and encodes again (`transform.md` §3.6): the body is
/// decoded, changed and sent in the coding it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip` / `x-gzip`.
    Gzip,
    /// `deflate` (zlib).
    Deflate,
    /// `br`.
    Br,
}

impl Coding {
    /// The coding of a head's `Content-Encoding`: `Some(None)` when absent or
    /// `identity`, `Some(Some(c))` for one of these codings alone, `None` otherwise.
    pub fn of(headers: &http::HeaderMap) -> Option<Option<Self>> {
        let mut codings = crate::forwarding::list_tokens(headers, &http::header::CONTENT_ENCODING);
        let first = codings.next();
        if codings.next().is_some() {
            return None;
        }
        match first.map(str::to_ascii_lowercase).as_deref() {
            None | Some("identity") => Some(None),
            Some("gzip" | "x-gzip") => Some(Some(Self::Gzip)),
            Some("deflate") => Some(Some(Self::Deflate)),
            Some("br") => Some(Some(Self::Br)),
            Some(_) => None,
        }
    }

    /// Decodes `encoded`, handing each decoded piece to `sink` until it returns false.
    /// `Ok(true)`: decoded whole; `Ok(false)`: `sink` stopped it.
    ///
    /// # Errors
    /// The bytes are not valid in this coding (truncated, corrupt, trailing bytes).
    pub fn decode(
        self,
        encoded: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> std::io::Result<bool> {
        let mut reader: Box<dyn Read + '_> = match self {
            Self::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(encoded)),
            Self::Deflate => Box::new(flate2::bufread::ZlibDecoder::new(encoded)),
            Self::Br => Box::new(brotli::Decompressor::new(encoded, 4096)),
        };
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match reader.read(&mut buf)? {
                0 => break,
                n if !sink(&buf[..n]) => return Ok(false),
                _ => {}
            }
        }
        drop(reader);
        if self == Self::Deflate {
            // a zlib stream ends where its checksum does: nothing may follow
            let mut z = flate2::bufread::ZlibDecoder::new(encoded);
            std::io::copy(&mut z, &mut std::io::sink())?;
            if !z.into_inner().is_empty() {
                return Err(std::io::Error::other("bytes after the deflate stream"));
            }
        }
        Ok(true)
    }

    /// `data` encoded whole in this coding (gzip and deflate at level 6, brotli at
    /// quality 5).
    pub fn encode(self, data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let level = flate2::Compression::default();
        let done = match self {
            Self::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
                e.write_all(data).and_then(|()| e.finish())
            }
            Self::Deflate => {
                let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
                e.write_all(data).and_then(|()| e.finish())
            }
            Self::Br => {
                let mut e = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
                e.write_all(data).map(|()| e.into_inner())
            }
        };
        // writing to memory does not fail
        done.unwrap_or_default()
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
    fn each_coding_round_trips_and_stops_when_asked() {
        let data = b"{\"a\":1}".repeat(1000);
        for c in [Coding::Gzip, Coding::Deflate, Coding::Br] {
            let enc = c.encode(&data);
            let mut out = Vec::new();
            assert!(c
                .decode(&enc, &mut |p| {
                    out.extend_from_slice(p);
                    true
                })
                .unwrap());
            assert_eq!(out, data, "{c:?}");
            let mut seen = 0;
            let whole = c
                .decode(&enc, &mut |p| {
                    seen += p.len();
                    seen < 100
                })
                .unwrap();
            assert!(!whole, "{c:?} stops at the sink's word");
            assert!(
                c.decode(&enc[..enc.len() / 2], &mut |_| true).is_err(),
                "{c:?} truncated"
            );
        }
        assert!(Coding::Deflate
            .decode(
                &[Coding::Deflate.encode(b"x"), b"junk".to_vec()].concat(),
                &mut |_| true
            )
            .is_err());
        let mut h = http::HeaderMap::new();
        assert_eq!(Coding::of(&h), Some(None));
        h.insert("content-encoding", "X-Gzip".parse().unwrap());
        assert_eq!(Coding::of(&h), Some(Some(Coding::Gzip)));
        h.insert("content-encoding", "gzip, br".parse().unwrap());
        assert_eq!(Coding::of(&h), None);
        h.insert("content-encoding", "zstd".parse().unwrap());
        assert_eq!(Coding::of(&h), None);
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
