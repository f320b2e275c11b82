"""`codetr export --format onnx`: Co-DINO as an ONNX file (torch.onnx dynamo exporter).

Two ways to write multi-scale deformable attention (MSDA), ``--onnx-msda``:

* ``gridsample`` (default, plugin-free): MSDA is traced through
  :func:`codetr.ops.ms_deform_attn_pytorch`, i.e. standard ONNX ops around ``GridSample``
  (bilinear, padding_mode "zeros", align_corners 0; opset >= 16). Any ONNX runtime runs it.
* ``trt-plugin``: every MSDA call becomes ONE node for TensorRT's built-in plugin
  ``MultiscaleDeformableAttnPlugin_TRT`` (TensorRT OSS plugin/multiscaleDeformableAttnPlugin),
  so TensorRT runs MSDA as one kernel and never sees the GridSample decomposition (which
  TensorRT 10.14 / 11.1 are reported to miscompile, NVIDIA/TensorRT#4813). The node, as the
  plugin's README and its supportsFormatCombination / getOutputShapes define the I/O:

    domain "trt.plugins" (TensorRT's ONNX parser matches a plugin by op_type and the
    plugin_version / plugin_namespace attributes only; the domain is for onnx's checker),
    op_type MultiscaleDeformableAttnPlugin_TRT, attribute plugin_version "2" (IPluginV3, TensorRT
    >= 10.11; version "1" has the same I/O and is deprecated), no other attributes.
    inputs   value              (N, S, M, D)        float32 or float16 (T)
             spatial_shapes     (L, 2) int32        (h_l, w_l), computed in-graph from the input size
             level_start_index  (L,)   int32        exclusive cumsum of h_l * w_l
             sampling_locations (N, Lq, M, L, P, 2) T   normalised (x, y), pixel = loc * size - 0.5
             attention_weights  (N, Lq, M, L, P)    T
    output   (N, Lq, M, D) T, followed in the graph by a Reshape to (N, Lq, M * D).
    The plugin wants the locations and weights in value's dtype: a float16 export rounds them
    to float16 in front of the node (the codetr op keeps them float32).

  Nothing but TensorRT with that plugin can run this file; onnxruntime cannot.

(A third variant, one node ``codetr::MultiScaleDeformableAttention`` for a plugin of our own, was
dropped: no such plugin was ever written, and TensorRT's own plugin computes the same function.)
"""
from __future__ import annotations

import collections
import warnings
from pathlib import Path
from typing import Dict

import torch
from torch import nn

from codetr.export import (EngineModule, ExportError, ExportOptions, Progress, _use_msda_op,
                           dynamic_shapes_spec, program_outputs)

TRT_PLUGIN_DOMAIN = "trt.plugins"
TRT_PLUGIN_OP_TYPE = "MultiscaleDeformableAttnPlugin_TRT"
TRT_PLUGIN_VERSION = "2"
MIN_OPSET = 16  # GridSample


def _register_trt_plugin_schema() -> None:
    """Declare the plugin node to onnx (onnxscript builds nodes only for declared ops)."""
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has(TRT_PLUGIN_OP_TYPE, TRT_PLUGIN_DOMAIN):
        return
    param = OpSchema.FormalParameter
    schema = OpSchema(
        TRT_PLUGIN_OP_TYPE, TRT_PLUGIN_DOMAIN, 1,
        doc="TensorRT's multi-scale deformable attention plugin (see codetr.onnx_export).",
        inputs=[param("value", "T"), param("spatial_shapes", "tensor(int32)"),
                param("level_start_index", "tensor(int32)"), param("sampling_locations", "T"),
                param("attention_weights", "T")],
        outputs=[param("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "the plugin's float types")],
        attributes=[OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version",
                                       required=False),
                    OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace",
                                       required=False)],
    )
    onnx.defs.register_schema(schema)


def _trt_plugin_translation():
    """onnxscript translation of torch.ops.codetr.ms_deform_attn -> the TensorRT plugin node."""
    import onnxscript
    from onnxscript import opset18 as op

    _register_trt_plugin_schema()
    trt = onnxscript.values.Opset(TRT_PLUGIN_DOMAIN, 1)

    def translate(value, spatial_shapes, sampling_locations, attention_weights):
        # spatial_shapes: python ints (static dims) or 0-d int64 tensors (dynamic dims).
        parts = [op.Constant(value_ints=[s]) if isinstance(s, int) else op.Reshape(s, op.Constant(value_ints=[1]))
                 for s in spatial_shapes]
        shapes = op.Reshape(op.Concat(*parts, axis=0), op.Constant(value_ints=[-1, 2]))
        starts = op.CumSum(op.ReduceProd(shapes, op.Constant(value_ints=[1]), keepdims=0),
                           op.Constant(value_int=0), exclusive=1)
        out = trt.MultiscaleDeformableAttnPlugin_TRT(
            value, op.Cast(shapes, to=onnxscript.INT32.dtype), op.Cast(starts, to=onnxscript.INT32.dtype),
            op.CastLike(sampling_locations, value), op.CastLike(attention_weights, value),
            plugin_version=TRT_PLUGIN_VERSION)
        return op.Reshape(out, op.Constant(value_ints=[0, 0, -1]))  # (N, Lq, M, D) -> (N, Lq, M * D)

    return {torch.ops.codetr.ms_deform_attn.default: translate}


