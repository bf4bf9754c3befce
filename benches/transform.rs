//! Throughput of the body policies on a 1 KiB and a 100 KiB JSON body (transform.md):
//! `request_body` (read, parse under the strict rules, keep/remove/rename/set/add, write)
//! and `validate` (read, parse, check against a compiled JSON Schema), each through the
//! policy's real hooks on a Pingora session over an in-memory stream
//! (`tollgate::testing`). Criterion reports MB/s.
//!
//! Run with `cargo bench -p tollgate --features test-util --bench transform`
//! (`just bench-transform`).

// criterion_group! generates an undocumented public function
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tollgate::policies::json_body::RequestBodyConfig;
use tollgate::policies::validate::ValidateConfig;
use tollgate::testing::{PolicyTest, TestRequest};

/// An order of about `size` bytes: `n` items of a few fields each.
fn order(size: usize) -> String {
    let item = r#"{"sku":"sku-00000","qty":3,"price":12.50,"internal":{"cost":7.1,"bin":"A-17"},"tags":["x","y"]}"#;
    let n = (size.saturating_sub(120) / (item.len() + 1)).max(1);
    let items = vec![item; n].join(",");
    format!(
        r#"{{"id":12345678901234567890,"customer":{{"id":7,"name":"Ada"}},"debug":true,"items":[{items}]}}"#
    )
}

const TRANSFORM: &str = r#"
remove = ["/debug", "/items/*/internal"]
rename = { "/customer/id" = "/customer_id" }
set = { "/meta/source" = "gateway", "/meta/request" = "${request_id}" }
add = { "/tags" = [] }
max_body = "1MiB"
"#;

const VALIDATE: &str = r#"
[methods.POST.body_schema]
type = "object"
required = ["id", "items"]
properties.id = { type = "integer" }
properties.customer = { type = "object", required = ["id"] }
properties.items = { type = "array", maxItems = 10000, items = { type = "object", required = ["sku", "qty"], properties = { sku = { type = "string", pattern = "^sku-[0-9]+$" }, qty = { type = "integer", minimum = 1 }, price = { type = "number", maximum = 1000 } } } }
"#;

fn bench_bodies(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let transform = PolicyTest::from_toml::<RequestBodyConfig>("request_body", TRANSFORM)
        .expect("request_body builds");
    let validate =
        PolicyTest::from_toml::<ValidateConfig>("validate", VALIDATE).expect("validate builds");
    let mut group = c.benchmark_group("body_policies");
    for size in [1 << 10, 100 << 10] {
        let body = order(size);
        let request = || {
            TestRequest::post("/orders", body.clone()).header("content-type", "application/json")
        };
        // both pass the body on: a refusal would measure the wrong path
        let out = rt.block_on(transform.run(request())).expect("runs");
        assert!(out.answer.is_none(), "request_body refused the bench body");
        let out = rt.block_on(validate.run(request())).expect("runs");
        assert!(out.answer.is_none(), "the bench body fails its schema");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("request_body", size), &size, |b, _| {
            b.iter(|| rt.block_on(transform.run(request())).expect("runs"));
        });
        group.bench_with_input(BenchmarkId::new("validate", size), &size, |b, _| {
            b.iter(|| rt.block_on(validate.run(request())).expect("runs"));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_bodies);
criterion_main!(benches);
