#!/usr/bin/env bash
# The production build (`just build-pgo`): the release profile (fat LTO, one codegen
# unit, mimalloc) plus profile-guided optimisation, written to target/pgo/tollgate.
#
#   1. an instrumented build (-Cprofile-generate) in target/pgo-gen;
#   2. training: that binary proxies a mix of the gateway's common traffic to an nginx
#      upstream on loopback (plain routes, key_auth + rate_limit + header policies,
#      jwt_auth, request bodies, TLS, a 10,000-route table, the JSON access log, and a
#      small share of refusals), then exits cleanly, which writes its profile;
#   3. llvm-profdata merges the profile (the llvm-profdata of rustc's own LLVM major
#      version: rustup's llvm-tools, or Debian's llvm-N, installed when missing);
#   4. the optimised build (-Cprofile-use) in target/pgo-use, copied to target/pgo/.
#
# PGO lays out each function's hot path contiguously and inlines by measured call
# counts; the request path is mostly Pingora's many small async functions, and it is
# bound by instruction-cache misses more than by instructions (docs/benchmarks.md).
# Code the training does not reach (HTTP/2, Redis-backed limits, RSA tokens, ...) is
# optimised as cold code, for size: as correct as in the release build; its speed there
# has not been measured.
#
# Takes two full builds (~25 minutes on 2 cores the first time; the optimised build is
# always a full one, since the profile changes). Knobs: TRAIN_SECONDS (4) per load.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TRAIN_SECONDS=${TRAIN_SECONDS:-4}
OUT=$ROOT/target/pgo
RAW=$OUT/raw
PROFILE=$OUT/tollgate.profdata
UPSTREAM_PORT=18590
PORT=18591
TLS_PORT=18592
mkdir -p "$OUT"

. "$ROOT/benches/common.sh"
missing=()
for tool in wrk nginx cmake openssl curl; do need $tool || missing+=($tool); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  install_packages wrk nginx-light cmake openssl curl
fi

# --- llvm-profdata of rustc's LLVM (a profile is read only by the LLVM that wrote its
# format version or a later one)
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
find_profdata() {
  local c
  for c in "$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata" \
    "$(command -v llvm-profdata-"$llvm_major" || true)" "/usr/lib/llvm-$llvm_major/bin/llvm-profdata"; do
    [ -x "$c" ] && "$c" --version 2>/dev/null | grep -q "LLVM version $llvm_major\." && { echo "$c"; return; }
  done
  return 1
}
if ! PROFDATA=$(find_profdata); then
  echo "installing llvm-$llvm_major (llvm-profdata)" >&2
  install_packages "llvm-$llvm_major"
  PROFDATA=$(find_profdata) || {
    echo "no llvm-profdata for LLVM $llvm_major (rustup component add llvm-tools gives one)" >&2
    exit 1
  }
fi

cd "$ROOT"
# --- 1. instrumented build (where it writes is set at run time, LLVM_PROFILE_FILE)
echo "building the instrumented binary (target/pgo-gen)" >&2
RUSTFLAGS="-Cprofile-generate=$RAW" CARGO_TARGET_DIR="$ROOT/target/pgo-gen" \
  cargo build --release -p tollgate-bin --bin tollgate >&2
BIN=$ROOT/target/pgo-gen/release/tollgate

# --- 2. training
echo "training" >&2
rm -rf "$RAW"
mkdir -p "$RAW"
export LLVM_PROFILE_FILE="$RAW/tollgate-%p.profraw"
PIDS=()
trap cleanup EXIT
start_upstream $UPSTREAM_PORT
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$OUT/key.pem" -out "$OUT/cert.pem" -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
KEY=train-key-0123456789abcdef
SECRET=train-secret-0123456789abcdef0123
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
jwt_head=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
jwt_claims=$(printf '{"sub":"trainer","exp":4102444800}' | b64url)
jwt_sig=$(printf '%s.%s' "$jwt_head" "$jwt_claims" | openssl dgst -sha256 -hmac "$SECRET" -binary | b64url)
JWT=$jwt_head.$jwt_claims.$jwt_sig

