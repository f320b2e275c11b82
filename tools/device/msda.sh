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
{ which -a g++ c++; g++ --version | head -1; ls /usr/bin/g++* /usr/bin/c++ 2>&1; } > "$OUT/toolchain.txt" 2>&1
echo "== build"
CODETR_BUILD_DIR=build-device CODETR_BUILD_JOBS=16 tools/build.sh -DCODETR_BUILD_RUNTIME=OFF \
  -DCODETR_BUILD_TESTS=OFF ${CODETR_CMAKE_ARGS:-} > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
tail -1 "$OUT/build.log"
ldd python/codetr/_lib/libcodetr_ops.so | grep -E "stdc|gcc_s|gomp" >> "$OUT/toolchain.txt"
cat "$OUT/toolchain.txt"
if [ "${1:-}" != "--bench-only" ]; then
  echo "== bad-input error in a fresh process (inference mode, then through autograd)"
  for mode in inference autograd; do
    python3 -c "
import contextlib, sys, torch
from codetr import _C
ctx = torch.inference_mode() if sys.argv[1] == 'inference' else contextlib.nullcontext()
try:
    with ctx:
        torch.ops.codetr.ms_deform_attn(torch.randn(35, 2, 8), [7, 5], torch.rand(2, 5, 2, 1, 4, 2), torch.rand(2, 5, 2, 1, 4))
except RuntimeError as e:
    print('raised:', str(e).splitlines()[0][:100])
" $mode; echo "$mode rc=$?"
  done
  echo "== pytest"
  python3 -m pytest -q -p no:cacheprovider tests/test_ms_deform_attn.py > "$OUT/pytest.log" 2>&1
  echo "pytest rc=$?"; grep -E "passed|failed|FAILED|Error" "$OUT/pytest.log" | tail -25
else
  shift
fi
echo "== bench"
python3 tools/bench_msda.py --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
