#!/usr/bin/env bash
# User-space instructions per request (`just bench-instructions`): raw Pingora (Tollgate's
# profile), Tollgate with one plain route, with the policies route of `just bench-load`
# (key_auth + local rate_limit + request_headers) and with its 10,000 routes, each run
# under callgrind while it proxies REQUESTS requests, one at a time, to an nginx upstream.
# Instruction counts do not move with a noisy host the way times do (two runs agree to
# ~0.2 %), so this is the measure for comparing two builds of the request path; the
# kernel's share (about half of the time per request, and the same for both) is not in
# it. The policies route's count includes SHA-256 in software (valgrind hides the CPU's
# SHA extensions).
#
# Prints one line per target and the ratios. Knobs: REQUESTS (2000), OUT (target/bench-instructions)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REQUESTS=${REQUESTS:-2000}
OUT=${OUT:-$ROOT/target/bench-instructions}
UPSTREAM_PORT=18580
PORT=18581
mkdir -p "$OUT"

. "$ROOT/benches/common.sh"
if ! need valgrind || ! need nginx || ! need cmake; then
  echo "installing valgrind, nginx-light, cmake" >&2
  install_packages valgrind nginx-light cmake
fi
cd "$ROOT"
cargo build --release -p tollgate-bin --bin tollgate --example raw_pingora --example open_loop >&2

PIDS=()
trap cleanup EXIT
start_upstream $UPSTREAM_PORT
cat >"$OUT/tg.toml" <<EOF
[server]
listen = ["127.0.0.1:$PORT"]
threads = 1
access_log = "off"
pid_file = "$OUT/tg.pid"
upgrade_sock = "$OUT/tg.sock"

[upstreams.u]
backends = ["127.0.0.1:$UPSTREAM_PORT"]

[routes.r]
paths = ["/"]
upstream = "u"
EOF
KEY=bench-key-0123456789abcdef
cp "$OUT/tg.toml" "$OUT/tg-policies.toml"
cat >>"$OUT/tg-policies.toml" <<EOF
[routes.r.policies.key_auth]
[routes.r.policies.rate_limit]
requests = 100000000
by = "consumer"
[routes.r.policies.request_headers]
set = { "x-env" = "bench" }
add = { "x-via" = "tollgate" }

[consumers.bench]
api_keys = ["$KEY"]
EOF

{ sed '/^\[routes.r\]/,$d' "$OUT/tg.toml"; python3 "$ROOT/benches/routes.py" 10000; } >"$OUT/tg-10k.toml"

HEADERS=()      # extra request headers for the target being measured
REQ_PATH=/      # and its request path
measure() { # NAME CMD...: writes instructions per request to $OUT/NAME.ir
  local name=$1 pid f ir
  shift
  rm -f "$OUT/$name".cg.*
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.cg.%p" "$@" >"$OUT/$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port $PORT 60 # valgrind starts slowly
  # warm up (connections, pools, lazily built state), then count only the measured run
  target/release/examples/open_loop 127.0.0.1:$PORT "$REQ_PATH" 100 2 4 "${HEADERS[@]}" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  target/release/examples/open_loop 127.0.0.1:$PORT "$REQ_PATH" 200 "$(python3 -c "print($REQUESTS / 200)")" 4 \
    "${HEADERS[@]}" >"$OUT/$name.load"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do sleep 0.1; done
  f=$(ls "$OUT/$name".cg.*.1 | head -1)
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$f")
  grep -q "errors=0" "$OUT/$name.load" || { echo "$name: requests failed: $(cat "$OUT/$name.load")" >&2; exit 1; }
  echo $((ir / REQUESTS)) >"$OUT/$name.ir"
}

# run here, not in a command substitution: the exit trap must see the valgrind pids
measure raw-same target/release/examples/raw_pingora 127.0.0.1:$PORT 127.0.0.1:$UPSTREAM_PORT
measure tg-plain target/release/tollgate run --config "$OUT/tg.toml"
HEADERS=("apikey: $KEY")
measure tg-policies target/release/tollgate run --config "$OUT/tg-policies.toml"
HEADERS=()
REQ_PATH=/svc5001/items/42/detail # a parameter route among 10,000 (benches/routes.py)
measure tg-10k target/release/tollgate run --config "$OUT/tg-10k.toml"
raw=$(cat "$OUT/raw-same.ir")
tg=$(cat "$OUT/tg-plain.ir")
pol=$(cat "$OUT/tg-policies.ir")
many=$(cat "$OUT/tg-10k.ir")
echo "raw Pingora (Tollgate's profile): $raw instructions/request"
echo "Tollgate, one plain route:        $tg instructions/request"
echo "Tollgate, policies route:         $pol instructions/request"
echo "Tollgate, 10,000 routes:          $many instructions/request"
python3 -c "print(f'Tollgate / raw: {$tg / $raw:.3f} (+{$tg - $raw} per request); policies / raw: {$pol / $raw:.3f}; 10,000 routes / one: {$many / $tg:.3f}')"
echo "per-function counts: callgrind_annotate $OUT/<name>.cg.<pid>.1" >&2
