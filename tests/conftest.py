"""Shared fixtures.

`exported_tiny_package`: the reduced tiny_r50 preset with the golden fixture weights
(tests/fixtures/golden/tiny_r50.safetensors, mmdet key layout) exported ONCE per test session by
`codetr export` to a CPU AOTInductor package, static 1x3x128x160, float32. The directory holds
model.pt2 + model.json; the C++ runtime tests and the CLI integration test consume it.
"""
import os
from pathlib import Path

import pytest

# The tests run this checkout's package (pyproject's pytest `pythonpath`), also in the Python
# subprocesses some of them start.
_PYTHON_DIR = str(Path(__file__).resolve().parents[1] / "python")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_PYTHON_DIR, os.environ.get("PYTHONPATH")]))

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_R50_WEIGHTS = FIXTURES / "golden" / "tiny_r50.safetensors"
TINY_SWIN_WEIGHTS = FIXTURES / "golden" / "tiny_swin.safetensors"
TINY_PACKAGE_SIZE = (128, 160)  # (H, W) of the shared AOTI package


@pytest.fixture(scope="session")
def exported_tiny_package(tmp_path_factory) -> Path:
    from codetr.export import ExportOptions, export

    out = tmp_path_factory.mktemp("tiny_r50_aoti")
    height, width = TINY_PACKAGE_SIZE
    export(ExportOptions(preset="tiny_r50", checkpoint=TINY_R50_WEIGHTS, output=out, height=height,
                         width=width, format="aoti", device="cpu", dtype="float32"))
    return out
