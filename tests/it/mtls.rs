//! identity.md §3.6: client certificates on a TLS listener (`client_ca`,
//! `client_auth`), `mtls_auth` and `cert_headers`, with certificates from a test CA
//! made at test time.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use serde_json::Value;

use crate::support::*;

/// A CA that issues server and client certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        Self { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf: (certificate PEM, key PEM).
    fn issue(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        eku: Vec<ExtendedKeyUsagePurpose>,
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = sans;
        p.extended_key_usages = eku;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "Acme, Inc");
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

fn client_with(ca: &Ca, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .http1_only();
    if let Some((cert, key)) = identity {
        let pem = format!("{cert}{key}");
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

struct Setup {
    ca: Ca,
    up: Upstream,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

/// A TLS listener asking for client certificates of `ca` (`client_auth`), route `/m`
/// behind `mtls_auth` (extra `policy` lines) and consumers by SAN and CN.
async fn setup(client_auth: &str, policy: &str) -> Setup {
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let (server_cert, server_key) = ca.issue(
        "gateway",
        vec![SanType::IpAddress("127.0.0.1".parse().unwrap())],
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    );
    let cert = write(dir.path(), "gw.pem", &server_cert);
    let key = write(dir.path(), "gw.key", &server_key);
    let ca_file = write(dir.path(), "clients-ca.pem", &ca.pem());
    let up = Upstream::start("a").await;
    let gw = gateway_with_admin(&format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{{ cert = \"{cert}\", key = \"{key}\" }}]\n\
         client_ca = \"{ca_file}\"\nclient_auth = \"{client_auth}\"\n\
         {}[consumers.orders]\nmtls = {{ san = [\"Orders.Internal\", \"spiffe://acme/orders\"] }}\n\
         [consumers.billing]\nmtls = {{ cn = \"billing-svc\" }}\n[consumers.partners]\n\
         [routes.m]\npaths = [\"/m\"]\nupstream = \"a\"\n[routes.m.policies.mtls_auth]\n{policy}\
         [routes.open]\npaths = [\"/open\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr])
    ));
    Setup {
        ca,
        up,
        gw,
        _dir: dir,
    }
}

fn url(s: &Setup, path: &str) -> String {
    format!(
        "https://127.0.0.1:{}{path}",
        s.gw.tls.expect("tls listener").port()
    )
}

fn client_auth() -> Vec<ExtendedKeyUsagePurpose> {
    vec![ExtendedKeyUsagePurpose::ClientAuth]
}

#[tokio::test]
async fn a_client_certificate_names_its_consumer_and_its_facts_go_upstream() {
    let s = setup("required", "").await;
    let orders = s.ca.issue(
        "orders-svc",
        vec![
            SanType::DnsName("orders.internal".try_into().unwrap()),
            SanType::URI("spiffe://acme/orders".try_into().unwrap()),
        ],
        client_auth(),
    );
    let r = client_with(&s.ca, Some(&orders))
        .get(url(&s, "/m"))
        .header("x-client-cert-subject", "CN=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = s.up.last().unwrap();
    assert_eq!(seen.header("x-consumer-name"), Some("orders"));
    assert_eq!(
        seen.header_all("x-client-cert-subject"),
        ["CN=orders-svc,O=Acme\\, Inc"],
        "RFC 4514, most specific first, the client's copy gone"
    );
    assert_eq!(
        seen.header("x-client-cert-san"),
        Some("DNS:orders.internal,URI:spiffe://acme/orders")
    );
    let sha = seen.header("x-client-cert-sha256").unwrap().to_string();
    assert_eq!(sha.len(), 64);
    assert!(sha
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    // by Common Name
    let billing = s.ca.issue("billing-svc", vec![], client_auth());
    let r = client_with(&s.ca, Some(&billing))
        .get(url(&s, "/m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.up.last().unwrap().header("x-consumer-name"),
        Some("billing")
    );
    // a verified certificate of nobody: 401 without a challenge
    let stranger = s.ca.issue("stranger", vec![], client_auth());
    let r = client_with(&s.ca, Some(&stranger))
        .get(url(&s, "/m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_none());
    // a certificate that matches two consumers names nobody
    let both = s.ca.issue(
        "billing-svc",
        vec![SanType::DnsName("orders.internal".try_into().unwrap())],
        client_auth(),
    );
    let r = client_with(&s.ca, Some(&both))
        .get(url(&s, "/m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // the access log carries the certificate's digest
    let lines = access_log(&s.gw, 4).await;
    let first = &lines[0];
    assert_eq!(first["client_cert_sha256"], sha.as_str());
    assert_eq!(first["auth"], "mtls_auth");
    let m = metrics_text(&s.gw).await;
    assert!(
        m.contains(r#"tollgate_mtls_auth_total{result="ok",route="m"} 2"#),
        "{m}"
    );
    assert!(m.contains(r#"tollgate_mtls_auth_total{result="unknown_certificate",route="m"} 2"#));
}

#[tokio::test]
async fn required_refuses_the_handshake_without_a_valid_client_certificate() {
    let s = setup("required", "").await;
    let no_cert = client_with(&s.ca, None).get(url(&s, "/open")).send().await;
    assert!(no_cert.is_err(), "no certificate: no HTTP response");
    let other_ca = Ca::new("other CA");
    let foreign = other_ca.issue(
        "orders-svc",
        vec![SanType::DnsName("orders.internal".try_into().unwrap())],
        client_auth(),
    );
    let r = client_with(&s.ca, Some(&foreign))
        .get(url(&s, "/open"))
        .send()
        .await;
    assert!(
        r.is_err(),
        "a certificate of another CA fails the handshake"
    );
    let server_only = s.ca.issue(
        "orders-svc",
        vec![SanType::DnsName("orders.internal".try_into().unwrap())],
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    );
    let r = client_with(&s.ca, Some(&server_only))
        .get(url(&s, "/open"))
        .send()
        .await;
    assert!(r.is_err(), "an EKU without clientAuth fails the handshake");
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn optional_lets_clients_in_without_one_and_mtls_auth_then_refuses() {
    let s = setup(
        "optional",
        "anonymous = \"partners\"\ncert_headers = { sha256 = \"x-cert\" }\n",
    )
    .await;
    let r = client_with(&s.ca, None)
        .get(url(&s, "/open"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client_with(&s.ca, None)
        .get(url(&s, "/m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // a verified certificate of nobody: the anonymous consumer, with only the named header
    let stranger = s.ca.issue("stranger", vec![], client_auth());
    let r = client_with(&s.ca, Some(&stranger))
        .get(url(&s, "/m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = s.up.last().unwrap();
    assert_eq!(seen.header("x-consumer-name"), Some("partners"));
    assert!(seen.header("x-cert").is_some());
    assert_eq!(seen.header("x-client-cert-subject"), None);
    // an invalid certificate still fails the handshake on an optional listener
    let foreign = Ca::new("other CA").issue("x", vec![], client_auth());
    assert!(client_with(&s.ca, Some(&foreign))
        .get(url(&s, "/open"))
        .send()
        .await
        .is_err());
    let m = metrics_text(&s.gw).await;
    assert!(
        m.contains(r#"tollgate_mtls_auth_total{result="no_certificate",route="m"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"tollgate_mtls_auth_total{result="anonymous",route="m"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn plain_listeners_have_no_client_certificate() {
    let s = setup("required", "").await;
    let r = client().get(s.gw.url("/m")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn check_refuses_bad_client_certificate_settings_each_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let (leaf, key) = ca.issue(
        "gw",
        vec![SanType::DnsName("gw.test".try_into().unwrap())],
        vec![],
    );
    let cert = write(dir.path(), "gw.pem", &leaf);
    let key = write(dir.path(), "gw.key", &key);
    let empty = write(dir.path(), "empty.pem", "");
    let err = check_fails(&format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{{ cert = \"{cert}\", key = \"{key}\" }}]\n\
         client_ca = \"{empty}\"\n\
         [[server.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{{ cert = \"{cert}\", key = \"{key}\" }}]\n\
         client_auth = \"sometimes\"\n\
         [upstreams.a]\nbackends = [\"127.0.0.1:1\"]\n\
         [consumers.a]\nmtls = {{ san = \"x\", cn = \"y\" }}\n\
         [consumers.b]\nmtls = {{ san = \"dup\" }}\n[consumers.c]\nmtls = {{ san = [\"dup\"] }}\n\
         [consumers.d]\nmtls = {{ cn = \"\" }}\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
         [routes.r.policies.mtls_auth]\ncert_headers = {{ issuer = \"x-issuer\" }}\n"
    ));
    for expected in [
        "server.tls[0].client_ca: no certificate in the file",
        "server.tls[1].client_auth: only with client_ca",
        "consumers.a.mtls: give exactly one of `san` and `cn`",
        "consumers.c.mtls.san: SAN \"dup\" is already used by consumer \"b\"",
        "consumers.d.mtls.cn: a Common Name cannot be empty",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // with no listener asking for certificates, mtls_auth itself is refused
    let err = check_fails(
        "[upstreams.a]\nbackends = [\"127.0.0.1:1\"]\n[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n\
         [routes.r.policies.mtls_auth]\n",
    );
    assert!(
        err.contains("routes.r.policies.mtls_auth: no [[server.tls]] listener has client_ca"),
        "{err}"
    );
}

// ---- identity.md §3.8: the gateway's own certificate towards backends ----

/// A backend on TLS that demands a client certificate of `clients`, and the files the
/// gateway needs: (backend, dir, server CA file, client cert file, client key file).
async fn mtls_backend(clients: &Ca) -> (Upstream, tempfile::TempDir, String, String, String) {
    let servers = Ca::new("server CA");
    let (cert, key) = servers.issue(
        "ledger",
        vec![SanType::DnsName("ledger.internal".try_into().unwrap())],
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    );
    let up = Upstream::start_mtls("ledger", &cert, &key, &clients.pem()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "servers-ca.pem", &servers.pem());
    let (c, k) = clients.issue("gateway", vec![], client_auth());
    let c = write(dir.path(), "gw-client.pem", &c);
    let k = write(dir.path(), "gw-client.key", &k);
    (up, dir, ca, c, k)
}

#[tokio::test]
async fn the_gateway_presents_its_client_certificate_to_backends_that_demand_one() {
    let clients = Ca::new("client CA");
    let (up, _dir, ca, cert, key) = mtls_backend(&clients).await;
    let gw = gateway(&format!(
        "[upstreams.ledger]\nbackends = [\"{a}\"]\nsni = \"ledger.internal\"\nca_file = \"{ca}\"\n\
         health_check = {{ path = \"/healthz\", interval = \"100ms\" }}\n\
         [upstreams.ledger.tls]\nclient_cert = \"{cert}\"\nclient_key = \"{key}\"\n\
         [upstreams.bare]\nbackends = [\"{a}\"]\nsni = \"ledger.internal\"\nca_file = \"{ca}\"\ntls = true\n\
         [routes.with]\npaths = [\"/with\"]\nupstream = \"ledger\"\n\
         [routes.without]\npaths = [\"/without\"]\nupstream = \"bare\"\n",
        a = up.addr
    ));
    let r = client().get(gw.url("/with")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().unwrap().target, "/with");
    // HTTPS health checks present it too (and trust ca_file)
    assert!(
        eventually(std::time::Duration::from_secs(5), async || !up
            .check_hosts()
            .is_empty())
        .await,
        "health checks never got through"
    );
    // without a certificate the backend refuses the handshake: 502
    let r = client().get(gw.url("/without")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "bad_gateway");
}

#[test]
fn check_refuses_a_half_or_mismatched_client_certificate() {
    let clients = Ca::new("client CA");
    let dir = tempfile::tempdir().unwrap();
    let (c1, _) = clients.issue("a", vec![], client_auth());
    let (_, k2) = clients.issue("b", vec![], client_auth());
    let c1 = write(dir.path(), "c1.pem", &c1);
    let k2 = write(dir.path(), "k2.key", &k2);
    let err = check_fails(&format!(
        "[upstreams.half]\nbackends = [\"127.0.0.1:1\"]\n[upstreams.half.tls]\nclient_cert = \"{c1}\"\n\
         [upstreams.other]\nbackends = [\"127.0.0.1:1\"]\n[upstreams.other.tls]\nclient_key = \"{k2}\"\n\
         [upstreams.mismatch]\nbackends = [\"127.0.0.1:1\"]\n[upstreams.mismatch.tls]\nclient_cert = \"{c1}\"\nclient_key = \"{k2}\"\n\
         [upstreams.notpem]\nbackends = [\"127.0.0.1:1\"]\n[upstreams.notpem.tls]\nclient_cert = \"{k2}\"\nclient_key = \"{k2}\"\n\
         [upstreams.typo]\nbackends = [\"127.0.0.1:1\"]\n[upstreams.typo.tls]\nclient_crt = \"{c1}\"\n\
         [routes.r]\npaths = [\"/\"]\nupstream = \"half\"\n"
    ));
    for expected in [
        "upstreams.half.tls.client_key: client_cert needs client_key",
        "upstreams.other.tls.client_cert: client_key needs client_cert",
        "upstreams.mismatch.tls.client_key: the key does not fit the certificate",
        "upstreams.notpem.tls.client_cert:",
        "client_crt",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}
