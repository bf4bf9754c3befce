//! Authentication and authorization against real upstreams: key_auth, acl,
//! ip_restriction, spoofed identity headers, and secrets kept out of logs.

use std::time::Duration;

use crate::support::*;

const CONSUMERS: &str = "[consumers.alice]\napi_keys = [\"k-alice-1\"]\ngroups = [\"partners\"]\n\
                         [consumers.bob]\napi_keys = [\"k-bob-1\"]\n\
                         [consumers.eve]\napi_keys = [\"k-eve-1\"]\ngroups = [\"partners\", \"suspended\"]\n";

async fn key_gateway(extra: &str) -> (Upstream, Gateway) {
    let up = Upstream::start("a").await;
    let gw = gateway(&format!(
        "{}{CONSUMERS}\
         [routes.open]\npaths = [\"/open\"]\nupstream = \"a\"\n\
         [routes.keyed]\npaths = [\"/keyed\"]\nupstream = \"a\"\n[routes.keyed.policies.key_auth]\n\
         [routes.shown]\npaths = [\"/shown\"]\nupstream = \"a\"\n\
         [routes.shown.policies.key_auth]\nheader = \"x-api-key\"\nquery = \"\"\nhide_credentials = false\n\
         [routes.partners]\npaths = [\"/partners\"]\nupstream = \"a\"\n[routes.partners.policies.key_auth]\n\
         [routes.partners.policies.acl]\nallow_groups = [\"partners\"]\ndeny_groups = [\"suspended\"]\n{extra}",
        upstream_table("a", &[up.addr])
    ));
    (up, gw)
}

