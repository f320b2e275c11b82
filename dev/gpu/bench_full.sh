#!/usr/bin/env bash
# On the GPU machine (device tool): build the op + C++ runtime against the machine's torch, then
# run the parts of the full-model benchmark named on the command line:
#   eager    PyTorch eager fp32/fp16/bf16 (R50, Swin-L @1152x768 + larger sizes), stage split,
#            FLOPs, peak memory, fp16/bf16-vs-fp32 agreement           (tools/bench_model.py)
#   compile  torch.compile fp16, Swin-L and R50 @1152x768              (tools/bench_model.py)
#   aoti     export fp16 CUDA AOTInductor packages (R50, Swin-L @1152x768) and time them with
#            codetr-detect --benchmark (engine and end-to-end), with and without CUDA graphs
# Carry .deps (nlohmann/json.hpp: the machine has none). AOTI_PRESETS: the presets `aoti` exports
# (default R50 and Swin-L), AOTI_WIDTH/AOTI_HEIGHT their input size (default 1152x768);
# REUSE_EXPORTS=1 times packages an earlier call left in /tmp on a still warm machine. Logs and
# JSON go to $OUT.
# Usage: dev/gpu/bench_full.sh eager aoti
set -uo pipefail
source "$(dirname "$0")/env.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

echo "== build $(date +%T)"
# RUNTIME=ON explicitly: other device scripts configure the same build dir without it (cached).
CODETR_BUILD_DIR=build-device CODETR_BUILD_JOBS=16 tools/build.sh -DCODETR_BUILD_TESTS=OFF -DCODETR_BUILD_RUNTIME=ON \
  -DCODETR_NLOHMANN_INCLUDE_DIR=$PWD/.deps/include > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
DETECT=$PWD/build-device/python/codetr/_lib/codetr-detect
IMAGE=/tmp/demo.ppm
python3 -c "from PIL import Image; Image.open('python/codetr/assets/demo.jpg').convert('RGB').save('$IMAGE')"

run_eager() {
  python3 tools/bench_model.py --preset swin_l --size 1152x768 --modes eager_fp32,eager_fp16,eager_bf16 \
    --stages --flops --precision --json "$OUT/eager_swin_l.json" 2>&1 | tee "$OUT/eager_swin_l.log" | grep -v '^{'
  python3 tools/bench_model.py --preset r50 --size 1152x768,1344x800 --modes eager_fp32,eager_fp16 \
    --stages --flops --precision --json "$OUT/eager_r50.json" 2>&1 | tee "$OUT/eager_r50.log" | grep -v '^{'
  python3 tools/bench_model.py --preset swin_l --size 1920x1280 --batch 1 --modes eager_fp16 --iters 30 \
    --json "$OUT/eager_swin_l_1920.json" 2>&1 | tee "$OUT/eager_swin_l_1920.log" | grep -v '^{'
}
run_compile() {
  python3 tools/bench_model.py --preset swin_l --size 1152x768 --modes compile_fp16 \
    --json "$OUT/compile_swin_l.json" 2>&1 | tee "$OUT/compile_swin_l.log" | grep -v '^{'
  python3 tools/bench_model.py --preset r50 --size 1152x768 --modes compile_fp16 \
    --json "$OUT/compile_r50.json" 2>&1 | tee "$OUT/compile_r50.log" | grep -v '^{'
}
run_aoti() {
  for preset in ${AOTI_PRESETS:-co_dino_5scale_r50_8xb2_1x_coco co_dino_5scale_swin_l_16xb1_1x_coco}; do
    dir=/tmp/engine_${preset}_${AOTI_WIDTH:-1152}x${AOTI_HEIGHT:-768}
    echo "== export $preset $(date +%T)"
    if [ "${REUSE_EXPORTS:-0}" = 1 ] && [ -f "$dir/model.pt2" ]; then
      echo "reusing $dir (REUSE_EXPORTS=1)"
    else python3 -m codetr export --preset "$preset" --device cuda --dtype float16 --height "${AOTI_HEIGHT:-768}" --width "${AOTI_WIDTH:-1152}" \
      --output "$dir" > "$OUT/export_$preset.log" 2>&1 || { tail -30 "$OUT/export_$preset.log"; continue; }
      grep -iE "compil|packag|wrote|s\)" "$OUT/export_$preset.log" | tail -4
    fi
    du -sh "$dir/model.pt2"
    for graphs in off on; do
      echo "== codetr-detect --benchmark $preset cuda-graphs=$graphs $(date +%T)"
      "$DETECT" --model "$dir" --device cuda --benchmark 100 --cuda-graphs "$graphs" "$IMAGE" 2>&1 \
        | tee "$OUT/detect_${preset}_${AOTI_WIDTH:-1152}x${AOTI_HEIGHT:-768}_graphs_$graphs.log"
    done
  done
}
for part in "$@"; do
  echo "######## $part $(date +%T)"
  "run_$part"
done
