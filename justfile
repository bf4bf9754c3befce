# Recipes mirror CI; `just ci` is exactly what CI runs.

default: ci

# Everything CI runs: fmt, clippy, docs, example checks, all tests.
ci:
    ./scripts/test.sh

# Demo upstream + gateway on examples/quickstart.toml.
quickstart:
    ./scripts/quickstart.sh

fmt:
    cargo fmt --all

clippy:
    cargo clippy --workspace --all-targets -- -D warnings

test:
    cargo test --workspace

# The production binary: the release profile plus profile-guided optimisation, trained
# on loopback traffic (two full builds, ~25 minutes on 2 cores) -> target/pgo/tollgate.
build-pgo:
    ./scripts/build-pgo.sh

# Whole-gateway load test: Tollgate beside raw Pingora and nginx (loopback, interleaved
# rounds; closed loop with wrk one target at a time, then all targets flat out sharing
# the proxy core, then all at once in open loop at a fixed rate with benches/open_loop.rs);
# writes the tables to docs/benchmarks.md. Measures the shipped build (build-pgo, built
# first unless PGO_BIN names one) beside the release build without PGO. ROUNDS,
# DURATION, CONNS, SHARED_CONNS, OPEN_LOAD tune it.
bench-load:
    ./benches/load.sh

# A cache hit through Tollgate beside a cache hit through nginx's proxy_cache (and both
# without a cache), interleaved rounds; ROUNDS, DURATION, CONNS, TOLLGATE_BIN tune it.
bench-cache:
    ./benches/cache_hit.sh

# User-space instructions per request, raw Pingora (default build and Tollgate's profile)
# vs Tollgate, under callgrind: the noise-free measure for comparing two builds of the
# request path. REQUESTS tunes it; CACHE_SIM=1 adds simulated L1 misses per request;
# PGO_BIN names an existing shipped build (else build-pgo runs first).
bench-instructions:
    ./benches/instructions.sh

# Criterion micro-benchmarks (route matching, …).
bench:
    cargo bench -p tollgate --features test-util

# Throughput (MB/s) of request_body and validate on a 1 KiB and a 100 KiB JSON body.
bench-transform:
    cargo bench -p tollgate --features test-util --bench transform

check-examples:
    cargo build -p tollgate-bin
    for f in examples/*.toml; do ./target/debug/tollgate check --config "$f"; done

# Every fuzz target for a bounded time (FUZZ_SECONDS, default 60 s each); crash
# inputs are kept in fuzz/regressions/ and replayed by `cargo test` from then on.
fuzz:
    ./scripts/fuzz.sh
