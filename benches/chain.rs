//! The cost of a route's policy chain per request with N no-op policies (N = 0, 1, 4,
//! 16): the dispatch overhead every policy adds, whatever it does. Each iteration runs
//! every hook of the chain once (`request_filter` on a real Pingora session over an
//! in-memory stream, `upstream_request_filter`, `response_filter`, `logging`).
//!
//! Run with `cargo bench -p tollgate --bench chain`.

// criterion_group! generates an undocumented public function
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tokio::io::AsyncWriteExt;
use tollgate::pingora::http::{RequestHeader, ResponseHeader};
use tollgate::policy::{BoxPolicy, Chain, Policy, Stage};
use tollgate::{async_trait, RequestCtx, Session};

/// A policy that does nothing in every hook.
#[derive(Debug)]
struct Noop;

#[async_trait]
impl Policy for Noop {
    fn stage(&self) -> Stage {
        Stage::Transform
    }
}

fn chain(n: usize) -> Chain {
    Chain::new(
        (0..n)
            .map(|i| (Arc::from(format!("noop{i}")), Arc::new(Noop) as BoxPolicy))
            .collect(),
    )
}

fn bench_chain(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut session = rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(4096);
        client
            .write_all(b"GET /orders/7 HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .await
            .expect("write");
        let mut session = Session::new_h1(Box::new(server));
        assert!(session.read_request().await.expect("read"));
        // the client end must outlive the session's use
        std::mem::forget(client);
        session
    });
    let mut group = c.benchmark_group("policy_chain");
    for n in [0, 1, 4, 16] {
        let chain = chain(n);
        group.bench_with_input(BenchmarkId::new("all_hooks", n), &n, |b, _| {
            b.iter(|| {
                let mut cx = RequestCtx::new();
                let flow = rt
                    .block_on(chain.request_filter(&mut session, &mut cx))
                    .expect("request_filter");
                let mut up = RequestHeader::build("GET", b"/orders/7", None).expect("req");
                chain
                    .upstream_request_filter(&mut cx, &mut up)
                    .expect("upstream");
                let mut resp = ResponseHeader::build(200, None).expect("resp");
                chain.response_filter(&mut cx, &mut resp).expect("resp");
                chain.logging(&cx, None);
                black_box(flow)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_chain);
criterion_main!(benches);
