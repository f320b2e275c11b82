#!/usr/bin/env bash
# On the GPU machine: what the fp16 overflow guard in the Swin backbone (fp32 residual stream and
# LayerNorm inputs, fp32 attention softmax; python/codetr/models/swin.py) costs, and what fp16/bf16
# agree with fp32. Times Swin-L eager fp16 (batch 1 and 4) and torch.compile fp16 at 1152x768 with
# the current model and with the previous swin.py ($1, e.g. the file from `git show
# c4b1edc:python/codetr/models/swin.py`) in the same call, then runs tools/compare_precision.py for
# R50 and Swin-L (random weights; SKIP_PRECISION=1 skips it). BATCHES: default 1,4; MODES: default
# eager_fp16,compile_fp16; BENCH_ARGS: more tools/bench_model.py arguments (e.g. --profile).
# Logs go to $OUT.
set -uo pipefail
source "$(dirname "$0")/env.sh"
OLD_SWIN=${1:?usage: swin_precision_cost.sh OLD_SWIN_PY}
build_op_library
# The tools put their own checkout's python/ first on sys.path: the previous model runs from a copy
# of python/ and tools/ with the old swin.py.
rm -rf /tmp/old_tree && mkdir -p /tmp/old_tree && cp -r python tools /tmp/old_tree/ &&
  cp "$OLD_SWIN" /tmp/old_tree/python/codetr/models/swin.py
for root in "$PWD" /tmp/old_tree; do
  name=$([ "$root" = "$PWD" ] && echo current || echo previous)
  echo "== $name swin.py"
  python3 "$root/tools/bench_model.py" --preset swin_l --size 1152x768 --batch "${BATCHES:-1,4}" \
    --modes "${MODES:-eager_fp16,compile_fp16}" ${BENCH_ARGS:-} --json "$OUT/swin_l_$name.json" 2>&1 | tee "$OUT/swin_l_$name.log" | grep -v '^{'
done
[ "${SKIP_PRECISION:-0}" = 1 ] && exit 0
for preset in co_dino_5scale_r50_8xb2_1x_coco co_dino_5scale_swin_l_16xb1_1x_coco; do
  echo "== compare_precision $preset"
  PYTHONPATH=$PWD/python python3 tools/compare_precision.py --preset $preset --size 1152x768 \
    --dtypes float16,bfloat16 > "$OUT/precision_$preset.json" 2> "$OUT/precision_$preset.err"
  echo "rc=$?"; cat "$OUT/precision_$preset.json"; tail -3 "$OUT/precision_$preset.err"
done
