#!/usr/bin/env bash
# The main job on its built-in default: set up, export the default model (once; cached in
# out/demo_model), and run codetr-detect on the bundled demo image.
#   CODETR_CHECKPOINT=path/to/co_dino.pth  use real weights (default: RANDOM weights, so the
#                                          boxes are meaningless; the export says so loudly)
#   CODETR_PRESET=...                      another preset (default co_dino_5scale_r50_8xb2_1x_coco)
#   CODETR_DEVICE=cuda CODETR_DTYPE=float16   export for the GPU instead of the CPU
# Extra arguments go to codetr-detect (e.g. images or directories instead of the demo image).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}

PRESET=${CODETR_PRESET:-co_dino_5scale_r50_8xb2_1x_coco}
DEVICE=${CODETR_DEVICE:-cpu}
DTYPE=${CODETR_DTYPE:-float32}
MODEL_DIR=${CODETR_MODEL_DIR:-out/demo_model_${PRESET}_${DEVICE}_${DTYPE}}
OUT_DIR=${CODETR_OUT_DIR:-out/demo}

# (Re-)export unless a cached model dir is one this codetr reads (an older format is re-exported).
if ! python3 -c 'import sys, codetr.modeljson as m; m.load_model_json(sys.argv[1])' "$MODEL_DIR" 2>/dev/null; then
  export_args=(--preset "$PRESET" --device "$DEVICE" --dtype "$DTYPE" --height 768 --width 1152 --output "$MODEL_DIR")
  [ -n "${CODETR_CHECKPOINT:-}" ] && export_args+=(--checkpoint "$CODETR_CHECKPOINT")
  echo "== codetr export ${export_args[*]}"
  python3 -m codetr export "${export_args[@]}"
fi

inputs=("$@")
[ ${#inputs[@]} -eq 0 ] && inputs=(python/codetr/assets/demo.jpg)
echo "== codetr-detect"
"$(python3 -c 'import codetr._lib as lib; print(lib.executable("codetr-detect"))')" --model "$MODEL_DIR" --device "$DEVICE" \
  --out-dir "$OUT_DIR" --json "$OUT_DIR/detections.json" "${inputs[@]}"
echo "== wrote $OUT_DIR/detections.json and annotated images in $OUT_DIR/"
