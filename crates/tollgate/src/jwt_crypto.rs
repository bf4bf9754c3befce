//! Signature verification for `jwt_auth`: RSA and ECDSA on `ring`.
//!
//! `jsonwebtoken` leaves its cryptography to a process-wide [`CryptoProvider`]. Its
//! pure-Rust one (RustCrypto) verifies an RS256 token in ~200 µs and an ES256 token in
//! ~350 µs on this project's bench machine: a first sight of each token costs that on a
//! worker thread, and a client sending fresh tokens can make every request pay it.
//! `ring` (already linked for TLS) does the same checks with assembly for the big-number
//! and curve arithmetic: ~8.5× faster for RS256, ~5× for ES256 (docs/benchmarks.md,
//! "Authentication"). HMAC and Ed25519 stay with RustCrypto, as fast or faster there.
//! This module is only the glue: which `ring` algorithm each JWT algorithm is, and
//! load-time checks of keys `ring` would refuse at request time.
//!
//! [`install`] makes it the process's provider; building a `jwt_auth` policy calls it.
//! Signing (which the gateway never does; tests and tools do) stays with RustCrypto.
//! A program that chose a provider before the gateway built its first `jwt_auth` policy
//! keeps its choice: every provider verifies the same tokens, at its own speed.

use std::sync::OnceLock;

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use ring::signature as sig;

/// Smallest RSA modulus accepted, in bits (RFC 7518 §3.3: "A key of size 2048 bits or
/// larger MUST be used"). `ring` refuses smaller ones.
const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus `ring` verifies with, in bits.
const MAX_RSA_BITS: usize = 8192;
/// Largest RSA modulus RustCrypto's `rsa` verifies with, when it is the provider.
const MAX_RSA_BITS_RUST_CRYPTO: usize = 4096;

static INSTALLED: OnceLock<bool> = OnceLock::new();

/// The provider: verification on `ring`, signing and JWK utilities from RustCrypto.
/// For a program that installs its own choice, or compares backends.
pub fn provider() -> &'static CryptoProvider {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let rust_crypto = &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
        CryptoProvider {
            signer_factory: rust_crypto.signer_factory,
            verifier_factory: verifier,
            jwk_utils: rust_crypto.jwk_utils.clone(),
        }
    })
}

/// Makes [`provider`] the process's `jsonwebtoken` provider, once; returns whether it is
/// the one in use (false when another was chosen first, or `jsonwebtoken` already
/// signed or verified something with its default).
pub fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        let ours = provider().install_default().is_ok();
        if !ours {
            // once a process: RS*/ES* tokens then cost several times more to verify
            tracing::warn!(
                "jwt_auth: jsonwebtoken's crypto provider was chosen before the gateway's; \
                 tokens are verified with it (call tollgate::jwt_crypto::install() first \
                 for the gateway's)"
            );
        }
        ours
    })
}

/// The provider's verifier factory: for RSA and ECDSA a `ring` verifier; HMAC and
/// Ed25519 stay with RustCrypto, which measured as fast or faster for them
/// (benches/auth.rs, `jwt_signature`).
fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    match alg.family() {
        AlgorithmFamily::Hmac | AlgorithmFamily::Ed => {
            (jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.verifier_factory)(alg, key)
        }
        _ if key.family() != alg.family() => Err(ErrorKind::InvalidKeyFormat.into()),
        _ => Ok(Box::new(RingVerifier {
            alg: *alg,
            key: key.clone(),
        })),
    }
}

/// An RSA or ECDSA verifier on `ring`.
struct RingVerifier {
    alg: Algorithm,
    key: DecodingKey,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        verify(self.alg, &self.key, msg, signature).map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// Checks `signature` over `msg` with `key` by `alg`, an RSA or ECDSA algorithm.
fn verify(
    alg: Algorithm,
    key: &DecodingKey,
    msg: &[u8],
    signature: &[u8],
) -> Result<(), ring::error::Unspecified> {
    use Algorithm::*;
    let rsa = |params: &'static sig::RsaParameters| match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => {
            sig::UnparsedPublicKey::new(params, der).verify(msg, signature)
        }
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            sig::RsaPublicKeyComponents { n, e }.verify(params, msg, signature)
        }
    };
    let ec = |a: &'static sig::EcdsaVerificationAlgorithm| match key.kind() {
        DecodingKeyKind::SecretOrDer(point) => {
            sig::UnparsedPublicKey::new(a, point).verify(msg, signature)
        }
        DecodingKeyKind::RsaModulusExponent { .. } => Err(ring::error::Unspecified),
    };
    match alg {
        RS256 => rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
        RS384 => rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
        RS512 => rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
        PS256 => rsa(&sig::RSA_PSS_2048_8192_SHA256),
        PS384 => rsa(&sig::RSA_PSS_2048_8192_SHA384),
        PS512 => rsa(&sig::RSA_PSS_2048_8192_SHA512),
        ES256 => ec(&sig::ECDSA_P256_SHA256_FIXED),
        ES384 => ec(&sig::ECDSA_P384_SHA384_FIXED),
        HS256 | HS384 | HS512 | EdDSA => Err(ring::error::Unspecified),
    }
}

