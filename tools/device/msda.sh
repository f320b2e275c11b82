#!/usr/bin/env bash
# On the GPU machine (device tool): build the op against the machine's torch, run the MSDA pytest
# suite (CUDA tests included), then the microbenchmark. Logs go to $OUT (default ./out).
# Usage: tools/device/msda.sh [--bench-only] [extra bench args]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/python
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
echo "== build"
CODETR_BUILD_DIR=build-device CODETR_BUILD_JOBS=16 tools/build.sh -DCODETR_BUILD_RUNTIME=OFF \
  -DCODETR_BUILD_TESTS=OFF > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
tail -3 "$OUT/build.log"
if [ "${1:-}" != "--bench-only" ]; then
  echo "== pytest"
  python3 -m pytest -q -p no:cacheprovider tests/test_ms_deform_attn.py > "$OUT/pytest.log" 2>&1
  echo "pytest rc=$?"; grep -E "passed|failed|FAILED|Error" "$OUT/pytest.log" | tail -25
else
  shift
fi
echo "== bench"
python3 tools/bench_msda.py --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
