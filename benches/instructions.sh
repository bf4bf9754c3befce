#!/usr/bin/env bash
# User-space instructions per request (`just bench-instructions`): raw Pingora (its default
# release build, and with Tollgate's profile), Tollgate's shipped build (release profile
# plus PGO, scripts/build-pgo.sh) with one plain route, with the policies route of `just
# bench-load` (key_auth + local rate_limit + request_headers) and with its 10,000 routes,
# and the plain route on the release build without PGO, each run under callgrind while
# it proxies REQUESTS requests, one at a time, to an nginx upstream. Instruction counts do not move with a noisy host the
# way times do (two runs agree to ~0.2 %), so this is the measure for comparing two
# builds of the request path; the kernel's share (about half of the time per request,
# and the same for both) is not in it. The policies route's count includes SHA-256 in
# software (valgrind hides the CPU's SHA extensions).
#
# With CACHE_SIM=1, callgrind also simulates the L1 caches (32 KiB instruction, 32 KiB
# data, 64-byte lines, no prefetcher): the misses per request are a model of each
# build's cache footprint, the part of the cost that instruction counts leave out. A
# model, not a measurement: a real core prefetches and its L2 catches most of these
# misses. The simulation slows the proxies further, so more work is batched per wake-up
# and the instruction counts come out ~2 % lower than without it: compare counts only
# between runs made the same way.
#
# Prints one line per target and the ratios. Knobs: REQUESTS (2000), CACHE_SIM (0),
# OUT (target/bench-instructions), PGO_BIN (the shipped build to measure; unset: built
# now by scripts/build-pgo.sh, ~25 minutes), BEFORE_BIN (a release build of an earlier
# commit: then only its plain and policies routes are measured against this tree's
# release build, in A B B A order)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REQUESTS=${REQUESTS:-2000}
CACHE_SIM=${CACHE_SIM:-0}
SIM=()
[ "$CACHE_SIM" = 1 ] && SIM=(--cache-sim=yes)
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
# raw Pingora as its users get it: Cargo's default release settings, the system allocator
cargo build --profile fast-release -p tollgate-bin --example raw_pingora \
  --features system-allocator >&2
cp target/fast-release/examples/raw_pingora "$OUT/raw_pingora_default"
# Tollgate's shipped build: the release profile plus PGO (scripts/build-pgo.sh)
if [ -z "${PGO_BIN:-}" ] && [ -z "${BEFORE_BIN:-}" ]; then
  "$ROOT/scripts/build-pgo.sh" >&2
  PGO_BIN=$ROOT/target/pgo/tollgate
fi
TOLLGATE=${PGO_BIN:-}

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
measure() { # NAME CMD...: writes instructions and L1 misses per request to $OUT/NAME.ir
  local name=$1 pid f ir
  shift
  rm -f "$OUT/$name".cg.*
  valgrind --tool=callgrind "${SIM[@]}" --callgrind-out-file="$OUT/$name.cg.%p" "$@" >"$OUT/$name.log" 2>&1 &
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
  grep -q "errors=0" "$OUT/$name.load" || { echo "$name: requests failed: $(cat "$OUT/$name.load")" >&2; exit 1; }
  # events: Ir, then with the simulation Dr Dw I1mr D1mr D1mw ...: instructions, I1
  # misses, D1 misses (reads + writes)
  awk -v n="$REQUESTS" '/^(summary|totals):/ {
      if (NF > 6) printf "%d %d %d\n", $2 / n, $5 / n, ($6 + $7) / n; else printf "%d\n", $2 / n
      exit }' "$f" >"$OUT/$name.ir"
}

# run here, not in a command substitution: the exit trap must see the valgrind pids
if [ -n "${BEFORE_BIN:-}" ]; then
  # before and after only: the plain and policies routes of an earlier release build and
  # of this tree's, in A B B A order (a later run of the same build counts up to ~2 %
  # more: the order evens it out)
  for route in plain policies; do
    cfg=tg.toml HEADERS=()
    [ $route = policies ] && cfg=tg-policies.toml HEADERS=("apikey: $KEY")
    measure "$route-before-1" "$BEFORE_BIN" run --config "$OUT/$cfg"
    measure "$route-after-1" target/release/tollgate run --config "$OUT/$cfg"
    measure "$route-after-2" target/release/tollgate run --config "$OUT/$cfg"
    measure "$route-before-2" "$BEFORE_BIN" run --config "$OUT/$cfg"
  done
  python3 - "$OUT" "$BEFORE_BIN" <<'PY'
import sys
out, before = sys.argv[1], sys.argv[2]
ir = lambda n: int(open(f"{out}/{n}.ir").read().split()[0])
print(f"instructions per request, this tree's release build against {before} (A B B A):")
for route in ["plain", "policies"]:
    b = [ir(f"{route}-before-{i}") for i in (1, 2)]
    a = [ir(f"{route}-after-{i}") for i in (1, 2)]
    print(f"  {route:9} before {b[0]:,} {b[1]:,}  after {a[0]:,} {a[1]:,}  "
          f"after / before = {sum(a) / sum(b):.4f}")
PY
  exit 0
fi
measure raw-default "$OUT/raw_pingora_default" 127.0.0.1:$PORT 127.0.0.1:$UPSTREAM_PORT
measure raw-same target/release/examples/raw_pingora 127.0.0.1:$PORT 127.0.0.1:$UPSTREAM_PORT
measure tg-plain "$TOLLGATE" run --config "$OUT/tg.toml"
measure tg-release target/release/tollgate run --config "$OUT/tg.toml"
HEADERS=("apikey: $KEY")
measure tg-policies "$TOLLGATE" run --config "$OUT/tg-policies.toml"
HEADERS=()
REQ_PATH=/svc5001/items/42/detail # a parameter route among 10,000 (benches/routes.py)
measure tg-10k "$TOLLGATE" run --config "$OUT/tg-10k.toml"
python3 - "$OUT" <<'PY'
import sys
out = sys.argv[1]
names = {
    "raw-default": "raw Pingora (default build)",
    "raw-same": "raw Pingora (Tollgate's profile)",
    "tg-plain": "Tollgate, one plain route",
    "tg-release": "  the same without PGO",
    "tg-policies": "Tollgate, policies route",
    "tg-10k": "Tollgate, 10,000 routes",
}
r = {n: [int(x) for x in open(f"{out}/{n}.ir").read().split()] for n in names}
sim = all(len(v) == 3 for v in r.values())
heads = ["instructions", "I1 misses", "D1 misses"] if sim else ["instructions"]
print(f"{'per request':34}" + "".join(f" {h:>12}" for h in heads))
for n, label in names.items():
    print(f"{label:34}" + "".join(f" {x:12,}" for x in r[n]))
def ratios(a, b):
    return " / ".join(f"{x / y:.3f}" for x, y in zip(r[a], r[b]))
print("ratios (" + " / ".join(heads) + "):")
print(f"  one plain route / raw default:  {ratios('tg-plain', 'raw-default')}")
print(f"  one plain route / raw same:     {ratios('tg-plain', 'raw-same')}")
print(f"  without PGO / raw default:      {ratios('tg-release', 'raw-default')}")
print(f"  policies route / raw default:   {ratios('tg-policies', 'raw-default')}")
print(f"  10,000 routes / one route:      {ratios('tg-10k', 'tg-plain')}")
PY
echo "per-function counts: callgrind_annotate $OUT/<name>.cg.<pid>.1" >&2
