"""The runtime core's NMS and preprocessing (C++, through the Python binding: the code codetr-detect
and codetr.Detector run) against torchvision, cv2, mmcv's own soft-NMS output and fp64 references,
and one Detector called from several threads at once."""
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

from codetr._native import runtime  # noqa: E402

NMS_CONFIGS = {
    "nms": lambda iou, sigma, min_score: {"type": "nms", "iou_threshold": iou},
    "soft_linear": lambda iou, sigma, min_score: {"type": "soft_nms", "iou_threshold": iou, "method": "linear",
                                                  "sigma": sigma, "min_score": min_score},
    "soft_gaussian": lambda iou, sigma, min_score: {"type": "soft_nms", "iou_threshold": iou, "method": "gaussian",
                                                    "sigma": sigma, "min_score": min_score},
}


def core_batched_nms(boxes, scores, labels, kind, iou, sigma=0.5, min_score=1e-3):
    """The core's batched NMS with an NMS section as model.json states it."""
    cfg = standin.model_json(batch=1, height=160, width=224, with_mask=True)
    cfg["postprocess"]["nms"] = NMS_CONFIGS[kind](iou, sigma, min_score)
    keep, kept = runtime.batched_nms(boxes.numpy(), scores.numpy(), labels.numpy(), json.dumps(cfg))
    return torch.from_numpy(keep), torch.from_numpy(kept)


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
def test_hard_nms_matches_torchvision(iou):
    boxes, scores, labels = random_boxes(300, seed=int(iou * 10))
    keep, kept_scores = core_batched_nms(boxes, scores, labels, "nms", iou)
    expected = torchvision.ops.batched_nms(boxes, scores, labels, iou)
    assert 0 < len(expected) < len(boxes)
    assert keep.tolist() == expected.tolist()
    assert torch.equal(kept_scores, scores[expected])


@pytest.mark.parametrize("method", ["soft_linear", "soft_gaussian"])
def test_soft_nms_matches_fp64_reference(method):
    boxes, scores, labels = random_boxes(120, seed=3)
    iou, sigma, min_score = 0.5, 0.5, 0.05
    keep, kept_scores = core_batched_nms(boxes, scores, labels, method, iou, sigma, min_score)
    shifted = boxes + (labels.float() * (boxes.max() + 1))[:, None]
    exp_keep, exp_scores = reference_soft_nms(shifted, scores, iou, method.removeprefix("soft_"), sigma, min_score)
    assert 0 < len(exp_keep) < len(boxes)  # something was decayed away
    assert keep.tolist() == exp_keep.tolist()
    torch.testing.assert_close(kept_scores.double(), exp_scores, rtol=1e-5, atol=1e-6)


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
def test_preprocess_equals_cv2_pipeline(hw):
    # A dynamic engine with mmdet's (1333, 800) scale and 32-divisor padding (no fitting).
    cfg = standin.model_json(batch=1, height=160, width=224, with_mask=True)
    cfg["preprocess"].update(resize={"scale": [1333, 800], "keep_ratio": True, "interpolation": "bilinear"},
                             pad={"size_divisor": 32})
    cfg["input"] = {"batch": 1, "dynamic": True, "min_height": 32, "max_height": 1344, "min_width": 32,
                    "max_width": 1344, "multiple": 32}
    bgr = np.random.default_rng(hw[0] * 7 + hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    images, masks, metas = runtime.preprocess([bgr], json.dumps(cfg), "bgr")
    ref, nh, nw = cv2_pipeline(bgr, (1333, 800), images.shape[2:], cfg)
    assert images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0
    assert images.shape[2] - nh < 32 and images.shape[3] - nw < 32
    assert metas[0]["img_shape"] == (nh, nw)
    assert metas[0]["scale_factor"] == (np.float32(nw / hw[1]), np.float32(nh / hw[0]))
    np.testing.assert_array_equal(images[0], ref)  # bit-exact
    expected_mask = np.ones(images.shape[2:], bool)
    expected_mask[:nh, :nw] = False
    np.testing.assert_array_equal(masks[0], expected_mask)


def test_soft_nms_matches_mmcv_kernel_output():
    """Co-DINO's test_cfg soft-NMS (class-aware, linear, iou 0.8, sigma 0.5, min_score 1e-3), the
    runtime core and the Python oracle, against mmcv's own CPU soft_nms kernel run on the same 300
    clustered boxes (tests/fixtures/golden/soft_nms_io.safetensors; see its soft_nms.json)."""
    from safetensors.torch import load_file

    from codetr.presets import PostprocessConfig
    from oracles.postprocess import batched_nms

    io = load_file(str(standin.REPO / "tests" / "fixtures" / "golden" / "soft_nms_io.safetensors"))
    boxes, scores, labels = io["boxes"], io["scores"], io["labels"]
    mmcv_keep, mmcv_scores = io["out_keep"], io["out_dets"][:, 4]
    assert 0 < len(mmcv_keep) < len(boxes)

    cfg = PostprocessConfig()  # the presets' test_cfg defaults
    assert (cfg.nms_type, cfg.iou_threshold, cfg.soft_nms_method) == ("soft_nms", 0.8, "linear")
    py_keep, py_scores = batched_nms(boxes, scores, labels, cfg)
    assert py_keep.tolist() == mmcv_keep.tolist()
    torch.testing.assert_close(py_scores, mmcv_scores, rtol=1e-6, atol=1e-7)

    cpp_keep, cpp_scores = core_batched_nms(boxes, scores, labels, "soft_linear", cfg.iou_threshold, cfg.sigma,
                                            cfg.min_score)
    assert cpp_keep.tolist() == mmcv_keep.tolist()
    torch.testing.assert_close(cpp_scores, mmcv_scores, rtol=1e-6, atol=1e-7)


def test_one_detector_serves_concurrent_threads(tmp_path):
    """detect() from 4 Python threads at once on one Detector (2 engine runners; the binding releases
    the GIL) equals sequential calls on the same distinct images."""
    from concurrent.futures import ThreadPoolExecutor

    import codetr

    model_dir = standin.build_package(tmp_path / "standin", batch=1, height=160, width=224)
    det = codetr.Detector(model_dir, num_runners=2)
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (150 + 7 * i, 200 - 5 * i, 3), dtype=np.uint8) for i in range(12)]
    sequential = [det.detect(img) for img in images]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(det.detect, images))
    for a, b in zip(sequential, concurrent):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_pixel_limit_reads_png_and_jpeg_headers_before_decoding():
    """codetr-detect's --max-pixels rule, shared by codetr.runtime.decode_image (serve, batch): the
    size a PNG/JPEG header declares is checked before any decoder runs."""
    import zlib

    from codetr.runtime import decode_image

    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    for ext in (".png", ".jpg"):
        data = cv2.imencode(ext, img)[1].tobytes()
        assert runtime.pixel_limit_error(data, 37 * 53) == ""
        assert runtime.pixel_limit_error(data, 37 * 53 - 1) == \
            f"the image is 53x37 = {37 * 53} pixels, over the limit of {37 * 53 - 1}"
        assert decode_image(data).shape == (37, 53, 3)
    # A 27-byte PNG start whose header claims 60000x60000: refused from the header, never decoded.
    ihdr = b"IHDR" + (60000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    bomb = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")
    with pytest.raises(ValueError, match=f"60000x60000 = 3600000000 pixels, over the limit of {runtime.default_max_pixels}"):
        decode_image(bomb)
    assert runtime.pixel_limit_error(b"not an image", 1) == ""  # unknown format: left to the decoder
    with pytest.raises(ValueError, match="cannot decode 12 bytes as an image"):
        decode_image(b"not an image")
