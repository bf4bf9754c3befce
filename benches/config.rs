//! What a reload costs: reading, validating and compiling a configuration of 10,000
//! routes (mixed prefixes, `{param}` segments, exact paths, hosts), with and without
//! 100,000 consumers. The swap itself is one pointer store; this is the rest of it.
//!
//! Run with `cargo bench -p tollgate --bench config`.

// criterion_group! generates an undocumented public function
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tollgate::policy::Registry;
use tollgate::Config;

fn config(routes: usize, consumers: usize) -> String {
    let mut s = String::from("[upstreams.u]\nbackends = [\"127.0.0.1:9001\"]\n");
    for i in 0..routes {
        let path = match i % 4 {
            0 => format!("/svc{i}/items"),
            1 => format!("/svc{i}/items/{{id}}/detail"),
            2 => format!("=/svc{i}/health"),
            _ => format!("/api/v{}/svc{i}", i % 7),
        };
        s.push_str(&format!(
            "[routes.r{i}]\npaths = [\"{path}\"]\nupstream = \"u\"\n"
        ));
        if i % 5 == 4 {
            s.push_str(&format!(
                "hosts = [\"svc{i}.example.com\", \"*.svc{i}.example.net\"]\n"
            ));
        }
        if i % 10 == 0 {
            s.push_str(&format!(
                "[routes.r{i}.policies.key_auth]\n[routes.r{i}.policies.rate_limit]\nrequests = 100\n"
            ));
        }
    }
    for i in 0..consumers {
        s.push_str(&format!(
            "[consumers.c{i}]\napi_keys = [\"key-{i:08}-{:07}\"]\n",
            i * 7919 % 1_000_003
        ));
    }
    s
}

fn bench_compile(c: &mut Criterion) {
    let registry = Registry::with_builtins();
    let mut group = c.benchmark_group("config_compile");
    group.sample_size(10);
    for (routes, consumers) in [(10, 0), (1_000, 0), (10_000, 0), (10_000, 100_000)] {
        let text = config(routes, consumers);
        group.bench_with_input(
            BenchmarkId::new("routes_consumers", format!("{routes}_{consumers}")),
            &text,
            |b, text| {
                b.iter(|| {
                    let config = Config::parse(text, "bench.toml", Path::new("."), &registry)
                        .expect("valid config");
                    black_box(config)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_compile);
criterion_main!(benches);
