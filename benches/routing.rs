//! Route matching cost with 10, 1,000 and 10,000 routes (mixed prefixes, `{param}`
//! segments, exact paths, hosts). The trie should make the cost flat in the count.
//!
//! Run with `cargo bench -p tollgate --bench routing`.

// criterion_group! generates an undocumented public function
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use tollgate::router::{path, HostMatch, PathPattern, RequestFacts, RouteSpec, Router};

fn routes(n: usize) -> Router {
    let specs = (0..n)
        .map(|i| {
            let p = match i % 4 {
                0 => format!("/svc{i}/items"),
                1 => format!("/svc{i}/items/{{id}}/detail"),
                2 => format!("=/svc{i}/health"),
                _ => format!("/api/v{}/svc{i}", i % 3),
            };
            let mut spec = RouteSpec {
                paths: vec![PathPattern::parse(&p).expect("pattern")],
                ..Default::default()
            };
            if i % 5 == 0 {
                spec.hosts =
                    HostMatch::new([format!("h{i}.example.com").as_str(), "*.example.org"]);
            }
            if i % 7 == 0 {
                spec.methods = vec![Method::GET, Method::POST];
            }
            spec
        })
        .collect();
    Router::new(specs)
}

fn bench_match(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("route_match");
    for n in [10usize, 1_000, 10_000] {
        let router = routes(n);
        // a literal prefix hit with extra segments, a {param} hit, and a miss
        let cases = [
            ("prefix_hit", format!("/svc{}/items/42/x", (n / 2) & !3)),
            (
                "param_hit",
                format!("/svc{}/items/42/detail", ((n / 2) & !3) + 1),
            ),
            ("miss", "/nowhere/at/all".to_string()),
        ];
        for (name, p) in &cases {
            group.bench_with_input(BenchmarkId::new(*name, n), p, |b, p| {
                b.iter(|| {
                    let facts = RequestFacts {
                        method: &Method::GET,
                        host: Some("a.example.org"),
                        headers: &headers,
                        path: black_box(p),
                    };
                    black_box(router.lookup(&facts))
                })
            });
        }
    }
    group.finish();
}

fn bench_normalize(c: &mut Criterion) {
    let mut group = c.benchmark_group("path_normalize");
    group.bench_function("plain", |b| {
        b.iter(|| black_box(path::normalize(black_box("/api/orders/7/items")).is_ok()))
    });
    group.bench_function("dot_segments", |b| {
        b.iter(|| black_box(path::normalize(black_box("/public/../api/%2e/orders//7")).is_ok()))
    });
    group.finish();
}

criterion_group!(benches, bench_match, bench_normalize);
criterion_main!(benches);