/// Checks at load what `ring` would refuse for every token at request time: an RSA key
/// outside 2048–8192 bits (4096 when RustCrypto verifies), an EC key that is not an
/// uncompressed P-256 or P-384 point, an Ed25519 key that is not 32 bytes. The error
/// says which.
pub(crate) fn check_key(key: &DecodingKey) -> Result<(), String> {
    match (key.family(), key.kind()) {
        (AlgorithmFamily::Rsa, kind) => {
            let modulus = match kind {
                DecodingKeyKind::SecretOrDer(der) => pkcs1::RsaPublicKey::try_from(der.as_slice())
                    .map_err(|e| format!("not an RSA public key: {e}"))?
                    .modulus
                    .as_bytes(),
                DecodingKeyKind::RsaModulusExponent { n, .. } => n.as_slice(),
            };
            let bits = bit_length(modulus);
            let max = if *INSTALLED.get().unwrap_or(&true) {
                MAX_RSA_BITS
            } else {
                MAX_RSA_BITS_RUST_CRYPTO
            };
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA key of {bits} bits: at least {MIN_RSA_BITS} are required (RFC 7518 §3.3)"
                ));
            }
            if bits > max {
                return Err(format!(
                    "RSA key of {bits} bits: at most {max} are supported"
                ));
            }
            Ok(())
        }
        (AlgorithmFamily::Ec, DecodingKeyKind::SecretOrDer(point))
            if !matches!(point.len(), 65 | 97) || point[0] != 4 =>
        {
            Err("not an uncompressed P-256 or P-384 public key".into())
        }
        (AlgorithmFamily::Ed, DecodingKeyKind::SecretOrDer(k)) if k.len() != 32 => {
            Err("not an Ed25519 public key (32 bytes)".into())
        }
        _ => Ok(()),
    }
}

