//! TLS termination: certificates chosen by SNI, ALPN h2 and http/1.1, X-Forwarded-Proto.

use std::path::Path;

use crate::support::*;

struct Cert {
    pem: String,
}

/// A self-signed certificate for `names`, written as `stem.pem` / `stem.key` in `dir`.
fn cert(dir: &Path, stem: &str, names: &[&str]) -> Cert {
    let c =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let pem = c.cert.pem();
    std::fs::write(dir.join(format!("{stem}.pem")), &pem).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), c.key_pair.serialize_pem()).unwrap();
    Cert { pem }
}

#[tokio::test]
async fn https_with_sni_picks_the_certificate_and_negotiates_h2() {
    let certs = tempfile::tempdir().unwrap();
    let a = cert(certs.path(), "a", &["a.test"]);
    let b = cert(certs.path(), "b", &["b.test", "*.b.test"]);
    let up = Upstream::start("a").await;
    let d = certs.path().display();
    let gw = gateway(&format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:0\"\n\
         certs = [{{ cert = \"{d}/a.pem\", key = \"{d}/a.key\" }}, {{ cert = \"{d}/b.pem\", key = \"{d}/b.key\" }}]\n\
         {}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr])
    ));
    let tls = gw.tls.expect("tls listener");
    let client = |h2: bool| {
        let mut b2 = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(a.pem.as_bytes()).unwrap())
            .add_root_certificate(reqwest::Certificate::from_pem(b.pem.as_bytes()).unwrap())
            .resolve("a.test", tls)
            .resolve("api.b.test", tls);
        if !h2 {
            b2 = b2.http1_only();
        }
        b2.build().unwrap()
    };
    // each name verifies only if the gateway presented the certificate for it
    for host in ["a.test", "api.b.test"] {
        let r = client(true)
            .get(format!("https://{host}:{}/x", tls.port()))
            .send()
            .await;
        let r = r.unwrap_or_else(|e| panic!("{host}: {e:?}"));
        assert_eq!(r.status(), 200, "{host}");
        assert_eq!(
            r.version(),
            reqwest::Version::HTTP_2,
            "{host}: ALPN did not pick h2"
        );
        assert_eq!(
            up.last().unwrap().header("x-forwarded-proto"),
            Some("https")
        );
    }
    let r = client(false)
        .get(format!("https://a.test:{}/y", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_11)
    );
    // plain HTTP keeps working on the plain listener
    assert_eq!(get_json(&gw.url("/z")).await.0, 200);
}

#[test]
fn a_missing_or_bad_key_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    cert(dir.path(), "a", &["a.test"]);
    std::fs::write(
        dir.path().join("bad.key"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let p = dir.path().join("g.toml");
    let d = dir.path().display();
    std::fs::write(
        &p,
        format!(
            "[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{{ cert = \"{d}/a.pem\", key = \"{d}/bad.key\" }}]\n\
             [[server.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{{ cert = \"{d}/missing.pem\", key = \"{d}/a.key\" }}]\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.tls[0].certs[0]:"), "{err}");
    assert!(err.contains("server.tls[1].certs[0]:"), "{err}");
}

/// A CA and a leaf certificate for `name` signed by it: (ca_pem, leaf_pem, leaf_key_pem).
pub(crate) fn ca_and_leaf(name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

#[tokio::test]
async fn upstream_tls_is_verified_against_the_configured_ca() {
    let (ca, leaf, key) = ca_and_leaf("orders.internal");
    let up = Upstream::start_tls("secure", &leaf, &key).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca).unwrap();
    let d = dir.path().display();
    let gw = gateway(&format!(
        "[upstreams.trusted]\nbackends = [\"{a}\"]\ntls = true\nsni = \"orders.internal\"\nca_file = \"{d}/ca.pem\"\nretries = 0\n\
         [upstreams.roots]\nbackends = [\"{a}\"]\ntls = true\nsni = \"orders.internal\"\nretries = 0\n\
         [upstreams.wrong_name]\nbackends = [\"{a}\"]\ntls = true\nsni = \"billing.internal\"\nca_file = \"{d}/ca.pem\"\nretries = 0\n\
         [routes.trusted]\npaths = [\"/trusted\"]\nupstream = \"trusted\"\n\
         [routes.roots]\npaths = [\"/roots\"]\nupstream = \"roots\"\n\
         [routes.wrong]\npaths = [\"/wrong\"]\nupstream = \"wrong_name\"\n",
        a = up.addr
    ));
    let r = raw(gw.addr, &get("/trusted/x", "")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-upstream"), Some("secure"));
    assert_eq!(
        up.last().unwrap().header("host"),
        Some("orders.internal"),
        "Host is the SNI name"
    );
    for path in ["/roots", "/wrong"] {
        let r = raw(gw.addr, &get(path, "")).await;
        assert_eq!(
            r.status, 502,
            "{path}: an unverifiable upstream was trusted"
        );
        assert_eq!(r.json()["error"], "bad_gateway");
    }
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_tls_connection_that_sends_nothing_is_closed_at_header_timeout() {
    let certs = tempfile::tempdir().unwrap();
    cert(certs.path(), "a", &["a.test"]);
    let up = Upstream::start("a").await;
    let d = certs.path().display();
    let gw = gateway(&format!(
        "[server.limits]\nheader_timeout = \"1s\"\n\
         [[server.tls]]\nlisten = \"127.0.0.1:0\"\n\
         certs = [{{ cert = \"{d}/a.pem\", key = \"{d}/a.key\" }}]\n\
         {}[routes.r]\npaths = [\"/\"]\nupstream = \"a\"\n",
        upstream_table("a", &[up.addr])
    ));
    let tls = gw.tls.expect("tls listener");
    let started = std::time::Instant::now();
    // no ClientHello: the connection is closed as a plain one that sends nothing is
    let mut s = tokio::net::TcpStream::connect(tls).await.unwrap();
    let got = read_until_closed(&mut s, std::time::Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(got.is_empty(), "{got:?}");
    assert!(
        took >= std::time::Duration::from_millis(900),
        "closed after {took:?}, before header_timeout"
    );
}
