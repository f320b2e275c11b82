#!/usr/bin/env bash
# On the GPU machine: where one MSDA backward call spends its time, for the inputs of
# tools/bench_msda.py. CASE=encoder|decoder (default encoder: 768x1152), DTYPE=half|float (value;
# locations fp32). First the per-kernel CUDA times of 20 calls (torch.profiler), then Nsight
# Compute's speed-of-light, occupancy, warp-state and memory sections for the kernels matching
# KERNELS (a regex, default backward_kernel) of one call, with --clock-control none (leave the
# clocks alone: BENCHMARKS.md "Method"). $1: the op library (default: build the op into build-device).
set -uo pipefail
source "$(dirname "$0")/env.sh"
use_op_library "${1:-}"
export CASE=${CASE:-encoder} DTYPE=${DTYPE:-half}
cat > /tmp/msda_backward_calls.py <<'PY'
import os
import sys

import torch

from codetr import _C  # noqa: F401  (registers the ops)
from bench_msda import ENCODER_768, make_inputs
encoder = os.environ["CASE"] == "encoder"
Q = sum(h * w for h, w in ENCODER_768) if encoder else 900
value, loc, attn = make_inputs(ENCODER_768, Q, encoder)
value, loc, attn = value.to(getattr(torch, os.environ["DTYPE"])), loc.float(), attn.float()
grad_out = torch.randn(1, Q, 256, device="cuda", dtype=value.dtype)
flat = [v for hw in ENCODER_768 for v in hw]
call = lambda: torch.ops.codetr.ms_deform_attn_backward(grad_out, value, flat, loc, attn)  # noqa: E731
for _ in range(3):
    call()
torch.cuda.synchronize()
if sys.argv[1:] == ["profile"]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            call()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
else:  # the call ncu profiles: SKIP = 3 x the matching kernels of one call
    call()
    torch.cuda.synchronize()
PY
echo "== $CASE $DTYPE: kernels of 20 backward calls"
CODETR_OPS_LIBRARY=$LIB PYTHONPATH=$PYTHONPATH:$PWD/tools python3 /tmp/msda_backward_calls.py profile 2>&1 \
  | tee "$OUT/kernels_${CASE}_${DTYPE}.txt"
echo "== $CASE $DTYPE: ncu"
CODETR_OPS_LIBRARY=$LIB PYTHONPATH=$PYTHONPATH:$PWD/tools ncu --clock-control none -k "regex:${KERNELS:-backward_kernel}" \
  --launch-skip "${SKIP:-3}" --launch-count "${COUNT:-1}" --section SpeedOfLight --section Occupancy --section LaunchStats \
  --section WarpStateStats --section MemoryWorkloadAnalysis \
  python3 /tmp/msda_backward_calls.py 2>&1 | tee "$OUT/ncu_${CASE}_${DTYPE}.txt" | grep -v "^==PROF==" | tail -${NCU_LINES:-150}
