#!/usr/bin/env bash
# Configure and build the native code (op library, C++ runtime, tests) into build/. The libraries,
# the binding and codetr-detect land in build/python/codetr/_lib, where a checkout's `import codetr`
# (PYTHONPATH=python) finds them (python/codetr/_lib/__init__.py; CODETR_BUILD_DIR picks another).
# Usage: tools/build.sh [extra cmake -D options]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${CODETR_BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$BUILD_DIR" --parallel "${CODETR_BUILD_JOBS:-$(nproc)}"
