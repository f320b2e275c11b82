"""`codetr` console script (also `python -m codetr`). Subcommands: export, eval, serve, batch.

Exit codes: 0 success, 2 bad request (the message says what to change), 1 unexpected failure.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import List, Optional


def _add_export_parser(subparsers) -> None:
    from codetr.export import DEFAULT_OPSET, DTYPES, FORMATS, ONNX_MSDA
    from codetr.presets import PRESETS

    p = subparsers.add_parser(
        "export", help="export a preset to an AOTInductor package (.pt2) or ONNX file + model.json",
        description="Export a Co-DINO preset to DIR/model.pt2 (AOTInductor, run by codetr-detect) or "
                    "DIR/model.onnx, plus DIR/model.json (pre/post-processing for the runtime).")
    from codetr.presets import REDUCED_PRESETS

    p.add_argument("--preset", required=True, metavar="PRESET",
                   help="one of: " + ", ".join(PRESETS) + "; reduced-size test presets: " + ", ".join(REDUCED_PRESETS))
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="mmdet .pth / state_dict .pth / .safetensors (absent: RANDOM weights, with a warning)")
    p.add_argument("--output", "-o", type=Path, required=True, help="output directory")
    p.add_argument("--format", choices=FORMATS, default="aoti", help="engine format (default: aoti)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device the engine runs on (default: cpu)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="compute dtype (default: float32)")
    p.add_argument("--height", type=int, default=None,
                   help="static engine: input height (multiple of 32); every image is padded to HxW (fast: CUDA "
                        "graphs; for non-LSJ presets results then differ from mmdet, see docs/export.md). "
                        "Without size options: LSJ presets get a static engine of their fixed pad size, the "
                        "others a dynamic engine over every size their resize produces (both exact)")
    p.add_argument("--width", type=int, default=None, help="static input width (multiple of 32); see --height")
    p.add_argument("--batch", type=int, default=1, help="static batch size (default: 1)")
    p.add_argument("--dynamic", action="store_true",
                   help="dynamic H and W (any size in [--min-*, --max-*]): each image runs at its own size")
    for side in ("height", "width"):
        p.add_argument(f"--min-{side}", type=int, default=None)
        p.add_argument(f"--max-{side}", type=int, default=None)
    p.add_argument("--dynamic-batch", action="store_true", help="dynamic batch in [--min-batch, --max-batch]")
    p.add_argument("--min-batch", type=int, default=1, help="(default: 1)")
    p.add_argument("--max-batch", type=int, default=None)
    p.add_argument("--onnx-msda", choices=ONNX_MSDA, default="gridsample",
                   help="ONNX only: MSDA as standard ops around GridSample (default, any runtime) or as "
                        "TensorRT's built-in MultiscaleDeformableAttnPlugin_TRT nodes (TensorRT only)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, >= 16 (default: {DEFAULT_OPSET})")
    p.add_argument("--no-onnx-optimize", dest="onnx_optimize", action="store_false",
                   help="ONNX only: skip the onnxscript graph optimizer (faster export, more nodes)")
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from codetr.export import ExportOptions, export

    opts = ExportOptions(
        preset=args.preset, output=args.output, checkpoint=args.checkpoint, device=args.device,
        dtype=args.dtype, height=args.height, width=args.width, batch=args.batch, dynamic=args.dynamic,
        min_height=args.min_height, max_height=args.max_height, min_width=args.min_width,
        max_width=args.max_width, dynamic_batch=args.dynamic_batch, min_batch=args.min_batch,
        max_batch=args.max_batch, format=args.format, onnx_msda=args.onnx_msda, opset=args.opset,
        onnx_optimize=args.onnx_optimize)
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = _show_warning
        result = export(opts)
    total = sum(result["timings"].values())
    print(f"[codetr export] finished in {total:.1f} s: {result['engine']}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message)
    if "RANDOM weights" in text:
        print(f"\n{'!' * 78}\n!! WARNING: {text}\n{'!' * 78}\n", file=sys.stderr)
    elif "codetr" in filename:
        print(f"[codetr export] WARNING: {text}", file=sys.stderr)


def _add_eval_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="COCO mAP of a model (model dir or eager) on a COCO-format dataset; compare two models",
        description="Run MODEL over the images of a COCO-format annotation file, write DIR/results.json "
                    "(COCO results) and DIR/metrics.json (COCO box mAP by pycocotools, with mmdetection's "
                    "maxDets 100/300/1000). With --compare OTHER: OTHER's results and mAP too, the mAP "
                    "delta, the fraction of detections matched one to one (same label, IoU >= --match-iou) "
                    "and the largest score difference of a matched pair. Exit 1 when some images failed "
                    "(each is named; the others are scored), 2 for a bad request.")
    p.add_argument("model", metavar="MODEL",
                   help="a model directory from `codetr export` (AOTInductor: run by the C++ runtime; ONNX: "
                        "by onnxruntime) or 'eager' (the PyTorch model of --preset/--checkpoint)")
    p.add_argument("--annotations", "-a", type=Path, required=True, help="COCO-format annotation JSON")
    p.add_argument("--images", "-i", type=Path, required=True, help="folder holding the annotation file's file_names")
    p.add_argument("--output", "-o", type=Path, required=True, help="output directory")
    p.add_argument("--compare", metavar="OTHER", default=None, help="a second model (directory or 'eager') to compare")
    p.add_argument("--preset", default=None, help="preset of the 'eager' model")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint of the 'eager' model")
    p.add_argument("--dtype", default="float32", help="compute dtype of the 'eager' model (default: float32)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="eager: where it runs (default cpu); model dirs: overrides model.json's device "
                        "(ONNX: cuda selects onnxruntime's CUDAExecutionProvider)")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images of the annotation file")
    p.add_argument("--batch", type=int, default=1, help="images per detect() call (default: 1)")
    p.add_argument("--match-iou", type=float, default=0.99, help="--compare: IoU of a matched pair (default: 0.99)")
    p.add_argument("--match-min-score", type=float, default=0.0,
                   help="--compare: match only detections scoring at least this (default: 0, all)")
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from codetr import evaluate

    if args.batch < 1:
        raise evaluate.EvalError(f"--batch must be >= 1, got {args.batch}")
    if not 0.0 < args.match_iou <= 1.0:
        raise evaluate.EvalError(f"--match-iou must be in (0, 1], got {args.match_iou}")
    dataset = evaluate.load_dataset(args.annotations, args.images, args.max_images)
    options = dict(preset=args.preset, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = _show_warning
        model = evaluate.open_model(args.model, **options)
        other = evaluate.open_model(args.compare, **options) if args.compare else None
    metrics = evaluate.evaluate(model, dataset, args.output, compare=other, batch=args.batch,
                                iou_threshold=args.match_iou, min_score=args.match_min_score)
    failed = any(metrics[k]["failed"] for k in ("model", "compare") if k in metrics)
    return 1 if failed else 0


def _add_serve_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve an exported model over HTTP on Ray Serve (needs the 'serve' extra)",
        description="Ray Serve application: POST an image to / -> JSON detections (codetr-detect's "
                    "per-image record); GET /health, GET /metrics. See docs/serving.md.")
    p.add_argument("--model", required=True, help="directory written by `codetr export`")
    p.add_argument("--replicas", type=int, default=None,
                   help="replicas (default: cluster GPUs / --gpus-per-replica for a CUDA engine, 1 for a CPU one)")
    p.add_argument("--gpus-per-replica", type=float, default=None,
                   help="GPUs each replica holds (fractions share a GPU; default: 1 for a CUDA engine, 0 for a CPU one)")
    p.add_argument("--max-batch", type=int, default=None, help="images per engine call (default: the engine's)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="longest wait to fill a batch (default 10)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: model.json's")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--address", default=None, help="Ray cluster to join (e.g. auto; default: start a local one)")
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import ray

    from codetr.modeljson import load_model_json
    from codetr.serve import plan_replicas, run_server

    # A bad model dir fails here, not in every replica's constructor.
    on_gpu = (args.device or load_model_json(args.model)["device"]) == "cuda"
    if args.max_batch is not None and args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1 (got {args.max_batch})")
    if args.batch_wait_ms < 0:
        raise ValueError(f"--batch-wait-ms must be >= 0 (got {args.batch_wait_ms})")
    cluster_gpus = None
    if on_gpu or args.gpus_per_replica:
        ray.init(address=args.address)
        cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
    replicas, gpus = plan_replicas(args.replicas, args.gpus_per_replica, on_gpu, cluster_gpus)
    run_server(args.model, host=args.host, port=args.port, address=args.address, replicas=replicas,
               gpus_per_replica=gpus, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
               device=args.device)
    return 0


def _add_batch_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "batch", help="detect over many images on Ray Data into JSON Lines shards (resumable)",
        description="Offline detection on Ray Data: CPU decode tasks, engine actors (one per GPU, or CPU "
                    "actors), JSON Lines shards in OUT with codetr-detect's per-image records. A rerun "
                    "skips the images already in OUT.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image folders (sorted, not recursive), image "
                   "files, or .txt/.lst files listing one image path a line")
    p.add_argument("--model", required=True, help="directory written by `codetr export`")
    p.add_argument("--output", "-o", required=True, help="output folder for the *.jsonl shards")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: model.json's")
    p.add_argument("--actors", type=int, default=None, help="engine actors (default: one per GPU, or 1 on CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="images per engine call (default: the engine's)")
    p.add_argument("--address", default=None, help="Ray cluster to join (e.g. auto; default: start a local one)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(run=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    from codetr.batch import run_batch

    s = run_batch(args.model, args.inputs, args.output, device=args.device, actors=args.actors,
                  batch_size=args.batch_size, address=args.address, progress=args.progress)
    print(f"[codetr batch] {s['images']} images ({s['failed']} failed) in {s['seconds']:.1f} s "
          f"({s['images_per_s']:.2f} images/s); {s['skipped']} already done; shard: {s['shard']}")
    if s["steady_images_per_s"]:
        print(f"[codetr batch] first result after {s['first_result_s']:.1f} s (start-up, engine loading), then "
              f"{s['steady_images_per_s']:.2f} images/s")
    return 1 if s["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codetr", description="Co-DETR (Co-DINO) tools")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_export_parser(subparsers)
    _add_eval_parser(subparsers)
    _add_serve_parser(subparsers)
    _add_batch_parser(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Every failure is one line on stderr: exit 2 for a request that cannot be done as asked (the
    message says what to change), 1 for anything unexpected (CODETR_TRACEBACK=1 shows where)."""
    import os

    from codetr.checkpoint import CheckpointError
    from codetr.batch import BatchError
    from codetr.export import ExportError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ExportError, CheckpointError, BatchError, OSError, ValueError) as exc:
        print(f"codetr {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"codetr {args.command}: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001  (the one place that turns a crash into a message)
        if os.environ.get("CODETR_TRACEBACK"):
            raise
        print(f"codetr {args.command}: unexpected error: {type(exc).__name__}: {_one_line(exc)} "
              "(CODETR_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    return " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