#[tokio::test]
async fn key_auth_accepts_header_and_query_keys_and_hides_them() {
    let (up, gw) = key_gateway("").await;
    let r = raw(
        gw.addr,
        &get(
            "/keyed/x",
            "apikey: k-alice-1\r\nX-Consumer-Name: admin\r\n",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last().unwrap();
    assert_eq!(
        seen.header_all("x-consumer-name"),
        ["alice"],
        "the gateway names the consumer, not the client"
    );
    assert_eq!(
        seen.header("apikey"),
        None,
        "hide_credentials defaults to true"
    );

    let r = raw(gw.addr, &get("/keyed/x?a=1&apikey=k-bob-1&b=2", "")).await;
    assert_eq!(r.status, 200);
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-consumer-name"), Some("bob"));
    assert_eq!(seen.target, "/keyed/x?a=1&b=2");

    let r = raw(gw.addr, &get("/shown", "x-api-key: k-bob-1\r\n")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().unwrap().header("x-api-key"),
        Some("k-bob-1"),
        "hide_credentials = false forwards it"
    );
}

#[tokio::test]
async fn key_auth_refuses_missing_and_unknown_keys_with_401() {
    let (up, gw) = key_gateway("").await;
    for (headers, message) in [
        ("", "missing API key"),
        ("apikey: k-nobody\r\n", "invalid API key"),
        ("apikey: \r\n", "missing API key"),
    ] {
        let r = raw(gw.addr, &get("/keyed", headers)).await;
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(r.header("www-authenticate"), Some("Key"));
        let body = r.json();
        assert_eq!(body["error"], "unauthorized");
        assert_eq!(body["message"], message);
        assert!(
            !String::from_utf8_lossy(&r.body).contains("k-nobody"),
            "the key was echoed"
        );
    }
    // the key of another route's header name does not count
    let r = raw(gw.addr, &get("/shown", "apikey: k-bob-1\r\n")).await;
    assert_eq!(r.status, 401);
    let r = raw(gw.addr, &get("/shown?apikey=k-bob-1", "")).await;
    assert_eq!(r.status, 401, "query keys are off on this route");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn spoofed_consumer_headers_never_reach_an_open_route() {
    let (up, gw) = key_gateway("").await;
    let r = raw(
        gw.addr,
        &get(
            "/open",
            "X-Consumer-Name: alice\r\nx-consumer-groups: admin\r\n",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-consumer-name"), None);
    assert_eq!(seen.header("x-consumer-groups"), None);
}

#[tokio::test]
async fn acl_allows_groups_denies_others_with_403() {
    let (up, gw) = key_gateway("").await;
    assert_eq!(
        raw(gw.addr, &get("/partners", "apikey: k-alice-1\r\n"))
            .await
            .status,
        200
    );
    let r = raw(gw.addr, &get("/partners", "apikey: k-bob-1\r\n")).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (403, Some("forbidden"))
    );
    let r = raw(gw.addr, &get("/partners", "apikey: k-eve-1\r\n")).await;
    assert_eq!(r.status, 403, "deny_groups wins over allow_groups");
    let r = raw(gw.addr, &get("/partners", "")).await;
    assert_eq!(r.status, 401, "authentication runs before acl");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn ip_restriction_runs_first_and_uses_the_peer_address() {
    let (up, gw) = key_gateway(
        "[routes.local]\npaths = [\"/local\"]\nupstream = \"a\"\n\
         [routes.local.policies.ip_restriction]\nallow = [\"127.0.0.0/8\"]\n\
         [routes.blocked]\npaths = [\"/blocked\"]\nupstream = \"a\"\n\
         [routes.blocked.policies.ip_restriction]\ndeny = [\"127.0.0.1\"]\n[routes.blocked.policies.key_auth]\n\
         [routes.lan]\npaths = [\"/lan\"]\nupstream = \"a\"\n\
         [routes.lan.policies.ip_restriction]\nallow = [\"198.51.100.0/24\"]\n",
    )
    .await;
    assert_eq!(raw(gw.addr, &get("/local", "")).await.status, 200);
    let r = raw(gw.addr, &get("/blocked", "")).await;
    assert_eq!(
        r.status, 403,
        "ip_restriction answers before key_auth would"
    );
    assert_eq!(r.json()["error"], "forbidden");
    let r = raw(gw.addr, &get("/lan", "X-Forwarded-For: 198.51.100.7\r\n")).await;
    assert_eq!(
        r.status, 403,
        "X-Forwarded-For from an untrusted peer was believed"
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(
        bin(),
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n\
             pid_file = \"/tmp/tg-trust-{0}.pid\"\nupgrade_sock = \"/tmp/tg-trust-{0}.sock\"\n{1}\
             [routes.lan]\npaths = [\"/lan\"]\nupstream = \"a\"\n\
             [routes.lan.policies.ip_restriction]\nallow = [\"198.51.100.0/24\"]\n",
            std::process::id(),
            upstream_table("a", &[up.addr])
        ),
    );
    // right-most untrusted address wins: 198.51.100.7 sent through a trusted 10.1.1.1
    let r = raw(
        gw.addr,
        &get(
            "/lan",
            "X-Forwarded-For: 203.0.113.5, 198.51.100.7, 10.1.1.1\r\n",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    // a client cannot prepend an allowed address: the right-most untrusted one is its own
    let r = raw(
        gw.addr,
        &get("/lan", "X-Forwarded-For: 198.51.100.7, 203.0.113.5\r\n"),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = raw(gw.addr, &get("/lan", "")).await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn api_keys_never_appear_in_the_access_log() {
    let (_up, gw) = key_gateway("").await;
    raw(gw.addr, &get("/keyed?apikey=k-alice-1", "")).await;
    raw(gw.addr, &get("/keyed", "apikey: k-bob-1\r\n")).await;
    raw(gw.addr, &get("/keyed", "apikey: k-unknown-secret\r\n")).await;
    assert!(
        eventually(Duration::from_secs(5), async || gw.stdout_lines().len()
            >= 3)
        .await,
        "no access log lines"
    );
    let lines = gw.stdout_lines();
    for l in &lines {
        for secret in ["k-alice-1", "k-bob-1", "k-unknown-secret"] {
            assert!(!l.contains(secret), "secret in access log: {l}");
        }
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["request_id"].is_string());
    }
    let consumers: Vec<_> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["consumer"].clone())
        .collect();
    assert!(consumers.contains(&serde_json::json!("alice")));
    assert!(consumers.contains(&serde_json::json!(null)));
}

fn argon2_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"tollgate-test-salt").unwrap();
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test]
async fn basic_auth_verifies_argon2_and_bcrypt_and_hides_credentials() {
    let up = Upstream::start("a").await;
    let gw = gateway(&format!(
        "{}[consumers.alice]\nbasic = {{ username = \"alice\", password_hash = \"{}\" }}\n\
         [consumers.bob]\nbasic = {{ username = \"bob\", password_hash = \"{}\" }}\napi_keys = [\"k-bob\"]\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
         [routes.r.policies.basic_auth]\nrealm = \"orders\"\n[routes.r.policies.key_auth]\n\
         [routes.b]\npaths = [\"/basic\"]\nupstream = \"a\"\n\
         [routes.b.policies.basic_auth]\nrealm = \"orders\"\n",
        upstream_table("a", &[up.addr]),
        argon2_hash("alice-pw"),
        bcrypt::hash("bob-pw", 4).unwrap(),
    ));
    let r = raw(gw.addr, &get("/", &basic("alice", "alice-pw"))).await;
    assert_eq!(r.status, 200);
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-consumer-name"), Some("alice"));
    assert_eq!(seen.header("authorization"), None, "credentials forwarded");
    assert_eq!(
        raw(gw.addr, &get("/", &basic("bob", "bob-pw")))
            .await
            .status,
        200
    );
    assert_eq!(up.last().unwrap().header("x-consumer-name"), Some("bob"));
    // either configured authentication succeeds
    assert_eq!(
        raw(gw.addr, &get("/", "apikey: k-bob\r\n")).await.status,
        200
    );

    for (headers, message) in [
        (basic("alice", "wrong"), "invalid user name or password"),
        (
            basic("mallory", "alice-pw"),
            "invalid user name or password",
        ),
        (
            "Authorization: Basic not-base64!!\r\n".to_string(),
            "malformed Basic credentials",
        ),
        (String::new(), "missing Basic credentials"),
    ] {
        let r = raw(gw.addr, &get("/basic", &headers)).await;
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"orders\""));
        assert_eq!(r.json()["message"], message);
        // with key_auth too: one 401 with both challenges, key_auth's first (it runs
        // first, CROSSCUTTING.md rule 2.1)
        let r = raw(gw.addr, &get("/", &headers)).await;
        assert_eq!(r.status, 401, "{headers:?}");
        let challenges: Vec<&str> = r
            .headers
            .iter()
            .filter(|(n, _)| n == "www-authenticate")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(challenges, ["Key", "Basic realm=\"orders\""]);
    }
    assert_eq!(up.count(), 3);
}

#[test]
fn a_bad_password_hash_is_a_config_error_at_its_key() {
    let out = check_fails(
        "[consumers.alice]\nbasic = { username = \"alice\", password_hash = \"hunter2\" }\n",
    );
    let err = out;
    assert!(
        err.contains("g.toml:2:9: consumers.alice.basic.password_hash: expected an argon2"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the hash was echoed: {err}");
}

#[tokio::test]
async fn a_consumers_policy_entry_replaces_the_routes_for_its_requests() {
    let up = Upstream::start("a").await;
    let gw = gateway(&format!(
        "{}[consumers.gold]\napi_keys = [\"k-gold\"]\n\
         [consumers.gold.policies.request_headers]\nset = {{ \"x-tier\" = \"gold\" }}\n\
         [consumers.plain]\napi_keys = [\"k-plain\"]\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n[routes.r.policies.key_auth]\n\
         [routes.r.policies.request_headers]\nset = {{ \"x-tier\" = \"basic\" }}\n",
        upstream_table("a", &[up.addr])
    ));
    assert_eq!(
        raw(gw.addr, &get("/", "apikey: k-gold\r\n")).await.status,
        200
    );
    assert_eq!(up.last().unwrap().header_all("x-tier"), ["gold"]);
    assert_eq!(
        raw(gw.addr, &get("/", "apikey: k-plain\r\n")).await.status,
        200
    );
    assert_eq!(up.last().unwrap().header_all("x-tier"), ["basic"]);
}

#[test]
fn authentication_policies_cannot_be_overridden_per_consumer() {
    let out = check_fails("[consumers.alice]\napi_keys = [\"k\"]\n[consumers.alice.policies.key_auth]\nheader = \"x\"\n");
    let err = out;
    assert!(err.contains("g.toml:3:27: consumers.alice.policies.key_auth: `key_auth` runs before the consumer is known"), "{err}");
}

#[tokio::test]
async fn no_credential_reaches_a_log_line() {
    let up = Upstream::start("a").await;
    let jwt_secret = "jwt-shared-secret-of-at-least-32-bytes!";
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": "carol", "exp": jsonwebtoken::get_current_timestamp() + 300 }),
        &jsonwebtoken::EncodingKey::from_secret(jwt_secret.as_bytes()),
    )
    .unwrap();
    let n = std::process::id();
    let gw = Gateway::start_logging(
        bin(),
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n\
             admin_token = \"admin-t0ken-xyz\"\naccess_log = \"stdout\"\n\
             pid_file = \"/tmp/tollgate-secrets-{n}.pid\"\nupgrade_sock = \"/tmp/tollgate-secrets-{n}.sock\"\n\
             {}[consumers.alice]\napi_keys = [\"key-alice-123\"]\n\
             basic = {{ username = \"alice\", password_hash = \"{}\" }}\n\
             [consumers.carol]\njwt_subject = \"carol\"\n\
             [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
             [routes.r.policies.key_auth]\n[routes.r.policies.basic_auth]\n\
             [routes.r.policies.jwt_auth]\nalgorithms = [\"HS256\"]\nsecret = \"{jwt_secret}\"\n",
            upstream_table("a", &[up.addr]),
            argon2_hash("pw-alice-456"),
        ),
        "debug",
    );
    let cases = [
        get("/", "apikey: key-alice-123\r\n"),
        get("/", "apikey: wrong-key-789\r\n"),
        get("/?apikey=key-alice-123&x=1", ""),
        get("/", &basic("alice", "pw-alice-456")),
        get("/", &basic("alice", "wrong-pw-000")),
        get("/", &format!("Authorization: Bearer {token}\r\n")),
        get("/", &format!("Authorization: Bearer {token}x\r\n")),
    ];
    let mut statuses = Vec::new();
    for c in &cases {
        statuses.push(raw(gw.addr, c).await.status);
    }
    assert_eq!(statuses, [200, 401, 200, 200, 401, 200, 401]);
    let c = client();
    for token in ["admin-t0ken-xyz", "admin-t0ken-wrong"] {
        c.post(gw.admin_url("/admin/reload"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
    }
    let lines = cases.len();
    assert!(
        eventually(Duration::from_secs(5), async || gw.stdout_lines().len()
            >= lines)
        .await,
        "access log lines missing"
    );
    let logs: Vec<String> = gw
        .stdout_lines()
        .into_iter()
        .chain(gw.stderr_lines())
        .collect();
    assert!(logs.len() > lines, "no diagnostics at debug level");
    let signature = token.rsplit('.').next().unwrap();
    for secret in [
        "key-alice-123",
        "wrong-key-789",
        "pw-alice-456",
        "wrong-pw-000",
        "YWxpY2U6", // base64 of "alice:", the start of both Basic credentials
        signature,
        jwt_secret,
        "admin-t0ken",
    ] {
        let leaked: Vec<_> = logs.iter().filter(|l| l.contains(secret)).collect();
        assert!(leaked.is_empty(), "{secret:?} in a log line: {leaked:?}");
    }
}
