"""GPU machine: how far reduced-precision engines are from mmdetection's own inference.

For tiny_r50 (non-LSJ) and tiny_swin (LSJ) with the golden weights, exports the preset's default
engine (the exact one) on CUDA in float32, float16 and bfloat16, runs both fixture PNGs through
codetr.Detector and compares with the mmdet pipeline fixtures (tests/fixtures/golden/pipeline_*):
detections above 0.05 in each, the share of mmdet's matched one to one (same label, IoU >= 0.999,
|score diff| <= 1e-4, as the CPU test demands of float32), the share matched at IoU >= 0.99 with any
score, and the largest score difference of those pairs. One JSON line per (preset, dtype, image).
  python3 dev/gpu/parity_precision.py OUT_DIR
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))
import codetr  # noqa: E402
from codetr.export import ExportOptions, export  # noqa: E402
from codetr.precision import match_detections  # noqa: E402

GOLDEN = ROOT / "tests" / "fixtures" / "golden"
IMAGES = ("odd_517x333", "portrait_301x479")


def pairs(ref_boxes, ref_scores, ref_labels, boxes, scores, labels, min_iou, max_score_diff):
    """One-to-one matching in mmdet's (score) order; returns the matched score differences."""
    matched = match_detections(ref_boxes, ref_labels, boxes, labels, min_iou, ref_scores=ref_scores,
                               out_scores=scores, max_score_diff=max_score_diff)
    return [abs(float(ref_scores[i]) - float(scores[j])) for i, j in matched]


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tiny_r50", "tiny_swin"):
        ref = load_file(str(GOLDEN / f"pipeline_{name}.safetensors"))
        for dtype in ("float32", "float16", "bfloat16"):
            model_dir = Path(tempfile.mkdtemp(prefix=f"{name}_{dtype}_"))
            t0 = time.perf_counter()
            export(ExportOptions(preset=name, checkpoint=GOLDEN / f"{name}.safetensors", output=model_dir,
                                 device="cuda", dtype=dtype), log=lambda line: None)
            export_s = time.perf_counter() - t0
            det = codetr.Detector(model_dir)
            for stem in IMAGES:
                image = cv2.imread(str(GOLDEN / "images" / f"{stem}.png"), cv2.IMREAD_COLOR)
                d = det.detect(image)
                rb, rs, rl = (ref[f"{stem}_{k}"] for k in ("boxes", "scores", "labels"))
                keep_r = rs > 0.05
                boxes, scores, labels = (torch.as_tensor(x) for x in (d.boxes, d.scores, d.labels))
                keep = scores > 0.05
                args = (rb[keep_r], rs[keep_r], rl[keep_r], boxes[keep], scores[keep], labels[keep].long())
                strict = pairs(*args, 0.999, 1e-4)
                loose = pairs(*args, 0.99, 1.0)
                n_ref = int(keep_r.sum())
                line = {"preset": name, "dtype": dtype, "image": stem, "engine": "dynamic" if
                        json.loads((model_dir / "model.json").read_text())["input"]["dynamic"] else "static",
                        "export_s": round(export_s, 1), "mmdet_above_0.05": n_ref, "codetr_above_0.05": int(keep.sum()),
                        "matched_strict": round(len(strict) / n_ref, 4), "matched_iou_0.99": round(len(loose) / n_ref, 4),
                        "max_score_diff_iou_0.99": max(loose) if loose else None}
                print(json.dumps(line), flush=True)
                with open(out_dir / "parity_precision.jsonl", "a") as f:
                    f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out"))
