#!/usr/bin/env bash
# On the GPU machine (device tool): build the op against the machine's torch, run the MSDA pytest
# suite (CUDA tests included), then the microbenchmark. Logs go to $OUT (default ./out).
# Usage: dev/gpu/msda.sh [--bench-only] [extra bench args]
set -uo pipefail
source "$(dirname "$0")/env.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
echo "== build"
build_op_library
tail -1 "$OUT/build.log"
LIB=$PWD/build-device/python/codetr/_lib/libcodetr_ops.so

if [ "${1:-}" != "--bench-only" ]; then
  echo "== pytest"
  python3 -m pytest -q -p no:cacheprovider tests/test_ms_deform_attn.py > "$OUT/pytest.log" 2>&1
  echo "pytest rc=$?"; grep -E "passed|failed|FAILED|Error" "$OUT/pytest.log" | tail -25
else
  shift
fi
echo "== bench"
python3 tools/bench_msda.py --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
