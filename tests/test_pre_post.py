"""Pre-processing (mmdet test pipeline) and post-processing (test_cfg): the runtime core (C++,
through codetr.preprocess / codetr.postprocess) against independent references.

Resize is checked bit-exactly against OpenCV (what mmcv calls) and the numpy oracle, NMS against
torchvision, soft-NMS against hand-computed cases, the pipeline against hand-computed pixels."""
import math

import numpy as np
import pytest
import torch
import torchvision

from codetr._native import runtime
from codetr.modeljson import pipeline_json
from codetr.postprocess import postprocess, postprocess_single
from codetr.preprocess import preprocess, resize_bilinear_u8
from codetr.presets import PRESETS, PostprocessConfig
from oracles.preprocess import rescale_size
from oracles.preprocess import resize_bilinear_u8 as oracle_resize


def with_postprocess(cfg: PostprocessConfig, name="co_dino_5scale_r50_8xb2_1x_coco"):
    return PRESETS[name].replace(postprocess=cfg)


def batched_nms(boxes, scores, labels, cfg: PostprocessConfig):
    """The core's mmcv.ops.batched_nms with cfg's NMS settings -> (keep, scores) tensors."""
    spec = pipeline_json(with_postprocess(cfg).to_metadata())
    keep, kept = runtime.batched_nms(boxes.numpy(), scores.numpy(), labels.numpy(), spec)
    return torch.from_numpy(keep), torch.from_numpy(kept)


def soft_nms(boxes, scores, iou_threshold, method, sigma=0.5, min_score=1e-3):
    cfg = PostprocessConfig(nms_type="soft_nms", iou_threshold=iou_threshold, soft_nms_method=method, sigma=sigma,
                            min_score=min_score)
    return batched_nms(boxes, scores, torch.zeros(len(scores), dtype=torch.int64), cfg)


def meta(scale_factor, shape=(100, 100)):
    return {"ori_shape": shape, "img_shape": shape, "scale_factor": scale_factor}

cv2 = pytest.importorskip("cv2")


@pytest.mark.parametrize("src,dst", [((480, 640), (800, 1067)), ((375, 500), (534, 712)), ((427, 640), (200, 301)),
                                     ((64, 48), (32, 24)), ((100, 37), (33, 91)), ((7, 5), (13, 1)),
                                     ((333, 517), (1024, 1590))])
