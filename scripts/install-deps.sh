#!/usr/bin/env bash
# Installs the system packages the build and tests need on Debian/Ubuntu:
# cmake and a C toolchain (Pingora's zlib-ng is built with cmake), and redis-server
# (a real Redis, started by the tests on a Unix socket).
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)   # the rate_limit store tests
if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing: ${need[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
