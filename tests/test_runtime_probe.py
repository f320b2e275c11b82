"""The C++ runtime's NMS and preprocessing against torchvision / cv2, through the test
executable codetr_runtime_probe (tensors exchanged as torch.save files)."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

import runtime_standin as standin

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless provides the cv2 reference")
torchvision = pytest.importorskip("torchvision")

from reference_nms import reference_soft_nms  # noqa: E402  (needs torchvision)

PROBE = standin.runtime_binary("codetr_runtime_probe")
NMS_TYPES = {"none": 0, "nms": 1, "soft_linear": 2, "soft_gaussian": 3}


@pytest.fixture(scope="module")
def probe():
    if not PROBE.exists():
        pytest.skip(f"{PROBE} is not built (tools/build.sh)")
    return PROBE


def run_probe(probe, tmp_path, mode, tensors, *extra):
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save(list(tensors), src)
    proc = subprocess.run([str(probe), mode, *map(str, extra), str(src), str(dst)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return torch.load(dst)


def random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    # Clustered boxes so that many pairs overlap strongly.
    centres = torch.rand(n // 8 + 1, 2, generator=g) * 200
    idx = torch.randint(0, len(centres), (n,), generator=g)
    xy = centres[idx] + torch.randn(n, 2, generator=g) * 6
    wh = 10 + torch.rand(n, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.randperm(n, generator=g).float() / n + 0.5 / n  # distinct: no ties
    labels = torch.randint(0, 3, (n,), generator=g)
    return boxes, scores, labels


@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_hard_nms_matches_torchvision(probe, tmp_path, iou):
    boxes, scores, labels = random_boxes(300, seed=int(iou * 10))
    keep, kept_scores = run_probe(probe, tmp_path, "nms",
                                  [boxes, scores, labels, torch.tensor([1.0, iou, 0.5, 0.001])])
    expected = torchvision.ops.batched_nms(boxes, scores, labels, iou)
    assert 0 < len(expected) < len(boxes)
    assert keep.tolist() == expected.tolist()
    assert torch.equal(kept_scores, scores[expected])


@pytest.mark.parametrize("method", ["soft_linear", "soft_gaussian"])
def test_soft_nms_matches_fp64_reference(probe, tmp_path, method):
    boxes, scores, labels = random_boxes(120, seed=3)
    iou, sigma, min_score = 0.5, 0.5, 0.05
    keep, kept_scores = run_probe(probe, tmp_path, "nms", [boxes, scores, labels,
                                                           torch.tensor([float(NMS_TYPES[method]), iou, sigma, min_score])])
    shifted = boxes + (labels.float() * (boxes.max() + 1))[:, None]
    exp_keep, exp_scores = reference_soft_nms(shifted, scores, iou, method.removeprefix("soft_"), sigma, min_score)
    assert 0 < len(exp_keep) < len(boxes)  # something was decayed away
    assert keep.tolist() == exp_keep.tolist()
    torch.testing.assert_close(kept_scores.double(), exp_scores, rtol=1e-5, atol=1e-6)


def write_model_dir(tmp_path, **preprocess_overrides):
    cfg = standin.model_json(batch=1, height=160, width=224, with_mask=True)
    cfg["preprocess"].update(preprocess_overrides)
    (tmp_path / "model.json").write_text(json.dumps(cfg))
    return tmp_path, cfg


def cv2_pipeline(bgr, scale, pad_hw, cfg):
    h, w = bgr.shape[:2]
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    nh, nw = int(h * f + 0.5), int(w * f + 0.5)
    img = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    norm = (img.astype(np.float32) - np.float32(cfg["preprocess"]["mean"])) / np.float32(cfg["preprocess"]["std"])
    out = np.zeros((3, *pad_hw), np.float32)
    out[:, :nh, :nw] = norm.transpose(2, 0, 1)
    return out, nh, nw


# (1600, 2666) -> (800, 1333) is an exact 2x downscale, where OpenCV switches to INTER_AREA.
@pytest.mark.parametrize("hw", [(333, 517), (517, 333), (37, 51), (480, 640), (1000, 97), (2, 3), (1600, 2666)])
def test_preprocess_equals_cv2_pipeline(probe, tmp_path, hw):
    # A dynamic engine with mmdet's (1333, 800) scale and 32-divisor padding (no fitting).
    model_dir, cfg = write_model_dir(tmp_path, resize={"scale": [1333, 800], "keep_ratio": True,
                                                       "interpolation": "bilinear"}, pad={"size_divisor": 32})
    cfg["input"] = {"batch": 1, "dynamic": True, "min_height": 32, "max_height": 1344, "min_width": 32,
                    "max_width": 1344, "multiple": 32}
    cfg["inputs"][0]["shape"] = [1, 3, -1, -1]
    cfg["inputs"][1]["shape"] = [1, -1, -1]
    (model_dir / "model.json").write_text(json.dumps(cfg))
    bgr = np.random.default_rng(hw[0] * 7 + hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    images, masks, meta = run_probe(probe, tmp_path, "preprocess", [torch.from_numpy(bgr)], model_dir)
    ref, nh, nw = cv2_pipeline(bgr, (1333, 800), images.shape[2:], cfg)
    assert images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0
    assert images.shape[2] - nh < 32 and images.shape[3] - nw < 32
    assert (int(meta[0]), int(meta[1])) == (nh, nw)
    assert meta[2].item() == pytest.approx(nw / hw[1]) and meta[3].item() == pytest.approx(nh / hw[0])
    np.testing.assert_array_equal(images[0].numpy(), ref)  # bit-exact
    expected_mask = np.ones(images.shape[2:], bool)
    expected_mask[:nh, :nw] = False
    np.testing.assert_array_equal(masks[0].numpy(), expected_mask)


def test_soft_nms_matches_mmcv_kernel_output(probe, tmp_path):
    """Co-DINO's test_cfg soft-NMS (class-aware, linear, iou 0.8, sigma 0.5, min_score 1e-3), C++
    runtime and Python reference, against mmcv's own CPU soft_nms kernel run on the same 300
    clustered boxes (tests/fixtures/golden/soft_nms_io.safetensors; see its soft_nms.json)."""
    from safetensors.torch import load_file

    from codetr.postprocess import batched_nms
    from codetr.presets import PostprocessConfig

    io = load_file(str(standin.REPO / "tests" / "fixtures" / "golden" / "soft_nms_io.safetensors"))
    boxes, scores, labels = io["boxes"], io["scores"], io["labels"]
    mmcv_keep, mmcv_scores = io["out_keep"], io["out_dets"][:, 4]
    assert 0 < len(mmcv_keep) < len(boxes)

    cfg = PostprocessConfig()  # the presets' test_cfg defaults
    assert (cfg.nms_type, cfg.iou_threshold, cfg.soft_nms_method) == ("soft_nms", 0.8, "linear")
    py_keep, py_scores = batched_nms(boxes, scores, labels, cfg)
    assert py_keep.tolist() == mmcv_keep.tolist()
    torch.testing.assert_close(py_scores, mmcv_scores, rtol=1e-6, atol=1e-7)

    params = torch.tensor([float(NMS_TYPES["soft_linear"]), cfg.iou_threshold, cfg.sigma, cfg.min_score])
    cpp_keep, cpp_scores = run_probe(probe, tmp_path, "nms", [boxes, scores, labels, params])
    assert cpp_keep.tolist() == mmcv_keep.tolist()
    torch.testing.assert_close(cpp_scores, mmcv_scores, rtol=1e-6, atol=1e-7)
