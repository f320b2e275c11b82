"""`codetr export`: a Co-DINO preset -> an engine file + model.json.

Formats:
* ``aoti`` (default): ``torch.export`` + ``torch._inductor.aoti_compile_and_package`` -> model.pt2,
  run by the C++ runtime (``codetr-detect``) through libtorch's AOTIModelPackageLoader. MSDA stays
  the custom op ``codetr::ms_deform_attn`` so the runtime calls our C++/CUDA kernel.
* ``onnx``: see :mod:`codetr.onnx_export` (MSDA lowered to GridSample, or one custom node).

The engine runs the model proper (engine contract: images (B,3,H,W) normalised [, masks (B,H,W)
bool, True = padding] -> boxes (B,300,4) float32 xyxy in input pixels, scores (B,300) float32,
labels (B,300) int64). Pre- and post-processing are described in model.json and run by the runtime.

Two kinds of engine (docs/export.md compares them):
* dynamic ("exact"; the default for non-LSJ presets): H and W are free in [--min-*, --max-*], any
  integer. model.json keeps the preset's own rule (mmcv keep-ratio rescale to scale=(long, short);
  mmdet's batch padding pad_size_divisor=1, i.e. a single image is not padded at all; or the LSJ
  fixed pad size), so every image is run exactly as mmdet runs it alone, as long as it lies inside
  the exported range (the export warns when the preset's sizes cannot).
* static H x W (the fast option: CUDA graphs, H, W multiples of 32; the default for LSJ presets,
  whose fixed pad size makes it exact): scale = (min(preset_long, max(H, W)), min(preset_short,
  min(H, W))) and pad to exactly (H, W). For a non-LSJ preset this pads every image to H x W; the
  backbone and the neck's GroupNorm see that padding, so results differ from mmdet's (measured in
  docs/export.md). For images of the engine's orientation (landscape image in a W >= H engine,
  portrait in H > W) this is mmdet's rule capped at the engine size, so the resized image always
  fits. An image of the other orientation can come out larger than a non-square engine along one
  side; the C++ runtime then scales it to fit the engine instead (aspect ratio kept), i.e. smaller
  than mmdet would — export a square or a dynamic engine for mixed orientations.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from codetr import __version__
from codetr import modeljson
from codetr.modeljson import io_spec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FORMATS = ("aoti", "onnx")
ONNX_MSDA = ("gridsample", "trt-plugin")  # how an ONNX export writes MSDA (codetr.onnx_export)
DEFAULT_OPSET = 18
# Static engine H/W granularity: the backbone downsamples by 32. Dynamic engines take any size.
SIZE_MULTIPLE = 32


class ExportError(RuntimeError):
    """An export request that cannot be honoured; the message says why and what to do."""


@dataclass
class ExportOptions:
    preset: Any  # a preset name or a codetr.presets.Preset (e.g. a reduced variant)
    output: Path
    checkpoint: Optional[Path] = None
    device: str = "cpu"
    dtype: str = "float32"
    height: Optional[int] = None  # static size; None (and not dynamic): the preset's default engine
    width: Optional[int] = None
    batch: int = 1
    dynamic: bool = False
    min_height: Optional[int] = None
    max_height: Optional[int] = None
    min_width: Optional[int] = None
    max_width: Optional[int] = None
    dynamic_batch: bool = False
    min_batch: int = 1
    max_batch: Optional[int] = None
    format: str = "aoti"
    onnx_msda: str = "gridsample"  # one of ONNX_MSDA
    opset: int = DEFAULT_OPSET
    onnx_optimize: bool = True  # onnxscript graph optimizer (constant folding, fusions); slow on big graphs

    def validate(self) -> None:
        """Reject option combinations that cannot be exported, before any work is done."""
        from codetr.models import min_dynamic_input_size
        if self.format not in FORMATS:
            raise ExportError(f"unknown --format {self.format!r}; choose one of {list(FORMATS)}")
        if self.dtype not in DTYPES:
            raise ExportError(f"unknown --dtype {self.dtype!r}; choose one of {list(DTYPES)}")
        if self.device not in ("cpu", "cuda"):
            raise ExportError(f"unknown --device {self.device!r}; choose cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ExportError("--device cuda requested but no CUDA GPU is available to this torch "
                              f"(torch {torch.__version__}, cuda build {torch.version.cuda}); "
                              "export with --device cpu or run on a GPU machine")
        if self.onnx_msda not in ONNX_MSDA:
            raise ExportError(f"unknown --onnx-msda {self.onnx_msda!r}; choose one of {list(ONNX_MSDA)}")
        if self.onnx_msda != "gridsample" and self.format != "onnx":
            raise ExportError("--onnx-msda only applies to --format onnx")
        if self.onnx_msda == "trt-plugin" and self.dtype == "bfloat16":
            raise ExportError("--onnx-msda trt-plugin: TensorRT's MultiscaleDeformableAttnPlugin_TRT takes float32 "
                              "or float16; export --dtype float16 or use the default --onnx-msda gridsample")
        if self.batch < 1:
            raise ExportError(f"--batch must be >= 1, got {self.batch}")
        if self.dynamic:
            for name in ("min_height", "max_height", "min_width", "max_width"):
                if getattr(self, name) is None:
                    raise ExportError(f"--dynamic needs --{name.replace('_', '-')}")
            for lo, hi, what in ((self.min_height, self.max_height, "height"),
                                 (self.min_width, self.max_width, "width")):
                minimum = min_dynamic_input_size(resolve_preset(self.preset))
                if lo < minimum:
                    raise ExportError(f"--min-{what} {lo} is below {minimum}, the smallest dynamic size of preset "
                                      f"{resolve_preset(self.preset).name!r} (every feature level must keep >= 2 "
                                      f"pixels, or torch.export fixes its size); use --min-{what} >= {minimum}")
                if lo > hi:
                    raise ExportError(f"--min-{what} {lo} is larger than --max-{what} {hi}")
        else:
            _check_multiple("--height", self.height)
            _check_multiple("--width", self.width)
        if self.dynamic_batch:
            if self.max_batch is None or not 1 <= self.min_batch < self.max_batch:
                raise ExportError("dynamic batch needs 1 <= --min-batch < --max-batch "
                                  f"(got {self.min_batch}, {self.max_batch})")


def _check_multiple(flag: str, value: int) -> None:
    """Positive and a multiple of SIZE_MULTIPLE (0 is an error, not "use the default")."""
    if value is None or value <= 0 or value % SIZE_MULTIPLE != 0:
        raise ExportError(f"{flag} must be a positive multiple of {SIZE_MULTIPLE}, got {value} "
                          f"(the backbone downsamples by {SIZE_MULTIPLE}; "
                          f"e.g. round up to {max(SIZE_MULTIPLE, math.ceil((value or 0) / SIZE_MULTIPLE) * SIZE_MULTIPLE)})")


class Progress:
    """Progress lines with timings: `[codetr export] tracing ... done (12.3 s)`."""

    def __init__(self, log: Callable[[str], None] = print):
        self.log = log
        self.timings: Dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str):
        self.log(f"[codetr export] {name} ...")
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.timings[name] = elapsed
        self.log(f"[codetr export] {name} done ({elapsed:.1f} s)")


class EngineModule(nn.Module):
    """Exactly the engine's inputs -> (boxes, scores, labels); what gets traced."""

    def __init__(self, model: nn.Module, uses_mask: bool):
        super().__init__()
        self.model = model
        self.uses_mask = uses_mask

    def forward(self, images: torch.Tensor, masks: Optional[torch.Tensor] = None):
        boxes, scores, labels = self.model(images, masks if self.uses_mask else None)
        return boxes, scores, labels


