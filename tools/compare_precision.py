"""float16 / bfloat16 vs float32 of the same Co-DINO on the same input, as JSON on stdout.

Builds the preset once in float32 (random weights from --seed, or --checkpoint), copies it to each
reduced dtype, runs every copy eagerly on one image tensor and compares each with float32
(codetr.precision.compare_detections): finite outputs, scores max abs diff (sorted score lists),
box rel err and score diff of the matched detections, and the share of float32's top-k detections
matched by the reduced run (same label, IoU >= 0.9). Target for a trained model: every
run finite and top-100 agreement >= 0.95 ("meets_target"). With random weights the scores sit in
a narrow band and tiny differences reorder them: the agreement then says little about a trained
model (see BENCHMARKS.md).

Input: --image (a picture, through the preset's test pipeline at a fixed --size) or, by default,
a seeded random normalised tensor of --size. Device: cuda when available, else cpu (--device).
Exit code 0 when every run is finite, 1 when one is not (the JSON says which), 2 on bad arguments.

  python tools/compare_precision.py --preset co_dino_5scale_swin_l_16xb1_1x_coco --size 1152x768 \\
      --checkpoint co_dino_swin_l.pth --image demo.jpg          # on the GPU machine
  python tools/compare_precision.py --preset tiny_swin --size 160x128 --device cpu   # quick CPU check
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from codetr.models import build_model  # noqa: E402
from codetr.precision import compare_detections  # noqa: E402
from codetr.presets import get_preset  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TARGET_AGREEMENT = 0.95


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, help="preset name (official or reduced, e.g. tiny_swin)")
    p.add_argument("--checkpoint", default=None, help="mmdet .pth / state_dict / safetensors (default: random weights)")
    p.add_argument("--size", default="1152x768",
                   help="WxH of the input tensor (as tools/bench_model.py), multiples of 32 (default 1152x768)")
    p.add_argument("--dtypes", default="float16,bfloat16",
                   help="comma-separated dtypes compared with float32 (float16, bfloat16, float32 = self-check)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--image", default=None,
                   help="image file run through the preset's pipeline, padded to --size (LSJ presets: their pad size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and the random input")
    p.add_argument("--batch", type=int, default=1, help="batch of random inputs (ignored with --image)")
    p.add_argument("--topk", type=int, default=100)
    p.add_argument("--iou", type=float, default=0.9, help="IoU threshold of a matched detection")
    p.add_argument("--msda-impl", choices=("op", "pytorch"), default=None,
                   help="deformable attention implementation (default: the op when built)")
    return p.parse_args(argv)


def make_input(args, preset, height: int, width: int, device):
    """(images (B,3,H,W) float32 normalised, masks or None) per the preset's mask rule."""
    if args.image:
        import cv2  # the test pipeline reads BGR uint8

        from codetr.preprocess import preprocess

        bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"compare_precision: cannot read image {args.image}")
        # LSJ presets pad every image to their own fixed size; the others to --size
        pad = None if preset.pipeline.pad_size is not None else (height, width)
        images, masks, _ = preprocess([bgr], preset, pad_size=pad)
    else:
        gen = torch.Generator().manual_seed(args.seed)
        images = torch.randn(args.batch, 3, height, width, generator=gen)
        masks = None
        if preset.pipeline.mask == "padding":
            masks = torch.zeros(args.batch, height, width, dtype=torch.bool)
    return images.to(device), (masks.to(device) if masks is not None else None)


def _clean(value):
    """JSON without NaN/inf tokens: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def run(argv: Optional[List[str]] = None) -> dict:
    """Everything main() does except printing: returns the report."""
    args = parse_args(argv)
    preset = get_preset(args.preset)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"compare_precision: --size must be WxH, got {args.size!r}") from None
    names = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in names if d not in DTYPES]
    if unknown:
        raise SystemExit(f"compare_precision: unknown dtype(s) {unknown}; choose from float16, bfloat16, float32")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        # plain fp32 as the reference: no TF32 in the float32 run
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    torch.manual_seed(args.seed)
    model32 = build_model(preset, checkpoint=args.checkpoint, device=device, msda_impl=args.msda_impl)
    images, masks = make_input(args, preset, height, width, device)
    report = {"preset": preset.name, "checkpoint": args.checkpoint, "random_weights": args.checkpoint is None,
              "input": args.image or f"random normal, seed {args.seed}", "size": list(images.shape[2:]),
              "batch": int(images.shape[0]), "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "target": {"topk_agreement": TARGET_AGREEMENT, "topk": args.topk, "iou_threshold": args.iou},
              "runs": []}
    with torch.inference_mode():
        ref = [t.clone() for t in model32(images, masks)]
        for name in names:
            dtype = DTYPES[name]
            model = model32 if dtype == torch.float32 else copy.deepcopy(model32).to(dtype)
            out = model(images.to(dtype), masks)
            cmp = compare_detections(ref, out, topk=args.topk, iou_threshold=args.iou)
            cmp["meets_target"] = bool(cmp["finite"] and cmp["topk_agreement"] >= TARGET_AGREEMENT)
            report["runs"].append({"dtype": str(dtype).replace("torch.", ""), "vs": "float32", **cmp})
            if model is not model32:
                del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return _clean(report)


def main(argv: Optional[List[str]] = None) -> int:
    report = run(argv)
    print(json.dumps(report, indent=1))
    return 0 if all(r["finite"] for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
