"""`codetr export --format onnx` on the reduced presets (golden weights), checked with onnx.checker
and onnxruntime (CPU) against PyTorch eager: boxes/scores rel err <= 1e-4 in fp32, labels equal."""
import collections

import onnx
import pytest
import torch

from codetr.export import ExportOptions, export
from codetr.models import build_model, op_library_available
from codetr.onnx_engine import OnnxEngine
from codetr.onnx_export import MSDA_DOMAIN, MSDA_OP_TYPE, onnx_op_counts
from conftest import TINY_R50_WEIGHTS, TINY_SWIN_WEIGHTS


def _rel_err(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def _assert_matches_eager(got, want):
    boxes, scores, labels = got
    assert _rel_err(boxes, want[0]) <= 1e-4
    assert _rel_err(scores, want[1]) <= 1e-4
    assert torch.equal(labels, want[2])


def _inputs(batch, h, w, valid, seed=0):
    """Normalised images with zero padding outside each image's valid (h, w), and the padding mask."""
    images = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    masks = torch.ones(batch, h, w, dtype=torch.bool)
    for i, (vh, vw) in enumerate(valid):
        masks[i, :vh, :vw] = False
    return images.masked_fill(masks[:, None], 0.0), masks


def _export(tmp_path, log, **kw):
    result = export(ExportOptions(output=tmp_path, format="onnx", **kw), log=log.append)
    print("\n".join(log))  # node count and file size are part of the export log
    return result


@pytest.fixture(scope="module")
def tiny_r50():
    return build_model("tiny_r50", checkpoint=TINY_R50_WEIGHTS, msda_impl="pytorch")


def test_static_plugin_free_matches_eager(tmp_path, tiny_r50):
    log = []
    result = _export(tmp_path, log, preset="tiny_r50", checkpoint=TINY_R50_WEIGHTS, height=128, width=160,
                     batch=2)
    path = tmp_path / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 16
    assert all(o.domain in ("", "ai.onnx") for o in proto.opset_import), "plugin-free file has a custom domain"
    counts = onnx_op_counts(path)
    assert result["node_count"] == sum(counts.values()) == len(proto.graph.node)
    assert any(f"ONNX: {result['node_count']} nodes" in line and "MiB" in line for line in log)
    # 2 encoder + 2 decoder MSDA layers x 5 levels, each a GridSample with mmcv's semantics
    grid_samples = [n for n in proto.graph.node if n.op_type == "GridSample"]
    assert len(grid_samples) == 20
    for node in grid_samples:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.get("align_corners", 0) == 0
        assert attrs.get("padding_mode", b"zeros") == b"zeros"
        assert attrs.get("mode", b"bilinear") in (b"bilinear", b"linear")
    assert result["spec"]["engine"] == {"format": "onnx", "file": "model.onnx"}
    assert result["spec"]["inputs"][0]["shape"] == [2, 3, 128, 160]

    engine = OnnxEngine(tmp_path)
    images, masks = _inputs(2, 128, 160, [(128, 160), (96, 128)])
    _assert_matches_eager(engine(images, masks), tiny_r50(images, masks))


def test_dynamic_batch_and_size_lsj(tmp_path):
    """tiny_swin (LSJ: no mask input), dynamic batch and H/W, run at two batches and sizes."""
    log = []
    result = _export(tmp_path, log, preset="tiny_swin", checkpoint=TINY_SWIN_WEIGHTS, dynamic=True,
                     min_height=96, max_height=256, min_width=96, max_width=288, dynamic_batch=True,
                     min_batch=1, max_batch=4, onnx_optimize=False)
    spec = result["spec"]
    assert spec["input"] == {"min_batch": 1, "max_batch": 4, "dynamic": True, "min_height": 96,
                             "max_height": 256, "min_width": 96, "max_width": 288, "multiple": 32}
    assert spec["inputs"] == [{"name": "images", "shape": [-1, 3, -1, -1], "dtype": "float32"}]
    assert spec["outputs"][0]["shape"] == [-1, 300, 4]
    assert spec["preprocess"]["mask"] == "none" and spec["preprocess"]["pad_stage"] == "before_normalize"
    proto = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert len(proto.graph.input) == 1

    model = build_model("tiny_swin", checkpoint=TINY_SWIN_WEIGHTS, msda_impl="pytorch")
    engine = OnnxEngine(tmp_path)
    for batch, h, w in [(1, 96, 128), (3, 160, 224)]:
        images = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(h))
        _assert_matches_eager(engine(images), model(images))

    # A dynamic dimension that is not a multiple of 32 (or is out of range) is refused before
    # onnxruntime sees it, naming the input and the dimension.
    with pytest.raises(ValueError, match="`images`: height 100 is not a multiple of 32"):
        engine(torch.zeros(1, 3, 100, 128))
    with pytest.raises(ValueError, match=r"`images`: width is 320, engine expects in \[96, 288\]"):
        engine(torch.zeros(1, 3, 128, 320))
    with pytest.raises(ValueError, match=r"batch is 5, engine expects in \[1, 4\]"):
        engine(torch.zeros(5, 3, 128, 128))
    with pytest.raises(ValueError, match="takes no `masks` input"):
        engine(torch.zeros(1, 3, 128, 128), torch.zeros(1, 128, 128, dtype=torch.bool))


