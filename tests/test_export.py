"""`codetr export` (AOTInductor): refusals, model.json content, the package itself, the resize rule,
and the engine-input validation shared with the ONNX runner."""
import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch

from codetr.cli import main
from codetr.export import ExportError, ExportOptions, default_engine, engine_resize
from codetr.modeljson import load_model_json, validate_engine_inputs
from codetr.presets import COCO_CLASSES, PRESETS, get_preset
from conftest import TINY_PACKAGE_SIZE, TINY_R50_WEIGHTS, TINY_SWIN_WEIGHTS

R50 = "co_dino_5scale_r50_8xb2_1x_coco"


def _refused(capsys, *argv):
    rc = main(["export", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    return err


# ---------------------------------------------------------------------------------------------
# refusals (nothing is built or traced before these fail)
# ---------------------------------------------------------------------------------------------
def test_unknown_preset_lists_valid_ones(tmp_path, capsys):
    err = _refused(capsys, "--preset", "co_dino_nope", "-o", str(tmp_path))
    assert "unknown preset 'co_dino_nope'" in err
    for name in PRESETS:
        assert name in err


@pytest.mark.parametrize("flags, message", [
    (["--height", "800", "--width", "1333"], "--width must be a positive multiple of 32, got 1333"),
    (["--height", "100"], "--height must be a positive multiple of 32, got 100"),
    (["--dynamic", "--min-height", "320", "--max-height", "800", "--min-width", "320"],
     "--dynamic needs --max-width"),
    (["--height", "800"], "a static engine needs both --height and --width"),
    (["--dynamic", "--min-height", "640", "--max-height", "320", "--min-width", "320", "--max-width", "800"],
     "--min-height 640 is larger than --max-height 320"),
    (["--dynamic", "--min-height", "64", "--max-height", "320", "--min-width", "320", "--max-width", "800"],
     "--min-height 64 is below 96"),
    (["--onnx-msda", "trt-plugin"], "--onnx-msda only applies to --format onnx"),
    (["--format", "onnx", "--onnx-msda", "trt-plugin", "--dtype", "bfloat16"], "takes float32 or float16"),
    (["--format", "onnx", "--opset", "15"], "GridSample needs opset >= 16"),
    (["--dynamic-batch", "--max-batch", "1"], "dynamic batch needs"),
])
def test_bad_options_are_refused(tmp_path, capsys, flags, message):
    err = _refused(capsys, "--preset", "tiny_r50", "-o", str(tmp_path), *flags)
    assert message in err
    assert not (tmp_path / "model.pt2").exists() and not (tmp_path / "model.onnx").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_refused(tmp_path, capsys):
    err = _refused(capsys, "--preset", R50, "--device", "cuda", "-o", str(tmp_path))
    assert "--device cuda requested but no CUDA GPU is available" in err


def test_missing_checkpoint_file_is_refused(tmp_path, capsys):
    err = _refused(capsys, "--preset", "tiny_r50", "--checkpoint", str(tmp_path / "nope.pth"), "-o", str(tmp_path))
    assert "nope.pth: no such file" in err


def test_checkpoint_mismatch_surfaces_the_loader_error(tmp_path, capsys):
    # tiny_swin weights into tiny_r50: the loader's missing/unexpected key report must reach the user.
    err = _refused(capsys, "--preset", "tiny_r50", "--checkpoint", str(TINY_SWIN_WEIGHTS), "-o", str(tmp_path))
    assert f"--checkpoint {TINY_SWIN_WEIGHTS} does not fit preset 'tiny_r50'" in err
    assert "backbone." in err  # the loader names the offending keys


def test_python_dash_m_entry_point_runs_the_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "codetr", "export", "--preset", "bogus", "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown preset 'bogus'" in proc.stderr


# ---------------------------------------------------------------------------------------------
# resize/pad rule written into model.json
# ---------------------------------------------------------------------------------------------
def _pre(name):
    return get_preset(name).to_metadata()["preprocess"]


@pytest.mark.parametrize("hw, scale", [
    ((800, 1344), [1333, 800]),    # the mmdet scale fits: unchanged
    ((768, 1152), [1152, 768]),    # smaller landscape engine: capped per edge
    ((1344, 800), [1333, 800]),    # portrait engine: same (long, short) limits
    ((640, 640), [640, 640]),
])
def test_static_engine_resize_rule(hw, scale):
    opts = ExportOptions(preset=R50, output=".", height=hw[0], width=hw[1])
    resize, pad = engine_resize(opts, _pre(R50))
    assert resize["scale"] == scale and resize["keep_ratio"] is True
    assert pad == {"size": list(hw)}
    # A 4:3 image of the engine's orientation, resized with mmcv's rule, fits the engine.
    long_edge, short_edge = max(hw), min(hw)
    img_long, img_short = 4000, 3000
    factor = min(scale[0] / img_long, scale[1] / img_short)
    assert int(img_long * factor + 0.5) <= long_edge and int(img_short * factor + 0.5) <= short_edge


@pytest.mark.parametrize("name, size", [
    ("co_dino_5scale_r50_lsj_8xb2_1x_coco", (1024, 1024)),        # LSJ: the fixed pad size
    ("co_dino_5scale_swin_l_lsj_16xb1_1x_coco", (1280, 1280)),
])
def test_default_engine_of_lsj_presets_is_static_at_the_pad_size(name, size):
    assert default_engine(get_preset(name)) == {"height": size[0], "width": size[1]}
    opts = ExportOptions(preset=name, output=".", height=size[0], width=size[1])
    resize, pad = engine_resize(opts, _pre(name))
    assert resize["scale"] == _pre(name)["resize"]["scale"]  # mmdet's scale exactly
    assert pad == {"size": list(size)}


@pytest.mark.parametrize("name, low, high", [
    (R50, 96, 1333),                                           # any size a (1333, 800) resize makes
    ("co_dino_5scale_swin_l_16xb1_1x_coco", 416, 1333),
    ("co_dino_5scale_swin_l_16xb1_16e_o365tococo", 416, 2048),  # (2048, 1280)
])
def test_default_engine_of_other_presets_is_dynamic_and_unpadded(name, low, high):
    engine = default_engine(get_preset(name))
    assert engine == {"dynamic": True, "min_height": low, "max_height": high, "min_width": low, "max_width": high}
    resize, pad = engine_resize(ExportOptions(preset=name, output=".", **engine), _pre(name))
    assert resize == _pre(name)["resize"] and pad == {"size_divisor": 1}  # mmdet: a single image is not padded


def test_dynamic_engine_keeps_the_preset_rule():
    opts = ExportOptions(preset=R50, output=".", dynamic=True, min_height=320, max_height=1344,
                         min_width=320, max_width=1344)
    resize, pad = engine_resize(opts, _pre(R50))
    assert resize["scale"] == [1333, 800] and pad == {"size_divisor": 1}


def test_dynamic_engine_too_small_for_the_preset_warns():
    opts = ExportOptions(preset=R50, output=".", dynamic=True, min_height=320, max_height=800,
                         min_width=320, max_width=800)
    with pytest.warns(UserWarning, match="large images will not fit"):
        engine_resize(opts, _pre(R50))


def test_dynamic_engine_must_contain_the_lsj_pad_size():
    lsj = "co_dino_5scale_r50_lsj_8xb2_1x_coco"
    opts = ExportOptions(preset=lsj, output=".", dynamic=True, min_height=320, max_height=800,
                         min_width=320, max_width=800)
    with pytest.raises(ExportError, match="preset pads every image to 1024x1024"):
        engine_resize(opts, _pre(lsj))


# ---------------------------------------------------------------------------------------------
# the exported package (session fixture: tiny_r50, golden weights, static 1x3x128x160, CPU)
# ---------------------------------------------------------------------------------------------
def test_model_json_content(exported_tiny_package):
    spec = load_model_json(exported_tiny_package)
    on_disk = json.loads((exported_tiny_package / "model.json").read_text())
    assert spec == on_disk
    h, w = TINY_PACKAGE_SIZE
    assert spec["format_version"] == 2
    assert spec["preset"] == "tiny_r50"
    assert spec["engine"] == {"format": "aoti", "file": "model.pt2"}
    assert (exported_tiny_package / "model.pt2").is_file()
    assert spec["device"] == "cpu" and spec["dtype"] == "float32"
    assert spec["torch_version"] == torch.__version__
    assert spec["classes"] == list(COCO_CLASSES)
    assert spec["input"] == {"batch": 1, "dynamic": False, "height": h, "width": w, "multiple": 32}
    assert spec["inputs"] == [{"name": "images", "shape": [1, 3, h, w], "dtype": "float32"},
                              {"name": "masks", "shape": [1, h, w], "dtype": "bool"}]
    assert spec["outputs"] == [{"name": "boxes", "shape": [1, 300, 4], "dtype": "float32"},
                               {"name": "scores", "shape": [1, 300], "dtype": "float32"},
                               {"name": "labels", "shape": [1, 300], "dtype": "int64"}]
    pre = spec["preprocess"]
    assert pre["resize"] == {"scale": [w, h], "keep_ratio": True, "interpolation": "bilinear"}
    assert pre["pad"] == {"size": [h, w]}
    assert pre["pad_value"] == 0.0 and pre["pad_stage"] == "after_normalize" and pre["mask"] == "padding"
    assert pre["bgr_to_rgb"] is True
    assert pre["mean"] == [123.675, 116.28, 103.53] and pre["std"] == [58.395, 57.12, 57.375]
    assert spec["postprocess"] == {"score_thr": 0.0, "max_per_img": 300, "clip": False,
                                   "nms": {"type": "soft_nms", "iou_threshold": 0.8, "method": "linear",
                                           "sigma": 0.5, "min_score": 0.001}}


def test_package_calls_the_custom_op(exported_tiny_package):
    # The MSDA must stay codetr::ms_deform_attn (no decomposition) so the C++ runtime runs our kernel.
    with zipfile.ZipFile(exported_tiny_package / "model.pt2") as package:
        text = "".join(package.read(name).decode("utf-8", "ignore") for name in package.namelist()
                       if name.endswith((".json", ".cpp", ".wrapper.cpp")))
    assert "codetr::ms_deform_attn" in text or "codetr.ms_deform_attn" in text
    assert "grid_sampler" not in text


def test_package_matches_eager(exported_tiny_package):
    """The compiled package vs eager on the golden inputs (no near-tied scores there, so the top-300
    order is stable), one image at a time with its padding mask."""
    from safetensors.torch import load_file

    from codetr.models import build_model

    model = build_model("tiny_r50", checkpoint=TINY_R50_WEIGHTS, msda_impl="op")
    runner = torch._inductor.aoti_load_package(str(exported_tiny_package / "model.pt2"))
    spec = load_model_json(exported_tiny_package)
    golden = load_file(str(TINY_R50_WEIGHTS).replace(".safetensors", "_io.safetensors"))
    assert tuple(golden["images"].shape[2:]) == TINY_PACKAGE_SIZE
    for i, (valid_h, valid_w) in enumerate(golden["img_shape"].tolist()):
        images = golden["images"][i:i + 1]
        masks = torch.ones(1, *TINY_PACKAGE_SIZE, dtype=torch.bool)
        masks[:, :valid_h, :valid_w] = False
        validate_engine_inputs(spec, images, masks)
        got = runner(images, masks)
        want = model(images, masks)
        for g, r in zip(got[:2], want[:2]):
            assert (g - r).norm() / r.norm() <= 1e-4
        assert torch.equal(got[2], want[2])
        # boxes are in input pixels inside the valid (unpadded) region
        assert got[0][..., 0::2].max() <= valid_w and got[0][..., 1::2].max() <= valid_h


def test_dynamic_package_matches_eager_above_and_below_the_trace_size(tmp_path):
    """A dynamic-H/W package must compute the same function at every size in its range, not only
    at the example size it was traced with (mask-derived valid sizes, level shapes, top-k), odd
    sizes included.

    Compared as sets, not position by position: the 300 outputs are a top-k of scores that can lie
    ~1e-7 apart (here down to 1.2e-7 at 96x97), and a compiled kernel may sum in another order than
    eager (other SIMD width, other thread count), which legitimately swaps such neighbours. Each
    eager detection must have a package detection of the same label, |score diff| <= 1e-5 and a
    box within 1e-3 px, one to one."""
    from codetr import _C  # noqa: F401  (registers codetr::ms_deform_attn for the loader)
    from codetr.export import export
    from codetr.models import build_model

    export(ExportOptions(preset="tiny_r50", checkpoint=TINY_R50_WEIGHTS, output=tmp_path, format="aoti",
                         device="cpu", dtype="float32", dynamic=True, min_height=96, max_height=320,
                         min_width=96, max_width=320))
    spec = load_model_json(tmp_path)
    assert spec["input"]["multiple"] == 1
    runner = torch._inductor.aoti_load_package(str(tmp_path / "model.pt2"))
    model = build_model("tiny_r50", checkpoint=TINY_R50_WEIGHTS, msda_impl="op")
    g = torch.Generator().manual_seed(0)
    for height, width, pad_h, pad_w in [(96, 97, 0, 0), (319, 287, 32, 64), (255, 320, 63, 31), (101, 211, 0, 5)]:
        images = torch.randn(1, 3, height, width, generator=g)
        masks = torch.zeros(1, height, width, dtype=torch.bool)
        masks[:, height - pad_h:, :] = True
        masks[:, :, width - pad_w:] = True
        images[masks[:, None].expand_as(images)] = 0.0
        validate_engine_inputs(spec, images, masks)
        with torch.no_grad():
            got, want = runner(images, masks), model(images, masks)
        (gb, gs, gl), (wb, ws, wl) = [(o[0][0], o[1][0], o[2][0]) for o in (got, want)]
        close = ((wl[:, None] == gl[None, :]) & ((ws[:, None] - gs[None, :]).abs() <= 1e-5)
                 & ((wb[:, None, :] - gb[None, :, :]).abs().amax(-1) <= 1e-3))
        used = torch.zeros(len(gs), dtype=torch.bool)
        for i in range(len(ws)):
            free = close[i] & ~used
            assert free.any(), (height, width, i, float(ws[i]), int(wl[i]), wb[i].tolist())
            used[int(free.nonzero()[0])] = True
        assert gb[..., 0::2].max() <= width - pad_w and gb[..., 1::2].max() <= height - pad_h


# ---------------------------------------------------------------------------------------------
# engine input validation (used by the ONNX runner; same rules as the C++ runtime)
# ---------------------------------------------------------------------------------------------
def _dynamic_spec():
    from runtime_standin import model_json

    spec = model_json(1, 128, 128, with_mask=True, dynamic=True)
    spec["input"] = {"min_batch": 1, "max_batch": 4, "dynamic": True, "min_height": 96, "max_height": 256,
                     "min_width": 96, "max_width": 320, "multiple": 32}
    return spec


@pytest.mark.parametrize("shape, mask_shape, message", [
    ((1, 3, 100, 128), (1, 100, 128), "height 100 is not a multiple of 32"),
    ((1, 3, 128, 130), (1, 128, 130), "width 130 is not a multiple of 32"),
    ((1, 3, 288, 128), (1, 288, 128), r"height is 288, the engine takes \[96, 256\]"),
    ((5, 3, 128, 128), (5, 128, 128), r"batch is 5, the engine takes \[1, 4\]"),
    ((1, 1, 128, 128), (1, 128, 128), "channels is 1, the engine takes 3"),
    ((1, 3, 128), (1, 128, 128), "expected rank 4"),
    ((1, 3, 128, 128), (1, 128, 96), "masks`: width is 96|does not match images"),
])
def test_validate_engine_inputs_rejects(shape, mask_shape, message):
    with pytest.raises(ValueError, match=message):
        validate_engine_inputs(_dynamic_spec(), torch.zeros(shape), torch.zeros(mask_shape, dtype=torch.bool))


def test_validate_engine_inputs_dtype_and_mask_presence():
    spec = _dynamic_spec()
    images = torch.zeros(2, 3, 128, 160)
    masks = torch.zeros(2, 128, 160, dtype=torch.bool)
    validate_engine_inputs(spec, images, masks)  # ok
    with pytest.raises(ValueError, match="expected dtype float32, got float16"):
        validate_engine_inputs(spec, images.half(), masks)
    with pytest.raises(ValueError, match="expected dtype bool, got uint8"):
        validate_engine_inputs(spec, images, masks.to(torch.uint8))
    with pytest.raises(ValueError, match=r"engine expects 2 inputs \(model.json 'inputs'\), got 1"):
        validate_engine_inputs(spec, images)
    spec["inputs"] = spec["inputs"][:1]
    spec["preprocess"]["mask"] = "none"
    with pytest.raises(ValueError, match=r"engine expects 1 inputs \(model.json 'inputs'\), got 2"):
        validate_engine_inputs(spec, images, masks)
    validate_engine_inputs(spec, images.numpy())  # numpy arrays are checked the same way


def test_import_without_the_op_library_names_it(tmp_path):
    """One locator: CODETR_OPS_LIBRARY (else the library beside libcodetr.so). A missing library is
    an ImportError naming it, not a silent fall-back to the pure-PyTorch MSDA."""
    missing = tmp_path / "missing" / "libcodetr_ops.so"
    env = dict(os.environ, CODETR_OPS_LIBRARY=str(missing))
    proc = subprocess.run([sys.executable, "-c", "import codetr"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    assert "ImportError: codetr: cannot load the codetr op library " + str(missing) in proc.stderr, proc.stderr
