"""Latency of an exported ONNX model dir under onnxruntime (CPU), median of N calls after warm-up.

  python tools/bench_onnx_cpu.py DIR [--iters 10] [--warmup 2] [--threads 0]
Feeds a random normalised image (and an all-valid mask when model.json lists one).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from codetr.onnx_engine import OnnxEngine  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    engine = OnnxEngine(args.model_dir)
    spec = engine.spec["inputs"]
    _, _, H, W = spec[0]["shape"]
    images = torch.randn(1, 3, H, W)
    masks = torch.zeros(1, H, W, dtype=torch.bool) if len(spec) > 1 else None
    for _ in range(args.warmup):
        engine(images, masks)
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        engine(images, masks)
        times.append((time.perf_counter() - t0) * 1e3)
    print(f"onnxruntime CPU {args.model_dir}: {W}x{H} median {statistics.median(times):.1f} ms "
          f"(min {min(times):.1f}, {args.iters} runs)")


if __name__ == "__main__":
    main()
