#!/usr/bin/env bash
# On the GPU machine's CPUs: R50 at 800x1344 (the 1333x800 rule padded to 32), fp32,
# plugin-free ONNX under onnxruntime vs the AOTInductor CPU package under codetr-detect.
# Expects build-device/ from dev/gpu/bench_full.sh in the same session, else builds it.
set -uo pipefail
source "$(dirname "$0")/env.sh"
export CUDA_VISIBLE_DEVICES=""
lscpu | grep -E "Model name|^CPU\(s\)" | tee "$OUT/cpu.txt"
[ -x build-device/python/codetr/_lib/codetr-detect ] || CODETR_BUILD_DIR=build-device CODETR_BUILD_JOBS=16 tools/build.sh \
  -DCODETR_BUILD_TESTS=OFF -DCODETR_NLOHMANN_INCLUDE_DIR=$PWD/.deps/include > "$OUT/build.log" 2>&1
python3 -c "from PIL import Image; Image.open('python/codetr/assets/demo.jpg').convert('RGB').save('/tmp/demo.ppm')"
P=co_dino_5scale_r50_8xb2_1x_coco
echo "== onnx export $(date +%T)"
python3 -m codetr export --preset $P --format onnx --height 800 --width 1344 -o /tmp/r50_onnx > "$OUT/onnx_export.log" 2>&1 \
  || tail -20 "$OUT/onnx_export.log"
grep -E "nodes|MiB|done" "$OUT/onnx_export.log" | tail -4
python3 tools/bench_onnx_cpu.py /tmp/r50_onnx --iters 10 2>&1 | tee "$OUT/onnx_bench.log"
echo "== aoti cpu export $(date +%T)"
python3 -m codetr export --preset $P --device cpu --height 800 --width 1344 -o /tmp/r50_aoti_cpu > "$OUT/aoti_cpu_export.log" 2>&1 \
  || tail -20 "$OUT/aoti_cpu_export.log"
grep -E "done|wrote" "$OUT/aoti_cpu_export.log" | tail -3
build-device/python/codetr/_lib/codetr-detect --model /tmp/r50_aoti_cpu --device cpu --benchmark 10 /tmp/demo.ppm 2>&1 | tee "$OUT/aoti_cpu_bench.log"
