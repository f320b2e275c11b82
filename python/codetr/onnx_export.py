"""`codetr export --format onnx`: Co-DINO as an ONNX file (torch.onnx dynamo exporter).

Two ways to write multi-scale deformable attention (MSDA):

* default, plugin-free: MSDA is traced through :func:`codetr.ops.ms_deform_attn_pytorch`, i.e.
  standard ONNX ops around ``GridSample`` (bilinear, padding_mode "zeros", align_corners 0;
  opset >= 16). Any ONNX runtime runs it (onnxruntime, TensorRT's parser, DeepStream).
* ``--onnx-msda-op``: every MSDA call becomes ONE node ``codetr::MultiScaleDeformableAttention``
  (domain "codetr", version 1) for a TensorRT plugin (same I/O layout as TensorRT's
  MultiscaleDeformableAttnPlugin_TRT):

    inputs   value              (B, S, H, D)      float (model dtype)
             spatial_shapes     (L, 2) int64      (h_l, w_l) per level; computed from the input
                                                  shape inside the graph, so dynamic H/W work
             level_start_index  (L,)   int64      exclusive cumsum of h_l * w_l
             sampling_locations (B, Q, H, L, P, 2) float32, normalised (x, y); the pixel sampled
                                                  is loc * (w_l, h_l) - 0.5 (align_corners=0)
             attention_weights  (B, Q, H, L, P)   float32, softmax-normalised over L*P
    output   output             (B, Q, H * D)     value's dtype
    attributes num_heads (H), num_levels (L), num_points (P), head_dim (D) (all int), and
             static_spatial_shapes (ints, [h0, w0, h1, w1, ...]) when the export is static in H
             and W (absent for dynamic H/W: read the spatial_shapes input then).
    Semantics: bilinear sampling with zeros outside each level's map, weighted sum over L*P
    (mmcv multi_scale_deformable_attn). ONNX runtimes without the plugin cannot run this file.
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

MSDA_DOMAIN = "codetr"
MSDA_OP_TYPE = "MultiScaleDeformableAttention"
MIN_OPSET = 16  # GridSample


def _register_msda_schema() -> None:
    """Declare the custom node to onnx (onnxscript builds nodes only for declared ops)."""
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has(MSDA_OP_TYPE, MSDA_DOMAIN):
        return
    float_types = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    param = OpSchema.FormalParameter
    attr = OpSchema.Attribute
    schema = OpSchema(
        MSDA_OP_TYPE, MSDA_DOMAIN, 1,
        doc="Multi-scale deformable attention (see codetr.onnx_export for the contract).",
        inputs=[param("value", "T"), param("spatial_shapes", "tensor(int64)"),
                param("level_start_index", "tensor(int64)"), param("sampling_locations", "TL"),
                param("attention_weights", "TL")],
        outputs=[param("output", "T")],
        type_constraints=[("T", float_types, "value / output dtype"),
                          ("TL", float_types, "sampling locations / attention weights dtype")],
        attributes=[attr("num_heads", OpSchema.AttrType.INT, "attention heads H"),
                    attr("num_levels", OpSchema.AttrType.INT, "feature levels L"),
                    attr("num_points", OpSchema.AttrType.INT, "sampling points per level P"),
                    attr("head_dim", OpSchema.AttrType.INT, "channels per head D"),
                    attr("static_spatial_shapes", OpSchema.AttrType.INTS,
                         "static (h, w) per level, flattened; only in static exports", required=False)],
    )
    onnx.defs.register_schema(schema)


def _msda_translation():
    """onnxscript translation of torch.ops.codetr.ms_deform_attn -> one codetr node."""
    import onnxscript
    from onnxscript import opset18 as op

    _register_msda_schema()
    codetr_opset = onnxscript.values.Opset(MSDA_DOMAIN, 1)

    def translate(value, spatial_shapes, sampling_locations, attention_weights):
        # spatial_shapes: python ints (static dims) or 0-d int64 tensors (dynamic dims).
        parts = [op.Constant(value_ints=[s]) if isinstance(s, int) else op.Reshape(s, op.Constant(value_ints=[1]))
                 for s in spatial_shapes]
        flat = op.Concat(*parts, axis=0)
        shapes = op.Reshape(flat, op.Constant(value_ints=[-1, 2]))
        areas = op.ReduceProd(shapes, op.Constant(value_ints=[1]), keepdims=0)
        starts = op.CumSum(areas, op.Constant(value_int=0), exclusive=1)
        _, _, heads, levels, points, _ = sampling_locations.shape
        attrs = dict(num_heads=int(heads), num_levels=int(levels), num_points=int(points),
                     head_dim=int(value.shape[3]))
        if all(isinstance(s, int) for s in spatial_shapes):
            attrs["static_spatial_shapes"] = [int(s) for s in spatial_shapes]
        return codetr_opset.MultiScaleDeformableAttention(value, shapes, starts, sampling_locations,
                                                          attention_weights, **attrs)

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
    if opts.onnx_msda_op:
        _use_msda_op(model)
        table = _msda_translation()
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
    progress.log(f"[codetr export] ONNX: {node_count} nodes ({op_counts.get('GridSample', 0)} GridSample, "
                 f"{op_counts.get(f'{MSDA_DOMAIN}::{MSDA_OP_TYPE}', 0)} {MSDA_DOMAIN}::{MSDA_OP_TYPE}), "
                 f"{size / 2**20:.2f} MiB, opset {opts.opset}")
    return path, outputs, {"node_count": node_count, "op_counts": dict(op_counts)}


def _op_counts(proto) -> Dict[str, int]:
    return dict(collections.Counter(
        f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in proto.graph.node))


def onnx_op_counts(path: str | Path) -> Dict[str, int]:
    """Node count per op type (custom domains as 'domain::Op') of an ONNX file's main graph."""
    import onnx

    return _op_counts(onnx.load(str(path), load_external_data=False))
