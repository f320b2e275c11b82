"""A tiny stand-in for an exported Co-DINO engine, used to test the C++ runtime.

It follows the engine contract of model.json (forward(images[, masks]) -> boxes (B,Q,4) xyxy
in input pixels clamped to the valid region, scores (B,Q), labels (B,Q) int64) with a few
deterministic ops of the image, so the C++ runtime's detections can be compared with this module
run eagerly in Python. `build_package` compiles it to a CPU AOTInductor package with model.json.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

import codetr
from codetr import modeljson

NUM_QUERIES = 300
CLASSES = ["disc", "box", "bar", "ring", "dot"]
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


class StandInEngine(torch.nn.Module):
    """300 boxes on a 10x30 grid; sizes, scores and labels depend on local image statistics."""

    def __init__(self, num_classes: int, with_mask: bool):
        super().__init__()
        self.num_classes = num_classes
        self.with_mask = with_mask
        # Fixed per-query offsets keep scores and sizes distinct on flat image regions, so the
        # detection order never hinges on exact ties.
        jitter = torch.rand(3, NUM_QUERIES, generator=torch.Generator().manual_seed(0))
        self.register_buffer("jitter", jitter)

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None):
        b, _, h, w = images.shape
        feat = F.adaptive_avg_pool2d(images.float(), (10, 30)).flatten(2)  # (B,3,300)
        ys = (torch.arange(10, device=images.device, dtype=torch.float32) + 0.5) / 10
        xs = (torch.arange(30, device=images.device, dtype=torch.float32) + 0.5) / 30
        cy = ys[:, None].expand(10, 30).reshape(1, -1)
        cx = xs[None, :].expand(10, 30).reshape(1, -1)
        bw = 0.05 + 0.2 * torch.sigmoid(feat[:, 0]) + 0.05 * self.jitter[0]
        bh = 0.05 + 0.2 * torch.sigmoid(feat[:, 1] * 2.0) + 0.05 * self.jitter[1]
        if masks is not None:
            valid = ~masks
            valid_h = valid[:, :, 0].sum(1).float()[:, None]
            valid_w = valid[:, 0, :].sum(1).float()[:, None]
        else:
            valid_h = torch.full((b, 1), float(h), device=images.device)
            valid_w = torch.full((b, 1), float(w), device=images.device)
        x1 = torch.minimum(((cx - bw / 2) * valid_w).clamp(min=0), valid_w)
        x2 = torch.minimum(((cx + bw / 2) * valid_w).clamp(min=0), valid_w)
        y1 = torch.minimum(((cy - bh / 2) * valid_h).clamp(min=0), valid_h)
        y2 = torch.minimum(((cy + bh / 2) * valid_h).clamp(min=0), valid_h)
        boxes = torch.stack([x1, y1, x2, y2], dim=-1)
        scores = torch.sigmoid(feat.sum(1) * 0.5 + 4.0 * self.jitter[2] - 2.0)
        labels = (torch.sigmoid(feat[:, 2] * 3.0) * self.num_classes).long().clamp(max=self.num_classes - 1)
        return boxes, scores, labels


# Dynamic stand-in: batch 1..4, H and W multiples of 32 in [64, 640], mmdet-style (320, 256) scale.
DYNAMIC_INPUT = {"min_batch": 1, "max_batch": 4, "dynamic": True, "min_height": 64, "max_height": 640,
                 "min_width": 64, "max_width": 640, "multiple": 32}
DYNAMIC_SCALE = [320, 256]


def model_json(batch: int, height: int, width: int, with_mask: bool, classes=CLASSES, dynamic: bool = False) -> dict:
    if dynamic:
        batch = height = width = -1
    inputs = [{"name": "images", "shape": [batch, 3, height, width], "dtype": "float32"}]
    if with_mask:
        inputs.append({"name": "masks", "shape": [batch, height, width], "dtype": "bool"})
    spec = {
        "format_version": modeljson.FORMAT_VERSION,
        "preset": "standin",
        "engine": {"format": "aoti", "file": "model.pt2"},
        "device": "cpu",
        "dtype": "float32",
        "torch_version": torch.__version__,
        "codetr_version": codetr.__version__,  # as `codetr export` writes it
        "classes": list(classes),
        "input": {"batch": batch, "dynamic": False, "height": height, "width": width, "multiple": 32},
        "inputs": inputs,
        "outputs": [
            {"name": "boxes", "shape": [batch, NUM_QUERIES, 4], "dtype": "float32"},
            {"name": "scores", "shape": [batch, NUM_QUERIES], "dtype": "float32"},
            {"name": "labels", "shape": [batch, NUM_QUERIES], "dtype": "int64"},
        ],
        "preprocess": {
            "bgr_to_rgb": True,
            "resize": {"scale": [max(height, width), min(height, width)], "keep_ratio": True,
                       "interpolation": "bilinear"},
            "pad": {"size": [height, width]},
            "pad_value": 0.0,
            "pad_stage": "after_normalize",
            "mean": MEAN,
            "std": STD,
            "mask": "padding" if with_mask else "none",
        },
        "postprocess": {
            "score_thr": 0.0,
            "nms": {"type": "soft_nms", "iou_threshold": 0.8, "method": "linear", "sigma": 0.5,
                    "min_score": 0.001},
            "max_per_img": 100,
            "clip": False,
        },
    }
    if dynamic:
        spec["input"] = dict(DYNAMIC_INPUT)
        spec["preprocess"]["resize"]["scale"] = list(DYNAMIC_SCALE)
        spec["preprocess"]["pad"] = {"size_divisor": 32}
    return spec


def build_package(out_dir: os.PathLike, batch: int = 2, height: int = 160, width: int = 224,
                  with_mask: bool = True, dynamic: bool = False) -> Path:
    """Compiles the stand-in to out_dir/model.pt2 (CPU) and writes out_dir/model.json. dynamic:
    batch, H and W are dynamic (DYNAMIC_INPUT); batch/height/width are then the trace sizes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    engine = StandInEngine(len(CLASSES), with_mask).eval()
    args = (torch.zeros(batch, 3, height, width),)
    if with_mask:
        args = args + (torch.zeros(batch, height, width, dtype=torch.bool),)
    dynamic_shapes = None
    if dynamic:
        b = torch.export.Dim("batch", min=DYNAMIC_INPUT["min_batch"], max=DYNAMIC_INPUT["max_batch"])
        h = torch.export.Dim("h32", min=DYNAMIC_INPUT["min_height"] // 32, max=DYNAMIC_INPUT["max_height"] // 32)
        w = torch.export.Dim("w32", min=DYNAMIC_INPUT["min_width"] // 32, max=DYNAMIC_INPUT["max_width"] // 32)
        dynamic_shapes = {"images": {0: b, 2: 32 * h, 3: 32 * w}, "masks": {0: b, 1: 32 * h, 2: 32 * w} if with_mask else None}
    with torch.no_grad():
        exported = torch.export.export(engine, args, dynamic_shapes=dynamic_shapes)
    spec = model_json(batch, height, width, with_mask, dynamic=dynamic)
    # The package records what it is compiled for, as codetr export's packages do.
    contract = modeljson.engine_contract(spec["dtype"], spec["input"], spec["inputs"], spec["outputs"])
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(
            exported, package_path=str(out / "model.pt2"),
            inductor_configs={"aot_inductor.metadata": {modeljson.ENGINE_CONTRACT_KEY: contract}})
    modeljson.write_model_json(out, spec)
    return out


if __name__ == "__main__":
    import sys
    print(build_package(sys.argv[1]))


# --- helpers shared by tests/test_runtime*.py -------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def runtime_binary(name: str) -> Path:
    """Path of a built runtime executable shipped beside the libraries (codetr._lib): codetr-detect."""
    from codetr import _lib

    return _lib.executable(name)


def require_opencv_cli() -> Path:
    """codetr-detect built with OpenCV image I/O (any format, video), or skip: the GPU machine's build
    has no OpenCV C++ and reads binary PPM only (`codetr-detect --build-info` says which)."""
    import subprocess

    import pytest

    cli = runtime_binary("codetr-detect")
    if not cli.exists():
        pytest.skip(f"{cli} is not built (tools/build.sh)")
    info = subprocess.run([str(cli), "--build-info"], capture_output=True, text=True, timeout=60).stdout
    if "image_io opencv" not in info:
        pytest.skip("codetr-detect was built without OpenCV (binary PPM only): these inputs need it")
    return cli