# ----------------------------------------------------------------------------------------------
# preset -> model + metadata
# ----------------------------------------------------------------------------------------------
def resolve_preset(preset: Any):
    """Preset name or object -> codetr.presets.Preset; unknown name -> ExportError listing the valid ones."""
    from codetr import presets

    try:
        return presets.get_preset(preset)
    except KeyError:
        raise ExportError(f"unknown preset {preset!r}; valid presets:\n  " + "\n  ".join(presets.PRESETS)
                          + "\nreduced-size (tests): " + ", ".join(presets.REDUCED_PRESETS)) from None


def build_export_model(opts: ExportOptions) -> nn.Module:
    """codetr.build_model for the export; checkpoint problems surface as ExportError."""
    from codetr.models import build_model

    from codetr.checkpoint import CheckpointError, CheckpointMismatch

    if opts.checkpoint is None:
        warnings.warn("no --checkpoint given: exporting RANDOM weights. The engine will run but its "
                      "detections are meaningless; pass --checkpoint for a real model.", stacklevel=2)
    elif not Path(opts.checkpoint).is_file():
        raise ExportError(f"--checkpoint {opts.checkpoint}: no such file")
    preset = resolve_preset(opts.preset)
    try:
        model = build_model(preset, checkpoint=opts.checkpoint, device=opts.device,
                            dtype=DTYPES[opts.dtype])
    except CheckpointMismatch as exc:
        raise ExportError(f"--checkpoint {opts.checkpoint} does not fit preset {preset.name!r}: {exc}") from exc
    except CheckpointError as exc:  # unreadable, not a state_dict, or bad values
        raise ExportError(f"--checkpoint {exc}") from exc
    except (KeyError, ValueError, RuntimeError) as exc:
        if opts.checkpoint is not None:
            raise ExportError(f"--checkpoint {opts.checkpoint} does not fit preset {preset.name!r}: {exc}") from exc
        raise ExportError(f"building preset {preset.name!r} failed: {exc}") from exc
    return model.eval()


