#!/usr/bin/env bash
# GPU machine: the exact (dynamic, unpadded) engine against the fast (static, padded) one, and
# reduced-precision engines against mmdetection's fixtures.
#   speed      R50 fp16: the preset's default engine (dynamic, each image at its own size) and a
#              static 800x1344 engine (every image padded to it, CUDA graphs); export times,
#              codetr-detect --benchmark on the demo image (1333x800 after resize, batch 1), and
#              how many of the exact engine's detections the fast one reproduces. Swin-L's default
#              engine is exported with a time limit (its dynamic compile is the slow one).
#   precision  dev/gpu/parity_precision.py (tiny presets, fp32/fp16/bf16 vs the mmdet fixtures)
# Usage (device tool, carry .deps): bash dev/gpu/exact.sh speed precision
set -uo pipefail
source "$(dirname "$0")/env.sh"
[ -x build-device/python/codetr/_lib/codetr-detect ] || build_native
DETECT=$PWD/build-device/python/codetr/_lib/codetr-detect
demo_ppm
R50=co_dino_5scale_r50_8xb2_1x_coco
SWIN=co_dino_5scale_swin_l_16xb1_1x_coco
run_speed() {
  local e=$ENGINES
  mkdir -p "$e"
  ( /usr/bin/time -f "swin_l_exact export %e s" timeout "${SWIN_LIMIT:-420}" python3 -m codetr export --preset $SWIN \
      --device cuda --dtype float16 -o "$e/swin_l_exact" > "$OUT/export_swin_l_exact.log" 2>&1;
    echo "swin_l_exact export rc=$?" >> "$OUT/export_swin_l_exact.log" ) &
  local swin=$!
  /usr/bin/time -f "r50_exact export %e s" python3 -m codetr export --preset $R50 --device cuda --dtype float16 \
    -o "$e/r50_exact" > "$OUT/export_r50_exact.log" 2>&1 &
  /usr/bin/time -f "r50_fast export %e s" python3 -m codetr export --preset $R50 --device cuda --dtype float16 \
    --height 800 --width 1344 -o "$e/r50_fast" > "$OUT/export_r50_fast.log" 2>&1 &
  wait %2 %3 2>/dev/null; wait "$!" 2>/dev/null
  tail -n 2 "$OUT/export_r50_exact.log" "$OUT/export_r50_fast.log"
  for name in r50_exact r50_fast; do
    local graphs=on; [ $name = r50_exact ] && graphs=off
    echo "== codetr-detect --benchmark $name (cuda graphs $graphs) $(date +%T)"
    "$DETECT" --model "$e/$name" --benchmark "${ITERS:-100}" --cuda-graphs $graphs "$IMAGE" 2>&1 | tee "$OUT/cli_$name.log" | tail -n 6
    "$DETECT" --model "$e/$name" --jsonl "$OUT/det_$name.jsonl" "$IMAGE" > /dev/null 2>&1
  done
  python3 - "$OUT/det_r50_exact.jsonl" "$OUT/det_r50_fast.jsonl" <<'PY'
import json, sys, torch
from codetr.precision import match_detections
a, b = (json.loads(open(p).readline())["detections"] for p in sys.argv[1:3])
for thr in (0.05, 0.3):
    da = [d for d in a if d["score"] > thr]; db = [d for d in b if d["score"] > thr]
    t = lambda ds, k, dt: torch.tensor([d[k] for d in ds], dtype=dt)
    m = match_detections(t(da, "bbox", torch.float64).reshape(-1, 4), t(da, "label", torch.int64),
                         t(db, "bbox", torch.float64).reshape(-1, 4), t(db, "label", torch.int64), 0.99)
    diff = max((abs(da[i]["score"] - db[j]["score"]) for i, j in m), default=None)
    print(json.dumps({"exact_vs_fast_score_thr": thr, "exact": len(da), "fast": len(db),
                      "matched_iou_0.99": len(m), "max_score_diff_matched": diff}))
PY
  wait "$swin"; tail -n 3 "$OUT/export_swin_l_exact.log"
}
run_precision() {
  python3 dev/gpu/parity_precision.py "$OUT"
}
for part in "$@"; do "run_$part"; done
