"""End-to-end parity with mmdetection's own inference, from PNG file to final boxes in original
pixels: mmdet's `init_detector` + `inference_detector` (official test pipeline, data preprocessor
and query-head test_cfg with soft-NMS) produced tests/fixtures/golden/pipeline_<name>.*
(procedure: tests/fixtures/README.md, "Pipeline fixtures"). Here codetr's eager path on the same
files: cv2.imread -> codetr.preprocess -> model -> codetr.postprocess.

Bar: the same number of detections above score 0.05, and a one-to-one matching of them with the
same label, |score difference| <= 1e-4 and IoU >= 0.999. Matching (instead of comparing position
by position) keeps a legitimate float-level swap of two near-tied scores from failing the test;
the fixture json records the smallest gap between consecutive scores (~4e-6).
"""
import json
import os

import cv2
import pytest
import torch
from safetensors.torch import load_file

from codetr.models import build_model
from codetr.postprocess import postprocess
from codetr.precision import box_iou
from codetr.preprocess import preprocess

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "golden")
IMAGES = ("odd_517x333", "portrait_301x479")
SCORE_THR = 0.05
MAX_SCORE_DIFF = 1e-4
MIN_IOU = 0.999
# mmdet's batch padding per config: the non-LSJ DetDataPreprocessor pads with pad_size_divisor=1
# (one image alone is fed at exactly its resized size); the LSJ pipeline pads every image to
# 1280x1280 in its Pad transform, which is the tiny_swin preset's own rule.
PREPROCESS_KWARGS = {"tiny_r50": {"pad_size_divisor": 1}, "tiny_swin": {}}


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
    iou = box_iou(rb.double(), gb.double())
    ok = (rl[:, None] == gl[None, :]) & ((rs[:, None].double() - gs[None, :].double()).abs() <= MAX_SCORE_DIFF)
    iou = torch.where(ok, iou, torch.full_like(iou, -1.0))
    used = torch.zeros(len(gs), dtype=torch.bool)
    for i in range(len(rs)):  # mmdet's order: highest scores first
        cand = iou[i].masked_fill(used, -1.0)
        j = int(cand.argmax())
        assert cand[j] >= MIN_IOU, (
            f"{where}: mmdet detection {i} (label {int(rl[i])}, score {float(rs[i]):.6f}, box {rb[i].tolist()}) "
            f"has no unmatched codetr detection with the same label, |score diff| <= {MAX_SCORE_DIFF} "
            f"and IoU >= {MIN_IOU} (best {float(cand[j]):.6f})")
        used[j] = True


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
        batch, masks, metas = preprocess([image], name, **PREPROCESS_KWARGS[name])
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
