"""End-to-end parity with mmdetection's own inference, from PNG file to final boxes in original
pixels: mmdet's `init_detector` + `inference_detector` (official test pipeline, data preprocessor
and query-head test_cfg with soft-NMS) produced tests/fixtures/golden/pipeline_<name>.*
(procedure: tests/fixtures/README.md, "Pipeline fixtures"). Here, on the same files:
* codetr's eager path: cv2.imread -> codetr.preprocess -> model -> codetr.postprocess;
* the deployed path: the preset's default engine (`codetr export` without size options: a dynamic
  engine for the non-LSJ tiny_r50, a static one at the LSJ pad size for tiny_swin), run by the C++
  runtime through `codetr.Detector` and through `codetr-detect`; fp32 on the CPU, and on the GPU
  when there is one.

Bar: the same number of detections above score 0.05, and a one-to-one matching of them with the
same label, |score difference| <= 1e-4 and IoU >= 0.999. Matching (instead of comparing position
by position) keeps a legitimate float-level swap of two near-tied scores from failing the test;
the fixture json records the smallest gap between consecutive scores (~4e-6).
"""
import json
import os
import subprocess

import cv2
import pytest
import torch
from safetensors.torch import load_file

import codetr
from codetr.models import build_model
from codetr.postprocess import postprocess
from codetr.precision import box_iou, match_detections
from codetr.preprocess import preprocess

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "golden")
IMAGES = ("odd_517x333", "portrait_301x479")
SCORE_THR = 0.05
MAX_SCORE_DIFF = 1e-4
MIN_IOU = 0.999
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="needs a CUDA GPU"))]


def _reference(name):
    paths = [os.path.join(GOLDEN, f"pipeline_{name}.{ext}") for ext in ("safetensors", "json")]
    for p in paths:
        assert os.path.isfile(p), f"missing pipeline fixture {p}"
    with open(paths[1]) as f:
        return load_file(paths[0]), json.load(f)


def _match(got, ref_boxes, ref_scores, ref_labels, where):
    """Assert the detections above SCORE_THR pair up one-to-one within the bar."""
    keep_ref = ref_scores > SCORE_THR
    keep_got = got["scores"] > SCORE_THR
    assert int(keep_got.sum()) == int(keep_ref.sum()), \
        f"{where}: {int(keep_got.sum())} detections above {SCORE_THR}, mmdet has {int(keep_ref.sum())}"
    rb, rs, rl = ref_boxes[keep_ref], ref_scores[keep_ref], ref_labels[keep_ref]
    gb, gs, gl = got["bboxes"][keep_got], got["scores"][keep_got], got["labels"][keep_got]
    # mmdet's order: highest scores first
    pairs = match_detections(rb, rl, gb, gl, MIN_IOU, ref_scores=rs, out_scores=gs, max_score_diff=MAX_SCORE_DIFF)
    matched = {r for r, _ in pairs}
    missing = [i for i in range(len(rs)) if i not in matched]
    if missing:
        i = missing[0]
        same_label = gl == rl[i]
        best = float(box_iou(rb[i:i + 1].double(), gb[same_label].double()).max()) if same_label.any() else 0.0
        raise AssertionError(
            f"{where}: {len(missing)} of {len(rs)} mmdet detections unmatched; first: detection {i} (label "
            f"{int(rl[i])}, score {float(rs[i]):.6f}, box {rb[i].tolist()}) has no unmatched codetr detection with "
            f"the same label, |score diff| <= {MAX_SCORE_DIFF} and IoU >= {MIN_IOU} (best same-label IoU {best:.6f})")


