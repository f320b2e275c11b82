#!/usr/bin/env bash
# On the GPU machine (device tool): build the MSDA op library once per tuning variant (compile
# definitions for the CUDA and C++ sources, i.e. #ifndef-guarded tuning constants), run the MSDA
# CUDA tests on the first variant, then benchmark every variant on the same inputs in this one call
# (variants are only comparable within one run). Logs go to $OUT.
# Usage: tools/device/msda_variants.sh NAME=DEFINES ...
#   e.g. tools/device/msda_variants.sh default= slots2048=-DCODETR_MSDA_BACKWARD_WINDOW_SLOTS=2048
#   (knobs of the experiment branch experiment/msda-backward-window; see BENCHMARKS.md)
# Env: CASES (default "encoder 768,decoder"), VARIANTS (default "fp32,fp16"), ITERS (default 50),
#      SKIP_TESTS=1 to skip pytest, TEST_ALL=1 to test every variant.
set -uo pipefail
source "$(dirname "$0")/env.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
names=()
for spec in "$@"; do
  name=${spec%%=*} defines=${spec#*=}
  names+=("$name")
  (cmake -S . -B "build-variant-$name" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCODETR_BUILD_RUNTIME=OFF \
     -DCODETR_BUILD_TESTS=OFF "-DCMAKE_CUDA_FLAGS=$defines" "-DCMAKE_CXX_FLAGS=$defines" &&
   cmake --build "build-variant-$name" --target codetr_ops --parallel 4) > "$OUT/build-$name.log" 2>&1 &
done
wait
lib() { echo "$PWD/build-variant-$1/csrc/libcodetr_ops.so"; }
# Tests: on the first variant (TEST_ALL=1: on every variant; SKIP_TESTS=1: none).
for name in "${names[@]}"; do
  [ "${SKIP_TESTS:-0}" = 1 ] && break
  [ -f "$(lib "$name")" ] || continue
  echo "== pytest ($name)"
  CODETR_OPS_LIBRARY=$(lib "$name") python3 -m pytest -q -p no:cacheprovider tests/test_ms_deform_attn.py \
    > "$OUT/pytest-$name.log" 2>&1
  echo "pytest rc=$?"; grep -E "passed|failed|FAILED|Error" "$OUT/pytest-$name.log" | tail -25
  [ "${TEST_ALL:-0}" = 1 ] || break
done
for name in "${names[@]}"; do
  if [ ! -f "$(lib "$name")" ]; then echo "== $name: build failed"; tail -30 "$OUT/build-$name.log"; continue; fi
  echo "== $name"
  CODETR_OPS_LIBRARY=$(lib "$name") python3 tools/bench_msda.py --skip-pytorch --iters "${ITERS:-50}" \
    --cases "${CASES:-encoder 768,decoder}" --variants "${VARIANTS:-fp32,fp16}" --json "$OUT/bench-$name.json" \
    2>&1 | tee "$OUT/bench-$name.log"
done
