#!/usr/bin/env bash
# Starts a demo upstream on 127.0.0.1:9001, a demo OpenID Connect provider on
# 127.0.0.1:9002 and the gateway on examples/quickstart.toml (proxy on 127.0.0.1:8080,
# admin on 127.0.0.1:9901). Ctrl-C stops them.
#
#   curl -i localhost:8080/hello/world
#   curl -i localhost:8080/api/orders/7
#   curl -s localhost:9901/metrics | grep tollgate_requests_total
#   curl -i -H "Authorization: Bearer $(curl -s localhost:9002/token)" localhost:8080/me
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# fast-release: optimised, but without the shipped build's fat LTO (minutes of linking
# on a small machine); `cargo build --release` is the build to deploy and measure
cargo build --locked --profile fast-release -p tollgate-bin
cargo build --locked --profile fast-release -p tollgate-tests --example demo_upstream
./target/fast-release/examples/demo_upstream 127.0.0.1:9001 demo 127.0.0.1:9002 &
demo=$!
trap 'kill $demo 2>/dev/null || true' EXIT
echo "gateway on http://127.0.0.1:8080 (try: curl -i localhost:8080/hello/world)" >&2
./target/fast-release/tollgate run --config examples/quickstart.toml
