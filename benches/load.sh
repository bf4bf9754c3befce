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
#   tg-plain      Tollgate, one plain route
#   tg-policies   Tollgate, key_auth + local rate_limit (never refusing) + request_headers
#   tg-10k        Tollgate, 10,000 routes (prefixes, params, hosts), hitting one of them
# Then: RSS of Tollgate started with 10,000 routes and 100,000 consumers.
#
# Knobs: ROUNDS (3) DURATION (10 s) WARMUP (2 s) CONNS (50) OUT (target/bench-load)
# Bounded: about ROUNDS x targets x (DURATION + WARMUP + 2) seconds after the builds.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
OUT=${OUT:-$ROOT/target/bench-load}
PROXY_CPU=0
LOAD_CPU=1
UPSTREAM_PORT=18480
PORT=18481
mkdir -p "$OUT"
rm -f "$OUT"/*.csv

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx || ! need cmake; then
  echo "installing wrk, nginx-light, cmake" >&2
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light cmake >/dev/null
fi
[ "$(nproc)" -ge 2 ] || { PROXY_CPU=0; LOAD_CPU=0; echo "one core: pinning everything to it" >&2; }

echo "building (release: fat LTO + mimalloc; raw-default: fast-release + system allocator)" >&2
cd "$ROOT"
cargo build --release -p tollgate-bin --bin tollgate --example raw_pingora >&2
cp target/release/tollgate target/release/examples/raw_pingora "$OUT/"
mv "$OUT/raw_pingora" "$OUT/raw_pingora_same"
cargo build --profile fast-release -p tollgate-bin --example raw_pingora \
  --features system-allocator >&2
cp target/fast-release/examples/raw_pingora "$OUT/raw_pingora_default"

PIDS=()
# Background processes of a script ignore SIGINT; the targets keep no state worth a
# graceful stop, so they are killed.
stop() { # PID: the process and its children (nginx workers)
  local kids
  kids=$(pgrep -P "$1" || true)
  kill -KILL "$1" $kids 2>/dev/null || true
  while kill -0 "$1" 2>/dev/null; do sleep 0.05; done
}
cleanup() {
  for p in "${PIDS[@]}"; do stop "$p"; done
}
trap cleanup EXIT

wait_port() { # PORT: until it accepts, at most 20 s
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  return 1
}

# --- the upstream: nginx answering "ok" on core 1 -------------------------------
cat >"$OUT/upstream.conf" <<EOF
worker_processes 1;
daemon off;
pid $OUT/upstream.pid;
error_log $OUT/upstream.err;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$UPSTREAM_PORT; keepalive_requests 1000000;
           location / { return 200 "ok"; } }
}
EOF
taskset -c $LOAD_CPU nginx -c "$OUT/upstream.conf" &
PIDS+=($!)
disown $!
wait_port $UPSTREAM_PORT

# --- configurations ---------------------------------------------------------------
KEY=bench-key-0123456789abcdef
python3 - "$OUT" "$PORT" "$UPSTREAM_PORT" "$KEY" <<'PY'
import sys
out, port, up, key = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
server = f'''[server]
listen = ["127.0.0.1:{port}"]
threads = 1
access_log = "off"
pid_file = "{out}/tg.pid"
upgrade_sock = "{out}/tg.sock"

[upstreams.u]
backends = ["127.0.0.1:{up}"]
'''
open(f"{out}/tg-plain.toml", "w").write(server + '[routes.r]\npaths = ["/"]\nupstream = "u"\n')
open(f"{out}/tg-policies.toml", "w").write(server + f'''
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
def routes(n):
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            paths = f'["/svc{i}/items"]'
        elif kind == 1:
            paths = f'["/svc{i}/items/{{id}}/detail"]'
        elif kind == 2:
            paths = f'["=/svc{i}/health"]'
        else:
            paths = f'["/api/v{i % 7}/svc{i}"]'
        hosts = f'\nhosts = ["svc{i}.example.com", "*.svc{i}.example.net"]' if i % 5 == 4 else ""
        out.append(f'[routes.r{i}]\npaths = {paths}{hosts}\nupstream = "u"\n')
    return "\n".join(out)
open(f"{out}/tg-10k.toml", "w").write(server + routes(10000))
consumers = "".join(f'[consumers.c{i}]\napi_keys = ["key-{i:08d}-{i * 7919 % 1000003:07d}"]\n'
                    for i in range(100000))
open(f"{out}/tg-memory.toml", "w").write(server + routes(10000) + "\n" + consumers)
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
  server { listen 127.0.0.1:$PORT; keepalive_requests 1000000;
           location / { proxy_pass http://u; proxy_http_version 1.1;
                        proxy_set_header Connection ""; } }
}
EOF

TARGETS=(raw-default raw-same tg-plain tg-policies tg-10k)
need nginx && TARGETS+=(nginx)

start() { # TARGET -> pid (of the proxy itself: each branch execs it)
  case $1 in
    raw-default) exec taskset -c $PROXY_CPU "$OUT/raw_pingora_default" 127.0.0.1:$PORT 127.0.0.1:$UPSTREAM_PORT ;;
    raw-same) exec taskset -c $PROXY_CPU "$OUT/raw_pingora_same" 127.0.0.1:$PORT 127.0.0.1:$UPSTREAM_PORT ;;
    nginx) exec taskset -c $PROXY_CPU nginx -c "$OUT/nginx-proxy.conf" ;;
    tg-*) exec taskset -c $PROXY_CPU "$OUT/tollgate" run --config "$OUT/$1.toml" ;;
  esac >"$OUT/$1.log" 2>&1 &
  echo $!
}

request_args() { # TARGET -> sets ARGS: wrk's headers and URL
  case $1 in
    tg-policies) ARGS=(-H "apikey: $KEY" "http://127.0.0.1:$PORT/") ;;
    tg-10k) ARGS=("http://127.0.0.1:$PORT/svc5001/items/42/detail") ;;
    *) ARGS=("http://127.0.0.1:$PORT/") ;;
  esac
}

cpu_ticks() { # PID -> utime + stime of the process and its children (nginx workers)
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    read -r -a f <"/proc/$p/stat" && total=$((total + f[13] + f[14]))
  done
  echo $total
}

echo "target,round,rps,p50_us,p99_us,cpu_us_per_req,errors" >"$OUT/runs.csv"
for round in $(seq "$ROUNDS"); do
  # rotate the order each round
  n=${#TARGETS[@]}
  for i in $(seq 0 $((n - 1))); do
    t=${TARGETS[$(((i + round) % n))]}
    pid=$(start "$t")
    wait_port $PORT
    request_args "$t"
    taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${ARGS[@]}" >/dev/null
    c0=$(cpu_ticks "$pid")
    taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${ARGS[@]}" \
      >"$OUT/$t-$round.wrk"
    c1=$(cpu_ticks "$pid")
    stop "$pid"
    while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do sleep 0.1; done
    python3 - "$t" "$round" "$OUT/$t-$round.wrk" "$c0" "$c1" "$(getconf CLK_TCK)" >>"$OUT/runs.csv" <<'PY'
import re, sys
t, rnd, f, c0, c1, hz = sys.argv[1:]
w = open(f).read()
def us(s):
    v, u = re.match(r"([\d.]+)(us|ms|s)", s).groups()
    return float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", w).group(1))
total = int(re.search(r"(\d+) requests in", w).group(1))
p50 = us(re.search(r"50%\s+(\S+)", w).group(1))
p99 = us(re.search(r"99%\s+(\S+)", w).group(1))
errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", w))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", w)
errors += int(non2xx.group(1)) if non2xx else 0
cpu = (int(c1) - int(c0)) / int(hz) * 1e6 / total
print(f"{t},{rnd},{rps:.0f},{p50:.0f},{p99:.0f},{cpu:.1f},{errors}")
PY
    tail -1 "$OUT/runs.csv" >&2
  done
done

# --- memory: 10,000 routes and 100,000 consumers -----------------------------------
started=$(date +%s%N)
taskset -c $PROXY_CPU "$OUT/tollgate" run --config "$OUT/tg-memory.toml" >"$OUT/tg-memory.log" 2>&1 &
mpid=$!
disown $mpid
wait_port $PORT
ready_ms=$((($(date +%s%N) - started) / 1000000))
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$mpid/status")
stop "$mpid"

python3 - "$OUT" "$ROOT/docs/benchmarks.md" "$rss_kib" "$ready_ms" "$ROUNDS" "$DURATION" "$CONNS" <<'PY'
import csv, statistics, sys, platform, subprocess, datetime
out, doc, rss, ready, rounds, duration, conns = sys.argv[1:]
rows = list(csv.DictReader(open(f"{out}/runs.csv")))
by = {}
for r in rows:
    by.setdefault(r["target"], {})[int(r["round"])] = r
def med(t, k):
    return statistics.median(float(r[k]) for r in by[t].values())
def ratio(t, base="raw-default"):
    rs = [float(by[t][n]["rps"]) / float(by[base][n]["rps"]) for n in by[t] if n in by[base]]
    return statistics.median(rs)
names = {
    "raw-default": "raw Pingora, default release build, system allocator",
    "raw-same": "raw Pingora, Tollgate's profile (fat LTO, mimalloc)",
    "nginx": "nginx reverse proxy (1 worker, upstream keep-alive)",
    "tg-plain": "Tollgate, one plain route",
    "tg-policies": "Tollgate, key_auth + rate_limit + request_headers",
    "tg-10k": "Tollgate, 10,000 routes",
}
lines = ["| target | req/s (median) | vs raw Pingora default | CPU µs/req | vs raw default CPU | p50 µs | p99 µs | errors |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]
for t in names:
    if t not in by:
        continue
    lines.append(f"| {names[t]} | {med(t, 'rps'):,.0f} | {ratio(t):.2f} | {med(t, 'cpu_us_per_req'):.1f} | "
                 f"{med(t, 'cpu_us_per_req') / med('raw-default', 'cpu_us_per_req'):.2f} | "
                 f"{med(t, 'p50_us'):,.0f} | {med(t, 'p99_us'):,.0f} | "
                 f"{sum(int(r['errors']) for r in by[t].values())} |")
if "tg-10k" in by and "tg-plain" in by:
    lines.append("")
    lines.append(f"10,000 routes vs one route: {ratio('tg-10k', 'tg-plain'):.2f} of the req/s "
                 "(median of per-round ratios).")
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
lines += ["",
          f"Memory: Tollgate started with 10,000 routes and 100,000 consumers (API keys): "
          f"RSS {int(rss) / 1024:.0f} MiB, listening {int(ready) / 1000:.1f} s after start.",
          "",
          f"Run: {datetime.date.today()}, `just bench-load` (ROUNDS={rounds}, DURATION={duration} s, "
          f"CONNS={conns}, wrk -t1 HTTP/1.1 keep-alive), {cpu}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, "
          f"kernel {platform.release()}. Ratios are medians of per-round ratios (targets of one "
          "round run seconds apart)."]
table = "\n".join(lines)
open(f"{out}/summary.md", "w").write(table + "\n")
print(table)
text = open(doc).read()
begin, end = "<!-- bench-load:begin -->", "<!-- bench-load:end -->"
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    open(doc, "w").write(f"{head}{begin}\n{table}\n{end}{tail}")
    print(f"written to {doc}", file=sys.stderr)
PY
