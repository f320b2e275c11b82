"""codetr-detect on a real exported Co-DINO package (tiny_r50 with the golden weights, shared
`exported_tiny_package` fixture) against the Python eager pipeline: codetr.preprocess with the
engine's resize/pad rule, the eager model, codetr.postprocess."""
from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
import torch

import runtime_standin as standin
from conftest import TINY_R50_WEIGHTS

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless reads the images for the reference")

DATA = Path(__file__).resolve().parent / "data"
DEMO = standin.REPO / "python" / "codetr" / "assets" / "demo.jpg"
CLI = standin.runtime_binary("codetr-detect")
# COCO's category ids of the 80 classes (ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 are unused).
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def test_cli_matches_python_eager_codino(exported_tiny_package, tmp_path):
    standin.require_opencv_cli()
    from codetr.models import build_model
    from codetr.postprocess import postprocess_single
    from codetr.preprocess import preprocess
    from codetr.presets import get_preset

    spec = json.loads((exported_tiny_package / "model.json").read_text())
    # Landscape images: the engine's (long, short) scale fits them into the 128x160 input (the
    # Python pipeline has no fit rule for portrait images; the stand-in tests cover it).
    images = [DATA / "shapes_517x333.jpg", DATA / "shapes_200x150.png", DEMO]
    out_json = tmp_path / "results.json"
    proc = subprocess.run([str(CLI), "--model", str(exported_tiny_package), "--json", str(out_json), *map(str, images)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out_json.read_text())

    preset = get_preset("tiny_r50")
    pipeline = dataclasses.replace(preset.pipeline, resize_scale=tuple(spec["preprocess"]["resize"]["scale"]))
    preset = preset.replace(pipeline=pipeline)
    engine_size = tuple(spec["preprocess"]["pad"]["size"])
    model = build_model("tiny_r50", checkpoint=TINY_R50_WEIGHTS, msda_impl="op").eval()
    for path in images:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        batch, masks, metas = preprocess([bgr], preset, pad_size=engine_size)
        with torch.no_grad():
            boxes, scores, labels = model(batch, masks)
        ref = postprocess_single(boxes[0], scores[0], labels[0], metas[0], preset)
        ref_boxes = ref["bboxes"]  # no clip: mmdet's rule, the runtime's default

        got = [r for r in results if r["file_name"] == path.name]
        assert len(got) == len(ref["labels"]), path.name
        assert [g["category_id"] for g in got] == [COCO_IDS[i] for i in ref["labels"].tolist()], path.name
        got_xyxy = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in (g["bbox"] for g in got)])
        torch.testing.assert_close(got_xyxy, ref_boxes, rtol=1e-3, atol=1e-2, msg=path.name)
        torch.testing.assert_close(torch.tensor([g["score"] for g in got]), ref["scores"], rtol=1e-3, atol=1e-4)
