#!/usr/bin/env bash
# On the GPU machine (device tool): build the op library, the C++ runtime and its GoogleTests
# against the machine's torch and run ctest, the CUDA ones included (fused preprocessing kernel vs
# the CPU path: PreprocessCuda.*). The machine has no GoogleTest and cannot fetch one: carry .deps
# with nlohmann/json.hpp (.deps/include) and the GoogleTest sources (.deps/googletest, e.g. a copy
# of /usr/src/googletest), which are built here first. Logs go to $OUT.
# Usage: dev/gpu/runtime.sh
set -uo pipefail
source "$(dirname "$0")/env.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== googletest + build $(date +%T)"
build_with_tests

echo "== ctest $(date +%T)"
ctest --test-dir build-device --output-on-failure > "$OUT/ctest.log" 2>&1
rc=$?
grep -E "Skipped|Failed|\*\*\*|tests passed|tests failed" "$OUT/ctest.log" | tail -40
echo "== PreprocessCuda, verbose"
build-device/cpp/tests/test_runtime --gtest_filter='PreprocessCuda.*' 2>&1 | tee "$OUT/preprocess_cuda.log" | tail -25
exit $rc
