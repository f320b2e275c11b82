#!/usr/bin/env bash
# GPU machine: the whole test suite there. Builds GoogleTest (carried sources) and the native code
# with tests, runs ctest (the CUDA preprocessing GoogleTests included), then pytest over tests/
# (CUDA tests included; workers in parallel, PYTEST_WORKERS, default 6). Carry .deps and .whl.
# Usage (device tool): bash dev/gpu/check.sh [extra pytest args]
set -uo pipefail
source "$(dirname "$0")/env.sh"
install_wheels
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
echo "== googletest $(date +%T)"
GTEST_PREFIX=/tmp/gtest
{ cmake -S .deps/googletest -B /tmp/gtest-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF -DCMAKE_INSTALL_LIBDIR=lib \
    -DCMAKE_INSTALL_PREFIX=$GTEST_PREFIX && cmake --build /tmp/gtest-build && cmake --install /tmp/gtest-build; } \
  > "$OUT/gtest.log" 2>&1 || { tail -20 "$OUT/gtest.log"; exit 1; }
echo "== build $(date +%T)"
CODETR_BUILD_DIR=build-device CODETR_BUILD_JOBS=16 tools/build.sh -DCODETR_BUILD_RUNTIME=ON -DCODETR_BUILD_TESTS=ON \
  -DGTest_DIR=$GTEST_PREFIX/lib/cmake/GTest -DCODETR_NLOHMANN_INCLUDE_DIR=$PWD/.deps/include \
  > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
grep "codetr:" "$OUT/build.log"
echo "== ctest $(date +%T)"
ctest --test-dir build-device > "$OUT/ctest.log" 2>&1
grep -E "Failed|\*\*\*|tests passed|tests failed" "$OUT/ctest.log" | tail -20
echo "== pytest $(date +%T)"
python3 -m pytest -q -p no:cacheprovider -n "${PYTEST_WORKERS:-6}" tests "$@" > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?"
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest.log" | tail -40
echo "== done $(date +%T)"
