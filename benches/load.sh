#!/usr/bin/env bash
# Whole-gateway load benchmark (`just bench-load`): Tollgate beside raw Pingora (and
# nginx when installed), on loopback, interleaved over several rounds, so the ratios
# survive a noisy machine. Writes the table to docs/benchmarks.md (between the
# bench-load markers) and to $OUT/summary.md.
#
#   wrk (core 1) -> proxy under test (core 0, one worker thread) -> nginx upstream (core 1)
#
# Targets:
#   raw-default   raw Pingora (benches/raw_pingora.rs), Cargo's default release settings
#                 and the system allocator: the engine as most people build it
#   raw-same      the same proxy with Tollgate's release profile (fat LTO, mimalloc):
#                 the engine's own ceiling
#   nginx         nginx as a reverse proxy, when installed
#   tg-plain      Tollgate, one plain route, its shipped build (scripts/build-pgo.sh:
#                 the release profile plus profile-guided optimisation)
#   tg-release    the same, the release profile without PGO (`cargo build --release`)
#   tg-policies   Tollgate (shipped build), key_auth + local rate_limit (never refusing)
#                 + request_headers
#   tg-10k        Tollgate (shipped build), 10,000 routes (prefixes, params, hosts),
#                 hitting one of them
# Then, shared core: all targets flat out at once (wrk each, SHARED_CONNS connections),
# the scheduler splitting the proxy core between them, so that their CPU per request is
# compared over the same seconds. Then, open loop (benches/open_loop.rs): all targets
# loaded at once, their requests interleaved (a request due every 1 / (targets x RATE)
# seconds, to each target in turn), so that a stall of the host lands on all of them
# alike; latency counted from each request's due time. In all the proxy core carries
# OPEN_LOAD (0.2) x raw-default's median req/s from the closed-loop rounds. (Not 0.5:
# served one at a time, without the batching of 50 busy connections, a request costs
# every Pingora build here 2-3x the CPU, and half the closed-loop maximum overloads
# them.) Then: RSS of Tollgate started with 10,000 routes and 100,000 consumers.
#
# All targets run side by side (each on its own port, all pinned to the proxy core, idle
# but for the one under load) and are loaded in turn, order rotating each round: the
# runs of one round are seconds apart, so a noisy host moves all of them together and
# the per-round ratios stay meaningful. Short runs in many rounds beat long runs in few.
#
# Knobs: ROUNDS (10) DURATION (3 s) WARMUP (2 s, once per target) CONNS (50)
# SHARED_CONNS (16, per target) OPEN_LOAD (0.2) OUT (target/bench-load) PGO_BIN (the
# shipped build to measure; unset: built now by scripts/build-pgo.sh, ~25 minutes)
# Bounded: about ROUNDS x (3 x targets + 1) x (DURATION + 1) seconds after the builds.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-10}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
SHARED_CONNS=${SHARED_CONNS:-16}
OPEN_LOAD=${OPEN_LOAD:-0.2}
OUT=${OUT:-$ROOT/target/bench-load}
PROXY_CPU=0
LOAD_CPU=1
UPSTREAM_PORT=18480
MEMORY_PORT=18489
mkdir -p "$OUT"
rm -f "$OUT"/*.csv

. "$ROOT/benches/common.sh"
if ! need wrk || ! need nginx || ! need cmake; then
  echo "installing wrk, nginx-light, cmake" >&2
  install_packages wrk nginx-light cmake
fi
[ "$(nproc)" -ge 2 ] || { PROXY_CPU=0; LOAD_CPU=0; echo "one core: pinning everything to it" >&2; }

echo "building (release: fat LTO + mimalloc; raw-default: fast-release + system allocator)" >&2
cd "$ROOT"
cargo build --release -p tollgate-bin --bin tollgate --example raw_pingora \
  --example open_loop >&2
cp target/release/examples/raw_pingora target/release/examples/open_loop "$OUT/"
cp target/release/tollgate "$OUT/tollgate-release"
mv "$OUT/raw_pingora" "$OUT/raw_pingora_same"
if [ -z "${PGO_BIN:-}" ]; then
  echo "building the shipped binary (scripts/build-pgo.sh)" >&2
  "$ROOT/scripts/build-pgo.sh" >&2
  PGO_BIN=$ROOT/target/pgo/tollgate
fi
cp "$PGO_BIN" "$OUT/tollgate"
cargo build --profile fast-release -p tollgate-bin --example raw_pingora \
  --features system-allocator >&2
cp target/fast-release/examples/raw_pingora "$OUT/raw_pingora_default"

PIDS=()
trap cleanup EXIT

# --- the upstream: nginx answering "ok" on core 1 -------------------------------
start_upstream $UPSTREAM_PORT $LOAD_CPU

# --- configurations ---------------------------------------------------------------
KEY=bench-key-0123456789abcdef
port_of() { # TARGET -> its port
  case $1 in
    raw-default) echo 18481 ;; raw-same) echo 18482 ;; nginx) echo 18483 ;;
    tg-plain) echo 18484 ;; tg-policies) echo 18485 ;; tg-10k) echo 18486 ;;
    tg-release) echo 18487 ;;
  esac
}
python3 - "$OUT" "$UPSTREAM_PORT" "$KEY" "$(port_of tg-plain)" "$(port_of tg-policies)" \
  "$(port_of tg-10k)" "$MEMORY_PORT" "$(port_of tg-release)" "$ROOT/benches" <<'PY'
import sys
sys.path.insert(0, sys.argv[9])
from routes import routes
out, up, key = sys.argv[1:4]
ports = dict(zip(["tg-plain", "tg-policies", "tg-10k", "tg-memory", "tg-release"], sys.argv[4:9]))
def server(name):
    return f'''[server]
listen = ["127.0.0.1:{ports[name]}"]
threads = 1
access_log = "off"
pid_file = "{out}/{name}.pid"
upgrade_sock = "{out}/{name}.sock"

[upstreams.u]
backends = ["127.0.0.1:{up}"]
'''
for name in ["tg-plain", "tg-release"]:
    open(f"{out}/{name}.toml", "w").write(server(name) + '[routes.r]\npaths = ["/"]\nupstream = "u"\n')
open(f"{out}/tg-policies.toml", "w").write(server("tg-policies") + f'''
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.policies.key_auth]
[routes.r.policies.rate_limit]
requests = 100000000
window = "1s"
by = "consumer"
[routes.r.policies.request_headers]
set = {{ "x-env" = "bench" }}
add = {{ "x-via" = "tollgate" }}

[consumers.bench]
api_keys = ["{key}"]
''')
open(f"{out}/tg-10k.toml", "w").write(server("tg-10k") + routes(10000))
consumers = "".join(f'[consumers.c{i}]\napi_keys = ["key-{i:08d}-{i * 7919 % 1000003:07d}"]\n'
                    for i in range(100000))
open(f"{out}/tg-memory.toml", "w").write(server("tg-memory") + routes(10000) + "\n" + consumers)
PY
cat >"$OUT/nginx-proxy.conf" <<EOF
worker_processes 1;
daemon off;
pid $OUT/nginx-proxy.pid;
error_log $OUT/nginx-proxy.err;
events { worker_connections 4096; }
http {
  access_log off;
  upstream u { server 127.0.0.1:$UPSTREAM_PORT; keepalive 64; }
  server { listen 127.0.0.1:$(port_of nginx); keepalive_requests 1000000;
           location / { proxy_pass http://u; proxy_http_version 1.1;
                        proxy_set_header Connection ""; } }
}
EOF

TARGETS=(raw-default raw-same tg-plain tg-release tg-policies tg-10k)
need nginx && TARGETS+=(nginx)

start() { # TARGET -> pid (of the proxy itself: each branch execs it)
  case $1 in
    raw-default) exec taskset -c $PROXY_CPU "$OUT/raw_pingora_default" 127.0.0.1:$(port_of raw-default) 127.0.0.1:$UPSTREAM_PORT ;;
    raw-same) exec taskset -c $PROXY_CPU "$OUT/raw_pingora_same" 127.0.0.1:$(port_of raw-same) 127.0.0.1:$UPSTREAM_PORT ;;
    nginx) exec taskset -c $PROXY_CPU nginx -c "$OUT/nginx-proxy.conf" ;;
    tg-release) exec taskset -c $PROXY_CPU "$OUT/tollgate-release" run --config "$OUT/$1.toml" ;;
    tg-*) exec taskset -c $PROXY_CPU "$OUT/tollgate" run --config "$OUT/$1.toml" ;;
  esac >"$OUT/$1.log" 2>&1 &
  echo $!
}

request_args() { # TARGET -> sets PORT, REQ_PATH, REQ_HEADERS and ARGS (wrk's headers and URL)
  PORT=$(port_of "$1")
  REQ_HEADERS=()
  # one request for every target: a parameter route among 10,000 (benches/routes.py),
  # which the one-route configs match by their "/" prefix, so that "10,000 routes vs
  # one route" compares the tables, not two request lengths
  REQ_PATH=/svc5001/items/42/detail
  case $1 in
    tg-policies) REQ_HEADERS=("apikey: $KEY") ;;
  esac
  ARGS=()
  for h in "${REQ_HEADERS[@]}"; do ARGS+=(-H "$h"); done
  ARGS+=("http://127.0.0.1:$PORT$REQ_PATH")
}

declare -A PID_OF
for t in "${TARGETS[@]}"; do
  PID_OF[$t]=$(start "$t")
  PIDS+=("${PID_OF[$t]}")
done
for t in "${TARGETS[@]}"; do
  request_args "$t"
  wait_port "$PORT"
  taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${ARGS[@]}" >/dev/null
done

run_target() { # TARGET: run "$@" against it (after the target and its pid)
  local t=$1
  shift
  request_args "$t"
  "$@" "$t" "${PID_OF[$t]}"
}

closed_loop() { # TARGET PID: wrk flat out, one line to runs.csv
  local t=$1 pid=$2 c0 c1
  c0=$(cpu_ticks "$pid")
  taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${ARGS[@]}" \
    >"$OUT/$t-$round.wrk"
  c1=$(cpu_ticks "$pid")
  python3 - "$t" "$round" "$OUT/$t-$round.wrk" "$c0" "$c1" "$(getconf CLK_TCK)" >>"$OUT/runs.csv" <<'PY'
import re, sys
t, rnd, f, c0, c1, hz = sys.argv[1:]
w = open(f).read()
def us(s):
    v, u = re.match(r"([\d.]+)(us|ms|s)", s).groups()
    return float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", w).group(1))
total = int(re.search(r"(\d+) requests in", w).group(1))
# the latency distribution's own lines ("67.50%" in the stats above also ends in "50%")
p50 = us(re.search(r"^\s+50%\s+(\S+)", w, re.M).group(1))
p99 = us(re.search(r"^\s+99%\s+(\S+)", w, re.M).group(1))
errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", w))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", w)
errors += int(non2xx.group(1)) if non2xx else 0
cpu = (int(c1) - int(c0)) / int(hz) * 1e6 / total
print(f"{t},{rnd},{rps:.0f},{p50:.0f},{p99:.0f},{cpu:.1f},{errors}")
PY
  tail -1 "$OUT/runs.csv" >&2
}

open_loop() { # ROUND: every target at $RATE requests/s at once, interleaved; lines to open.csv
  local args=() names=() t h line
  for t in $(rotated "$1"); do
    request_args "$t"
    [ ${#args[@]} -gt 0 ] && args+=(--)
    args+=(127.0.0.1:$PORT "$REQ_PATH")
    [ ${#args[@]} -eq 2 ] && args+=("$RATE" "$OPEN_SECONDS" "$CONNS")
    for h in "${REQ_HEADERS[@]}"; do args+=("$h"); done
    names+=("$t")
  done
  taskset -c $LOAD_CPU "$OUT/open_loop" "${args[@]}" | while read -r line; do
    echo "${names[0]},$1,$RATE,$(echo "$line" | sed -E 's/[a-z0-9_]+=//g; s/ /,/g')" >>"$OUT/open.csv"
    tail -1 "$OUT/open.csv" >&2
    names=("${names[@]:1}")
  done
}

shared_core() { # ROUND: every target flat out at once, sharing the proxy core; lines to shared.csv
  local t wrks=() c0=() i=0 n
  for t in "${TARGETS[@]}"; do c0+=("$(cpu_ticks "${PID_OF[$t]}")"); done
  for t in $(rotated "$1"); do
    request_args "$t"
    taskset -c $LOAD_CPU wrk -t1 -c"$SHARED_CONNS" -d"${DURATION}s" "${ARGS[@]}" >"$OUT/$t-shared.wrk" &
    wrks+=($!)
  done
  wait "${wrks[@]}"
  for t in "${TARGETS[@]}"; do
    n=$(awk '/requests in/ {print $1}' "$OUT/$t-shared.wrk")
    echo "$t,$1,$n,$(python3 -c "print(round(($(cpu_ticks "${PID_OF[$t]}") - ${c0[$i]}) / $(getconf CLK_TCK) * 1e6 / $n, 1))")" \
      >>"$OUT/shared.csv"
    i=$((i + 1))
  done
  tail -${#TARGETS[@]} "$OUT/shared.csv" >&2
}

rotated() { # ROUND -> the targets, order rotated by the round
  local n=${#TARGETS[@]} i
  for i in $(seq 0 $((n - 1))); do echo "${TARGETS[$(((i + $1) % n))]}"; done
}

echo "target,round,rps,p50_us,p99_us,cpu_us_per_req,errors" >"$OUT/runs.csv"
for round in $(seq "$ROUNDS"); do
  for t in $(rotated "$round"); do run_target "$t" closed_loop; done
done

# --- shared core: all targets flat out at once --------------------------------------
# The scheduler splits the proxy core between them, so each one's CPU per request is
# measured over the same seconds as every other's: a host stall or a slow minute
# weighs on all alike. A harsher regime than the runs above (the proxies evict each
# other's caches), but its ratios hold to a few percent where single runs swing by
# tens. The wrk clients and the upstream share the load core.
echo "target,round,requests,cpu_us_per_req" >"$OUT/shared.csv"
for round in $(seq "$ROUNDS"); do shared_core "$round"; done

# --- open loop: all targets at once, each at one fixed rate ---------------------------
# The proxy core carries OPEN_LOAD x raw-default's median req/s in all, shared by the
# targets in turn; a round lasts DURATION x the number of targets, so each target gets
# as many requests as a closed-loop run would have at that rate.
RATE=$(python3 -c "
import csv, statistics
rps = [float(r['rps']) for r in csv.DictReader(open('$OUT/runs.csv')) if r['target'] == 'raw-default']
print(round(statistics.median(rps) * $OPEN_LOAD / ${#TARGETS[@]}))")
OPEN_SECONDS=$((DURATION * ${#TARGETS[@]}))
echo "open loop: $RATE requests/s to each of ${#TARGETS[@]} targets, interleaved" >&2
echo "target,round,rate,sent,done,errors,p50_us,p90_us,p99_us,p999_us,max_us,late_p99_us" >"$OUT/open.csv"
for round in $(seq "$ROUNDS"); do open_loop "$round"; done

for t in "${TARGETS[@]}"; do stop "${PID_OF[$t]}"; done

# --- memory: 10,000 routes and 100,000 consumers -----------------------------------
started=$(date +%s%N)
taskset -c $PROXY_CPU "$OUT/tollgate" run --config "$OUT/tg-memory.toml" >"$OUT/tg-memory.log" 2>&1 &
mpid=$!
disown $mpid
wait_port $MEMORY_PORT
ready_ms=$((($(date +%s%N) - started) / 1000000))
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$mpid/status")
stop "$mpid"

python3 "$ROOT/benches/load_report.py" "$OUT" "$ROOT/docs/benchmarks.md" "$rss_kib" "$ready_ms" \
  "$ROUNDS" "$DURATION" "$CONNS" "$OPEN_LOAD" "$SHARED_CONNS"
