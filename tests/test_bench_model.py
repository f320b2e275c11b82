"""tools/bench_model.py's FLOP count (meta device, per stage) against FLOPs worked out by hand from
Co-DINO R50's architecture (mmdetection's config): the neck's convolutions and the deformable
sampling, which FlopCounterMode cannot see and the tool counts itself."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
R50 = "co_dino_5scale_r50_8xb2_1x_coco"


@pytest.fixture(scope="module")
def bench_model():
    spec = importlib.util.spec_from_file_location("bench_model", ROOT / "tools" / "bench_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_model"] = module
    spec.loader.exec_module(module)
    return module


def conv_flops(c_in, c_out, k, h_out, w_out):
    return 2 * c_in * c_out * k * k * h_out * w_out


@pytest.mark.parametrize("batch", [1, 2])
def test_r50_flops_by_hand(bench_model, batch):
    H, W = 768, 1152
    flops = bench_model.count_flops(R50, batch, H, W)
    stages = flops["stages"]

    # ChannelMapper: a 1x1 conv to 256 channels per ResNet-50 level (256/512/1024/2048 channels at
    # strides 4..32), then a 3x3 stride-2 conv from the last level (GroupNorm is not a matmul).
    levels = [(256, 4), (512, 8), (1024, 16), (2048, 32)]
    neck = sum(conv_flops(c, 256, 1, H // s, W // s) for c, s in levels) + conv_flops(2048, 256, 3, H // 64, W // 64)
    assert stages["neck"] == batch * neck

    # MSDA: per sample 4 bilinear corners x D multiply-adds + the weight x D, x2 FLOPs; 8 heads of
    # D = 32, 5 levels, 4 points; the encoder's queries are all tokens of the five levels (strides
    # 4..64), the decoder's the 900 queries; 6 layers each.
    tokens = sum((H // s) * (W // s) for s in (4, 8, 16, 32, 64))
    per_query = 8 * 5 * 4 * (4 * 32 + 32) * 2
    assert flops["msda"] == batch * 6 * (tokens + 900) * per_query

    parts = sum(v for k, v in stages.items() if k != "total")
    assert parts == stages["total"] == flops["total"]
    assert all(stages[k] > 0 for k in ("backbone", "neck", "encoder", "decoder", "head"))


def test_stage_split_is_additive(bench_model):
    one = bench_model.count_flops(R50, 1, 256, 384)["stages"]
    three = bench_model.count_flops(R50, 3, 256, 384)["stages"]
    assert three == {k: 3 * v for k, v in one.items()}