def prepare_output(out_dir: Path) -> None:
    """The output directory exists (or is created) and is writable, before any expensive work."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"-o {out_dir} exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".codetr-export-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ExportError(f"-o {out_dir}: cannot write there ({exc.strerror or exc})") from None


def uses_padding_mask(meta: Dict[str, Any]) -> bool:
    return meta["preprocess"]["mask"] == "padding"


# ----------------------------------------------------------------------------------------------
# shapes
# ----------------------------------------------------------------------------------------------
def example_size(opts: ExportOptions) -> Tuple[int, int, int]:
    """(B, H, W) of the trace inputs. Dynamic dims get the value halfway between their bounds (not
    0/1, not a bound), so torch.export does not specialise them."""
    if opts.dynamic:
        h = (opts.min_height + opts.max_height) // 2
        w = (opts.min_width + opts.max_width) // 2
    else:
        h, w = opts.height, opts.width
    b = max(2, opts.min_batch) if opts.dynamic_batch else opts.batch
    return b, h, w


def example_inputs(opts: ExportOptions, uses_mask: bool) -> Tuple[torch.Tensor, ...]:
    b, h, w = example_size(opts)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(b, 3, h, w, generator=gen).to(opts.device, DTYPES[opts.dtype])
    if not uses_mask:
        return (images,)
    masks = torch.zeros(b, h, w, dtype=torch.bool, device=opts.device)
    return images, masks


def dynamic_shapes_spec(opts: ExportOptions, uses_mask: bool) -> Optional[Dict[str, Dict[int, Any]]]:
    """torch.export dynamic_shapes: H, W, batch as Dims (when asked)."""
    if not opts.dynamic and not opts.dynamic_batch:
        return None
    Dim = torch.export.Dim
    images: Dict[int, Any] = {}
    masks: Dict[int, Any] = {}
    if opts.dynamic_batch:
        batch = Dim("batch", min=opts.min_batch, max=opts.max_batch)
        images[0] = masks[0] = batch
    if opts.dynamic:
        images[2] = masks[1] = Dim("height", min=opts.min_height, max=opts.max_height)
        images[3] = masks[2] = Dim("width", min=opts.min_width, max=opts.max_width)
    spec = {"images": images or None}
    if uses_mask:
        spec["masks"] = masks or None
    return spec


# ----------------------------------------------------------------------------------------------
# model.json
# ----------------------------------------------------------------------------------------------
def engine_resize(opts: ExportOptions, meta_pre: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(resize, pad) blocks of model.json for this engine (rule in the module docstring)."""
    resize = dict(meta_pre["resize"])
    long_edge, short_edge = resize["scale"]
    if not opts.dynamic:
        resize["scale"] = [min(long_edge, max(opts.height, opts.width)),
                           min(short_edge, min(opts.height, opts.width))]
        return resize, {"size": [opts.height, opts.width]}
    pad = dict(meta_pre["pad"])
    if "size" in pad:
        ph, pw = pad["size"]
        if not (opts.min_height <= ph <= opts.max_height and opts.min_width <= pw <= opts.max_width):
            raise ExportError(f"preset pads every image to {ph}x{pw} (HxW), outside the dynamic range "
                              f"H [{opts.min_height}, {opts.max_height}] W [{opts.min_width}, {opts.max_width}]; "
                              "widen the range or export a static engine")
    else:
        # Largest padded side the preset's rule can produce (either orientation).
        need = math.ceil(long_edge / pad["size_divisor"]) * pad["size_divisor"]
        if min(opts.max_height, opts.max_width) < need:
            warnings.warn(f"dynamic range (max H {opts.max_height}, max W {opts.max_width}) is below the "
                          f"preset's largest padded side {need}: large images will not fit the engine",
                          stacklevel=2)
    return resize, pad


