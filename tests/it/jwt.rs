//! jwt_auth end to end, with keys generated in the test and tokens signed by
//! jsonwebtoken: every algorithm family, JWKS with `kid`, cookies, and the attacks.

use std::path::Path;

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::support::*;

struct Keys {
    rsa_private: String,
    rsa_public: String,
    rsa_n: String,
    rsa_e: String,
    ec_private: String,
    ec_public: String,
    ed_private: String,
    ed_public: String,
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn keys() -> Keys {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    let mut rng = rand::thread_rng();
    let rsa = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
    let rsa_pub = rsa.to_public_key();
    let ec = p256::SecretKey::random(&mut rng);
    let ed = ed25519_dalek::SigningKey::generate(&mut rng);
    Keys {
        rsa_private: rsa.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
        rsa_public: rsa_pub.to_public_key_pem(LineEnding::LF).unwrap(),
        rsa_n: b64url(&rsa_pub.n().to_bytes_be()),
        rsa_e: b64url(&rsa_pub.e().to_bytes_be()),
        ec_private: ec.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
        ec_public: ec.public_key().to_public_key_pem(LineEnding::LF).unwrap(),
        ed_private: ed.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
        ed_public: ed
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    }
}

const SECRET: &str = "a-very-long-shared-secret-of-32+bytes";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(sub: &str) -> serde_json::Value {
    json!({ "sub": sub, "exp": now() + 300, "iss": "https://issuer.test", "aud": ["orders"] })
}

fn sign(
    alg: Algorithm,
    kid: Option<&str>,
    claims: &serde_json::Value,
    key: &EncodingKey,
) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, claims, key).unwrap()
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

struct Setup {
    keys: Keys,
    up: Upstream,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let keys = keys();
    let dir = tempfile::tempdir().unwrap();
    let rsa = write(dir.path(), "rsa.pem", &keys.rsa_public);
    let ec = write(dir.path(), "ec.pem", &keys.ec_public);
    let ed = write(dir.path(), "ed.pem", &keys.ed_public);
    let jwks = json!({ "keys": [
        { "kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": keys.rsa_n, "e": keys.rsa_e },
    ]});
    let jwks = write(dir.path(), "jwks.json", &jwks.to_string());
    let up = Upstream::start("a").await;
    let common = "issuer = \"https://issuer.test\"\naudience = [\"orders\", \"billing\"]\n";
    let gw = gateway(&format!(
        "{up}[consumers.alice]\njwt_subject = \"alice\"\n[consumers.bob]\njwt_subject = \"bob-sub\"\n\
         [routes.rs]\npaths = [\"/rs\"]\nupstream = \"a\"\n\
         [routes.rs.policies.jwt_auth]\nalgorithms = [\"RS256\", \"PS256\"]\npublic_key_file = \"{rsa}\"\n{common}\
         [routes.es]\npaths = [\"/es\"]\nupstream = \"a\"\n\
         [routes.es.policies.jwt_auth]\nalgorithms = [\"ES256\"]\npublic_key_file = \"{ec}\"\n{common}\
         [routes.ed]\npaths = [\"/ed\"]\nupstream = \"a\"\n\
         [routes.ed.policies.jwt_auth]\nalgorithms = [\"EdDSA\"]\npublic_key_file = \"{ed}\"\n{common}\
         [routes.hs]\npaths = [\"/hs\"]\nupstream = \"a\"\n\
         [routes.hs.policies.jwt_auth]\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\ncookie = \"session\"\n{common}\
         [routes.jwks]\npaths = [\"/jwks\"]\nupstream = \"a\"\n\
         [routes.jwks.policies.jwt_auth]\nalgorithms = [\"RS256\"]\njwks_file = \"{jwks}\"\n{common}",
        up = upstream_table("a", &[up.addr]),
    ));
    Setup {
        keys,
        up,
        gw,
        _dir: dir,
    }
}

