#!/usr/bin/env bash
# On the GPU machine: the CUDA fusions (fused Swin window attention, FFN GEMM-epilogue ReLU).
# Builds the op library, runs their tests plus the MSDA suite, then times Swin-L at 1152x768 with
# and without the fusions in the same call (tools/bench_model.py; MODES default
# eager_fp16,compile_fp16; BENCH_ARGS e.g. --profile for the fused run). Logs go to $OUT.
set -uo pipefail
source "$(dirname "$0")/env.sh"
build_op_library
echo "== pytest"
python3 -m pytest -q -p no:cacheprovider tests/test_window_attention.py tests/test_swin_fp16.py \
  tests/test_ms_deform_attn.py > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?"; grep -E "passed|failed|FAILED|Error" "$OUT/pytest.log" | tail -25
[ "${SKIP_BENCH:-0}" = 1 ] && exit 0
for variant in fused unfused; do
  flag=$([ $variant = unfused ] && echo --no-cuda-fusions)
  extra=$([ $variant = fused ] && echo "${BENCH_ARGS:-}")
  echo "== swin_l $variant"
  python3 tools/bench_model.py --preset swin_l --size 1152x768 --batch 1 --modes "${MODES:-eager_fp16,compile_fp16}" \
    $flag $extra --json "$OUT/swin_l_$variant.json" 2>&1 | tee "$OUT/swin_l_$variant.log" | grep -v '^{'
done
