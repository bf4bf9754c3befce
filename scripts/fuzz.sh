#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each; FUZZ_SECONDS overrides),
# starting from the kept inputs in fuzz/regressions/TARGET. A crash input is copied into
# fuzz/regressions/TARGET/, where `cargo test` replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz needs unstable compiler flags; the stable toolchain allows them this way
export RUSTC_BOOTSTRAP=1
status=0
for target in config path router auth head identity http_cache; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  echo "== fuzzing $target for ${seconds}s"
  if ! (cd fuzz && cargo fuzz run "$target" "../$corpus" "../fuzz/regressions/$target" \
        -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048); then
    status=1
    for crash in fuzz/artifacts/"$target"/*; do
      [ -e "$crash" ] && cp "$crash" "fuzz/regressions/$target/" && echo "kept $crash"
    done
  fi
done
exit "$status"
