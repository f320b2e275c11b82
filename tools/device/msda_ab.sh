#!/usr/bin/env bash
# On the GPU machine (device tool): time a change of the MSDA op against the code before it, in one
# call (timings are only comparable within one run). Builds the op library twice: "new" from this
# checkout, "base" from a copy of it with the files under BASE_DIR laid over it (same relative
# paths, e.g. BASE_DIR/csrc/ms_deform_attn/ms_deform_attn_cuda.cu, say from `git show HEAD~1:...`).
# Runs the MSDA pytest suite on "new", then benchmarks the two builds in alternating rounds.
# Usage: BASE_DIR=dir tools/device/msda_ab.sh
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
build() {  # $1: name, $2: source dir
  (cd "$2" && CODETR_BUILD_DIR=build-ab CODETR_BUILD_JOBS=8 tools/build.sh -DCODETR_BUILD_RUNTIME=OFF \
     -DCODETR_BUILD_TESTS=OFF) > "$OUT/build-$1.log" 2>&1 || { echo "build $1 failed"; tail -30 "$OUT/build-$1.log"; }
}
build new "$PWD" & build base "$base_src" & wait
declare -A lib=([new]=$PWD/build-ab/csrc/libcodetr_ops.so [base]=$base_src/build-ab/csrc/libcodetr_ops.so)
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  echo "== pytest (new)"
  CODETR_OPS_LIBRARY=${lib[new]} python3 -m pytest -q -p no:cacheprovider tests/test_ms_deform_attn.py \
    > "$OUT/pytest-new.log" 2>&1
  echo "pytest rc=$?"; grep -E "passed|failed|FAILED|Error" "$OUT/pytest-new.log" | tail -25
fi
for round in $(seq "${ROUNDS:-2}"); do
  for name in base new; do
    [ -f "${lib[$name]}" ] || continue
    echo "== round $round: $name"
    CODETR_OPS_LIBRARY=${lib[$name]} python3 tools/bench_msda.py --skip-pytorch --iters "${ITERS:-50}" \
      --cases "${CASES:-encoder 768,encoder 1280,decoder}" --variants "${VARIANTS:-fp16}" \
      --json "$OUT/bench-$name-$round.json" 2>&1 | tee "$OUT/bench-$name-$round.log"
  done
done