/// Whether `key` can verify `alg`'s signatures: of its family and, for ECDSA, of its
/// curve (ES256 needs a P-256 key, ES384 a P-384 one).
pub(crate) fn fits(key: &DecodingKey, alg: Algorithm) -> bool {
    if key.family() != alg.family() {
        return false;
    }
    match (alg, key.kind()) {
        (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => point.len() == 65,
        (Algorithm::ES384, DecodingKeyKind::SecretOrDer(point)) => point.len() == 97,
        _ => true,
    }
}

/// Bits in a big-endian unsigned integer.
fn bit_length(be: &[u8]) -> usize {
    let be = &be[be.iter().take_while(|b| **b == 0).count()..];
    be.first()
        .map_or(0, |top| be.len() * 8 - top.leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    /// Tokens signed by RustCrypto (the signer), split into message and signature.
    fn signed(alg: Algorithm, key: &EncodingKey) -> (String, Vec<u8>) {
        use base64::Engine;
        let token = encode(&Header::new(alg), &serde_json::json!({"sub": "a"}), key).unwrap();
        let (msg, s) = token.rsplit_once('.').unwrap();
        let s = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .unwrap();
        (msg.to_string(), s)
    }

    /// Verifies good signatures through the factory (as jsonwebtoken calls it) and
    /// refuses a flipped bit, a wrong message, and the same signature under another
    /// algorithm of the family.
    fn check_family(algs: &[Algorithm], enc: &EncodingKey, dec: &DecodingKey) {
        let ok = |alg: Algorithm, msg: &[u8], s: &Vec<u8>| {
            let v = verifier(&alg, dec).unwrap();
            assert_eq!(v.algorithm(), alg);
            v.verify(msg, s).is_ok()
        };
        for &alg in algs {
            let (msg, s) = signed(alg, enc);
            assert!(ok(alg, msg.as_bytes(), &s), "{alg:?}");
            let mut bad = s.clone();
            bad[3] ^= 1;
            assert!(!ok(alg, msg.as_bytes(), &bad), "{alg:?} bit");
            let other = format!("{msg}x");
            assert!(!ok(alg, other.as_bytes(), &s), "{alg:?} msg");
            for &other in algs.iter().filter(|a| **a != alg) {
                assert!(!ok(other, msg.as_bytes(), &s), "{alg:?} as {other:?}");
            }
        }
    }

    #[test]
    fn hmac_verifies_and_refuses() {
        let secret = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        check_family(
            &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            &EncodingKey::from_secret(secret),
            &DecodingKey::from_secret(secret),
        );
        let (msg, s) = signed(Algorithm::HS256, &EncodingKey::from_secret(secret));
        let other = DecodingKey::from_secret(b"another secret of enough length!!");
        let v = verifier(&Algorithm::HS256, &other).unwrap();
        assert!(v.verify(msg.as_bytes(), &s).is_err());
    }

    #[test]
    fn rsa_pkcs1_and_pss_verify_from_pem_and_from_components() {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        use rsa::traits::PublicKeyParts;
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let enc =
            EncodingKey::from_rsa_pem(private.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes())
                .unwrap();
        let pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let from_pem = DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        let from_parts = DecodingKey::from_rsa_raw_components(
            &private.n().to_bytes_be(),
            &private.e().to_bytes_be(),
        );
        use Algorithm::*;
        let algs = [RS256, RS384, RS512, PS256, PS384, PS512];
        check_family(&algs, &enc, &from_pem);
        check_family(&algs, &enc, &from_parts);
        assert_eq!(check_key(&from_pem), Ok(()));
        assert_eq!(check_key(&from_parts), Ok(()));
    }

    #[test]
    fn ecdsa_and_eddsa_verify() {
        use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let p256 = p256::SecretKey::random(&mut rand::thread_rng());
        let p384 = p384::SecretKey::random(&mut rand::thread_rng());
        let curves = [
            (
                Algorithm::ES256,
                Algorithm::ES384,
                p256.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                p256.public_key().to_public_key_pem(LineEnding::LF).unwrap(),
            ),
            (
                Algorithm::ES384,
                Algorithm::ES256,
                p384.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                p384.public_key().to_public_key_pem(LineEnding::LF).unwrap(),
            ),
        ];
        for (alg, other, private, public) in &curves {
            let enc = EncodingKey::from_ec_pem(private.as_bytes()).unwrap();
            let dec = DecodingKey::from_ec_pem(public.as_bytes()).unwrap();
            check_family(&[*alg], &enc, &dec);
            assert_eq!(check_key(&dec), Ok(()));
            assert!(fits(&dec, *alg));
            assert!(!fits(&dec, *other), "a {alg:?} key");
            assert!(!fits(&dec, Algorithm::RS256));
        }
        let cut_short = DecodingKey::from_ec_der(&p256.public_key().to_sec1_bytes()[..33]);
        assert!(check_key(&cut_short).is_err());

        let ed = ed25519_dalek::SigningKey::generate(&mut rand::thread_rng());
        let enc =
            EncodingKey::from_ed_pem(ed.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let pem = ed
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let dec = DecodingKey::from_ed_pem(pem.as_bytes()).unwrap();
        check_family(&[Algorithm::EdDSA], &enc, &dec);
        assert_eq!(check_key(&dec), Ok(()));
        assert!(check_key(&DecodingKey::from_ed_der(&[0; 31])).is_err());
    }

    #[test]
    fn a_key_of_another_family_gets_no_verifier() {
        let key = DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        assert!(verifier(&Algorithm::RS256, &key).is_err());
        assert!(verifier(&Algorithm::ES256, &key).is_err());
        assert!(verifier(&Algorithm::EdDSA, &key).is_err());
        // and ring is never asked for what it is not given
        assert!(verify(Algorithm::HS256, &key, b"m", b"s").is_err());
    }

    #[test]
    fn small_and_huge_rsa_keys_are_refused_at_load() {
        // n of 1024 bits (top bit set), e = 65537
        let mut n = vec![0xff; 128];
        n[127] = 0x01;
        let small = DecodingKey::from_rsa_raw_components(&n, &[1, 0, 1]);
        let e = check_key(&small).unwrap_err();
        assert!(e.contains("1024 bits") && e.contains("2048"), "{e}");
        // leading zero bytes do not count
        let mut padded = vec![0; 3];
        padded.extend_from_slice(&[0x01; 256]);
        let e = check_key(&DecodingKey::from_rsa_raw_components(&padded, &[1, 0, 1])).unwrap_err();
        assert!(e.contains("2041 bits"), "{e}");
        let huge = DecodingKey::from_rsa_raw_components(&[0xff; 1025], &[1, 0, 1]);
        assert!(check_key(&huge).unwrap_err().contains("at most"));
        assert!(check_key(&DecodingKey::from_rsa_der(b"junk"))
            .unwrap_err()
            .contains("not an RSA public key"));
    }

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[1]), 1);
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
    }
}
