//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`) and the regression
//! tests that replay every input kept in `fuzz/regressions/TARGET/`. Each function takes
//! arbitrary bytes, must never panic or hang, and asserts the invariants of what it
//! exercises.

use std::path::Path;

use crate::config::limits::Limits;
use crate::config::Config;
use crate::guard::scanner::{HeadScanner, Scan};
use crate::policy::Registry;
use crate::router::path::normalize;

/// The config loader: any text gives a config or errors, each with a position.
pub fn config(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(
        src,
        "fuzz.toml",
        Path::new("/nonexistent-fuzz-dir"),
        &Registry::with_builtins(),
    ) {
        Ok(c) => {
            let _ = c.summary();
        }
        Err(errors) => {
            assert!(!errors.errors().is_empty());
            let _ = errors.to_string();
        }
    }
}

/// The path normaliser: results are canonical and normalising is idempotent.
pub fn path(data: &[u8]) {
    let Ok(p) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = normalize(p) {
        assert!(n.starts_with('/'), "{n}");
        assert!(!n.contains("//"), "{n}");
        assert!(n.split('/').all(|s| s != "." && s != ".."), "{n}");
        let again = normalize(&n).expect("a normalised path normalises");
        assert_eq!(again, n, "not idempotent");
    }
}

/// The router: a lookup of any normalised path and host terminates and agrees with
/// the lookup of the path normalised again.
pub fn router(data: &[u8]) {
    use crate::router::{HostMatch, PathPattern, RequestFacts, RouteSpec, Router};
    static ROUTER: std::sync::OnceLock<Router> = std::sync::OnceLock::new();
    let r = ROUTER.get_or_init(|| {
        let specs = ["/a", "/a/b", "/{id}/c", "=/x", "/api/v1/{svc}/items", "/"]
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut spec = RouteSpec {
                    paths: vec![PathPattern::parse(p).expect("pattern")],
                    ..Default::default()
                };
                if i % 2 == 0 {
                    spec.hosts = HostMatch::new(["a.example", "*.example.org"]);
                }
                spec
            })
            .collect();
        Router::new(specs)
    });
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (host, path) = s.split_once('\n').unwrap_or(("", s));
    let Ok(n) = normalize(path) else {
        return;
    };
    let headers = http::HeaderMap::new();
    let facts = |p| RequestFacts {
        method: &http::Method::GET,
        host: (!host.is_empty()).then_some(host),
        headers: &headers,
        path: p,
    };
    let first = format!("{:?}", r.lookup(&facts(&n)));
    let again = normalize(&n).expect("idempotent");
    assert_eq!(first, format!("{:?}", r.lookup(&facts(&again))));
}

/// The credential parsers: Basic credentials, API keys in query strings, JWTs.
pub fn auth(data: &[u8]) {
    use crate::policies::jwt_auth::{JwtAuth, JwtAuthConfig};
    use crate::policy::{BuildCtx, PolicyConfig};
    static JWT: std::sync::OnceLock<JwtAuth> = std::sync::OnceLock::new();
    let _ = crate::policies::basic_auth::parse_basic(data);
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::policies::key_auth::query_param(Some(s), "apikey");
    let jwt = JWT.get_or_init(|| {
        let c: JwtAuthConfig = toml::from_str(
            "algorithms = [\"HS256\"]\nsecret = \"fuzz-secret-that-is-at-least-32-bytes!!\"\n",
        )
        .expect("config");
        c.build(&BuildCtx::new(Path::new("."), "fuzz"))
            .expect("policy")
    });
    assert!(jwt
        .verify(s, &crate::consumer::Consumers::default())
        .is_err());
}

/// The request-head scanner, fed in chunks split at the first byte's value.
pub fn head(data: &[u8]) {
    let limits = Limits {
        max_header_bytes: 4096,
        max_headers: 20,
        max_uri_bytes: 1024,
        ..Limits::default()
    };
    let split = data.first().map_or(1, |b| usize::from(*b).max(1));
    let mut s = HeadScanner::new(limits);
    let mut fed = 0;
    for chunk in data.chunks(split) {
        match s.feed(chunk) {
            Scan::Partial => fed += chunk.len(),
            Scan::Complete(end) => {
                assert!(end <= chunk.len());
                assert!(fed + end <= limits.max_header_bytes + 1);
                return;
            }
            Scan::Refuse(_) => return,
        }
        assert!(
            fed <= limits.max_header_bytes,
            "accepted {fed} bytes of head"
        );
    }
}

