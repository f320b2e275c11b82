#!/usr/bin/env bash
# On the GPU machine: Nsight Compute profile of one MSDA backward call (encoder 768x1152, fp16 value,
# fp32 locations; the inputs of tools/bench_msda.py) for the op library at $1 (default: build the
# op into build-device). Prints ncu's speed-of-light, occupancy, warp-state and source-counter
# sections. ncu runs with --clock-control none (leave the clocks alone: METHOD.md).
set -uo pipefail
source "$(dirname "$0")/env.sh"
LIB=${1:-}
if [ -z "$LIB" ]; then
  CODETR_BUILD_DIR=build-device CODETR_BUILD_JOBS=16 tools/build.sh -DCODETR_BUILD_RUNTIME=OFF \
    -DCODETR_BUILD_TESTS=OFF > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
  LIB=$PWD/build-device/csrc/libcodetr_ops.so
fi
cat > /tmp/msda_one_backward.py <<'PY'
import torch

from codetr import _C  # noqa: F401  (registers the ops)
from bench_msda import ENCODER_768, make_inputs
value, loc, attn = make_inputs(ENCODER_768, sum(h * w for h, w in ENCODER_768), True)
value, loc, attn = value.half(), loc.float(), attn.float()
grad_out = torch.randn(1, loc.shape[1], 256, device="cuda", dtype=torch.half)
flat = [v for hw in ENCODER_768 for v in hw]
for _ in range(3):
    torch.ops.codetr.ms_deform_attn_backward(grad_out, value, flat, loc, attn)
torch.cuda.synchronize()
PY
CODETR_OPS_LIBRARY=$LIB PYTHONPATH=$PYTHONPATH:$PWD/tools ncu --clock-control none -k regex:backward_kernel \
  --launch-skip 2 --launch-count 1 --section SpeedOfLight --section Occupancy --section LaunchStats \
  --section WarpStateStats --section SourceCounters --section MemoryWorkloadAnalysis \
  python3 /tmp/msda_one_backward.py 2>&1 | tee "$OUT/ncu.txt" | grep -v "^==PROF==" | tail -150
