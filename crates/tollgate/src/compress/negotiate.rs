//! The coding a client accepts (`cache.md` §12.4): `Accept-Encoding` read as one list
//! over all its lines, weights in thousandths.

use super::Algorithm;

/// A weight in thousandths (`q=0.5` is 500), or `None` when it is not a valid qvalue
/// (RFC 9110 §12.4.2: `0`, `0.` and up to three digits, or `1` with up to three zeros).
fn qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// What a client's `Accept-Encoding` lines say: each coding's weight.
#[derive(Debug, Default)]
struct Accepted {
    zstd: Option<u16>,
    br: Option<u16>,
    gzip: Option<u16>,
    identity: Option<u16>,
    any: Option<u16>,
    listed: bool,
}

impl Accepted {
    fn read<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut a = Self::default();
        for line in lines {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            for entry in line.split(',') {
                let mut parts = entry.split(';');
                let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
                if coding.is_empty() {
                    continue;
                }
                let mut weight = Some(1000);
                for p in parts {
                    let Some((k, v)) = p.split_once('=') else {
                        weight = None;
                        break;
                    };
                    if k.trim().eq_ignore_ascii_case("q") {
                        weight = qvalue(v.trim());
                    }
                }
                // an entry whose weight is invalid is ignored
                let Some(w) = weight else {
                    continue;
                };
                a.listed = true;
                let slot = match coding.as_str() {
                    "zstd" => &mut a.zstd,
                    "br" => &mut a.br,
                    "gzip" | "x-gzip" => &mut a.gzip,
                    "identity" => &mut a.identity,
                    "*" => &mut a.any,
                    _ => continue,
                };
                slot.get_or_insert(w);
            }
        }
        a
    }

    fn weight(&self, alg: Algorithm) -> u16 {
        let own = match alg {
            Algorithm::Zstd => self.zstd,
            Algorithm::Br => self.br,
            Algorithm::Gzip => self.gzip,
        };
        own.or(self.any).unwrap_or(0)
    }
}

/// The algorithm of `algorithms` (in preference order) to compress with for a client
/// that sent these `Accept-Encoding` lines, or `None` (not compressed; never a 406).
pub(crate) fn choose<'a>(
    lines: impl Iterator<Item = &'a [u8]>,
    algorithms: &[Algorithm],
) -> Option<Algorithm> {
    let accepted = Accepted::read(lines);
    if !accepted.listed {
        return None;
    }
    let mut best: Option<(Algorithm, u16)> = None;
    for &alg in algorithms {
        let w = accepted.weight(alg);
        if w > 0 && best.is_none_or(|(_, b)| w > b) {
            best = Some((alg, w));
        }
    }
    let (alg, w) = best?;
    // identity preferred over the best coding: not compressed
    if accepted.identity.is_some_and(|i| i > w) {
        return None;
    }
    Some(alg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(header: &str) -> Option<&'static str> {
        choose(std::iter::once(header.as_bytes()), &Algorithm::ALL).map(Algorithm::as_str)
    }

    #[test]
    fn the_contracts_table() {
        assert_eq!(pick("gzip, deflate, br, zstd"), Some("zstd"));
        assert_eq!(pick("gzip, br"), Some("br"));
        assert_eq!(pick("br;q=0.5, gzip"), Some("gzip"));
        assert_eq!(pick("zstd;q=0, *"), Some("br"));
        assert_eq!(pick("*;q=0.2, gzip;q=0.1"), Some("zstd"));
        assert_eq!(pick("identity, gzip;q=0.5"), None);
        assert_eq!(pick("identity;q=0.5, gzip"), Some("gzip"));
        assert_eq!(pick("*;q=0"), None);
        assert_eq!(pick("deflate"), None);
        assert_eq!(pick(""), None);
        assert_eq!(choose(std::iter::empty(), &Algorithm::ALL), None);
    }

    #[test]
    fn weights_names_and_lines_follow_the_grammar() {
        assert_eq!(pick("GZIP ; Q = 0.5"), Some("gzip"));
        assert_eq!(pick("x-gzip"), Some("gzip"));
        // invalid weights make their entry ignored
        assert_eq!(pick("br;q=1.5, gzip;q=0.1"), Some("gzip"));
        assert_eq!(pick("br;q=0.1234, gzip;q=0.001"), Some("gzip"));
        assert_eq!(pick("br;q=abc"), None);
        assert_eq!(pick("br;q=1.000, zstd;q=0.999"), Some("br"));
        let lines: [&[u8]; 2] = [b"gzip;q=0.2", b"br;q=0.3"];
        assert_eq!(
            choose(lines.into_iter(), &Algorithm::ALL).map(Algorithm::as_str),
            Some("br")
        );
        // equal weights: the route's order decides
        let order = [Algorithm::Gzip, Algorithm::Br];
        assert_eq!(
            choose(std::iter::once(&b"br, gzip"[..]), &order).map(Algorithm::as_str),
            Some("gzip")
        );
        assert_eq!(qvalue("0."), Some(0));
        assert_eq!(qvalue("1."), Some(1000));
        assert_eq!(qvalue("0.05"), Some(50));
    }
}
