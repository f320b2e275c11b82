#!/usr/bin/env bash
# On the GPU machine (device tool): time a change of the MSDA op against the code before it, in one
# call (timings are only comparable within one run). Builds the op library from a copy of this
# checkout with the files under BASE_DIR laid over it ("base"; same relative paths, e.g.
# BASE_DIR/csrc/ms_deform_attn/ms_deform_attn_cuda.cu, say from `git show HEAD~1:...`), and from this
# checkout once per NAME=DEFINES argument (compile definitions for the CUDA and C++ sources; none
# given: one build "new" without). Runs the MSDA pytest suite on the first of these, then
# benchmarks all builds in alternating rounds.
# Usage: BASE_DIR=dir tools/device/msda_ab.sh [NAME=DEFINES ...]
# Env: CASES (default "encoder 768,encoder 1280,decoder"), VARIANTS (default "fp16"), ITERS (default
#      50), ROUNDS (default 2), SKIP_TESTS=1 to skip pytest.
set -uo pipefail
source "$(dirname "$0")/env.sh"
[ -d "${BASE_DIR:-}" ] || { echo "BASE_DIR must name a directory of baseline files"; exit 2; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
base_src=/tmp/msda-ab-base
rm -rf "$base_src" && mkdir -p "$base_src"
tar --exclude='./build*' --exclude="./$OUT" -cf - . | tar -xf - -C "$base_src"
cp -r "$BASE_DIR"/. "$base_src"/
build() {  # $1: name, $2: source dir, $3: defines
  (cd "$2" && CODETR_BUILD_DIR="build-ab-$1" CODETR_BUILD_JOBS=8 tools/build.sh -DCODETR_BUILD_RUNTIME=OFF \
     -DCODETR_BUILD_TESTS=OFF "-DCMAKE_CUDA_FLAGS=$3" "-DCMAKE_CXX_FLAGS=$3") > "$OUT/build-$1.log" 2>&1 ||
    { echo "build $1 failed"; tail -30 "$OUT/build-$1.log"; }
}
[ $# -gt 0 ] || set -- new=
names=(base)
declare -A lib=([base]=$base_src/build-ab-base/csrc/libcodetr_ops.so)
build base "$base_src" "" &
for spec in "$@"; do
  name=${spec%%=*}
  names+=("$name")
  lib[$name]=$PWD/build-ab-$name/csrc/libcodetr_ops.so
  build "$name" "$PWD" "${spec#*=}" &
done
wait
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  echo "== pytest (${names[1]})"
  CODETR_OPS_LIBRARY=${lib[${names[1]}]} python3 -m pytest -q -p no:cacheprovider tests/test_ms_deform_attn.py \
    > "$OUT/pytest.log" 2>&1
  echo "pytest rc=$?"; grep -E "passed|failed|FAILED|Error" "$OUT/pytest.log" | tail -25
fi
for round in $(seq "${ROUNDS:-2}"); do
  for name in "${names[@]}"; do
    [ -f "${lib[$name]}" ] || continue
    echo "== round $round: $name"
    CODETR_OPS_LIBRARY=${lib[$name]} python3 tools/bench_msda.py --skip-pytorch --iters "${ITERS:-50}" \
      --cases "${CASES:-encoder 768,encoder 1280,decoder}" --variants "${VARIANTS:-fp16}" \
      --json "$OUT/bench-$name-$round.json" 2>&1 | tee "$OUT/bench-$name-$round.log"
  done
done