#[tokio::test]
async fn every_algorithm_family_authenticates_its_consumer() {
    let s = setup().await;
    let k = &s.keys;
    let cases = [
        (
            "/rs",
            sign(
                Algorithm::RS256,
                None,
                &claims("alice"),
                &EncodingKey::from_rsa_pem(k.rsa_private.as_bytes()).unwrap(),
            ),
        ),
        (
            "/rs",
            sign(
                Algorithm::PS256,
                None,
                &claims("bob-sub"),
                &EncodingKey::from_rsa_pem(k.rsa_private.as_bytes()).unwrap(),
            ),
        ),
        (
            "/es",
            sign(
                Algorithm::ES256,
                None,
                &claims("alice"),
                &EncodingKey::from_ec_pem(k.ec_private.as_bytes()).unwrap(),
            ),
        ),
        (
            "/ed",
            sign(
                Algorithm::EdDSA,
                None,
                &claims("alice"),
                &EncodingKey::from_ed_pem(k.ed_private.as_bytes()).unwrap(),
            ),
        ),
        (
            "/hs",
            sign(
                Algorithm::HS256,
                None,
                &claims("bob-sub"),
                &EncodingKey::from_secret(SECRET.as_bytes()),
            ),
        ),
        (
            "/jwks",
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &claims("alice"),
                &EncodingKey::from_rsa_pem(k.rsa_private.as_bytes()).unwrap(),
            ),
        ),
    ];
    for (path, token) in &cases {
        let r = raw(s.gw.addr, &get(path, &bearer(token))).await;
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let seen = s.up.last().unwrap();
        assert!(
            matches!(seen.header("x-consumer-name"), Some("alice" | "bob")),
            "{path}"
        );
        assert_eq!(
            seen.header("authorization"),
            None,
            "{path}: token forwarded"
        );
    }
    assert_eq!(s.up.count(), cases.len());
    // the gateway's own provider (ring for RSA and ECDSA) verified them, not a default
    // fixed by an earlier use of jsonwebtoken in the process
    let log = s.gw.stderr_lines();
    assert!(
        !log.iter()
            .any(|l| l.contains("crypto provider was chosen before")),
        "{log:?}"
    );
}

