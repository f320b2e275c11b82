"""model.json: the one writer (:func:`build_model_json`, used by ``codetr export``) and the readers,
which go through the C++ runtime's parser (``codetr::parse_model_config``) so that Python and C++
accept exactly the same files. The schema is checked in as ``model.schema.json`` beside this file.

The pipeline sections ("dtype", "input", "preprocess", "postprocess") also drive the eager and
ONNX paths: :func:`pipeline_json` builds them from a preset, and the runtime core's
preprocessing/postprocessing run on them (:mod:`codetr.preprocess`, :mod:`codetr.postprocess`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from codetr._native import runtime

MODEL_JSON = "model.json"
SCHEMA_PATH = Path(__file__).resolve().parent / "model.schema.json"
FORMAT_VERSION = runtime.model_json_version()
# The AOTInductor metadata key under which the package records what it was compiled for
# (codetr::core::kEngineContractKey); the runtime refuses a model.json that disagrees.
ENGINE_CONTRACT_KEY = "codetr.contract"
# Eager (and any unbounded) geometry: every image at its own size.
_ANY_SIZE = 1 << 20


def load_model_json(model_dir: str | Path) -> Dict[str, Any]:
    """Read DIR/model.json, checked by the runtime's parser; errors name the file and the key."""
    path = Path(model_dir) / MODEL_JSON
    if not path.exists():
        raise FileNotFoundError(f"{path}: no model.json (is {model_dir} an exported codetr model dir?)")
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file")
    text = path.read_text()
    runtime.parse_model_config(text, str(path))  # raises codetr Error (ValueError) naming the key
    return json.loads(text)


def input_geometry(*, dynamic: bool, height: Optional[int] = None, width: Optional[int] = None,
                   min_height: Optional[int] = None, max_height: Optional[int] = None,
                   min_width: Optional[int] = None, max_width: Optional[int] = None,
                   batch: int = 1, min_batch: Optional[int] = None, max_batch: Optional[int] = None,
                   multiple: int = 1) -> Dict[str, Any]:
    """model.json's "input" block: static H x W or dynamic ranges, a static batch or a range."""
    block: Dict[str, Any] = ({"min_batch": min_batch, "max_batch": max_batch} if min_batch is not None
                             else {"batch": batch})
    if dynamic:
        block.update(dynamic=True, min_height=min_height, max_height=max_height,
                     min_width=min_width, max_width=max_width)
    else:
        block.update(dynamic=False, height=height, width=width)
    block["multiple"] = multiple
    return block


def io_spec(names: Sequence[str], shapes: Sequence[Sequence[int]], dtypes: Sequence[str]) -> list:
    return [{"name": n, "shape": [int(s) for s in shape], "dtype": d}
            for n, shape, d in zip(names, shapes, dtypes)]


def engine_contract(dtype: str, input_block: Dict[str, Any], inputs: list, outputs: list) -> str:
    """What a package is compiled for, recorded in it under ENGINE_CONTRACT_KEY; model.json holds
    the same blocks (both come from the same values in ``codetr export``)."""
    return json.dumps({"dtype": dtype, "input": input_block, "inputs": inputs, "outputs": outputs},
                      sort_keys=True)


def build_model_json(*, preset_meta: Dict[str, Any], engine_format: str, engine_file: str, device: str,
                     dtype: str, torch_version: str, codetr_version: str, classes: Sequence[str],
                     input_block: Dict[str, Any], inputs: list, outputs: list,
                     resize_pad: Optional[Tuple[dict, dict]] = None, random_weights: bool = False
                     ) -> Dict[str, Any]:
    """The model.json dict (format FORMAT_VERSION); ``resize_pad`` overrides the preset's resize and
    pad blocks (a static engine's size rule)."""
    pre = dict(preset_meta["preprocess"])
    if resize_pad is not None:
        pre["resize"], pre["pad"] = resize_pad
    spec = {
        "format_version": FORMAT_VERSION,
        "preset": preset_meta["preset"],
        "engine": {"format": engine_format, "file": engine_file},
        "device": device,
        "dtype": dtype,
        "torch_version": torch_version,
        "codetr_version": codetr_version,
        "classes": list(classes),
        "input": input_block,
        "inputs": inputs,
        "outputs": outputs,
        "preprocess": pre,
        "postprocess": dict(preset_meta["postprocess"]),
    }
    if random_weights:
        spec["random_weights"] = True
    return spec


def write_model_json(out_dir: str | Path, spec: Dict[str, Any]) -> Path:
    """Writes DIR/model.json after the runtime's parser accepted it."""
    text = json.dumps(spec, indent=2) + "\n"
    path = Path(out_dir) / MODEL_JSON
    runtime.parse_model_config(text, str(path))
    path.write_text(text)
    return path


def pipeline_json(preset_meta: Dict[str, Any], *, dtype: str = "float32",
                  pad_size_divisor: Optional[int] = None, pad_size: Optional[Tuple[int, int]] = None) -> str:
    """The pipeline sections for the eager path: the preset's preprocessing and postprocessing,
    every image at its own size (no engine bounds). ``pad_size_divisor`` / ``pad_size`` override the
    preset's batch padding."""
    pre = dict(preset_meta["preprocess"])
    if pad_size is not None:
        pre["pad"] = {"size": [int(pad_size[0]), int(pad_size[1])]}
    elif pad_size_divisor is not None:
        pre["pad"] = {"size_divisor": int(pad_size_divisor)}
    geometry = input_geometry(dynamic=True, min_height=1, max_height=_ANY_SIZE, min_width=1, max_width=_ANY_SIZE,
                              min_batch=1, max_batch=_ANY_SIZE)
    return json.dumps({"dtype": dtype, "input": geometry, "preprocess": pre,
                       "postprocess": dict(preset_meta["postprocess"])})


def validate_engine_inputs(spec: Dict[str, Any], images: Any, masks: Any = None) -> None:
    """Check an engine call's inputs (torch tensors or numpy arrays) against model.json with the
    runtime's rule (codetr::core::validate_input_shapes); raises ValueError naming the input."""
    given = [images] if masks is None else [images, masks]
    shapes = [[int(s) for s in t.shape] for t in given]
    dtypes = [str(t.dtype).replace("torch.", "") for t in given]
    runtime.validate_engine_inputs(shapes, dtypes, json.dumps(spec))