def test_resize_matches_opencv_bit_exact(src, dst):
    rng = np.random.default_rng(sum(src) + sum(dst))
    img = rng.integers(0, 256, src + (3,), dtype=np.uint8)
    ref = cv2.resize(img, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(resize_bilinear_u8(img, dst[1], dst[0]), ref)
    assert np.array_equal(oracle_resize(img, dst[1], dst[0]), ref)


def test_rescale_size_rule():
    # 640x480 into (1333, 800): min(1333/640, 800/480) = 5/3 -> (int(1066.67 + .5), int(800 + .5))
    assert rescale_size(640, 480, (1333, 800)) == ((1067, 800), pytest.approx(5 / 3))
    # very wide: the long edge limits: 1333/2000
    (w, h), s = rescale_size(2000, 500, (1333, 800))
    assert s == pytest.approx(1333 / 2000) and (w, h) == (1333, int(500 * 1333 / 2000 + 0.5))


def test_preprocess_non_lsj_padding_after_normalisation():
    preset = PRESETS["co_dino_5scale_r50_8xb2_1x_coco"]
    img0 = np.zeros((60, 80, 3), np.uint8)
    img0[..., 0], img0[..., 1], img0[..., 2] = 10, 20, 30  # B, G, R
    img1 = np.full((40, 90, 3), 200, np.uint8)
    batch, masks, metas = preprocess([img0, img1], preset)
    # 80x60 -> s = min(1333/80, 800/60) = 13.33 -> 1067x800; 90x40 -> s = min(1333/90, 20) -> 1333x592
    assert metas[0]["img_shape"] == (800, 1067) and metas[1]["img_shape"] == (592, 1333)
    # float32 factors, as mmdet divides float32 boxes by them
    assert metas[0]["scale_factor"] == (np.float32(1067 / 80), np.float32(800 / 60))
    # mmdet's divisor (1): the batch is padded to its largest image only
    assert batch.shape == (2, 3, 800, 1333) and masks.shape == (2, 800, 1333)
    mean, std = preset.pipeline.mean, preset.pipeline.std
    # RGB order after conversion; constant image stays constant through bilinear resize
    expect = [(30 - mean[0]) / std[0], (20 - mean[1]) / std[1], (10 - mean[2]) / std[2]]
    torch.testing.assert_close(batch[0, :, 5, 7], torch.tensor(expect))
    assert torch.all(batch[0, :, :, 1067:] == 0) and torch.all(batch[1, :, 592:, :] == 0)
    assert not masks[0, :800, :1067].any() and masks[0, :, 1067:].all() and masks[1, 592:].all()
    assert not masks[1, :592].any()
    batch32, _, _ = preprocess([img0, img1], preset, pad_size_divisor=32)
    assert batch32.shape == (2, 3, 800, 1344)


def test_preprocess_lsj_pads_uint8_before_normalisation_and_drops_mask():
    preset = PRESETS["co_dino_5scale_r50_lsj_8xb2_1x_coco"]
    img = np.full((300, 400, 3), 50, np.uint8)
    batch, masks, metas = preprocess([img], preset)
    assert masks is None
    # img_shape is the resized image's region; the fixed pad makes the whole input valid (no mask)
    assert batch.shape == (1, 3, 1024, 1024) and metas[0]["img_shape"] == (768, 1024)
    assert metas[0]["pad_shape"] == (1024, 1024)
    assert metas[0]["scale_factor"] == (np.float32(1024 / 400), np.float32(768 / 300))
    mean, std = preset.pipeline.mean, preset.pipeline.std
    torch.testing.assert_close(batch[0, :, 1000, 10], torch.tensor([(114 - m) / s for m, s in zip(mean, std)]))
    torch.testing.assert_close(batch[0, :, 10, 10], torch.tensor([(50 - m) / s for m, s in zip(mean, std)]))


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match=r"image 0: expected shape \(H, W, 3\)"):
        preprocess([np.zeros((10, 10), np.uint8)], "co_dino_5scale_r50_8xb2_1x_coco")
    with pytest.raises(ValueError, match="image 1: expected a uint8 array"):
        preprocess([np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.float32)], "co_dino_5scale_r50_8xb2_1x_coco")


def test_hard_nms_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 40 + 1], 1)
    scores = torch.rand(200, generator=g)
    labels = torch.randint(0, 3, (200,), generator=g)
    cfg = PostprocessConfig(nms_type="nms", iou_threshold=0.5)
    keep, kept_scores = batched_nms(boxes, scores, labels, cfg)
    ref = torchvision.ops.batched_nms(boxes, scores, labels, 0.5)
    assert torch.equal(keep, ref) and torch.equal(kept_scores, scores[ref])


def test_soft_nms_linear_hand_computed():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 8], [0, 0, 10, 5], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    keep, s = soft_nms(boxes, scores, iou_threshold=0.5, method="linear")
    # box0 first; IoU(0,1) = 0.8 -> 0.8 * 0.2 = 0.16; IoU(0,2) = 0.5 -> 0.7 * 0.5 = 0.35; box3 untouched
    # then box3 (0.6), box2 (0.35; IoU(2,1) = 50/80 = 0.625 -> 0.16 * 0.375 = 0.06), box1
    assert keep.tolist() == [0, 3, 2, 1]
    torch.testing.assert_close(s, torch.tensor([0.9, 0.6, 0.35, 0.16 * 0.375]))


def test_soft_nms_gaussian_and_min_score():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 8], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.0015])
    keep, s = soft_nms(boxes, scores, iou_threshold=0.8, sigma=0.5, min_score=1e-3, method="gaussian")
    # gaussian decays every box by exp(-iou^2 / sigma); box2 (IoU 1) falls below min_score and is dropped
    assert keep.tolist() == [0, 1]
    torch.testing.assert_close(s, torch.tensor([0.9, 0.8 * math.exp(-0.64 / 0.5)]))


