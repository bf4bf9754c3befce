//! One response body being compressed: each piece goes in, what the codec has output
//! comes out at once. Windows are fixed (gzip 32 KiB, brotli lgwin 19, zstd window log
//! 20); nothing is collected whole.

use std::io::Write;

use bytes::Bytes;

use super::{Algorithm, CompressRules};

/// The brotli window: 2^19 bytes (512 KiB).
const BROTLI_LGWIN: u32 = 19;
/// The zstd window: 2^20 bytes (1 MiB).
const ZSTD_WINDOW_LOG: u32 = 20;
/// Brotli's internal buffer.
const BROTLI_BUFFER: usize = 4096;

enum Codec {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

/// A streaming encoder.
pub(crate) struct Encoder {
    codec: Codec,
    /// Flush after every piece (`streaming = true`).
    flush: bool,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder of `alg` at the level `rules` give it.
    pub(crate) fn new(alg: Algorithm, rules: &CompressRules, flush: bool) -> std::io::Result<Self> {
        let codec = match alg {
            Algorithm::Gzip => Codec::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(rules.gzip_level),
            )),
            Algorithm::Br => Codec::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                rules.br_level,
                BROTLI_LGWIN,
            ))),
            Algorithm::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), rules.zstd_level)?;
                e.window_log(ZSTD_WINDOW_LOG)?;
                e.include_contentsize(false)?;
                Codec::Zstd(e)
            }
        };
        Ok(Self { codec, flush })
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match &mut self.codec {
            Codec::Gzip(e) => e.get_mut(),
            Codec::Br(e) => e.get_mut(),
            Codec::Zstd(e) => e.get_mut(),
        }
    }

    /// Takes `piece`; returns what the codec has output since the last call.
    pub(crate) fn push(&mut self, piece: &[u8]) -> std::io::Result<Bytes> {
        match &mut self.codec {
            Codec::Gzip(e) => e.write_all(piece)?,
            Codec::Br(e) => e.write_all(piece)?,
            Codec::Zstd(e) => e.write_all(piece)?,
        }
        if self.flush {
            // gzip: a sync flush; brotli: a flush; zstd: the end of a block
            match &mut self.codec {
                Codec::Gzip(e) => e.flush()?,
                Codec::Br(e) => e.flush()?,
                Codec::Zstd(e) => e.flush()?,
            }
        }
        Ok(Bytes::from(std::mem::take(self.output())))
    }

    /// Ends the stream (gzip trailer, last brotli meta-block, end of the zstd frame);
    /// returns the rest of the output.
    pub(crate) fn finish(self) -> std::io::Result<Bytes> {
        let out = match self.codec {
            Codec::Gzip(e) => e.finish()?,
            Codec::Br(e) => e.into_inner(),
            Codec::Zstd(e) => e.finish()?,
        };
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn decode(alg: Algorithm, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match alg {
            Algorithm::Gzip => {
                flate2::read::GzDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Algorithm::Br => {
                brotli::Decompressor::new(data, 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Algorithm::Zstd => {
                out = zstd::stream::decode_all(data).unwrap();
            }
        }
        out
    }

    fn body() -> Vec<u8> {
        (0..20_000)
            .flat_map(|i| format!("{{\"id\":{i},\"name\":\"item {}\"}},", i % 97).into_bytes())
            .collect()
    }

    #[test]
    fn every_algorithm_round_trips_piece_by_piece_and_shrinks_json() {
        let rules = CompressRules::default();
        let body = body();
        for alg in Algorithm::ALL {
            let mut e = Encoder::new(alg, &rules, false).unwrap();
            let mut out = Vec::new();
            for piece in body.chunks(1000) {
                out.extend_from_slice(&e.push(piece).unwrap());
            }
            out.extend_from_slice(&e.finish().unwrap());
            assert_eq!(decode(alg, &out), body, "{alg:?}");
            assert!(out.len() * 5 < body.len(), "{alg:?}: {} bytes", out.len());
        }
    }

    #[test]
    fn with_flush_every_piece_is_decodable_as_soon_as_it_is_out() {
        let rules = CompressRules::default();
        for alg in Algorithm::ALL {
            let mut e = Encoder::new(alg, &rules, true).unwrap();
            let mut sent = Vec::new();
            for event in ["data: one\n\n", "data: two\n\n"] {
                sent.extend_from_slice(&e.push(event.as_bytes()).unwrap());
                // what was sent so far decodes to every event so far
                let mut partial = Vec::new();
                match alg {
                    Algorithm::Gzip => {
                        let _ = flate2::read::GzDecoder::new(&sent[..]).read_to_end(&mut partial);
                    }
                    Algorithm::Br => {
                        let _ =
                            brotli::Decompressor::new(&sent[..], 4096).read_to_end(&mut partial);
                    }
                    Algorithm::Zstd => {
                        let mut d = zstd::stream::read::Decoder::new(&sent[..]).unwrap();
                        let _ = d.read_to_end(&mut partial);
                    }
                }
                assert!(
                    String::from_utf8_lossy(&partial).ends_with(event),
                    "{alg:?}: {partial:?}"
                );
            }
        }
    }

    #[test]
    fn a_zstd_frame_does_not_declare_its_size() {
        let rules = CompressRules::default();
        let mut e = Encoder::new(Algorithm::Zstd, &rules, false).unwrap();
        let mut out = e.push(b"hello").unwrap().to_vec();
        out.extend_from_slice(&e.finish().unwrap());
        assert!(
            matches!(zstd::zstd_safe::get_frame_content_size(&out), Ok(None)),
            "no content size in the frame header"
        );
    }
}