/// What identity providers and authorization services answer: a JWKS document, an
/// introspection answer, forward-auth and OPA answers, a client certificate. Whatever
/// the bytes, no panic; at most 100 keys are kept.
pub fn identity(data: &[u8]) {
    use crate::policies::ext_authz::{ExtAuthz, ExtAuthzConfig};
    use crate::policies::oauth2_introspection::{Introspection, IntrospectionConfig};
    use crate::policy::{BuildCtx, PolicyConfig};
    static INTROSPECTION: std::sync::OnceLock<Introspection> = std::sync::OnceLock::new();
    static OPA: std::sync::OnceLock<ExtAuthz> = std::sync::OnceLock::new();
    static FORWARD: std::sync::OnceLock<ExtAuthz> = std::sync::OnceLock::new();
    let cx = || BuildCtx::new(Path::new("."), "fuzz");
    let introspection = INTROSPECTION.get_or_init(|| {
        std::env::set_var("TOLLGATE_FUZZ_SECRET", "secret");
        let c: IntrospectionConfig = toml::from_str(
            "endpoint = \"http://127.0.0.1:1/i\"\nclient_id = \"gw\"\n\
             client_secret_env = \"TOLLGATE_FUZZ_SECRET\"\n\
             claims_to_headers = { sub = \"x-user\", roles = \"x-roles\" }\naudience = [\"a\"]\n",
        )
        .expect("config");
        c.build(&cx()).expect("policy")
    });
    let authz = |opa: bool| {
        let mode = if opa { "opa" } else { "forward" };
        let c: ExtAuthzConfig = toml::from_str(&format!(
            "url = \"http://127.0.0.1:1/a\"\nmode = \"{mode}\"\n\
             upstream_headers = [\"x-user\"]\nclient_headers = [\"location\"]\n"
        ))
        .expect("config");
        c.build(&cx()).expect("policy")
    };
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) {
        assert!(crate::policies::jwt_auth::usable_jwks_keys(&doc) <= 100);
    }
    let _ = introspection.read_answer(data);
    let _ = OPA.get_or_init(|| authz(true)).read_answer(200, data);
    let status = data.first().map_or(200, |b| 200 + u16::from(*b));
    let _ = FORWARD
        .get_or_init(|| authz(false))
        .read_answer(status, data);
    if let Some(cert) = crate::client_cert::ClientCertificate::from_der(data) {
        assert_eq!(cert.sha256.len(), 64);
        let _ = cert.san_list();
    }
}

/// What the cache and compression read from clients and upstreams: `Accept-Encoding`
/// values, media type patterns, response heads (freshness and storability), query
/// strings and hosts of keys, purge selectors, gzip request bodies. Whatever the bytes,
/// no panic; keyed queries are stable, decoding stays within its caps.
pub fn http_cache(data: &[u8]) {
    use crate::cache::{fresh, key, purge, CacheRules};
    use crate::compress::{decode, negotiate, Algorithm, MediaPattern};
    let text = String::from_utf8_lossy(data);
    if let Some(alg) = negotiate::choose(data.split(|b| *b == b'\n'), &Algorithm::ALL) {
        assert!(Algorithm::ALL.contains(&alg));
    }
    let _ = MediaPattern::parse(&text).map(|p| p.matches(&text));
    let rules = CacheRules::default();
    let mut head = pingora::http::ResponseHeader::build(200, None).expect("head");
    for line in text.lines() {
        if let Some((n, v)) = line.split_once(':') {
            let _ = head.append_header(n.trim().to_string(), v.trim());
        }
    }
    let _ = fresh::entry(&rules, &head, 1 << 20, std::time::SystemTime::now());
    let q = key::keyed_query(&text, None);
    assert_eq!(
        key::keyed_query(&q, None),
        q,
        "a keyed query keys to itself"
    );
    let _ = key::keyed_host(data, data.first().is_some_and(|b| b & 1 == 1));
    let _ = purge::Purge::parse(&text, |r| (r == "r").then_some(&rules));
    if let Ok(out) = decode::gunzip(data, 1 << 20, 100) {
        assert!(out.len() <= 1 << 20);
    }
}

/// What the body policies read: JSON and XML bodies, pointers, templates. Whatever the
/// bytes, no panic and no deep recursion; a body that reads writes back to a text that
/// reads to the same value and writes the same; the XML written for any JSON value is
/// well-formed and reads back; edits through pointers taken from the input stay within
/// the document's depth bound.
pub fn json_body(data: &[u8]) {
    use crate::json::{parse, Edit, Edits, Pointer};
    if let Ok(doc) = crate::xml::to_json(data, 64) {
        parse(&doc.write(), 65).expect("XML read as JSON is valid JSON");
    }
    if let Ok(v) = parse(data, 64) {
        if let Ok(xml) = crate::xml::from_json(&v, "r", 1 << 20) {
            crate::xml::to_json(&xml, 1 << 12).expect("the XML written reads back");
        }
        let out = v.write();
        let again = parse(&out, 64).expect("the writer's output reads");
        assert_eq!(again, v, "a written value reads back the same");
        assert_eq!(again.write(), out);
        let text = String::from_utf8_lossy(data);
        let pointers: Vec<Pointer> = text
            .split(['"', ','])
            .filter_map(|p| Pointer::parse(p).ok())
            .take(8)
            .collect();
        if let Some(first) = pointers.first() {
            let mut doc = v.clone();
            let edits = Edits::new(
                pointers
                    .iter()
                    .skip(1)
                    .map(|p| Edit::Remove(p.clone()))
                    .chain([Edit::Set(first.clone()), Edit::Add(first.clone())]),
            );
            let placed = crate::json::Value::Number("1".into());
            edits.apply(
                &mut doc,
                std::slice::from_ref(&placed),
                std::slice::from_ref(&placed),
            );
            assert!(doc.depth() <= v.depth().max(first.segments().len()) + 1);
        }
    }
    let text = String::from_utf8_lossy(data);
    let _ = Pointer::parse(&text);
    let _ = crate::policy::template::Template::parse(&text);
}

#[cfg(test)]
mod tests {
    /// Replays every kept input (crashes found by fuzzing, and seeds) of every target.
    #[test]
    fn kept_fuzz_inputs_still_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 8] = [
            ("config", super::config),
            ("path", super::path),
            ("router", super::router),
            ("auth", super::auth),
            ("head", super::head),
            ("identity", super::identity),
            ("http_cache", super::http_cache),
            ("json_body", super::json_body),
        ];
        let mut n = 0;
        for (name, run) in targets {
            let dir = root.join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                panic!("{} is missing", dir.display());
            };
            for e in entries.flatten() {
                let data = std::fs::read(e.path()).expect("read input");
                run(&data);
                n += 1;
            }
        }
        assert!(n >= 5, "only {n} kept inputs");
    }
}
