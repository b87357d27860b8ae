#!/usr/bin/env bash
# The DNS benchmark: installs dnsperf and NSD (the reference authoritative server) when
# missing, builds meshwork in release mode, then runs bench/dns.py with any arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v nsd >/dev/null || [ -x /usr/sbin/nsd ] || need+=(nsd)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # The package starts a system NSD on port 53; the benchmark runs its own.
  $SUDO systemctl disable --now nsd >/dev/null 2>&1 || true
fi
build_log=$(mktemp)
if ! swift build -c release --product meshwork >"$build_log" 2>&1; then
  cat "$build_log" >&2
  exit 1
fi
exec python3 bench/dns.py "$@"
