#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + end-to-end tests, doc tests, and
# `tollgate check` over every bundled example config.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "== tollgate check examples/*.toml"
cargo build --locked --quiet -p tollgate-bin
for f in examples/*.toml; do "${CARGO_TARGET_DIR:-target}/debug/tollgate" check --config "$f"; done
echo "== cargo test"
cargo test --workspace --locked