@pytest.mark.skipif(not op_library_available(), reason="op library not built (tools/build.sh)")
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_custom_msda_node(tmp_path, dynamic):
    """--onnx-msda-op: exactly one codetr::MultiScaleDeformableAttention per MSDA layer, no
    GridSample, documented attributes; the spatial shapes are computed in-graph."""
    size = dict(dynamic=True, min_height=96, max_height=256, min_width=96, max_width=256) if dynamic else \
        dict(height=128, width=160)
    log = []
    result = _export(tmp_path, log, preset="tiny_r50", checkpoint=TINY_R50_WEIGHTS, onnx_msda_op=True,
                     onnx_optimize=False, **size)
    path = tmp_path / "model.onnx"
    onnx.checker.check_model(str(path))
    proto = onnx.load(str(path))
    assert {o.domain: o.version for o in proto.opset_import}[MSDA_DOMAIN] == 1
    custom = [n for n in proto.graph.node if n.domain == MSDA_DOMAIN]
    assert len(custom) == 4  # 2 encoder layers + 2 decoder cross-attention layers
    assert all(n.op_type == MSDA_OP_TYPE for n in custom)
    counts = onnx_op_counts(path)
    assert counts.get("GridSample", 0) == 0 and counts[f"{MSDA_DOMAIN}::{MSDA_OP_TYPE}"] == 4
    assert result["op_counts"] == counts
    for node in custom:
        assert len(node.input) == 5 and len(node.output) == 1
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        expected = {"num_heads": 4, "num_levels": 5, "num_points": 4, "head_dim": 16}
        if not dynamic:
            expected["static_spatial_shapes"] = [32, 40, 16, 20, 8, 10, 4, 5, 2, 3]
        assert attrs == expected
    _check_level_tensors(proto, custom)


def _check_level_tensors(proto, nodes):
    """Evaluate the subgraph that computes the nodes' spatial_shapes / level_start_index inputs with
    onnxruntime for a 128 x 160 input and compare with the level sizes."""
    import onnxruntime as ort

    inputs = [i.name for i in proto.graph.input]
    outputs = sorted({name for n in nodes for name in n.input[1:3]})
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.value_info.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None)
                                  for name in outputs)
    sub = onnx.utils.Extractor(probe).extract_model(inputs, outputs)
    assert not any(n.domain == MSDA_DOMAIN for n in sub.graph.node)
    session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip(outputs, session.run(outputs, {
        "images": torch.zeros(1, 3, 128, 160).numpy(), "masks": torch.zeros(1, 128, 160, dtype=torch.bool).numpy()})))
    for node in nodes:
        # ResNet strides 4, 8, 16, 32 + the neck's extra stride-2 3x3 conv level
        assert values[node.input[1]].tolist() == [[32, 40], [16, 20], [8, 10], [4, 5], [2, 3]]
        assert values[node.input[2]].tolist() == [0, 1280, 1600, 1680, 1700]
