#!/usr/bin/env bash
# Install what codetr needs on a fresh Debian/Ubuntu machine (system packages when root,
# Python packages into the current python3), then build the native code.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="cmake ninja-build g++ pkg-config libopencv-dev nlohmann-json3-dev libgtest-dev"
missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== apt-get install$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
  else
    echo "codetr: missing system packages:$missing (install them with apt-get as root)" >&2
    exit 1
  fi
fi

echo "== pip install: codetr's Python dependencies, test and eval extras and native build requirements"
# The checkout's package is not pip-installed: tools/*.sh and the tests run it from python/
# (PYTHONPATH), and codetr._lib finds the native files in build/ (python/codetr/_lib/__init__.py).
# So the native code is built once, by tools/build.sh, and rebuilt incrementally. `pip install .`
# is the user's install (README.md).
python3 tools/requirements.py test eval | python3 -m pip install -q --disable-pip-version-check -r /dev/stdin

echo "== build"
# Explicit options: a reused build/ may hold other cached values.
tools/build.sh -DCODETR_BUILD_RUNTIME=ON -DCODETR_BUILD_TESTS=ON
