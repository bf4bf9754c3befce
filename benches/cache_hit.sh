#!/usr/bin/env bash
# A cache hit through Tollgate beside a cache hit through nginx's proxy_cache, on the
# same machine in one run (cache.md; docs/benchmarks.md "Response cache"):
#
#   wrk (core 1) -> proxy under test (core 0, one worker) -> nginx upstream "ok" (core 1)
#
#   tg-cache     Tollgate, route with `cache` (every request after the first is a HIT)
#   nginx-cache  nginx with proxy_cache (keys zone in memory, entries on /dev/shm), HIT
#   tg-plain     Tollgate, the same route without `cache` (every request goes upstream)
#   nginx        nginx proxying without a cache
#
# Interleaved rounds (the order rotates each round), so drift of the host lands on every
# target alike; reports medians of requests/s and CPU µs per request (user + system
# time of the proxy process and its workers, from /proc), and the ratios.
#
# Knobs: ROUNDS (5) DURATION (3 s) CONNS (50) TOLLGATE_BIN (default: the release build,
# built now) OUT (target/bench-cache).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-3}
CONNS=${CONNS:-50}
OUT=${OUT:-$ROOT/target/bench-cache}
PROXY_CPU=0
LOAD_CPU=1
UPSTREAM_PORT=18580
mkdir -p "$OUT"
. "$ROOT/benches/common.sh"
if ! need wrk || ! need nginx; then
  echo "installing wrk, nginx-light" >&2
  install_packages wrk nginx-light
fi
[ "$(nproc)" -ge 2 ] || { PROXY_CPU=0; LOAD_CPU=0; }
if [ -z "${TOLLGATE_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release -p tollgate-bin --bin tollgate >&2)
  TOLLGATE_BIN=$ROOT/target/release/tollgate
fi
PIDS=()
trap cleanup EXIT
start_upstream $UPSTREAM_PORT $LOAD_CPU

port_of() { case $1 in tg-cache) echo 18581 ;; nginx-cache) echo 18582 ;; tg-plain) echo 18583 ;; nginx) echo 18584 ;; esac; }
for t in tg-cache tg-plain; do
  policy=""
  [ "$t" = tg-cache ] && policy=$'[routes.r.policies.cache]\nttl = "1h"\n'
  cat >"$OUT/$t.toml" <<EOF
[server]
listen = ["127.0.0.1:$(port_of $t)"]
threads = 1
access_log = "off"
pid_file = "$OUT/$t.pid"
upgrade_sock = "$OUT/$t.sock"

[upstreams.u]
backends = ["127.0.0.1:$UPSTREAM_PORT"]

[routes.r]
paths = ["/"]
upstream = "u"
$policy
EOF
done
SHM=/dev/shm
[ -d $SHM ] || SHM=$OUT
rm -rf "$SHM/tollgate-bench-nginx-cache"
cat >"$OUT/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $OUT/nginx.pid;
error_log $OUT/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  proxy_cache_path $SHM/tollgate-bench-nginx-cache keys_zone=c:10m max_size=64m;
  upstream u { server 127.0.0.1:$UPSTREAM_PORT; keepalive 64; }
  server { listen 127.0.0.1:$(port_of nginx-cache); keepalive_requests 1000000;
           location / { proxy_pass http://u; proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        proxy_cache c; proxy_cache_valid 200 1h;
                        add_header X-Cache-Status \$upstream_cache_status; } }
  server { listen 127.0.0.1:$(port_of nginx); keepalive_requests 1000000;
           location / { proxy_pass http://u; proxy_http_version 1.1;
                        proxy_set_header Connection ""; } }
}
EOF

taskset -c $PROXY_CPU "$TOLLGATE_BIN" run --config "$OUT/tg-cache.toml" >"$OUT/tg-cache.log" 2>&1 &
PIDS+=($!); declare -A PID_OF; PID_OF[tg-cache]=$!
taskset -c $PROXY_CPU "$TOLLGATE_BIN" run --config "$OUT/tg-plain.toml" >"$OUT/tg-plain.log" 2>&1 &
PIDS+=($!); PID_OF[tg-plain]=$!
taskset -c $PROXY_CPU nginx -c "$OUT/nginx.conf" &
PIDS+=($!); PID_OF[nginx-cache]=$!; PID_OF[nginx]=$!
TARGETS=(tg-cache nginx-cache tg-plain nginx)
URL_PATH=/items/42
for t in "${TARGETS[@]}"; do wait_port "$(port_of "$t")"; done
# every cached target answers HIT from its second request on
for t in tg-cache nginx-cache; do
  curl -s -o /dev/null "http://127.0.0.1:$(port_of $t)$URL_PATH"
  status=$(curl -s -D - -o /dev/null "http://127.0.0.1:$(port_of $t)$URL_PATH" | tr -d '\r' |
    awk -F': ' 'tolower($1) == "x-cache-status" { print $2 }')
  [ "$status" = HIT ] || { echo "$t: expected a HIT, got '$status'" >&2; exit 1; }
done
for t in "${TARGETS[@]}"; do
  taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$(port_of "$t")$URL_PATH" >/dev/null
done

HZ=$(getconf CLK_TCK)
echo "target,round,rps,cpu_us_per_req" >"$OUT/runs.csv"
for round in $(seq 1 "$ROUNDS"); do
  n=${#TARGETS[@]}
  for i in $(seq 0 $((n - 1))); do
    t=${TARGETS[$(((i + round) % n))]}
    c0=$(cpu_ticks "${PID_OF[$t]}")
    out=$(taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$(port_of "$t")$URL_PATH")
    c1=$(cpu_ticks "${PID_OF[$t]}")
    requests=$(echo "$out" | awk '/requests in/ { print $1 }')
    rps=$(echo "$out" | awk '/Requests\/sec/ { print $2 }')
    cpu=$(python3 -c "print(round(($c1 - $c0) / $HZ * 1e6 / $requests, 2))")
    echo "$t,$round,$rps,$cpu" | tee -a "$OUT/runs.csv" >&2
  done
done
python3 - "$OUT/runs.csv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
med = {}
for t in ["tg-cache", "nginx-cache", "tg-plain", "nginx"]:
    rs = [r for r in rows if r["target"] == t]
    med[t] = (statistics.median(float(r["rps"]) for r in rs),
              statistics.median(float(r["cpu_us_per_req"]) for r in rs))
print("| target | requests/s | CPU µs/request |")
print("|---|---|---|")
for t, (rps, cpu) in med.items():
    print(f"| {t} | {rps:,.0f} | {cpu:.1f} |")
print()
print(f"tg-cache / nginx-cache: {med['tg-cache'][0] / med['nginx-cache'][0]:.2f}x requests/s, "
      f"{med['tg-cache'][1] / med['nginx-cache'][1]:.2f}x CPU per request")
print(f"tg-cache / tg-plain: {med['tg-cache'][0] / med['tg-plain'][0]:.2f}x requests/s, "
      f"{med['tg-cache'][1] / med['tg-plain'][1]:.2f}x CPU per request")
PY