def input_block(opts: ExportOptions) -> Dict[str, Any]:
    """model.json's "input" block for this engine (also recorded in the package's contract)."""
    batch = ({"min_batch": opts.min_batch, "max_batch": opts.max_batch} if opts.dynamic_batch
             else {"batch": opts.batch})
    return modeljson.input_geometry(dynamic=opts.dynamic, height=opts.height, width=opts.width,
                                    min_height=opts.min_height, max_height=opts.max_height,
                                    min_width=opts.min_width, max_width=opts.max_width,
                                    multiple=1 if opts.dynamic else SIZE_MULTIPLE, **batch)


def engine_io(opts: ExportOptions, uses_mask: bool, outputs: Tuple[torch.Tensor, ...]) -> Tuple[list, list]:
    """The "inputs"/"outputs" blocks: -1 marks a dynamic dim."""
    b = -1 if opts.dynamic_batch else opts.batch
    h, w = (-1, -1) if opts.dynamic else (opts.height, opts.width)
    names, shapes, dtypes = ["images"], [[b, 3, h, w]], [opts.dtype]
    if uses_mask:
        names.append("masks"); shapes.append([b, h, w]); dtypes.append("bool")
    inputs = io_spec(names, shapes, dtypes)
    out_shapes = [[b, *o.shape[1:]] for o in outputs]
    out_dtypes = [str(o.dtype).replace("torch.", "") for o in outputs]
    return inputs, io_spec(["boxes", "scores", "labels"], out_shapes, out_dtypes)


# ----------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------
def trace(engine: nn.Module, args: Tuple[torch.Tensor, ...], dynamic_shapes) -> torch.export.ExportedProgram:
    """torch.export.export with errors that say what to change.

    Shape facts the symbolic engine cannot prove for every size (Swin's window views over nested
    ceil-divisions, e.g. n % (12 n) != 0) become runtime asserts in the program instead of export
    errors; a size that broke one would fail loudly at run time, never compute silently."""
    try:
        with torch.no_grad():
            return torch.export.export(engine, args, dynamic_shapes=dynamic_shapes, strict=False,
                                       prefer_deferred_runtime_asserts_over_guards=True)
    except torch._dynamo.exc.UserError as exc:  # e.g. a Dim range the model cannot honour
        raise ExportError(f"torch.export rejected the dynamic shapes: {exc}") from exc


def program_outputs(program: torch.export.ExportedProgram) -> Tuple[torch.Tensor, ...]:
    """The (fake) output tensors of a traced program: shapes and dtypes for model.json."""
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    return tuple(arg.meta["val"] for arg in output_node.args[0])


def default_engine(preset) -> Dict[str, Any]:
    """The engine of an export without size options, exact for every preset: LSJ presets pad every
    image to a fixed size -> a static engine of that size; otherwise a dynamic engine that takes
    any image the preset's resize can produce, at its own size (H, W in [minimum, long edge])."""
    from codetr.models import min_dynamic_input_size

    pipeline = preset.pipeline
    if pipeline.pad_size is not None:
        height, width = pipeline.pad_size
        return {"height": height, "width": width}
    low, high = min_dynamic_input_size(preset), max(pipeline.resize_scale)
    return {"dynamic": True, "min_height": low, "max_height": high, "min_width": low, "max_width": high}


