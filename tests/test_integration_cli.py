"""Integration: `codetr export` (real reduced Co-DINO, golden weights, CPU AOTInductor package) ->
`codetr-detect` (C++) on bundled images == Python eager detections (codetr.preprocess -> model ->
codetr.postprocess): same detections in the same order, boxes within 1e-3 relative, same labels."""
import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime_standin import REPO, runtime_binary
from conftest import TINY_R50_WEIGHTS

CLI = runtime_binary("codetr-detect")
DATA = REPO / "tests" / "data"
# Landscape images (the package is a landscape 128x160 static engine: these keep mmcv's rule).
IMAGES = [DATA / "shapes_200x150.png", DATA / "shapes_517x333.jpg", REPO / "python" / "codetr" / "assets" / "demo.jpg"]
# The 80 COCO category ids, in class order (codetr-detect writes these for COCO-80 class lists).
COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
            31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
            56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
            85, 86, 87, 88, 89, 90]


def python_detections(path: Path, spec: dict):
    """Eager reference for one image with the engine's pre/post-processing rules from model.json."""
    from PIL import Image

    from codetr.models import build_model
    from codetr.postprocess import postprocess
    from codetr.preprocess import preprocess
    from codetr.presets import get_preset

    preset = get_preset(spec["preset"])
    # The static engine's resize scale (written by the exporter) instead of the preset's own.
    preset = preset.replace(pipeline=dataclasses.replace(preset.pipeline,
                                                         resize_scale=tuple(spec["preprocess"]["resize"]["scale"])))
    bgr = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"))[:, :, ::-1])
    images, masks, metas = preprocess([bgr], preset, pad_size=tuple(spec["preprocess"]["pad"]["size"]))
    model = build_model(spec["preset"], checkpoint=TINY_R50_WEIGHTS, msda_impl="op")
    with torch.no_grad():
        boxes, scores, labels = model(images, masks)
    det = postprocess(boxes, scores, labels, metas, preset)[0]
    h, w = bgr.shape[:2]
    bboxes = det["bboxes"].clone()
    bboxes[:, 0::2] = bboxes[:, 0::2].clamp(0, w)
    bboxes[:, 1::2] = bboxes[:, 1::2].clamp(0, h)
    return bboxes, det["scores"], det["labels"]


def test_cli_on_exported_model_matches_python_eager(exported_tiny_package, tmp_path):
    pytest.importorskip("PIL")
    from runtime_standin import require_opencv_cli

    require_opencv_cli()
    spec = json.loads((exported_tiny_package / "model.json").read_text())
    out_json = tmp_path / "results.json"
    proc = subprocess.run([str(CLI), "--model", str(exported_tiny_package), "--device", "cpu",
                           "--json", str(out_json), *map(str, IMAGES)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    results = json.loads(out_json.read_text())
    for path in IMAGES:
        got = [r for r in results if r["file_name"] == path.name]
        ref_boxes, ref_scores, ref_labels = python_detections(path, spec)
        assert len(got) == len(ref_labels) > 0, path.name
        got_xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in got)])
        rel = (got_xyxy - ref_boxes).norm() / ref_boxes.norm()
        assert rel <= 1e-3, f"{path.name}: boxes rel err {rel:.2e}"
        assert [r["category_id"] for r in got] == [COCO_IDS[i] for i in ref_labels.tolist()], path.name
        torch.testing.assert_close(torch.tensor([r["score"] for r in got]), ref_scores, rtol=1e-3, atol=1e-4)
