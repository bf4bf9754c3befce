//! Authentication hot paths: API-key look-up among 100,000 consumers, and JWT
//! verification per algorithm (keys generated here, tokens signed by jsonwebtoken):
//! the policy's whole check, in full and from its cache, and the signature alone with
//! the gateway's backend (`ring`) beside jsonwebtoken's pure-Rust one.
//!
//! Run with `cargo bench -p tollgate --bench auth`.

// criterion_group! generates an undocumented public function
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use jsonwebtoken::{encode, Algorithm, DecodingKey, EncodingKey, Header};
use tollgate::policies::jwt_auth::{JwtAuth, JwtAuthConfig};
use tollgate::policy::{BuildCtx, PolicyConfig};
use tollgate::{Consumer, Consumers};

fn bench_key_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_lookup");
    for n in [100usize, 100_000] {
        let mut cs = Consumers::default();
        for i in 0..n {
            let consumer = cs.insert(Consumer::new(format!("c{i}"), vec![]));
            cs.add_api_key(&consumer, &format!("key-{i:08}-0123456789abcdef"));
        }
        let hit = format!("key-{:08}-0123456789abcdef", n / 2);
        group.bench_with_input(BenchmarkId::new("hit", n), &hit, |b, k| {
            b.iter(|| black_box(cs.by_api_key(black_box(k.as_bytes())).is_some()))
        });
        group.bench_with_input(
            BenchmarkId::new("miss", n),
            "key-nobody-0123456789abcdef",
            |b, k| b.iter(|| black_box(cs.by_api_key(black_box(k.as_bytes())).is_some())),
        );
    }
    group.finish();
}

fn policy(dir: &Path, toml: &str) -> JwtAuth {
    let config: JwtAuthConfig = toml::from_str(toml).expect("config");
    config.build(&BuildCtx::new(dir, "bench")).expect("build")
}

fn bench_jwt(c: &mut Criterion) {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    // before anything signs: the first use of jsonwebtoken fixes its provider
    assert!(
        tollgate::jwt_crypto::install(),
        "ring provider not installed"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = rand::thread_rng();
    let rsa = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("rsa");
    let ec = p256::SecretKey::random(&mut rng);
    let ed = ed25519_dalek::SigningKey::generate(&mut rng);
    let write =
        |name: &str, body: String| std::fs::write(dir.path().join(name), body).expect("write");
    write(
        "rsa.pem",
        rsa.to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem"),
    );
    write(
        "ec.pem",
        ec.public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem"),
    );
    write(
        "ed.pem",
        ed.verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem"),
    );
    let secret = "a-very-long-shared-secret-of-32+bytes";

    let mut cs = Consumers::default();
    let alice = cs.insert(Consumer::new("alice", vec![]));
    cs.add_subject(&alice, "alice");
    let claims =
        serde_json::json!({ "sub": "alice", "exp": jsonwebtoken::get_current_timestamp() + 3600 });
    let token = |alg, key: &EncodingKey| encode(&Header::new(alg), &claims, key).expect("sign");

    let cases = [
        (
            "HS256",
            format!("secret = \"{secret}\""),
            token(
                Algorithm::HS256,
                &EncodingKey::from_secret(secret.as_bytes()),
            ),
        ),
        (
            "RS256",
            "public_key_file = \"rsa.pem\"".to_string(),
            token(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(
                    rsa.to_pkcs8_pem(LineEnding::LF).expect("pem").as_bytes(),
                )
                .expect("key"),
            ),
        ),
        (
            "ES256",
            "public_key_file = \"ec.pem\"".to_string(),
            token(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(ec.to_pkcs8_pem(LineEnding::LF).expect("pem").as_bytes())
                    .expect("key"),
            ),
        ),
        (
            "EdDSA",
            "public_key_file = \"ed.pem\"".to_string(),
            token(
                Algorithm::EdDSA,
                &EncodingKey::from_ed_pem(ed.to_pkcs8_pem(LineEnding::LF).expect("pem").as_bytes())
                    .expect("key"),
            ),
        ),
    ];
    // every verification in full (no cache), then the same token again from the cache
    let mut group = c.benchmark_group("jwt_verify");
    for (alg, key, tok) in &cases {
        for (name, cache) in [(alg.to_string(), 0), (format!("{alg} cached"), 1024)] {
            let p = policy(
                dir.path(),
                &format!("algorithms = [\"{alg}\"]\n{key}\ncache_size = {cache}\n"),
            );
            assert!(p.verify(tok, &cs).is_ok(), "{alg} token does not verify");
            group.bench_function(name, |b| {
                b.iter(|| black_box(p.verify(black_box(tok), &cs).is_ok()))
            });
        }
    }
    group.finish();

    // the signature alone, each backend's verifier as jsonwebtoken calls it
    let mut group = c.benchmark_group("jwt_signature");
    let rust_crypto = &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
    let read = |name: &str| std::fs::read(dir.path().join(name)).expect("read");
    let keys = [
        DecodingKey::from_secret(secret.as_bytes()),
        DecodingKey::from_rsa_pem(&read("rsa.pem")).expect("key"),
        DecodingKey::from_ec_pem(&read("ec.pem")).expect("key"),
        DecodingKey::from_ed_pem(&read("ed.pem")).expect("key"),
    ];
    for ((alg, _, tok), key) in cases.iter().zip(&keys) {
        let algorithm: Algorithm = alg.parse().expect("algorithm");
        let (msg, sig) = tok.rsplit_once('.').expect("token");
        let sig = URL_SAFE_NO_PAD.decode(sig).expect("base64");
        for (backend, provider) in [
            ("gateway", tollgate::jwt_crypto::provider()),
            ("rust_crypto", rust_crypto),
        ] {
            let verify = || {
                (provider.verifier_factory)(&algorithm, key)
                    .expect("verifier")
                    .verify(msg.as_bytes(), &sig)
                    .is_ok()
            };
            assert!(verify(), "{alg} with {backend}");
            group.bench_function(format!("{alg} {backend}"), |b| {
                b.iter(|| black_box(verify()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_key_lookup, bench_jwt);
criterion_main!(benches);