@pytest.mark.parametrize("impl", ["pytorch", "op"])
@pytest.mark.parametrize("name", ["tiny_r50", "tiny_swin"])
def test_pipeline_matches_mmdet_inference(name, impl):
    ref, info = _reference(name)
    model = build_model(name, checkpoint=os.path.join(GOLDEN, f"{name}.safetensors"), msda_impl=impl)
    for stem in IMAGES:
        where = f"{name}/{impl}/{stem}"
        path = os.path.join(GOLDEN, "images", f"{stem}.png")
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        assert image is not None, f"cannot read {path}"
        batch, masks, metas = preprocess([image], name)  # the presets pad exactly as mmdet
        meta = metas[0]
        # preprocessing: same resized size, scale factors and network input size as mmdet
        assert tuple(meta["ori_shape"]) == tuple(info["images"][stem]["metainfo"]["ori_shape"]), where
        assert tuple(meta["img_shape"]) == tuple(ref[f"{stem}_resized_shape"].tolist()), where
        torch.testing.assert_close(torch.tensor(meta["scale_factor"], dtype=torch.float64),
                                   ref[f"{stem}_scale_factor"], rtol=1e-6, atol=0, msg=where)
        assert tuple(batch.shape[-2:]) == tuple(info["images"][stem]["metainfo"]["batch_input_shape"]), where
        with torch.no_grad():
            boxes, scores, labels = model(batch, masks)
        got = postprocess(boxes, scores, labels, metas, name)[0]
        _match(got, ref[f"{stem}_boxes"], ref[f"{stem}_scores"], ref[f"{stem}_labels"], where)


@pytest.fixture(scope="module")
def default_engines(tmp_path_factory):
    """(preset, device) -> model dir of `codetr export --preset P --checkpoint <fixture>` (no size
    options: the preset's default engine), exported on first use."""
    from codetr.export import ExportOptions, export

    made = {}

    def get(name, device):
        if (name, device) not in made:
            out = tmp_path_factory.mktemp(f"{name}_{device}_default")
            export(ExportOptions(preset=name, checkpoint=os.path.join(GOLDEN, f"{name}.safetensors"),
                                 output=out, device=device), log=lambda line: None)
            made[name, device] = out
        return made[name, device]
    return get


def _as_found(boxes, scores, labels):
    return {"bboxes": torch.as_tensor(boxes, dtype=torch.float32), "scores": torch.as_tensor(scores),
            "labels": torch.as_tensor(labels, dtype=torch.int64)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["tiny_r50", "tiny_swin"])
def test_default_engine_through_the_runtime_matches_mmdet_inference(name, device, default_engines):
    model_dir = default_engines(name, device)
    spec = json.loads((model_dir / "model.json").read_text())
    assert spec["input"]["dynamic"] == (name == "tiny_r50")
    ref, _ = _reference(name)
    detector = codetr.Detector(model_dir)
    for stem in IMAGES:
        image = cv2.imread(os.path.join(GOLDEN, "images", f"{stem}.png"), cv2.IMREAD_COLOR)
        dets = detector.detect(image)
        _match(_as_found(dets.boxes, dets.scores, dets.labels), ref[f"{stem}_boxes"], ref[f"{stem}_scores"],
               ref[f"{stem}_labels"], f"{name}/{device}/engine/{stem}")


@pytest.mark.parametrize("name", ["tiny_r50", "tiny_swin"])
def test_default_engine_through_codetr_detect_matches_mmdet_inference(name, default_engines, tmp_path):
    from runtime_standin import require_opencv_cli

    cli = require_opencv_cli()
    model_dir = default_engines(name, "cpu")
    paths = [os.path.join(GOLDEN, "images", f"{stem}.png") for stem in IMAGES]
    out = tmp_path / "detections.jsonl"
    proc = subprocess.run([str(cli), "--model", str(model_dir), "--jsonl", str(out), *paths],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    records = {os.path.basename(r["file"]): r for r in map(json.loads, out.read_text().splitlines())}
    ref, _ = _reference(name)
    for stem in IMAGES:
        dets = records[f"{stem}.png"]["detections"]
        found = _as_found(torch.tensor([d["bbox"] for d in dets]).reshape(-1, 4),  # xyxy, original pixels
                          torch.tensor([d["score"] for d in dets]), [d["label"] for d in dets])
        _match(found, ref[f"{stem}_boxes"], ref[f"{stem}_scores"], ref[f"{stem}_labels"], f"{name}/cli/{stem}")
