#!/usr/bin/env bash
# GPU machine: build, then export the fp16 static CUDA engines the benchmarks time, in parallel:
# R50 and Swin-L (non-LSJ 1x presets, random weights), 1152x768, batch 1 and 8, into $ENGINES.
# Then the Python Detector vs codetr-detect on one of them (equal JSON expected).
# Usage (device tool, carry .deps): bash dev/gpu/engines.sh
set -uo pipefail
source "$(dirname "$0")/env.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
echo "== build $(date +%T)"; build_native; demo_ppm
echo "== export $(date +%T)"
for model in r50:co_dino_5scale_r50_8xb2_1x_coco swin_l:co_dino_5scale_swin_l_16xb1_1x_coco; do
  for batch in ${BATCHES:-1 8}; do
    export_engine "${model%%:*}_b$batch" "${model#*:}" "$batch" &
  done
done
wait
for log in "$OUT"/export_*.log; do echo "$log: $(tail -1 "$log")"; done
echo "== Python Detector vs codetr-detect $(date +%T)"
"$DETECT" --model "$ENGINES/r50_b1" --json "$OUT/cli_r50_b1.json" "$IMAGE" 2>&1 | tail -1
python3 - "$ENGINES/r50_b1" "$IMAGE" "$OUT/cli_r50_b1.json" <<'PY'
import json, sys
import numpy as np
from PIL import Image
import codetr
det = codetr.Detector(sys.argv[1])
bgr = np.ascontiguousarray(np.asarray(Image.open(sys.argv[2]).convert("RGB"))[:, :, ::-1])
r = det.detect(bgr)
cli = json.load(open(sys.argv[3]))
xywh = np.array([[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in r.boxes.astype(np.float64)])
same = len(cli) == len(r) and np.array_equal(np.array([c["bbox"] for c in cli]), xywh.astype(np.float32).astype(np.float64)) \
    and [c["score"] for c in cli] == [float(s) for s in r.scores]
print(json.dumps({"detections": len(r), "cli": len(cli), "python_equals_cli": bool(same)}))
PY
echo "== done $(date +%T)"
