//! identity.md §3.1–3.5, 3.7: `jwt_auth` with keys from a real identity provider on
//! loopback (a JWKS URL, OpenID Connect discovery), rotation, failures, scopes, claims
//! sent as headers, `anonymous`, and several authentication policies on one route.

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::*;

/// A P-256 signing key and its public JWK.
struct EcKey {
    signing: EncodingKey,
    kid: String,
}

impl EcKey {
    fn new(kid: &str) -> (Self, Value) {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let secret = p256::SecretKey::random(&mut rand::thread_rng());
        let point = secret.public_key().to_encoded_point(false);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())});
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let key = Self {
            signing: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            kid: kid.to_string(),
        };
        (key, jwk)
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.to_string());
        encode(&h, claims, &self.signing).unwrap()
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(sub: &str, iss: &str) -> Value {
    json!({"sub": sub, "iss": iss, "exp": now() + 600})
}

async fn call(gw: &Gateway, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = client().get(gw.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request")
}

async fn status(gw: &Gateway, path: &str, token: Option<&str>) -> u16 {
    call(gw, path, token).await.status().as_u16()
}

/// Whether `token` on `path` gets `code` within 10 s (a key set being fetched).
async fn becomes(gw: &Gateway, path: &str, token: &str, code: u16) -> bool {
    eventually(Duration::from_secs(10), async || {
        status(gw, path, Some(token)).await == code
    })
    .await
}

/// A gateway with one route `/p` behind `jwt_auth` with `policy` (TOML lines), the
/// consumer `alice` (subject `alice`) and an admin listener.
async fn gateway_for(up: &Upstream, policy: &str) -> Gateway {
    gateway_with_admin(&format!(
        "{}[consumers.alice]\njwt_subject = \"alice\"\n[consumers.guests]\n\
         [routes.p]\npaths = [\"/p\"]\nupstream = \"a\"\n[routes.p.policies.jwt_auth]\n{policy}",
        upstream_table("a", &[up.addr])
    ))
}

#[tokio::test]
async fn discovery_finds_the_jwks_and_a_rotated_key_is_picked_up_on_its_first_token() {
    let idp = IdentityProvider::start().await;
    let (k1, jwk1) = EcKey::new("k1");
    let (k2, jwk2) = EcKey::new("k2");
    idp.serve_jwks(std::slice::from_ref(&jwk1));
    let up = Upstream::start("a").await;
    let iss = idp.issuer();
    let gw = gateway_for(
        &up,
        &format!("algorithms = [\"ES256\"]\nissuer = \"{iss}/\"\ndiscovery = true\n"),
    )
    .await;
    // the trailing `/` of the issuer is removed for the discovery URL, but `iss` must
    // equal it as configured: the provider's issuer has none, so tokens say `{iss}/`
    let iss_claim = format!("{iss}/");
    idp.set(|s| {
        s.discovery = Some(tollgate_tests::Answer::json(&json!({
            "issuer": iss_claim, "jwks_uri": idp.url("/jwks"),
        })));
    });
    let t1 = k1.sign(&claims("alice", &iss_claim));
    assert!(
        becomes(&gw, "/p", &t1, 200).await,
        "the key set was never fetched"
    );
    assert_eq!(up.last().unwrap().header("x-consumer-name"), Some("alice"));
    let fetched = idp.hits("/jwks");
    assert!(idp.hits("/.well-known/openid-configuration") >= 1);

    // the provider rotates: k2 joins, k1 leaves
    idp.serve_jwks(&[jwk2]);
    let t2 = k2.sign(&claims("alice", &iss_claim));
    assert_eq!(
        status(&gw, "/p", Some(&t2)).await,
        200,
        "the new kid refetches at once"
    );
    assert_eq!(
        idp.hits("/jwks"),
        fetched + 1,
        "one refetch, of the JWKS only"
    );
    // k1 left the set with that fetch: its token (remembered as verified) is refused now
    let r = call(&gw, "/p", Some(&t1)).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let m = metrics_text(&gw).await;
    assert!(
        m.contains(r#"tollgate_jwks_refetches_total{result="fetched",route="p"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"tollgate_jwks_keys{route="p"} 1"#), "{m}");
    assert!(
        m.contains(r#"tollgate_jwks_fetches_total{document="discovery",result="ok",route="p"}"#),
        "{m}"
    );
    let last = m
        .lines()
        .find(|l| l.starts_with(r#"tollgate_jwks_last_success_timestamp_seconds{route="p"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .expect("last success gauge");
    assert!(last + 600 > now() && last <= now(), "a Unix time: {last}");
}

#[tokio::test]
async fn before_the_first_fetch_a_well_formed_token_is_503_at_once_and_a_malformed_one_401() {
    let idp = IdentityProvider::start().await;
    idp.set(|s| s.jwks = Some(tollgate_tests::Answer::raw(500, b"{}")));
    let (k, jwk) = EcKey::new("k");
    let up = Upstream::start("a").await;
    let gw = gateway_for(
        &up,
        &format!(
            "algorithms = [\"ES256\"]\njwks_url = \"{}\"\n",
            idp.url("/jwks")
        ),
    )
    .await;
    let t = k.sign(&claims("alice", "any"));
    let started = std::time::Instant::now();
    let r = call(&gw, "/p", Some(&t)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "it does not wait"
    );
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "identity_unavailable");
    assert_eq!(status(&gw, "/p", Some("not-a-jwt")).await, 401);
    assert_eq!(status(&gw, "/p", None).await, 401);
    // an HS256 token (not in `algorithms`) is not well-formed for this policy: 401
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &claims("alice", "any"),
        &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
    )
    .unwrap();
    assert_eq!(status(&gw, "/p", Some(&hs)).await, 401);

    // the provider recovers: the backoff (1 s, 2 s, …) brings the keys without a restart
    idp.serve_jwks(&[jwk]);
    assert!(becomes(&gw, "/p", &t, 200).await);
    assert!(
        gw.stderr_lines()
            .iter()
            .any(|l| l.contains("jwks") && l.contains("status 500")),
        "a warning names the failure"
    );
    let m = metrics_text(&gw).await;
    assert!(m.contains(r#"tollgate_jwks_fetches_total{document="jwks",result="error",route="p"}"#));
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_the_provider_one_fetch_per_min_refetch() {
    let idp = IdentityProvider::start().await;
    let (k, jwk) = EcKey::new("k");
    idp.serve_jwks(&[jwk]);
    let up = Upstream::start("a").await;
    let gw = gateway_for(
        &up,
        &format!(
            "algorithms = [\"ES256\"]\njwks_url = \"{}\"\njwks_min_refetch = \"1h\"\njwks_max_stale = \"2h\"\n",
            idp.url("/jwks")
        ),
    )
    .await;
    let good = k.sign(&claims("alice", "any"));
    assert!(becomes(&gw, "/p", &good, 200).await);
    let before = idp.hits("/jwks");
    let flood: Vec<_> = (0..40)
        .map(|i| {
            let t = k.sign_as(&format!("random-{i}"), &claims("alice", "any"));
            client().get(gw.url("/p")).bearer_auth(t)
        })
        .collect();
    assert_eq!(statuses_at_once(flood).await, [401; 40]);
    assert_eq!(idp.hits("/jwks"), before + 1, "40 unknown kids, one fetch");
    assert_eq!(
        status(&gw, "/p", Some(&good)).await,
        200,
        "known keys still work"
    );
    let m = metrics_text(&gw).await;
    assert!(
        m.contains(r#"tollgate_jwks_refetches_total{result="fetched",route="p"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"tollgate_jwks_refetches_total{result="rate_limited",route="p"}"#));
}

#[tokio::test]
async fn a_failing_provider_keeps_the_last_keys_until_max_stale_then_503() {
    let idp = IdentityProvider::start().await;
    let (k, jwk) = EcKey::new("k");
    idp.serve_jwks(&[jwk]);
    let up = Upstream::start("a").await;
    let gw = gateway_for(
        &up,
        &format!(
            "algorithms = [\"ES256\"]\njwks_url = \"{}\"\njwks_refresh = \"1s\"\njwks_min_refetch = \"1s\"\n\
             jwks_max_stale = \"4s\"\n",
            idp.url("/jwks")
        ),
    )
    .await;
    let t = k.sign(&claims("alice", "any"));
    assert!(becomes(&gw, "/p", &t, 200).await);
    // the provider answers garbage from now on
    idp.set(|s| s.jwks = Some(tollgate_tests::Answer::raw(200, b"<html>")));
    let failed = idp.hits("/jwks");
    assert!(
        eventually(Duration::from_secs(10), async || idp.hits("/jwks") > failed).await,
        "the background refresh runs"
    );
    // a failed refresh never turns a valid token with a known key into a 401
    assert_eq!(status(&gw, "/p", Some(&t)).await, 200);
    // after jwks_max_stale without a good fetch the set is dropped: 503, never 401 (the
    // token verified before, and remembered, included)
    assert!(becomes(&gw, "/p", &t, 503).await);
}

/// Whether the gateway fetches a JWKS answered with `cache_control` at least three
/// times within 10 s, with these `timers` (TOML lines).
async fn refreshes_quickly(cache_control: &str, timers: &str) -> bool {
    let idp = IdentityProvider::start().await;
    let (_, jwk) = EcKey::new("k");
    let doc = json!({"keys": [jwk]});
    idp.set(|s| {
        s.jwks = Some(tollgate_tests::Answer::json(&doc).header("cache-control", cache_control));
    });
    let up = Upstream::start("a").await;
    let _gw = gateway_for(
        &up,
        &format!(
            "algorithms = [\"ES256\"]\njwks_url = \"{}\"\n{timers}",
            idp.url("/jwks")
        ),
    )
    .await;
    eventually(Duration::from_secs(10), async || idp.hits("/jwks") >= 3).await
}

#[tokio::test]
async fn cache_control_max_age_brings_the_refresh_forward_within_min_refetch() {
    // refreshed every ~1 s (max-age), not every hour
    assert!(
        refreshes_quickly(
            "public, max-age=1",
            "jwks_refresh = \"1h\"\njwks_min_refetch = \"1s\"\njwks_max_stale = \"2h\"\n"
        )
        .await
    );
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_not_used() {
    let idp = IdentityProvider::start().await;
    let (k, jwk) = EcKey::new("k");
    idp.serve_jwks(&[jwk]);
    idp.set(|s| {
        s.discovery = Some(tollgate_tests::Answer::json(
            &json!({"issuer": "https://evil.example", "jwks_uri": idp.url("/jwks")}),
        ));
    });
    let up = Upstream::start("a").await;
    let iss = idp.issuer();
    let gw = gateway_for(
        &up,
        &format!("algorithms = [\"ES256\"]\nissuer = \"{iss}\"\ndiscovery = true\n"),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), async || gw
            .stderr_lines()
            .iter()
            .any(
                |l| l.contains("issuer mismatch: got \"https://evil.example\"")
            ))
        .await
    );
    let t = k.sign(&claims("alice", &iss));
    assert_eq!(status(&gw, "/p", Some(&t)).await, 503);
    assert_eq!(
        idp.hits("/jwks"),
        0,
        "the JWKS of a mismatched document is never fetched"
    );
}

#[tokio::test]
async fn https_fetches_trust_jwks_ca_file_and_nothing_else() {
    let (ca, leaf_cert, leaf_key) = crate::tls::ca_and_leaf("127.0.0.1");
    let idp = IdentityProvider::start_tls(&leaf_cert, &leaf_key).await;
    let (k, jwk) = EcKey::new("k");
    idp.serve_jwks(&[jwk]);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let up = Upstream::start("a").await;
    let url = idp.url("/jwks");
    let gw = gateway_with_admin(&format!(
        "{}[consumers.alice]\njwt_subject = \"alice\"\n\
         [routes.trusted]\npaths = [\"/p\"]\nupstream = \"a\"\n[routes.trusted.policies.jwt_auth]\n\
         algorithms = [\"ES256\"]\njwks_url = \"{url}\"\njwks_ca_file = \"{}\"\n\
         [routes.system]\npaths = [\"/s\"]\nupstream = \"a\"\n[routes.system.policies.jwt_auth]\n\
         algorithms = [\"ES256\"]\njwks_url = \"{url}\"\n",
        upstream_table("a", &[up.addr]),
        ca_file.display()
    ));
    let t = k.sign(&claims("alice", "any"));
    assert!(becomes(&gw, "/p", &t, 200).await);
    // the platform store does not know the test CA: that route never gets keys
    assert_eq!(status(&gw, "/s", Some(&t)).await, 503);
    assert!(gw
        .stderr_lines()
        .iter()
        .any(|l| l.contains("route system") && l.contains("jwks")));
}

#[tokio::test]
async fn a_reload_keeps_the_key_set_of_an_unchanged_source_without_a_fetch() {
    let idp = IdentityProvider::start().await;
    let (k, jwk) = EcKey::new("k");
    idp.serve_jwks(&[jwk]);
    let up = Upstream::start("a").await;
    let url = idp.url("/jwks");
    let gw = gateway_for(
        &up,
        &format!("algorithms = [\"ES256\"]\njwks_url = \"{url}\"\njwks_min_refetch = \"1h\"\njwks_max_stale = \"2h\"\n"),
    )
    .await;
    let t = k.sign(&claims("alice", "any"));
    assert!(becomes(&gw, "/p", &t, 200).await);
    let fetched = idp.hits("/jwks");
    // change a timer and a claims option: the source stays, so the set stays
    let toml = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(
        &gw.config,
        toml.replace("jwks_min_refetch = \"1h\"", "jwks_min_refetch = \"2m\""),
    )
    .unwrap();
    let (code, _) = admin_reload(&gw).await;
    assert_eq!(code, 200);
    assert_eq!(status(&gw, "/p", Some(&t)).await, 200, "no 503 window");
    assert_eq!(idp.hits("/jwks"), fetched, "no refetch");
}

#[tokio::test]
async fn check_refuses_bad_remote_key_options_each_at_its_key() {
    let err = check_fails(
        "[upstreams.a]\nbackends = [\"127.0.0.1:1\"]\n\
         [routes.hs]\npaths = [\"/hs\"]\nupstream = \"a\"\n[routes.hs.policies.jwt_auth]\n\
         algorithms = [\"HS256\"]\njwks_url = \"https://idp.example/keys\"\n\
         [routes.disc]\npaths = [\"/d\"]\nupstream = \"a\"\n[routes.disc.policies.jwt_auth]\n\
         algorithms = [\"RS256\"]\ndiscovery = true\n\
         [routes.userinfo]\npaths = [\"/u\"]\nupstream = \"a\"\n[routes.userinfo.policies.jwt_auth]\n\
         algorithms = [\"RS256\"]\njwks_url = \"https://user:pw@idp.example/keys\"\n\
         [routes.fast]\npaths = [\"/f\"]\nupstream = \"a\"\n[routes.fast.policies.jwt_auth]\n\
         algorithms = [\"RS256\"]\njwks_url = \"https://idp.example/keys\"\njwks_refresh = \"500ms\"\n\
         [routes.stale]\npaths = [\"/st\"]\nupstream = \"a\"\n[routes.stale.policies.jwt_auth]\n\
         algorithms = [\"RS256\"]\njwks_url = \"https://idp.example/keys\"\njwks_refresh = \"1h\"\njwks_max_stale = \"1h\"\n\
         [routes.plain]\npaths = [\"/pl\"]\nupstream = \"a\"\n[routes.plain.policies.jwt_auth]\n\
         algorithms = [\"RS256\"]\njwks_url = \"http://idp.example/keys\"\njwks_ca_file = \"ca.pem\"\n\
         [routes.two]\npaths = [\"/two\"]\nupstream = \"a\"\n[routes.two.policies.jwt_auth]\n\
         algorithms = [\"RS256\"]\njwks_url = \"https://idp.example/keys\"\ndiscovery = true\nissuer = \"https://idp.example\"\n\
         [routes.static]\npaths = [\"/sta\"]\nupstream = \"a\"\n[routes.static.policies.jwt_auth]\n\
         algorithms = [\"HS256\"]\nsecret = \"0123456789abcdef0123456789abcdef\"\njwks_timeout = \"1s\"\n\
         [routes.hdr]\npaths = [\"/h\"]\nupstream = \"a\"\n[routes.hdr.policies.jwt_auth]\n\
         algorithms = [\"HS256\"]\nsecret = \"0123456789abcdef0123456789abcdef\"\nclaims_to_headers = { sub = \"host\" }\n\
         [routes.anon]\npaths = [\"/an\"]\nupstream = \"a\"\n[routes.anon.policies.jwt_auth]\n\
         algorithms = [\"HS256\"]\nsecret = \"0123456789abcdef0123456789abcdef\"\nanonymous = \"nobody\"\n\
         [routes.sc]\npaths = [\"/sc\"]\nupstream = \"a\"\n[routes.sc.policies.jwt_auth]\n\
         algorithms = [\"HS256\"]\nsecret = \"0123456789abcdef0123456789abcdef\"\nscopes = [\"a b\"]\n",
    );
    for expected in [
        "routes.hs.policies.jwt_auth.algorithms: HS256 cannot be used with remote keys",
        "routes.disc.policies.jwt_auth.discovery: discovery needs `issuer`",
        "routes.userinfo.policies.jwt_auth.jwks_url: user info",
        "routes.fast.policies.jwt_auth.jwks_refresh: at least 1s",
        "routes.stale.policies.jwt_auth.jwks_max_stale: must be longer than jwks_refresh",
        "routes.plain.policies.jwt_auth.jwks_ca_file: only for https",
        "routes.two.policies.jwt_auth: give exactly one of",
        "routes.static.policies.jwt_auth.jwks_timeout: only with jwks_url or discovery",
        "routes.hdr.policies.jwt_auth.claims_to_headers.sub:",
        "routes.anon.policies.jwt_auth.anonymous: unknown consumer \"nobody\"",
        "routes.sc.policies.jwt_auth.scopes:",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

// ---- scopes, claims to headers, anonymous, several authentication policies ----

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn hs(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn scopes_claims_to_headers_and_anonymous() {
    let up = Upstream::start("a").await;
    let gw = gateway_for(
        &up,
        &format!(
            "algorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\nscopes = [\"orders:read\"]\n\
             claims_to_headers = {{ sub = \"X-User-Id\", roles = \"x-user-roles\", n = \"x-n\" }}\n\
             anonymous = \"guests\"\n"
        ),
    )
    .await;
    // granted through `scp`, one of the two places
    let ok = hs(
        &json!({"sub": "alice", "exp": now() + 60, "scp": ["orders:read"],
        "roles": ["admin", "ops"], "n": 42}),
    );
    let r = client()
        .get(gw.url("/p"))
        .bearer_auth(&ok)
        .header("x-user-id", "forged")
        .header("x-user-roles", "root")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last().unwrap();
    assert_eq!(
        seen.header_all("x-user-id"),
        ["alice"],
        "the client's copy is gone"
    );
    assert_eq!(seen.header("x-user-roles"), Some("admin,ops"));
    assert_eq!(seen.header("x-n"), Some("42"));
    // lacking the scope: 403 with the challenge naming it
    let no_scope = hs(&json!({"sub": "alice", "exp": now() + 60, "scope": "orders:write"}));
    let r = call(&gw, "/p", Some(&no_scope)).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"insufficient_scope\", scope=\"orders:read\""
    );
    // a valid token naming no consumer: the anonymous consumer
    let stranger = hs(&json!({"sub": "mallory", "exp": now() + 60, "scope": "orders:read"}));
    assert_eq!(status(&gw, "/p", Some(&stranger)).await, 200);
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-consumer-name"), Some("guests"));
    assert_eq!(seen.header("x-user-id"), Some("mallory"));
    // an invalid token is never anonymous
    let expired = hs(&json!({"sub": "mallory", "exp": now() - 600, "scope": "orders:read"}));
    assert_eq!(status(&gw, "/p", Some(&expired)).await, 401);
    // the access log names the policy that authenticated
    let lines = access_log(&gw, 4).await;
    assert!(lines
        .iter()
        .any(|v| v["auth"] == "jwt_auth" && v["consumer"] == "guests"));
    assert!(lines
        .iter()
        .any(|v| v["status"] == 401 && v["auth"].is_null()));
}

#[tokio::test]
async fn identity_headers_of_any_route_are_removed_on_every_route() {
    let up = Upstream::start("a").await;
    let gw = gateway(&format!(
        "{}[consumers.alice]\njwt_subject = \"alice\"\n\
         [routes.jwt]\npaths = [\"/jwt\"]\nupstream = \"a\"\n[routes.jwt.policies.jwt_auth]\n\
         algorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\nclaims_to_headers = {{ sub = \"x-user-id\" }}\n\
         [routes.open]\npaths = [\"/open\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr])
    ));
    let r = client()
        .get(gw.url("/open"))
        .header("x-user-id", "forged")
        .header("x-other", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-user-id"), None);
    assert_eq!(seen.header("x-other"), Some("kept"));
}

#[tokio::test]
async fn several_authentication_policies_combine_into_one_answer() {
    let idp = IdentityProvider::start().await;
    idp.set(|s| s.jwks = Some(tollgate_tests::Answer::raw(503, b"")));
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "{}[consumers.alice]\napi_keys = [\"alice-key\"]\njwt_subject = \"alice\"\n\
         [consumers.guests]\n\
         [routes.both]\npaths = [\"/both\"]\nupstream = \"a\"\n\
         [routes.both.policies.jwt_auth]\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\nanonymous = \"guests\"\n\
         [routes.both.policies.key_auth]\nheader = \"x-api-key\"\n\
         [routes.both.policies.basic_auth]\n\
         [routes.down]\npaths = [\"/down\"]\nupstream = \"a\"\n\
         [routes.down.policies.jwt_auth]\nalgorithms = [\"ES256\"]\njwks_url = \"{}\"\n\
         [routes.down.policies.key_auth]\nheader = \"x-api-key\"\n",
        upstream_table("a", &[up.addr]),
        idp.url("/jwks")
    ));
    // key_auth runs before jwt_auth: a valid key authenticates whatever the token is
    let r = client()
        .get(gw.url("/both"))
        .header("x-api-key", "alice-key")
        .bearer_auth("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // nothing valid: one 401 with one challenge per scheme
    let r = client().get(gw.url("/both")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenges: Vec<&str> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        challenges,
        ["Key", "Basic realm=\"tollgate\"", "Bearer"],
        "in stage order"
    );
    // a valid token of nobody: the anonymous consumer of jwt_auth
    let stranger = hs(&json!({"sub": "mallory", "exp": now() + 60}));
    assert_eq!(status(&gw, "/both", Some(&stranger)).await, 200);
    assert_eq!(up.last().unwrap().header("x-consumer-name"), Some("guests"));
    // a provider that is down outranks a wrong key: 503, not 401
    let (k, _) = EcKey::new("k");
    let t = k.sign(&claims("alice", "any"));
    let r = client()
        .get(gw.url("/down"))
        .header("x-api-key", "wrong")
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // but a valid key still authenticates while the provider is down
    let r = client()
        .get(gw.url("/down"))
        .header("x-api-key", "alice-key")
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = metrics_text(&gw).await;
    assert!(
        m.contains(r#"tollgate_refusals_total{reason="identity_unavailable",route="down"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_reload_to_a_new_key_source_fetches_it_before_taking_effect() {
    let old_idp = IdentityProvider::start().await;
    let new_idp = IdentityProvider::start().await;
    let (k_old, jwk_old) = EcKey::new("old");
    let (k_new, jwk_new) = EcKey::new("new");
    old_idp.serve_jwks(&[jwk_old]);
    // the new provider is slow: the reload waits for it (within jwks_timeout)
    let doc = json!({"keys": [jwk_new]});
    new_idp.set(|s| {
        s.jwks = Some(tollgate_tests::Answer::json(&doc).delayed(Duration::from_millis(300)))
    });
    let up = Upstream::start("a").await;
    let gw = gateway_for(
        &up,
        &format!(
            "algorithms = [\"ES256\"]\njwks_url = \"{}\"\n",
            old_idp.url("/jwks")
        ),
    )
    .await;
    let t_old = k_old.sign(&claims("alice", "any"));
    assert!(becomes(&gw, "/p", &t_old, 200).await);
    let toml = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(
        &gw.config,
        toml.replace(&old_idp.url("/jwks"), &new_idp.url("/jwks")),
    )
    .unwrap();
    let (code, _) = admin_reload(&gw).await;
    assert_eq!(code, 200);
    // the first request after the reload finds the new keys: no 503 window
    let t_new = k_new.sign(&claims("alice", "any"));
    assert_eq!(status(&gw, "/p", Some(&t_new)).await, 200);
    assert_eq!(
        new_idp.hits("/jwks"),
        1,
        "fetched once, before the reload took effect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_fetches_key_sets_before_it_takes_the_sockets_over() {
    let idp = IdentityProvider::start().await;
    let (k, jwk) = EcKey::new("k");
    let jwk_for_k = jwk.clone();
    idp.serve_jwks(&[jwk]);
    let up = Upstream::start("a").await;
    let n = format!("{}{}", std::process::id(), fastid());
    let toml = format!(
        "[server]\nlisten = [\"{}\"]\nthreads = 1\naccess_log = \"off\"\n\
         pid_file = \"/tmp/tollgate-jwks-{n}.pid\"\nupgrade_sock = \"/tmp/tollgate-jwks-{n}.sock\"\n\
         grace_period = \"0s\"\ngraceful_shutdown_timeout = \"1s\"\n\
         {}[consumers.alice]\njwt_subject = \"alice\"\n\
         [routes.p]\npaths = [\"/p\"]\nupstream = \"a\"\n[routes.p.policies.jwt_auth]\n\
         algorithms = [\"ES256\"]\njwks_url = \"{}\"\njwks_timeout = \"5s\"\n",
        closed_port(),
        upstream_table("a", &[up.addr]),
        idp.url("/jwks")
    );
    let old = Gateway::start(bin(), &toml);
    let t = k.sign(&claims("alice", "any"));
    assert!(becomes(&old, "/p", &t, 200).await);
    let fetched = idp.hits("/jwks");
    // from now on the provider takes 2 s: longer than the old process takes to hand
    // over and leave, so only a fetch made before the hand-over is done in time
    let doc = json!({"keys": [EcKey::new("other").1, jwk_for_k]});
    idp.set(|s| {
        s.jwks = Some(tollgate_tests::Answer::json(&doc).delayed(Duration::from_secs(2)));
    });
    let new_toml = toml.clone();
    let new = tokio::task::spawn_blocking(move || Gateway::start_upgrade(bin(), &new_toml));
    old.signal("QUIT");
    let new = new.await.expect("the new instance started");
    let mut old = old;
    tokio::task::spawn_blocking(move || old.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the old process exited");
    assert!(
        idp.hits("/jwks") > fetched,
        "the new process fetched its own keys"
    );
    // the first request the new process serves alone finds its keys
    assert_eq!(status(&new, "/p", Some(&t)).await, 200);
}

#[test]
fn the_gateways_own_label_values_cannot_name_a_route_consumer_or_upstream() {
    let err = check_fails(
        "[upstreams._global]\nbackends = [\"127.0.0.1:1\"]\n[upstreams.a]\nbackends = [\"127.0.0.1:1\"]\n\
         [consumers._none]\n[routes._global]\npaths = [\"/\"]\nupstream = \"a\"\n",
    );
    for expected in [
        "upstreams._global: the name \"_global\" is reserved",
        "consumers._none: the name \"_none\" is reserved",
        "routes._global: the name \"_global\" is reserved",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[tokio::test]
async fn discovery_falls_back_to_the_last_good_jwks_uri_and_refuses_a_downgrade() {
    let idp = IdentityProvider::start().await;
    let (k, jwk) = EcKey::new("k");
    let doc = json!({"keys": [jwk]});
    idp.set(|s| {
        s.jwks = Some(tollgate_tests::Answer::json(&doc).header("cache-control", "max-age=1"));
    });
    let up = Upstream::start("a").await;
    let iss = idp.issuer();
    let gw = gateway_for(
        &up,
        &format!(
            "algorithms = [\"ES256\"]\nissuer = \"{iss}\"\ndiscovery = true\njwks_refresh = \"1h\"\n\
             jwks_min_refetch = \"1s\"\njwks_max_stale = \"2h\"\ncache_size = 0\n"
        ),
    )
    .await;
    let t = k.sign(&claims("alice", &iss));
    assert!(becomes(&gw, "/p", &t, 200).await);
    // the discovery document now fails: refreshes keep fetching the last good jwks_uri
    idp.set(|s| s.discovery = Some(tollgate_tests::Answer::raw(500, b"")));
    let jwks = idp.hits("/jwks");
    assert!(
        eventually(Duration::from_secs(10), async || idp.hits("/jwks")
            >= jwks + 2)
        .await,
        "the JWKS is still refreshed"
    );
    assert_eq!(status(&gw, "/p", Some(&t)).await, 200);
    // a document that is not JSON counts as a failed discovery too, and the keys stay
    idp.set(|s| s.discovery = Some(tollgate_tests::Answer::raw(200, b"<html>")));
    let jwks = idp.hits("/jwks");
    assert!(eventually(Duration::from_secs(10), async || idp.hits("/jwks") > jwks).await);
    assert_eq!(status(&gw, "/p", Some(&t)).await, 200);
    let m = metrics_text(&gw).await;
    assert!(
        m.contains(r#"tollgate_jwks_fetches_total{document="discovery",result="error",route="p"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_jwks_over_256_kib_or_without_usable_keys_is_a_failed_fetch() {
    let idp = IdentityProvider::start().await;
    let (k, jwk) = EcKey::new("k");
    // a 300 KiB document: its keys are never used
    let padding = "x".repeat(300 * 1024);
    let big = json!({"keys": [jwk.clone()], "padding": padding});
    idp.set(|s| s.jwks = Some(tollgate_tests::Answer::json(&big)));
    let up = Upstream::start("a").await;
    let gw = gateway_for(
        &up,
        &format!(
            "algorithms = [\"ES256\"]\njwks_url = \"{}\"\n",
            idp.url("/jwks")
        ),
    )
    .await;
    let t = k.sign(&claims("alice", "any"));
    assert!(eventually(Duration::from_secs(10), async || idp.hits("/jwks") >= 1).await);
    assert_eq!(status(&gw, "/p", Some(&t)).await, 503);
    // only a symmetric key: nothing usable
    idp.set(|s| {
        s.jwks = Some(tollgate_tests::Answer::json(
            &json!({"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "kid": "k"}]}),
        ))
    });
    let n = idp.hits("/jwks");
    assert!(eventually(Duration::from_secs(10), async || idp.hits("/jwks") > n).await);
    assert_eq!(status(&gw, "/p", Some(&t)).await, 503);
    assert!(gw
        .stderr_lines()
        .iter()
        .any(|l| l.contains("no usable key")));
    // a good document at last
    idp.serve_jwks(&[jwk]);
    assert!(becomes(&gw, "/p", &t, 200).await);
}

#[tokio::test]
async fn a_token_without_kid_needs_a_set_of_one_usable_key() {
    let idp = IdentityProvider::start().await;
    let (k, mut jwk) = EcKey::new("k");
    jwk.as_object_mut().unwrap().remove("kid");
    idp.serve_jwks(std::slice::from_ref(&jwk));
    let up = Upstream::start("a").await;
    let gw = gateway_for(
        &up,
        &format!(
            "algorithms = [\"ES256\"]\njwks_url = \"{}\"\njwks_min_refetch = \"1s\"\ncache_size = 0\n",
            idp.url("/jwks")
        ),
    )
    .await;
    let no_kid = encode(
        &Header::new(Algorithm::ES256),
        &claims("alice", "any"),
        &k.signing,
    )
    .unwrap();
    assert!(becomes(&gw, "/p", &no_kid, 200).await);
    // two keys with kids: a token without one names no key
    let (_, other) = EcKey::new("other");
    let mut with_kid = jwk.clone();
    with_kid["kid"] = json!("k");
    idp.serve_jwks(&[with_kid, other]);
    let t = k.sign(&claims("alice", "any"));
    // the new kid makes the gateway refetch; then the token without a kid is refused
    assert!(becomes(&gw, "/p", &t, 200).await);
    assert_eq!(status(&gw, "/p", Some(&no_kid)).await, 401);
}

#[tokio::test]
async fn a_scope_refusal_outranks_another_policys_anonymous_consumer() {
    let up = Upstream::start("a").await;
    let gw = gateway(&format!(
        "{}[consumers.alice]\njwt_subject = \"alice\"\n[consumers.guests]\n\
         [routes.r]\npaths = [\"/r\"]\nupstream = \"a\"\n\
         [routes.r.policies.jwt_auth]\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\nscopes = [\"read\"]\n\
         [routes.r.policies.basic_auth]\n",
        upstream_table("a", &[up.addr])
    ));
    // jwt_auth: valid but lacking the scope: 403 over basic_auth's 401
    let t = hs(&json!({"sub": "alice", "exp": now() + 60}));
    let r = client()
        .get(gw.url("/r"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_refresh_interval_shorter_than_min_refetch_keeps_refreshing() {
    // no-cache asks for min_refetch (5 s), jwks_refresh caps it at 1 s
    assert!(
        refreshes_quickly(
            "no-cache",
            "jwks_refresh = \"1s\"\njwks_min_refetch = \"5s\"\n"
        )
        .await
    );
}

#[tokio::test]
async fn an_https_discovery_document_cannot_point_to_an_http_jwks() {
    let (ca, leaf_cert, leaf_key) = crate::tls::ca_and_leaf("127.0.0.1");
    let idp = IdentityProvider::start_tls(&leaf_cert, &leaf_key).await;
    let plain = IdentityProvider::start().await;
    let (k, jwk) = EcKey::new("k");
    plain.serve_jwks(&[jwk]);
    let iss = idp.issuer();
    idp.set(|s| {
        s.discovery = Some(tollgate_tests::Answer::json(
            &json!({"issuer": iss, "jwks_uri": plain.url("/jwks")}),
        ));
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let up = Upstream::start("a").await;
    let gw = gateway_for(
        &up,
        &format!(
            "algorithms = [\"ES256\"]\nissuer = \"{}\"\ndiscovery = true\njwks_ca_file = \"{}\"\n",
            idp.issuer(),
            ca_file.display()
        ),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), async || gw
            .stderr_lines()
            .iter()
            .any(|l| l.contains("no usable jwks_uri")))
        .await
    );
    let t = k.sign(&claims("alice", &idp.issuer()));
    assert_eq!(status(&gw, "/p", Some(&t)).await, 503);
    assert_eq!(plain.hits("/jwks"), 0, "the downgrade was never followed");
}