def test_postprocess_rescales_before_class_aware_soft_nms():
    cfg = PRESETS["co_dino_5scale_r50_8xb2_1x_coco"].postprocess  # soft_nms iou 0.8, 300
    boxes = torch.tensor([[0, 0, 20, 20], [0, 0, 20, 20], [0, 0, 20, 19], [40, 40, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([1, 2, 1, 1])
    out = postprocess_single(boxes, scores, labels, meta((2.0, 4.0)), with_postprocess(cfg))
    # different classes never interact; same class IoU 0.95 >= 0.8 -> 0.7 * 0.05
    assert out["labels"].tolist() == [1, 2, 1, 1]
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.8, 0.6, 0.7 * 0.05]))
    torch.testing.assert_close(out["bboxes"][0], torch.tensor([0, 0, 10, 5.0]))
    torch.testing.assert_close(out["bboxes"][2], torch.tensor([20, 10, 30, 15.0]))
    capped = postprocess_single(boxes, scores, labels, meta((1.0, 1.0)),
                                with_postprocess(PostprocessConfig(max_per_img=2, score_thr=0.65)))
    assert capped["scores"].tolist() == pytest.approx([0.9, 0.8])


def test_postprocess_batch_and_metadata():
    preset = PRESETS["co_dino_5scale_swin_l_lsj_16xb1_1x_coco"]
    boxes = torch.tensor([[[0, 0, 10, 10.0]]]).repeat(2, 1, 1)
    out = postprocess(boxes, torch.tensor([[0.5], [0.4]]), torch.tensor([[3], [4]]),
                      [meta((1.0, 1.0)), meta((2.0, 2.0))], preset)
    assert out[1]["bboxes"].tolist() == [[0, 0, 5, 5]] and out[1]["labels"].tolist() == [4]
    m = preset.to_metadata()
    assert m["preprocess"]["pad"] == {"size": [1280, 1280]} and m["preprocess"]["pad_value"] == 114.0
    assert m["preprocess"]["pad_stage"] == "before_normalize" and m["preprocess"]["mask"] == "none"
    assert m["postprocess"] == {"score_thr": 0.0, "max_per_img": 300, "clip": False, "nms": {
        "type": "soft_nms", "iou_threshold": 0.8, "method": "linear", "sigma": 0.5, "min_score": 0.001}}
    r50 = PRESETS["co_dino_5scale_r50_8xb2_1x_coco"].to_metadata()
    assert r50["preprocess"]["pad"] == {"size_divisor": 1} and r50["preprocess"]["mask"] == "padding"
    assert r50["preprocess"]["resize"] == {"scale": [1333, 800], "keep_ratio": True, "interpolation": "bilinear"}
    assert len(r50["classes"]) == r50["num_classes"] == 80


@torch.no_grad()
def test_end_to_end_image_to_detections():
    """preprocess -> model -> postprocess on two images of different size (reduced model and
    resize scale): detections in original-image pixels, sorted by selection order."""
    from codetr.models import build_model
    from codetr.presets import REDUCED_PRESETS, PipelineConfig

    preset = REDUCED_PRESETS["tiny_r50"].replace(pipeline=PipelineConfig(resize_scale=(160, 128)))
    model = build_model(preset, msda_impl="pytorch")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)]
    batch, masks, metas = preprocess(images, preset)
    assert batch.shape == (2, 3, 160, 160) and masks is not None
    assert [m["img_shape"] for m in metas] == [(120, 160), (160, 107)]
    boxes, scores, labels = model(batch, masks)
    # valid region from the mask: boxes clamped to each image's img_shape
    assert boxes[0, :, 3].max() <= 120 and boxes[1, :, 2].max() <= 107
    results = postprocess(boxes, scores, labels, metas, preset)
    for r, img in zip(results, images):
        h, w = img.shape[:2]
        assert 0 < len(r["scores"]) <= 300
        assert r["bboxes"][:, 2].max() <= w + 1e-3 and r["bboxes"][:, 3].max() <= h + 1e-3
