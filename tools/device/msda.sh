#!/usr/bin/env bash
# On the GPU machine (device tool): build the op against the machine's torch, run the MSDA pytest
# suite (CUDA tests included), then the microbenchmark. Logs go to $OUT (default ./out).
# Usage: tools/device/msda.sh [--bench-only] [extra bench args]
#
# The device image's default C++ compiler (CXX=/opt/gcc/bin/g++) produced a library whose C++
# exceptions (every TORCH_CHECK error) crashed the process there; the system g++ is tried too, and
# the first build whose bad-input error is raised cleanly is used.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/python
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

error_path_works() {  # $1: library; prints the error and returns 0 when it is raised cleanly
  CODETR_OPS_LIBRARY=$1 python3 -c "
import torch
from codetr import _C
try:
    torch.ops.codetr.ms_deform_attn(torch.randn(35, 2, 8), [7, 5], torch.rand(2, 5, 2, 1, 4, 2), torch.rand(2, 5, 2, 1, 4))
except RuntimeError as e:
    print('  raised:', str(e).splitlines()[0][:100])
"
}

chosen=""
for compiler in default /usr/bin/g++; do
  dir=build-device-$(basename "$compiler")
  args=(-DCODETR_BUILD_RUNTIME=OFF -DCODETR_BUILD_TESTS=OFF)
  [ "$compiler" != default ] && args+=(-DCMAKE_CXX_COMPILER="$compiler" -DCMAKE_CUDA_HOST_COMPILER="$compiler")
  echo "== build with $compiler"
  CODETR_BUILD_DIR=$dir CODETR_BUILD_JOBS=16 tools/build.sh "${args[@]}" > "$OUT/build-$(basename "$compiler").log" 2>&1 \
    || { tail -20 "$OUT/build-$(basename "$compiler").log"; continue; }
  grep -m1 "Check for working CXX compiler" "$OUT/build-$(basename "$compiler").log"
  if error_path_works "$PWD/$dir/csrc/libcodetr_ops.so"; then chosen=$dir; break; fi
  echo "  error path crashed (rc=$?)"
done
[ -n "$chosen" ] || { echo "no build raised errors cleanly"; exit 1; }
cp "$chosen/csrc/libcodetr_ops.so" python/codetr/_lib/
echo "using $chosen"

if [ "${1:-}" != "--bench-only" ]; then
  echo "== pytest"
  python3 -m pytest -q -p no:cacheprovider tests/test_ms_deform_attn.py > "$OUT/pytest.log" 2>&1
  echo "pytest rc=$?"; grep -E "passed|failed|FAILED|Error" "$OUT/pytest.log" | tail -25
else
  shift
fi
echo "== bench"
python3 tools/bench_msda.py --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
