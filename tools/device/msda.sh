#!/usr/bin/env bash
# On the GPU machine (device tool): build the op against the machine's torch, run the MSDA pytest
# suite (CUDA tests included), then the microbenchmark. Logs go to $OUT (default ./out).
# Usage: tools/device/msda.sh [--bench-only] [extra bench args]
set -uo pipefail
source "$(dirname "$0")/env.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
echo "== build"
build_op_library
tail -1 "$OUT/build.log"
LIB=$PWD/build-device/python/codetr/_lib/libcodetr_ops.so

# Probe the error path first (a crash prints the native stack); on a crash, the bad-input tests are
# deselected so the CUDA tests still run.
gcc -shared -fPIC -O1 -o /tmp/segv_backtrace.so tools/device/segv_backtrace.c
probe() {  # $1: name, $2: library
  CODETR_OPS_LIBRARY=$2 LD_PRELOAD=/tmp/segv_backtrace.so python3 -c "
import torch
from codetr import _C
try: torch.ops.codetr.ms_deform_attn(torch.randn(35, 2, 8), [7, 5], torch.rand(2, 5, 2, 1, 4, 2), torch.rand(2, 5, 2, 1, 4))
except RuntimeError as e: print('raised', str(e)[:80])" > "$OUT/probe-$1.log" 2>&1
  local rc=$?
  echo "probe $1: rc=$rc $(grep -m1 raised "$OUT/probe-$1.log")"
  return $rc
}
deselect=()
if [ "${1:-}" != "--bench-only" ]; then
  echo "== C++ exception probe"
  probe cuda "$LIB" || deselect=(-k "not rejected and not missing_library")
  echo "== pytest ${deselect[*]}"
  python3 -m pytest -q -p no:cacheprovider tests/test_ms_deform_attn.py "${deselect[@]}" > "$OUT/pytest.log" 2>&1
  echo "pytest rc=$?"; grep -E "passed|failed|FAILED|Error" "$OUT/pytest.log" | tail -25
else
  shift
fi
echo "== bench"
python3 tools/bench_msda.py --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
