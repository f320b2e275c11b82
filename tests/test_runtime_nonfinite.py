"""The C++ runtime refuses engine outputs holding NaN/inf: a float16 stand-in engine whose
scores turn NaN (what an fp16 overflow looks like after the engine) makes `codetr-detect` name the
output, the float16 overflow and the fix, and exit nonzero, instead of writing detections sorted
from NaN scores.
"""
from __future__ import annotations

import json
import subprocess

import pytest
import torch

from codetr import modeljson

import runtime_standin as standin

CLI = standin.runtime_binary("codetr-detect")
DEMO = standin.REPO / "python" / "codetr" / "assets" / "demo.jpg"


class OverflowingStandIn(standin.StandInEngine):
    """The stand-in (float16 input) whose scores turn NaN for bright images, as an overflowing
    float16 engine's do: exp(100 * max(image)) is inf for a normalised maximum above ~0.9 (the demo
    image: 2.6), and inf - inf is NaN. Computed in float32 on purpose: Inductor keeps fused
    intermediates in float32 (a CPU package even turned an fp16 mat-vec product past 65504 into
    a float32 reduction), so a stand-in fp16 overflow did not survive compilation here."""

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None):
        boxes, scores, labels = super().forward(images, masks)
        big = torch.exp(images.float().flatten(1).amax(1, keepdim=True) * 100.0)
        return boxes, scores + (big - big), labels


@pytest.fixture(scope="module")
def overflow_package(tmp_path_factory):
    standin.require_opencv_cli()
    out = tmp_path_factory.mktemp("overflow_standin")
    batch, height, width = 1, 160, 224
    engine = OverflowingStandIn(len(standin.CLASSES), with_mask=True).eval()
    args = (torch.zeros(batch, 3, height, width, dtype=torch.float16),
            torch.zeros(batch, height, width, dtype=torch.bool))
    spec = standin.model_json(batch, height, width, with_mask=True)
    spec["dtype"] = spec["inputs"][0]["dtype"] = "float16"
    contract = modeljson.engine_contract(spec["dtype"], spec["input"], spec["inputs"], spec["outputs"])
    with torch.no_grad():
        program = torch.export.export(engine, args)
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(out / "model.pt2"),
            inductor_configs={"aot_inductor.metadata": {modeljson.ENGINE_CONTRACT_KEY: contract}})
    modeljson.write_model_json(out, spec)
    return out


def test_cli_refuses_nonfinite_engine_outputs(overflow_package, tmp_path):
    out_json = tmp_path / "det.json"
    proc = subprocess.run([str(CLI), "--model", str(overflow_package), "--json", str(out_json), str(DEMO)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "engine output 'scores' has 300 non-finite value(s) (NaN/inf) out of 300" in proc.stderr
    assert "float16 model overflowed" in proc.stderr and "--dtype bfloat16" in proc.stderr
    assert json.loads(out_json.read_text()) == []  # no detections from NaN scores

    # a dark image stays below the overflow: the same engine then runs normally
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    dark = tmp_path / "dark.png"
    cv2.imwrite(str(dark), np.zeros((120, 200, 3), np.uint8))
    proc = subprocess.run([str(CLI), "--model", str(overflow_package), "--json", str(out_json), str(dark)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(out_json.read_text())) > 0


def test_benchmark_mode_refuses_nonfinite_engine_outputs(overflow_package):
    proc = subprocess.run([str(CLI), "--model", str(overflow_package), "--benchmark", "2", str(DEMO)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "non-finite" in proc.stderr and "float16 model overflowed" in proc.stderr
