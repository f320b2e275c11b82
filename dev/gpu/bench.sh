#!/usr/bin/env bash
# GPU machine, after engines.sh on the same warm machine: times the engines of $ENGINES.
#   cli     codetr-detect --benchmark (CUDA graphs on): engine and end-to-end, batch 1 and 8
#   python  tools/bench_runtime.py images: the Python Detector on the same engines and image
#   video   tools/bench_runtime.py video: decode -> detect_stream -> annotated encode, 1152x768 and
#           1920x1080 clips, batch-8 engines, next to the engine's own batch throughput
# Usage (device tool, carry .deps): bash dev/gpu/bench.sh cli python video
set -uo pipefail
source "$(dirname "$0")/env.sh"
[ -x build-device/python/codetr/_lib/codetr-detect ] || build_native
DETECT=$PWD/build-device/python/codetr/_lib/codetr-detect
demo_ppm
run_cli() {
  for name in ${NAMES:-r50_b1 r50_b8 swin_l_b1 swin_l_b8}; do
    echo "== codetr-detect --benchmark $name $(date +%T)"
    "$DETECT" --model "$ENGINES/$name" --benchmark "${ITERS:-100}" --cuda-graphs on "$IMAGE" 2>&1 | tee "$OUT/cli_$name.log"
  done
}
run_python() {
  for name in ${NAMES:-r50_b1 r50_b8 swin_l_b1 swin_l_b8}; do
    echo "== Python Detector $name $(date +%T)"
    python3 tools/bench_runtime.py --model "$ENGINES/$name" --mode images --cuda-graphs --iters "${ITERS:-100}" \
      --image "$IMAGE" | tee "$OUT/python_$name.json"
  done
}
run_video() {
  for name in ${VIDEO_NAMES:-r50_b8 swin_l_b8}; do
    for size in 1152x768 1920x1080; do
      echo "== video $name $size $(date +%T)"
      python3 tools/bench_runtime.py --model "$ENGINES/$name" --mode video --cuda-graphs --video-size "$size" \
        --frames "${FRAMES:-400}" | tee "$OUT/video_${name}_$size.json"
    done
  done
}
for part in "$@"; do "run_$part"; done