def _rename_dynamic_dims(model_proto, uses_mask: bool) -> None:
    """Give the graph's dynamic input/output dims stable names: batch, height, width."""
    names = {}
    images = model_proto.graph.input[0].type.tensor_type.shape.dim
    for axis, name in ((0, "batch"), (2, "height"), (3, "width")):
        if images[axis].dim_param:
            names[images[axis].dim_param] = name
    for value_info in list(model_proto.graph.input) + list(model_proto.graph.output):
        for dim in value_info.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


def _cast_like_to_cast(model_proto) -> None:
    """Rewrite every ``CastLike(x, like)`` whose ``like`` dtype is known as ``Cast(x, to=dtype)``.

    Same semantics by the ONNX definition of CastLike. Why: torch's lowerings emit CastLike (e.g.
    scaled_dot_product_attention's scale, ``Sqrt(CastLike(1/sqrt(E), query))``, in the model dtype),
    and onnxruntime 1.30's CPU provider mis-types the float32 cast it inserts in front of an fp16
    op without an fp16 kernel (Sqrt) when that op's input comes from a CastLike: session creation
    fails with "Type (tensor(float)) of output arg (InsertedPrecisionFreeCast_...) ... does not
    match expected type (tensor(float16))". A plain Cast is handled by every onnxruntime version.
    CastLike nodes whose ``like`` dtype cannot be inferred are left as they are.
    """
    import onnx
    from onnx import helper

    inferred = onnx.shape_inference.infer_shapes(model_proto).graph
    dtypes = {v.name: v.type.tensor_type.elem_type
              for v in list(inferred.value_info) + list(inferred.input) + list(inferred.output)}
    dtypes.update({t.name: t.data_type for t in model_proto.graph.initializer})
    for node in model_proto.graph.node:
        to = dtypes.get(node.input[1]) if node.op_type == "CastLike" and node.domain in ("", "ai.onnx") else None
        if to:  # 0 = UNDEFINED: not inferred
            del node.input[1]
            node.op_type = "Cast"
            node.attribute.append(helper.make_attribute("to", to))


def export_onnx(opts: ExportOptions, model: nn.Module, uses_mask: bool, args, progress: Progress):
    import onnx

    if opts.opset < MIN_OPSET:
        raise ExportError(f"--opset {opts.opset} is too old: GridSample needs opset >= {MIN_OPSET}")
    from codetr.models import set_cuda_fusions
    set_cuda_fusions(model, False)  # their ops (window attention, GEMM-epilogue ReLU) are not ONNX
    if opts.onnx_msda == "trt-plugin":
        _use_msda_op(model)
        table = _trt_plugin_translation()
    else:
        from codetr.nn import set_msda_impl
        set_msda_impl(model, "pytorch")
        table = None
    engine = EngineModule(model, uses_mask).eval()
    input_names = ["images", "masks"] if uses_mask else ["images"]
    path = Path(opts.output) / "model.onnx"
    with progress.step(f"tracing + converting to ONNX (dynamo exporter, opset {opts.opset})"):
        with warnings.catch_warnings(), torch.no_grad():
            # The exporter warns once per aliased symbolic dim (32*h32 on images and masks).
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
            program = torch.onnx.export(
                engine, args, dynamo=True, dynamic_shapes=dynamic_shapes_spec(opts, uses_mask),
                input_names=input_names, output_names=["boxes", "scores", "labels"],
                opset_version=opts.opset, custom_translation_table=table, optimize=opts.onnx_optimize,
                verbose=False)
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    outputs = program_outputs(program.exported_program)
    with progress.step("packaging (saving + onnx.checker)"):
        proto = program.model_proto
        _rename_dynamic_dims(proto, uses_mask)
        _cast_like_to_cast(proto)
        onnx.save_model(proto, str(path))
        onnx.checker.check_model(str(path))
    op_counts = _op_counts(proto)
    node_count = sum(op_counts.values())
    size = path.stat().st_size
    plugin = f"{TRT_PLUGIN_DOMAIN}::{TRT_PLUGIN_OP_TYPE}"
    progress.log(f"[codetr export] ONNX: {node_count} nodes ({op_counts.get('GridSample', 0)} GridSample, "
                 f"{op_counts.get(plugin, 0)} {TRT_PLUGIN_OP_TYPE}), {size / 2**20:.2f} MiB, opset {opts.opset}")
    return path, outputs, {"node_count": node_count, "op_counts": dict(op_counts)}


def _op_counts(proto) -> Dict[str, int]:
    return dict(collections.Counter(
        f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in proto.graph.node))


def onnx_op_counts(path: str | Path) -> Dict[str, int]:
    """Node count per op type (custom domains as 'domain::Op') of an ONNX file's main graph."""
    import onnx

    return _op_counts(onnx.load(str(path), load_external_data=False))
