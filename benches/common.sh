# Shared by the load scripts in benches/ (sourced, not run): process handling, waiting
# for a port, and the nginx upstream answering "ok". Expects OUT and PIDS to be set.

need() { command -v "$1" >/dev/null 2>&1; }

install_packages() { # PACKAGE...: with apt-get, as root or through sudo
  local sudo
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

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

wait_port() { # PORT [SECONDS]: until it accepts, at most SECONDS (20)
  for _ in $(seq $((${2:-20} * 10))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  return 1
}

start_upstream() { # PORT [TASKSET CPU]: nginx answering "ok" (keep-alive), added to PIDS
  cat >"$OUT/upstream.conf" <<CONF
worker_processes 1;
daemon off;
pid $OUT/upstream.pid;
error_log $OUT/upstream.err;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$1; keepalive_requests 1000000;
           location / { return 200 "ok"; } }
}
CONF
  if [ -n "${2:-}" ]; then
    taskset -c "$2" nginx -c "$OUT/upstream.conf" &
  else
    nginx -c "$OUT/upstream.conf" &
  fi
  PIDS+=($!)
  disown $!
  wait_port "$1"
}

cpu_ticks() { # PID -> utime + stime of the process and its children (nginx workers)
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    read -r -a f <"/proc/$p/stat" && total=$((total + f[13] + f[14]))
  done
  echo $total
}
