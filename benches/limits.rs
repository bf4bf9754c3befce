//! The local rate limiter: cost of one check, and memory with 1,000,000 distinct keys.
//!
//! Run with `cargo bench -p tollgate --bench limits`. Before the timings it prints the
//! process RSS before and after counting 1,000,000 distinct keys in one window.

// criterion_group! generates an undocumented public function
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tokio::time::Instant;
use tollgate::policies::rate_limit::FixedWindows;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn memory_with_a_million_keys() {
    let before = rss_kib();
    let w = FixedWindows::new(Duration::from_secs(60), Instant::now());
    let after_new = rss_kib();
    let now = Instant::now();
    let mut refused = 0u64;
    let mut count = |from: u64| {
        for i in from..from + 1_000_000 {
            let key = i.to_le_bytes();
            if !w.check(&(7, key.as_slice()), 100, now).allowed {
                refused += 1;
            }
        }
        rss_kib()
    };
    let after_1m = count(0);
    let after_2m = count(1_000_000);
    println!(
        "rate_limit_memory: RSS {before} KiB before, {after_new} KiB after creating the windows \
         (pages not yet touched), {after_1m} KiB after 1,000,000 distinct keys, {after_2m} KiB \
         after 2,000,000 (+{} KiB for the second million); {refused} of them wrongly refused at \
         limit 100",
        after_2m.saturating_sub(after_1m)
    );
    black_box(w);
}

fn bench_check(c: &mut Criterion) {
    memory_with_a_million_keys();
    let w = FixedWindows::new(Duration::from_secs(3600), Instant::now());
    let now = Instant::now();
    let mut i = 0u64;
    c.bench_function("rate_limit_check", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let key = (i % 10_000).to_le_bytes();
            black_box(w.check(&(1, key.as_slice()), u64::MAX, now))
        })
    });
}

/// The sketch `FixedWindows` replaced, for comparison: `pingora-limits`' estimator
/// (four separately seeded hashes, a counter per row reached by division), one of the
/// pair that had to be cleared whole at each window's end.
fn bench_estimator_reference(c: &mut Criterion) {
    let e = pingora_limits::estimator::Estimator::new(4, 65_536);
    let mut i = 0u64;
    c.bench_function("pingora_limits_estimator_incr", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let key = (i % 10_000).to_le_bytes();
            black_box(e.incr((1u64, key.as_slice()), 1))
        })
    });
}

criterion_group!(benches, bench_check, bench_estimator_reference);
criterion_main!(benches);
