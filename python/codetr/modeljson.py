"""model.json (schema v1): written next to an exported engine, read by the C++ runtime and by
:mod:`codetr.onnx_engine`; plus the input check every engine call goes through.

An engine (AOTInductor package or ONNX file) does not check its inputs: a wrong shape reads past
buffers or fails deep inside a kernel. :func:`validate_engine_inputs` compares tensors against
the "inputs" block of model.json and names the first mismatch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

FORMAT_VERSION = 1
SIZE_MULTIPLE = 32
MODEL_JSON = "model.json"

_REQUIRED_KEYS = ("format_version", "preset", "engine", "device", "dtype", "torch_version",
                  "classes", "input", "inputs", "outputs", "preprocess", "postprocess")


def load_model_json(model_dir: str | Path) -> Dict[str, Any]:
    """Read and sanity-check DIR/model.json; errors name the file and the problem."""
    path = Path(model_dir) / MODEL_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model.json (is {model_dir} an exported codetr model dir?)")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    missing = [k for k in _REQUIRED_KEYS if k not in spec]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    if spec["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {spec['format_version']} is not supported "
                         f"(this codetr reads version {FORMAT_VERSION})")
    return spec


def _dim_ok(actual: int, expected: int, lo: Optional[int], hi: Optional[int]) -> bool:
    if expected != -1:
        return actual == expected
    return (lo is None or actual >= lo) and (hi is None or actual <= hi)


def _dtype_name(tensor: Any) -> str:
    # torch.float32 -> "float32"; numpy dtype('float32') -> "float32"; numpy bool -> "bool"
    return str(tensor.dtype).replace("torch.", "")


def validate_engine_inputs(spec: Dict[str, Any], images: Any, masks: Any = None) -> None:
    """Check `images` (B,3,H,W) [and `masks` (B,H,W)] against model.json before an engine call.

    Works for torch tensors and numpy arrays. Dynamic dims (-1 in "inputs") are checked against
    the min/max range in "input" and, for H and W, against the required multiple of 32.
    Raises ValueError naming the input, the dimension, the value and what was expected.
    """
    inp = spec["input"]
    multiple = int(inp.get("multiple", SIZE_MULTIPLE))
    ranges = {
        "batch": (inp.get("min_batch"), inp.get("max_batch")),
        "height": (inp.get("min_height"), inp.get("max_height")),
        "width": (inp.get("min_width"), inp.get("max_width")),
    }
    by_name = {d["name"]: d for d in spec["inputs"]}
    given = {"images": images, "masks": masks}
    if "masks" in by_name and masks is None:
        raise ValueError("this engine needs a `masks` input (preprocess.mask == 'padding'): "
                         "(B, H, W) bool, True on padding")
    if "masks" not in by_name and masks is not None:
        raise ValueError("this engine takes no `masks` input (preprocess.mask == 'none')")
    for name, decl in by_name.items():
        tensor = given.get(name)
        if tensor is None:
            raise ValueError(f"missing engine input `{name}`")
        shape = tuple(int(s) for s in tensor.shape)
        expected = decl["shape"]
        if len(shape) != len(expected):
            raise ValueError(f"input `{name}`: expected rank {len(expected)} {expected}, got shape {list(shape)}")
        if _dtype_name(tensor) != decl["dtype"]:
            raise ValueError(f"input `{name}`: expected dtype {decl['dtype']}, got {_dtype_name(tensor)}")
        axis_names = ["batch", "channels", "height", "width"] if name == "images" else ["batch", "height", "width"]
        for axis, (actual, want) in enumerate(zip(shape, expected)):
            axis_name = axis_names[axis]
            lo, hi = ranges.get(axis_name, (None, None))
            if not _dim_ok(actual, want, lo, hi):
                wanted = want if want != -1 else f"in [{lo}, {hi}]"
                raise ValueError(f"input `{name}`: {axis_name} is {actual}, engine expects {wanted} "
                                 f"(shape {list(shape)} vs model.json {expected})")
            if want == -1 and axis_name in ("height", "width") and actual % multiple != 0:
                raise ValueError(f"input `{name}`: {axis_name} {actual} is not a multiple of {multiple}; "
                                 f"pad the image bottom/right to a multiple of {multiple}")
    if masks is not None:
        if tuple(masks.shape) != (images.shape[0], images.shape[2], images.shape[3]):
            raise ValueError(f"input `masks`: shape {list(masks.shape)} does not match images "
                             f"(B, H, W) = {[images.shape[0], images.shape[2], images.shape[3]]}")


def io_spec(names: Sequence[str], shapes: Sequence[Sequence[int]], dtypes: Sequence[str]) -> list:
    return [{"name": n, "shape": [int(s) for s in shape], "dtype": d}
            for n, shape, d in zip(names, shapes, dtypes)]