def export(opts: ExportOptions, *, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Export `opts.preset`: DIR/model.pt2 (or model.onnx) + DIR/model.json.

    Returns {"engine": path, "model_json": path, "spec": model.json dict, "timings": {...},
    "size_bytes": int, plus format-specific counts}.
    """
    preset = resolve_preset(opts.preset)
    if not opts.dynamic and opts.height is None and opts.width is None:
        opts = dataclasses.replace(opts, **default_engine(preset))
    elif not opts.dynamic and (opts.height is None or opts.width is None):
        given = ("--height", opts.height) if opts.width is None else ("--width", opts.width)
        _check_multiple(*given)
        raise ExportError("a static engine needs both --height and --width (or neither: the preset's "
                          "default engine)")
    opts.validate()
    meta = preset.to_metadata()
    resize_pad = engine_resize(opts, meta["preprocess"])  # refuses unusable ranges before any work
    progress = Progress(log)
    out_dir = Path(opts.output)
    prepare_output(out_dir)

    with progress.step(f"building model {meta['preset']} ({opts.dtype}, {opts.device})"):
        model = build_export_model(opts)
    uses_mask = uses_padding_mask(meta)
    args = example_inputs(opts, uses_mask)
    if opts.dtype == "float16":
        with progress.step("checking the float16 model's outputs on the example input"):
            check_example_outputs(model, uses_mask, args, opts.dtype)

    if opts.format == "onnx":
        from codetr import onnx_export
        engine_path, outputs, extra = onnx_export.export_onnx(opts, model, uses_mask, args, progress)
    else:
        engine_path, outputs, extra = export_aoti(opts, model, uses_mask, args, progress)

    inputs_spec, outputs_spec = engine_io(opts, uses_mask, outputs)
    spec = modeljson.build_model_json(
        preset_meta=meta, engine_format=opts.format, engine_file=engine_path.name, device=opts.device,
        dtype=opts.dtype, torch_version=torch.__version__, codetr_version=__version__, classes=model.classes,
        input_block=input_block(opts), inputs=inputs_spec, outputs=outputs_spec, resize_pad=resize_pad,
        random_weights=opts.checkpoint is None)
    json_path = modeljson.write_model_json(out_dir, spec)
    size_mb = engine_path.stat().st_size / 2**20
    log(f"[codetr export] wrote {engine_path} ({size_mb:.1f} MiB) and {json_path}")
    return {"engine": engine_path, "model_json": json_path, "spec": spec,
            "timings": progress.timings, "size_bytes": engine_path.stat().st_size, **extra}


def check_example_outputs(model: nn.Module, uses_mask: bool, args, dtype: str) -> None:
    """Run the model once on the example input: NaN/inf outputs (a float16 overflow, e.g. a Swin-L
    checkpoint beyond 65504) -> ExportError before anything is traced or written. Random input
    cannot prove real images stay finite: the runtimes check every output as well."""
    from codetr.precision import NonFiniteOutputError, check_finite_outputs

    with torch.no_grad():
        boxes, scores, _ = EngineModule(model, uses_mask).eval()(*args)
    try:
        check_finite_outputs(boxes, scores, dtype, what="the model's output on the example input")
    except NonFiniteOutputError as exc:
        raise ExportError(f"{exc}; nothing was exported") from None


def _use_msda_op(model: nn.Module) -> None:
    """Select the custom-op MSDA (loads the op library; clear error if it is not built)."""
    from codetr.nn import set_msda_impl

    try:
        from codetr import _C  # noqa: F401  (registers codetr::ms_deform_attn and its fake impl)
    except (ImportError, OSError, RuntimeError) as exc:
        raise ExportError(f"the MSDA op library is needed for this export but could not be loaded: {exc}") from exc
    set_msda_impl(model, "op")


def export_aoti(opts: ExportOptions, model: nn.Module, uses_mask: bool, args, progress: Progress):
    _use_msda_op(model)
    engine = EngineModule(model, uses_mask).eval()
    with progress.step("tracing (torch.export)"):
        program = trace(engine, args, dynamic_shapes_spec(opts, uses_mask))
    outputs = program_outputs(program)
    msda_nodes = sum(1 for n in program.graph.nodes
                     if n.op == "call_function" and "codetr.ms_deform_attn" in str(n.target))
    progress.log(f"[codetr export] graph: {len(program.graph.nodes)} nodes, "
                 f"{msda_nodes} codetr::ms_deform_attn calls")
    package = Path(opts.output) / "model.pt2"
    if opts.dynamic and resolve_preset(opts.preset).model.backbone.type == "swin":
        progress.log("[codetr export] note: a size-dynamic Swin engine compiles slowly (AOTInductor works through "
                     "the window layout's symbolic sizes: tens of minutes even for the reduced tiny_swin on a small CPU); "
                     "--height/--width export the fast static engine instead (docs/export.md)")
    # The package records what it is compiled for; the runtime refuses a model.json that differs.
    inputs_spec, outputs_spec = engine_io(opts, uses_mask, outputs)
    contract = modeljson.engine_contract(opts.dtype, input_block(opts), inputs_spec, outputs_spec)
    with progress.step("compiling + packaging (AOTInductor)"):
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(package),
            inductor_configs={"aot_inductor.metadata": {modeljson.ENGINE_CONTRACT_KEY: contract}})
    return package, outputs, {"msda_nodes": msda_nodes}
