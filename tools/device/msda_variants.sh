#!/usr/bin/env bash
# On the GPU machine (device tool): build the MSDA op library once per tuning variant (compile
# definitions for the CUDA and C++ sources, i.e. #ifndef-guarded tuning constants), run the MSDA
# CUDA tests on the first variant, then benchmark every variant on the same inputs in this one call
# (variants are only comparable within one run). Logs go to $OUT.
# With BASE_DIR, a variant "base" comes first: a copy of this checkout with the files under BASE_DIR
# laid over it (same relative paths, e.g. BASE_DIR/csrc/ms_deform_attn/ms_deform_attn_cuda.cu from
# `git show HEAD:...`), to time a change against the code before it. It is benchmarked, not tested.
# Usage: [BASE_DIR=dir] tools/device/msda_variants.sh NAME=DEFINES ...
#   e.g. tools/device/msda_variants.sh default= slots2048=-DCODETR_MSDA_BACKWARD_WINDOW_SLOTS=2048
#   (knobs of the experiment branch experiment/msda-backward-window; see BENCHMARKS.md)
#   or   BASE_DIR=base ROUNDS=3 tools/device/msda_variants.sh new=
# Env: CASES (default "encoder 768,decoder"), VARIANTS (default "fp32,fp16"), ITERS (default 50),
#      ROUNDS (default 1: benchmark rounds, the variants alternating), SKIP_TESTS=1 to skip pytest,
#      TEST_ALL=1 to test every variant.
set -uo pipefail
source "$(dirname "$0")/env.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
build() {  # $1: name, $2: source dir, $3: defines
  (cd "$2" && cmake -S . -B "build-variant-$1" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCODETR_BUILD_RUNTIME=OFF \
     -DCODETR_BUILD_TESTS=OFF "-DCMAKE_CUDA_FLAGS=$3" "-DCMAKE_CXX_FLAGS=$3" &&
   cmake --build "build-variant-$1" --target codetr_ops --parallel 4) > "$OUT/build-$1.log" 2>&1
}
names=()
declare -A lib
if [ -n "${BASE_DIR:-}" ]; then
  [ -d "$BASE_DIR" ] || { echo "BASE_DIR=$BASE_DIR is not a directory"; exit 2; }
  base_src=/tmp/msda-variants-base
  rm -rf "$base_src" && mkdir -p "$base_src"
  tar --exclude='./build*' -cf - . | tar -xf - -C "$base_src"
  cp -r "$BASE_DIR"/. "$base_src"/
  names+=(base)
  lib[base]=$base_src/build-variant-base/python/codetr/_lib/libcodetr_ops.so
  build base "$base_src" "" &
fi
for spec in "$@"; do
  name=${spec%%=*}
  names+=("$name")
  lib[$name]=$PWD/build-variant-$name/python/codetr/_lib/libcodetr_ops.so
  build "$name" "$PWD" "${spec#*=}" &
done
wait
# Tests: on the first variant (TEST_ALL=1: on every variant; SKIP_TESTS=1: none).
for name in "$@"; do
  name=${name%%=*}
  [ "${SKIP_TESTS:-0}" = 1 ] && break
  [ -f "${lib[$name]}" ] || continue
  echo "== pytest ($name)"
  CODETR_OPS_LIBRARY=${lib[$name]} python3 -m pytest -q -p no:cacheprovider tests/test_ms_deform_attn.py \
    > "$OUT/pytest-$name.log" 2>&1
  echo "pytest rc=$?"; grep -E "passed|failed|FAILED|Error" "$OUT/pytest-$name.log" | tail -25
  [ "${TEST_ALL:-0}" = 1 ] || break
done
for round in $(seq "${ROUNDS:-1}"); do
  for name in "${names[@]}"; do
    if [ ! -f "${lib[$name]}" ]; then echo "== $name: build failed"; tail -30 "$OUT/build-$name.log"; continue; fi
    echo "== round $round: $name"
    CODETR_OPS_LIBRARY=${lib[$name]} python3 tools/bench_msda.py --skip-pytorch --iters "${ITERS:-50}" \
      --cases "${CASES:-encoder 768,decoder}" --variants "${VARIANTS:-fp32,fp16}" \
      --json "$OUT/bench-$name-$round.json" 2>&1 | tee "$OUT/bench-$name-$round.log"
  done
done
