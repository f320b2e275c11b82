#!/usr/bin/env bash
# GPU machine: the whole test suite there. Builds GoogleTest (carried sources) and the native code
# with tests, runs ctest (the CUDA preprocessing GoogleTests included), then pytest over tests/
# (CUDA tests included; workers in parallel, PYTEST_WORKERS, default 6; PYTEST_TARGETS, default
# tests/; PYTEST_LIMIT seconds, default 3000: set it to end inside the call's limit). Carry .deps and .whl.
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
# -v: one line per finished test, so a run stopped at the call's time limit still names its failures
timeout "${PYTEST_LIMIT:-3000}" python3 -m pytest -v -rfE -p no:cacheprovider -n "${PYTEST_WORKERS:-6}" \
  ${PYTEST_TARGETS:-tests} "$@" > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?"
grep -E "^\[gw[0-9]+\].*(FAILED|ERROR)" "$OUT/pytest.log" | head -40
echo "finished: $(grep -cE '^\[gw[0-9]+\].* PASSED' "$OUT/pytest.log") passed, $(grep -cE '^\[gw[0-9]+\].* SKIPPED' "$OUT/pytest.log") skipped"
tail -n 1 "$OUT/pytest.log"
echo "== done $(date +%T)"