config() { # ACCESS_LOG: the training gateway
  cat <<EOF
[server]
listen = ["127.0.0.1:$PORT"]
threads = 1
access_log = "$1"
pid_file = "$OUT/train.pid"
upgrade_sock = "$OUT/train.sock"

[[server.tls]]
listen = "127.0.0.1:$TLS_PORT"
certs = [{ cert = "cert.pem", key = "key.pem" }]

[upstreams.u]
backends = ["127.0.0.1:$UPSTREAM_PORT"]

[routes.plain]
paths = ["/"]
upstream = "u"

[routes.keyed]
paths = ["/keyed"]
upstream = "u"
[routes.keyed.policies.key_auth]
[routes.keyed.policies.rate_limit]
requests = 100000000
by = "consumer"
[routes.keyed.policies.request_headers]
set = { "x-env" = "train" }
add = { "x-via" = "tollgate" }
[routes.keyed.policies.response_headers]
set = { "x-served-by" = "tollgate" }

[routes.jwt]
paths = ["/jwt"]
upstream = "u"
strip_prefix = true
[routes.jwt.policies.jwt_auth]
algorithms = ["HS256"]
secret = "$SECRET"

[consumers.trainer]
api_keys = ["$KEY"]
jwt_subject = "trainer"
EOF
}
cat >"$OUT/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = string.rep("x", 2048)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
load() { # wrk's arguments; fails unless every answer was a success
  local out
  out=$(wrk -t1 -c16 -d"${TRAIN_SECONDS}s" "$@")
  if grep -q "Non-2xx" <<<"$out" || ! grep -q " requests in " <<<"$out"; then
    echo "training load failed: $*: $out" >&2
    return 1
  fi
}
train() { # CONFIG [EXTRA-PATH]: run the gateway on CONFIG under the loads, then stop it
  local pid
  "$BIN" run --config "$1" >"$OUT/train.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port $PORT 30
  wait_port $TLS_PORT 30
  load "http://127.0.0.1:$PORT/"
  load -H "apikey: $KEY" "http://127.0.0.1:$PORT/keyed"
  load -H "authorization: Bearer $JWT" "http://127.0.0.1:$PORT/jwt/x?y=1"
  load -s "$OUT/post.lua" "http://127.0.0.1:$PORT/"
  load "https://127.0.0.1:$TLS_PORT/"
  [ -z "${2:-}" ] || load "http://127.0.0.1:$PORT$2"
  # refusals: no credentials (401), a path that does not decode (400)
  wrk -t1 -c4 -d1s "http://127.0.0.1:$PORT/keyed" >/dev/null
  wrk -t1 -c4 -d1s "http://127.0.0.1:$PORT/jwt" >/dev/null
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/%zz"; done
  # a clean exit writes the profile
  kill -TERM "$pid"
  wait "$pid" || { echo "the training gateway failed: $(tail -5 "$OUT/train.log")" >&2; exit 1; }
}
config off >"$OUT/train.toml"
train "$OUT/train.toml"
config "$OUT/access.log" >"$OUT/train-log.toml"
train "$OUT/train-log.toml"
{ config off; python3 "$ROOT/benches/routes.py" 10000; } >"$OUT/train-10k.toml"
train "$OUT/train-10k.toml" /svc5001/items/42/detail
cleanup
trap - EXIT
unset LLVM_PROFILE_FILE
rm -f "$OUT/access.log"

# --- 3. merge
ls "$RAW"/*.profraw >/dev/null 2>&1 || { echo "training wrote no profile" >&2; exit 1; }
"$PROFDATA" merge -o "$PROFILE" "$RAW"/*.profraw

# --- 4. optimised build
echo "building with the profile (target/pgo-use)" >&2
RUSTFLAGS="-Cprofile-use=$PROFILE" CARGO_TARGET_DIR="$ROOT/target/pgo-use" \
  cargo build --release -p tollgate-bin --bin tollgate >&2
cp "$ROOT/target/pgo-use/release/tollgate" "$OUT/tollgate"

# --- 5. the new binary answers each trained kind of request
echo "checking $OUT/tollgate" >&2
PIDS=()
trap cleanup EXIT
start_upstream $UPSTREAM_PORT
"$OUT/tollgate" run --config "$OUT/train.toml" >"$OUT/check.log" 2>&1 &
PIDS+=($!)
disown $!
wait_port $PORT 30
wait_port $TLS_PORT 30
expect() { # STATUS CURL-ARGS...
  local got
  got=$(curl -s -o /dev/null -w '%{http_code}' "${@:2}")
  [ "$got" = "$1" ] || { echo "target/pgo/tollgate answered $got, not $1: ${*:2}" >&2; exit 1; }
}
expect 200 "http://127.0.0.1:$PORT/"
expect 200 -H "apikey: $KEY" "http://127.0.0.1:$PORT/keyed"
expect 401 "http://127.0.0.1:$PORT/keyed"
expect 200 -H "authorization: Bearer $JWT" "http://127.0.0.1:$PORT/jwt/x?y=1"
expect 401 -H "authorization: Bearer $JWT.x" "http://127.0.0.1:$PORT/jwt/x"
expect 200 --data-binary @"$OUT/post.lua" "http://127.0.0.1:$PORT/"
expect 200 --cacert "$OUT/cert.pem" "https://127.0.0.1:$TLS_PORT/"
expect 400 "http://127.0.0.1:$PORT/%zz"
cleanup
trap - EXIT
echo "$OUT/tollgate"
