"""Reduced precision: NaN/inf model outputs (a float16 overflow) are an error with the
cause and the fix, never silently post-processed; the fp16/bf16-vs-fp32 comparison.
(The overflow safeguards of the model itself: tests/test_swin_fp16.py.)
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from codetr.postprocess import postprocess
from codetr.precision import NonFiniteOutputError, check_finite_outputs, compare_detections

from conftest import TINY_SWIN_WEIGHTS

REPO = Path(__file__).resolve().parents[1]


# --- detection of non-finite outputs ------------------------------------------------------------

def test_check_finite_outputs_messages():
    boxes, scores = torch.rand(2, 300, 4), torch.rand(2, 300)
    check_finite_outputs(boxes, scores, torch.float16)  # finite: no error
    scores[1, 5] = float("nan")
    scores[0, 0] = float("inf")
    with pytest.raises(NonFiniteOutputError) as info:
        check_finite_outputs(boxes, scores, torch.float16)
    msg = str(info.value)
    assert "'scores' has 2 non-finite value(s) (NaN/inf) out of 600" in msg
    assert "float16 model overflowed" in msg and "--dtype bfloat16" in msg and "--dtype float32" in msg
    boxes[0, 1, 2] = -float("inf")
    with pytest.raises(NonFiniteOutputError, match="'boxes' has 1 non-finite.*float32 model should not overflow"):
        check_finite_outputs(boxes, scores, "float32")


def test_postprocess_refuses_non_finite_outputs():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]]])
    scores = torch.tensor([[0.9, float("nan")]])
    metas = [{"ori_shape": (30, 30), "img_shape": (30, 30), "scale_factor": (1.0, 1.0)}]
    with pytest.raises(NonFiniteOutputError, match="'scores' has 1 non-finite"):
        postprocess(boxes, scores, torch.tensor([[1, 2]]), metas, "tiny_r50")
    scores[0, 1] = 0.5
    assert len(postprocess(boxes, scores, torch.tensor([[1, 2]]), metas, "tiny_r50")[0]["scores"]) == 2


def test_export_refuses_a_float16_model_that_overflows(tmp_path, capsys):
    """`codetr export --dtype float16` runs the model once on the example input first and stops
    with exit code 2 (before tracing) when the outputs are not finite."""
    from codetr.cli import main

    state = load_file(str(TINY_SWIN_WEIGHTS))
    state["backbone.stages.1.blocks.0.ffn.layers.0.0.weight"] *= 1e6  # fc1 -> inf -> fc2 -> NaN
    ckpt = tmp_path / "overflow.safetensors"
    save_file(state, str(ckpt))
    out = tmp_path / "engine"
    rc = main(["export", "--preset", "tiny_swin", "--checkpoint", str(ckpt), "--dtype", "float16",
               "--height", "128", "--width", "128", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "non-finite" in err and "float16 model overflowed" in err and "--dtype bfloat16" in err
    assert not (out / "model.pt2").exists() and not (out / "model.json").exists()


# --- the comparison tool ------------------------------------------------------------------------

def _load_tool():
    spec = importlib.util.spec_from_file_location("compare_precision", REPO / "tools" / "compare_precision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_precision_tool_on_tiny_swin(capsys):
    tool = _load_tool()
    rc = tool.main(["--preset", "tiny_swin", "--size", "160x128", "--device", "cpu", "--msda-impl", "pytorch",
                    "--dtypes", "float32,float16,bfloat16"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert report["preset"] == "tiny_swin" and report["size"] == [128, 160] and report["device"] == "cpu"
    assert report["random_weights"] and report["target"]["topk_agreement"] == 0.95
    assert [r["dtype"] for r in report["runs"]] == ["float32", "float16", "bfloat16"]
    keys = {"finite", "scores_max_abs_diff", "boxes_rel_err", "matched_scores_max_abs_diff", "topk_agreement",
            "meets_target", "per_image", "topk", "iou_threshold"}
    for run in report["runs"]:
        assert keys <= set(run) and run["finite"] and run["topk"] == 100 and run["iou_threshold"] == 0.9
    self_check = report["runs"][0]
    assert self_check["topk_agreement"] == 1.0 and self_check["meets_target"]
    assert self_check["scores_max_abs_diff"] == 0.0 and self_check["boxes_rel_err"] == 0.0
    for run in report["runs"][1:]:
        assert 0 < run["scores_max_abs_diff"] < 0.1 and 0 <= run["topk_agreement"] <= 1


def test_compare_precision_tool_reports_overflow(tmp_path, capsys):
    """An fp16 run that overflows: finite false, metrics null (strict JSON), exit code 1."""
    state = load_file(str(TINY_SWIN_WEIGHTS))
    state["backbone.stages.1.blocks.0.ffn.layers.0.0.weight"] *= 1e6
    ckpt = tmp_path / "overflow.safetensors"
    save_file(state, str(ckpt))
    rc = _load_tool().main(["--preset", "tiny_swin", "--size", "128x96", "--device", "cpu", "--msda-impl", "pytorch",
                            "--dtypes", "float16,bfloat16", "--checkpoint", str(ckpt)])
    out = capsys.readouterr().out
    report = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert rc == 1 and not report["random_weights"]
    fp16, bf16 = report["runs"]
    assert not fp16["finite"] and not fp16["meets_target"] and fp16["scores_max_abs_diff"] is None
    assert bf16["finite"]


def test_compare_detections_matching():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0], [50.0, 0.0, 60.0, 30.0]]])
    scores = torch.tensor([[0.9, 0.8, 0.7]])
    labels = torch.tensor([[1, 2, 3]])
    same = compare_detections((boxes, scores, labels), (boxes, scores, labels), topk=3)
    assert same["topk_agreement"] == 1.0 and same["boxes_rel_err"] == 0.0 and same["finite"]
    # swapped ranks still match; a moved box (IoU < 0.9) and a changed label do not
    out_boxes = boxes[:, [1, 0, 2]].clone()
    out_boxes[0, 2] += torch.tensor([3.0, 0.0, 3.0, 0.0])
    out = (out_boxes, torch.tensor([[0.85, 0.84, 0.7]]), torch.tensor([[2, 1, 3]]))
    cmp = compare_detections((boxes, scores, labels), out, topk=3)
    assert cmp["topk_agreement"] == pytest.approx(2 / 3) and cmp["boxes_rel_err"] == 0.0
    assert cmp["scores_max_abs_diff"] == pytest.approx(0.05) and cmp["matched_scores_max_abs_diff"] == pytest.approx(0.06)
    out = (boxes, scores, torch.tensor([[1, 2, 4]]))
    assert compare_detections((boxes, scores, labels), out, topk=3)["topk_agreement"] == pytest.approx(2 / 3)
    nan = scores.clone()
    nan[0, 0] = float("nan")
    assert not compare_detections((boxes, scores, labels), (boxes, nan, labels), topk=3)["finite"]
