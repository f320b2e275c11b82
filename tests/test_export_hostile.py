"""`codetr export` under hostile input: bad checkpoints, outputs and options generated in tmp_path and
run through the real CLI (`python -m codetr export`). Every case: exit 2, one clear line on stderr
naming the problem, no traceback, nothing exported. All are refused before the model is traced."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_R50_WEIGHTS


def export(tmp_path, *args):
    proc = subprocess.run([sys.executable, "-m", "codetr", "export", "--preset", "tiny_r50", "--height", "128",
                           "--width", "160", *map(str, args)], capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    return proc, errors


def bad_checkpoints(d):
    """name -> (file, what the message must say)."""
    (d / "empty.pth").write_bytes(b"")
    (d / "random.pth").write_bytes(bytes(range(256)) * 8)
    torch.save([1, 2, 3], d / "list.pth")
    torch.save({"state_dict": [1, 2]}, d / "sdlist.pth")
    raw = TINY_R50_WEIGHTS.read_bytes()
    (d / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    sd = load_file(TINY_R50_WEIGHTS)
    key = "backbone.layer1.0.bn1.bias"
    save_file({**sd, key: sd[key].long()}, d / "int.safetensors")
    nan = sd[key].clone()
    nan[0] = float("nan")
    save_file({**sd, key: nan}, d / "nan.safetensors")
    save_file(sd, d / "classes.safetensors", metadata={"classes": json.dumps([1, 2])})
    torch.save(sd, d / "ok.pth")
    pth = (d / "ok.pth").read_bytes()
    (d / "trunc.pth").write_bytes(pth[: len(pth) // 3])
    return {
        "empty": (d / "empty.pth", "corrupt or truncated checkpoint"),
        "random": (d / "random.pth", "corrupt or truncated checkpoint"),
        "list": (d / "list.pth", "expected a dict"),
        "state_dict list": (d / "sdlist.pth", "'state_dict' must be a dict of tensors"),
        "truncated safetensors": (d / "trunc.safetensors", "corrupt or truncated safetensors file"),
        "int64 weight": (d / "int.safetensors", f"not floating point: {key} (torch.int64)"),
        "NaN weight": (d / "nan.safetensors", f"hold NaN or inf: {key}"),
        "class names": (d / "classes.safetensors", "'classes' must be a list of class-name strings"),
        "truncated pth": (d / "trunc.pth", "corrupt or truncated checkpoint"),
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_checkpoints")
    return bad_checkpoints(d)


@pytest.mark.parametrize("case", ["empty", "random", "list", "state_dict list", "truncated safetensors",
                                  "int64 weight", "NaN weight", "class names", "truncated pth"])
def test_bad_checkpoint_is_one_clear_line(corpus, tmp_path, case):
    path, expected = corpus[case]
    proc, errors = export(tmp_path, "--checkpoint", path, "-o", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(errors) == 1 and str(path.name) in errors[0] and expected in errors[0], proc.stderr
    assert not (tmp_path / "out" / "model.pt2").exists()


@pytest.mark.parametrize("args,expected", [
    (["-o", "{file}"], "exists and is not a directory"),
    (["-o", "/proc/codetr-no-such/out"], "cannot write there"),
    (["-o", "{out}", "--height", "0"], "--height must be a positive multiple of 32, got 0"),
    (["-o", "{out}", "--dynamic", "--min-height", "64", "--max-height", "256", "--min-width", "96",
      "--max-width", "256"], "--min-height 64 is below 96, the smallest dynamic size of preset 'tiny_r50'"),
])
def test_bad_options_and_outputs_are_one_clear_line(tmp_path, args, expected):
    (tmp_path / "afile").write_text("x")
    args = [a.format(file=tmp_path / "afile", out=tmp_path / "out") for a in args]
    proc, errors = export(tmp_path, "--checkpoint", TINY_R50_WEIGHTS, *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(errors) == 1 and expected in errors[0], proc.stderr


def test_swin_minimum_dynamic_size_is_the_same_rule(tmp_path):
    from codetr.models import min_dynamic_input_size

    proc = subprocess.run([sys.executable, "-m", "codetr", "export", "--preset", "tiny_swin", "--dynamic",
                           "--min-height", "96", "--max-height", "512", "--min-width", "96", "--max-width", "512",
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"below {min_dynamic_input_size('tiny_swin')}" in proc.stderr


def test_help_lists_every_preset():
    from codetr.presets import PRESETS, REDUCED_PRESETS

    out = subprocess.run([sys.executable, "-m", "codetr", "export", "--help"], capture_output=True, text=True,
                         timeout=120).stdout
    flat = " ".join(out.split())
    for name in [*PRESETS, *REDUCED_PRESETS]:
        assert name in flat
