#!/usr/bin/env bash
# GPU machine: the whole test suite there. Builds GoogleTest (carried sources) and the native code
# with tests, runs ctest (the CUDA preprocessing GoogleTests included), then pytest over tests/
# (CUDA tests included; workers in parallel, PYTEST_WORKERS, default 6; PYTEST_TARGETS, default
# tests/). Carry .deps and .whl.
# Usage (device tool): bash dev/gpu/check.sh [extra pytest args]
set -uo pipefail
source "$(dirname "$0")/env.sh"
install_wheels
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
echo "== googletest + build $(date +%T)"
build_with_tests
echo "== ctest $(date +%T)"
ctest --test-dir build-device > "$OUT/ctest.log" 2>&1
grep -E "Failed|\*\*\*|tests passed|tests failed" "$OUT/ctest.log" | tail -20
echo "== pytest $(date +%T)"
python3 -m pytest -q -p no:cacheprovider -n "${PYTEST_WORKERS:-6}" ${PYTEST_TARGETS:-tests} "$@" > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?"
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest.log" | tail -40
echo "== done $(date +%T)"
