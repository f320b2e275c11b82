"""Load mmdetection Co-DINO checkpoints (.pth with 'state_dict' + 'meta', a bare state_dict, or
.safetensors) into the plain-PyTorch model.

* No GPU needed: everything is mapped to CPU.
* No arbitrary code runs: .pth files are read with ``torch.load(weights_only=True)``. Some mmdet
  checkpoints also pickle training state (mmengine objects in 'message_hub', numpy scalars in
  'meta', ...) which the weights-only unpickler refuses. Fallback: :class:`_InertUnpickler` reads
  the file again resolving only tensor-rebuild functions, storages and plain containers; every
  other global becomes an inert placeholder (nothing is imported or called), so the weights and
  the plain-data meta are still recovered.
* Keys used only in training or by the auxiliary heads are dropped by an explicit list
  (:data:`DROPPED_KEY_PREFIXES`); everything else must match exactly (strict by default), else
  :class:`CheckpointError` lists the missing / unexpected keys and shape mismatches. Only buffers
  the model computes itself (``relative_position_index``, ``num_batches_tracked``) may be absent.
* Class names come from ``meta['dataset_meta']['classes']`` (mmdet 3.x) or ``meta['CLASSES']``
  (2.x) or a safetensors metadata entry ``classes`` (JSON list); otherwise None (caller: COCO-80).
"""
from __future__ import annotations

import collections
import json
import os
import pickle
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

# Parameters the official Co-DINO state_dict holds that the query-head inference path never uses.
DROPPED_KEY_PREFIXES: Tuple[str, ...] = (
    "rpn_head.",                                # auxiliary Faster R-CNN RPN
    "roi_head.",                                # auxiliary Faster R-CNN RoI head(s)
    "bbox_head.",                               # auxiliary ATSS head(s)
    "query_head.dn_generator.",                 # denoising label embedding (training only)
    "query_head.downsample.",                   # extra level fed to the auxiliary heads
    "query_head.transformer.aux_pos_trans.",    # auxiliary-query positional projections
    "query_head.transformer.aux_pos_trans_norm.",
)


_COMPUTED_BUFFERS = ("relative_position_index", "num_batches_tracked")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, not a state_dict, or bad values."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint of another model: missing / unexpected keys or shape mismatches."""


def dropped_key(key: str) -> bool:
    return key.startswith(DROPPED_KEY_PREFIXES)


class _Inert:
    """Placeholder for a pickled object of a class we do not import: stores its state only."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    ("torch", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
}


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return getattr(torch, name)
        if module == "torch" and name in ("float32", "float16", "bfloat16", "float64", "int64", "int32",
                                          "uint8", "int8", "bool"):
            return getattr(torch, name)
        return _Inert


class _InertPickleModule:
    Unpickler = _InertUnpickler
    load = staticmethod(lambda f, **kw: _InertUnpickler(f, **kw).load())


def _load_pth(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_InertPickleModule)


def _class_names(found, path: str, where: str) -> List[str]:
    if not isinstance(found, (list, tuple)) or not all(isinstance(c, str) for c in found):
        raise CheckpointError(f"{path}: {where} must be a list of class-name strings, got {str(found)[:80]}")
    return list(found)


def read_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], Optional[List[str]]]:
    """-> (state_dict, class names or None). A file that cannot be read as a checkpoint raises
    CheckpointError calling it corrupt, naming the file and the reader's reason."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
                meta = f.metadata() or {}
        except Exception as exc:  # safetensors raises its own error types for every bad file
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from None
        classes = None
        if "classes" in meta:
            try:
                classes = _class_names(json.loads(meta["classes"]), path, "metadata 'classes'")
            except json.JSONDecodeError:
                raise CheckpointError(f"{path}: metadata 'classes' is not JSON") from None
        return state, classes
    try:
        obj = _load_pth(path)
    except Exception as exc:  # zip/pickle/EOF errors of a damaged file
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint, or not a torch checkpoint "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict (state_dict or mmdet checkpoint), got {type(obj).__name__}")
    classes = None
    if "state_dict" in obj:
        state = obj["state_dict"]
        meta = obj.get("meta") or {}
        if isinstance(meta, Mapping):
            dataset_meta = meta.get("dataset_meta") or {}
            found = dataset_meta.get("classes") if isinstance(dataset_meta, Mapping) else None
            if found is None:
                found = meta.get("CLASSES")
            if found is not None:
                classes = _class_names(found, path, "meta classes")
    else:
        state = obj
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: 'state_dict' must be a dict of tensors, got {type(state).__name__}")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(state):
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)][:5]
        raise CheckpointError(f"{path}: state_dict has non-tensor entries, e.g. {bad}")
    return tensors, classes


def load_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True,
                    source: str = "state_dict") -> None:
    """Copy ``state`` into ``model`` after dropping :data:`DROPPED_KEY_PREFIXES`; with ``strict``
    every model key must be present and every remaining checkpoint key must be used, with equal shapes."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not dropped_key(k)}
    own = model.state_dict()
    # buffers the model computes itself (Swin's relative-position index, BN's batch counter,
    # unused in eval) may be absent from older or converted checkpoints
    missing = sorted(k for k in set(own) - set(state) if not k.endswith(_COMPUTED_BUFFERS))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if mismatched or (strict and (missing or unexpected)):
        lines = [f"checkpoint {source} does not match the model:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
        raise CheckpointMismatch("\n".join(lines))
    usable = {k: v for k, v in state.items() if k in own}
    # Weights must be usable as they are: an integer tensor where the model holds floats would be
    # cast silently, and NaN/inf weights would export an engine that outputs NaN.
    wrong_type = sorted(f"{k} ({v.dtype})" for k, v in usable.items()
                        if own[k].is_floating_point() and not v.is_floating_point())
    if wrong_type:
        raise CheckpointError(f"{source}: {len(wrong_type)} weight(s) are not floating point: "
                              + ", ".join(wrong_type[:10]) + (" ..." if len(wrong_type) > 10 else ""))
    non_finite = sorted(k for k, v in usable.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if non_finite:
        raise CheckpointError(f"{source}: {len(non_finite)} weight(s) hold NaN or inf: "
                              + ", ".join(non_finite[:10]) + (" ..." if len(non_finite) > 10 else ""))
    model.load_state_dict(usable, strict=False, assign=any(p.is_meta for p in own.values()))


def load_checkpoint(model: nn.Module, checkpoint, strict: bool = True) -> Optional[List[str]]:
    """Load a checkpoint path (.pth / .safetensors) or an in-memory state_dict into ``model``.
    Returns the class names stored in the checkpoint, or None."""
    if isinstance(checkpoint, Mapping):
        load_state_dict(model, checkpoint, strict)
        return None
    path = os.fspath(checkpoint)
    state, classes = read_checkpoint(path)
    load_state_dict(model, state, strict, source=path)
    return classes
