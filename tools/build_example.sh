#!/usr/bin/env bash
# Install the C++ runtime from the build tree into BUILD/install, build examples/minimal against
# it with find_package(codetr) (as a downstream project would), and run it on a small stand-in
# CPU package (tests/runtime_standin.py).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${CODETR_BUILD_DIR:-build}
PREFIX="$BUILD_DIR/install"
if [ ! -f "$BUILD_DIR/build.ninja" ] || ! grep -q "CODETR_BUILD_RUNTIME:BOOL=ON" "$BUILD_DIR/CMakeCache.txt"; then
  echo "build_example: the runtime is not configured in $BUILD_DIR (is CODETR_BUILD_RUNTIME OFF in $BUILD_DIR/CMakeCache.txt?" \
       "reconfigure with tools/build.sh -DCODETR_BUILD_RUNTIME=ON)" >&2
  exit 1
fi
cmake --install "$BUILD_DIR" --prefix "$PREFIX" > /dev/null
cmake -S examples/minimal -B "$BUILD_DIR/example-minimal" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$(cd "$PREFIX" && pwd)" > /dev/null
cmake --build "$BUILD_DIR/example-minimal" --parallel "${CODETR_BUILD_JOBS:-$(nproc)}"
PACKAGE="$BUILD_DIR/example-minimal/standin-package"
if [ ! -f "$PACKAGE/model.pt2" ]; then
  PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH} python3 tests/runtime_standin.py "$PACKAGE" > /dev/null
fi
"$BUILD_DIR/example-minimal/codetr_minimal" "$PACKAGE"