#[tokio::test]
async fn tokens_in_a_cookie_are_accepted_and_not_forwarded() {
    let s = setup().await;
    let token = sign(
        Algorithm::HS256,
        None,
        &claims("alice"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    let r = raw(
        s.gw.addr,
        &get("/hs", &format!("Cookie: theme=dark; session={token}\r\n")),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.up.last().unwrap().header("cookie"), Some("theme=dark"));
}

#[tokio::test]
async fn attacks_and_bad_tokens_are_401() {
    let s = setup().await;
    let k = &s.keys;
    let rsa = EncodingKey::from_rsa_pem(k.rsa_private.as_bytes()).unwrap();
    let good = sign(Algorithm::RS256, None, &claims("alice"), &rsa);
    let enc = |v: serde_json::Value| b64url(v.to_string().as_bytes());
    let parts: Vec<&str> = good.split('.').collect();

    let with = |c: serde_json::Value| {
        let mut m = claims("alice");
        for (key, v) in c.as_object().unwrap() {
            if v.is_null() {
                m.as_object_mut().unwrap().remove(key);
            } else {
                m[key] = v.clone();
            }
        }
        sign(Algorithm::RS256, None, &m, &rsa)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "/rs",
            format!(
                "{}.{}.",
                enc(json!({"alg": "none", "typ": "JWT"})),
                parts[1]
            ),
            "unsigned tokens are not accepted",
        ),
        // HS256 "signed" with the RSA public key PEM as the HMAC secret
        (
            "/rs",
            sign(
                Algorithm::HS256,
                None,
                &claims("alice"),
                &EncodingKey::from_secret(k.rsa_public.as_bytes()),
            ),
            "token algorithm not allowed",
        ),
        ("/rs", with(json!({"exp": now() - 120})), "token expired"),
        (
            "/rs",
            with(json!({"nbf": now() + 120})),
            "token not yet valid",
        ),
        (
            "/rs",
            with(json!({"iss": "https://evil.test"})),
            "wrong token issuer",
        ),
        (
            "/rs",
            with(json!({"aud": "elsewhere"})),
            "wrong token audience",
        ),
        (
            "/rs",
            with(json!({"iss": null})),
            "token lacks a required claim (exp, iss or aud)",
        ),
        (
            "/rs",
            format!(
                "{}.{}.{}",
                parts[0],
                enc(
                    json!({"sub": "bob-sub", "exp": now() + 300, "iss": "https://issuer.test", "aud": "orders"})
                ),
                parts[2]
            ),
            "invalid token signature",
        ),
        (
            "/rs",
            format!(
                "{}.{}.{}",
                enc(json!({"alg": "RS256", "crit": ["b64"], "b64": false})),
                parts[1],
                parts[2]
            ),
            "token uses critical header extensions",
        ),
        (
            "/rs",
            with(json!({"sub": "mallory"})),
            "token subject is not a known consumer",
        ),
        (
            "/jwks",
            sign(
                Algorithm::RS256,
                Some("rsa-unknown"),
                &claims("alice"),
                &rsa,
            ),
            "unknown key id",
        ),
        // a valid ES256 token on the RSA route
        (
            "/rs",
            sign(
                Algorithm::ES256,
                None,
                &claims("alice"),
                &EncodingKey::from_ec_pem(k.ec_private.as_bytes()).unwrap(),
            ),
            "token algorithm not allowed",
        ),
        ("/rs", "not-a-jwt".to_string(), "malformed token"),
        ("/rs", "x".repeat(9000), "token too large"),
    ];
    for (path, token, message) in &cases {
        let r = raw(s.gw.addr, &get(path, &bearer(token))).await;
        assert_eq!(r.status, 401, "{message}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{message}");
        let body = r.json();
        assert_eq!(body["error"], "unauthorized");
        assert_eq!(body["message"], *message);
    }
    let r = raw(s.gw.addr, &get("/rs", "")).await;
    assert_eq!(
        (r.status, r.json()["message"].as_str()),
        (401, Some("missing bearer token"))
    );
    assert_eq!(s.up.count(), 0, "a refused token reached the upstream");
}

#[test]
fn bad_key_material_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let pem = write(
        dir.path(),
        "bad.pem",
        "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n",
    );
    let jwks = write(dir.path(), "jwks.json", "{\"keys\": [{\"kty\": \"RSA\"}]}");
    // RFC 7518 §3.3: RSA keys of at least 2048 bits
    let small_n = b64url(&[0xc3; 128]);
    let small = write(
        dir.path(),
        "small.json",
        &json!({ "keys": [{ "kty": "RSA", "kid": "small", "n": small_n, "e": "AQAB" }] })
            .to_string(),
    );
    // a P-256 key cannot verify ES384
    let p256_pem = {
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        let ec = p256::SecretKey::random(&mut rand::thread_rng());
        ec.public_key().to_public_key_pem(LineEnding::LF).unwrap()
    };
    let ec = write(dir.path(), "ec.pem", &p256_pem);
    let cfg = write(
        dir.path(),
        "g.toml",
        &format!(
            "[upstreams.a]\nbackends = [\"127.0.0.1:1\"]\n[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
             [routes.r.policies.jwt_auth]\nalgorithms = [\"RS256\"]\npublic_key_file = \"{pem}\"\n\
             [routes.s]\npaths = [\"/s\"]\nupstream = \"a\"\n\
             [routes.s.policies.jwt_auth]\nalgorithms = [\"RS256\"]\njwks_file = \"{jwks}\"\n\
             [routes.t]\npaths = [\"/t\"]\nupstream = \"a\"\n\
             [routes.t.policies.jwt_auth]\nalgorithms = [\"RS256\"]\njwks_file = \"{small}\"\n\
             [routes.u]\npaths = [\"/u\"]\nupstream = \"a\"\n\
             [routes.u.policies.jwt_auth]\nalgorithms = [\"ES256\", \"ES384\"]\npublic_key_file = \"{ec}\"\n"
        ),
    );
    let out = std::process::Command::new(bin())
        .args(["check", "--config", &cfg])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes.r.policies.jwt_auth.public_key_file: not a valid Rsa public key PEM"),
        "{err}"
    );
    assert!(
        err.contains("routes.s.policies.jwt_auth.jwks_file:"),
        "{err}"
    );
    assert!(
        err.contains(
            "routes.t.policies.jwt_auth.jwks_file: key \"small\": RSA key of 1024 bits: \
             at least 2048 are required"
        ),
        "{err}"
    );
    assert!(
        err.contains("routes.u.policies.jwt_auth.algorithms: ES384 does not fit this key's curve"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 4, "{err}");
}

#[tokio::test]
async fn a_token_remembered_before_a_reload_that_changes_the_key_is_refused_after_it() {
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "{}[consumers.alice]\njwt_subject = \"alice\"\n\
         [routes.hs]\npaths = [\"/hs\"]\nupstream = \"a\"\n\
         [routes.hs.policies.jwt_auth]\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\n",
        upstream_table("a", &[up.addr])
    ));
    let token = sign(
        Algorithm::HS256,
        None,
        &claims("alice"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    // verified once, then answered from the verified-token cache
    for i in 0..3 {
        let r = raw(gw.addr, &get("/hs", &bearer(&token))).await;
        assert_eq!(r.status, 200, "request {i}");
    }
    assert_eq!(up.count(), 3);

    let full = std::fs::read_to_string(&gw.config).unwrap();
    let rotated = full.replace(SECRET, "another-shared-secret-of-32+bytes!!");
    assert_ne!(full, rotated);
    std::fs::write(&gw.config, rotated).unwrap();
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = raw(gw.addr, &get("/hs", &bearer(&token))).await;
    assert_eq!(
        r.status,
        401,
        "a token of the old key passed after the reload: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(up.count(), 3);
}
