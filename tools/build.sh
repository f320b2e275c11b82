#!/usr/bin/env bash
# Configure and build the native code (op library, C++ runtime, tests) into build/.
# The op library is also copied into python/codetr/_lib so `import codetr` finds it.
# Usage: tools/build.sh [extra cmake -D options]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${CODETR_BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$BUILD_DIR" --parallel "${CODETR_BUILD_JOBS:-$(nproc)}"
