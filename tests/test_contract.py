"""One contract, one implementation: the Python Detector runs the same C++ runtime as codetr-detect
(results equal bit for bit), model.json has one writer checked against its JSON Schema and the C++
parser, a model.json that lies about its package is refused naming both values, and the rules that
used to drift between Python and C++ (clip, portrait fit, keep_ratio, exact-2x resize, the input
multiple, the non-finite message, the op-library locator) hold once."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import codetr
from codetr import modeljson
from codetr._native import runtime
from conftest import TINY_SWIN_WEIGHTS
from runtime_standin import REPO, require_opencv_cli

cv2 = pytest.importorskip("cv2")
DEMO = REPO / "python" / "codetr" / "assets" / "demo.jpg"
SHAPES = REPO / "tests" / "data" / "shapes_517x333.jpg"
PORTRAIT = REPO / "tests" / "data" / "shapes_90x140_portrait.png"


@pytest.fixture(scope="module")
def lsj_package(tmp_path_factory):
    """tiny_swin (an LSJ preset: fixed 1280 pad scaled to this engine, no mask) as a static CPU package."""
    from codetr.export import ExportOptions, export

    out = tmp_path_factory.mktemp("tiny_swin_aoti")
    export(ExportOptions(preset="tiny_swin", checkpoint=TINY_SWIN_WEIGHTS, output=out, height=192, width=192,
                         format="aoti", device="cpu", dtype="float32"), log=lambda line: None)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The bundled images plus an odd-sized crop and a portrait image (BGR arrays and files)."""
    d = tmp_path_factory.mktemp("contract_images")
    odd = cv2.imread(str(DEMO))[13:13 + 217, 7:7 + 301]
    cv2.imwrite(str(d / "odd_217x301.png"), odd)
    paths = [DEMO, SHAPES, PORTRAIT, d / "odd_217x301.png"]
    return [(p, cv2.imread(str(p), cv2.IMREAD_COLOR)) for p in paths]


def cli_lines(model_dir, paths, tmp_path, *extra):
    """codetr-detect's JSON Lines output, one text line per image."""
    out = tmp_path / "cli.jsonl"
    proc = subprocess.run([str(require_opencv_cli()), "--model", str(model_dir), "--jsonl", str(out), *extra,
                           *map(str, paths)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out.read_text().splitlines()


def cli_records(model_dir, paths, tmp_path, *extra):
    return [json.loads(line) for line in cli_lines(model_dir, paths, tmp_path, *extra)]


@pytest.mark.parametrize("which", ["non-LSJ", "LSJ"])
def test_python_detector_equals_the_cli(which, exported_tiny_package, lsj_package, images, tmp_path):
    model_dir = exported_tiny_package if which == "non-LSJ" else lsj_package
    det = codetr.Detector(model_dir)
    lines = cli_lines(model_dir, [p for p, _ in images], tmp_path)
    results = det.detect([img for _, img in images])
    for (path, img), line, result in zip(images, lines, results):
        record = json.loads(line)
        assert record["file"] == str(path)
        # The text the service and the batch job send is the CLI's line, byte for byte.
        text = codetr.result_json(result, file_name=str(path), image_id=record["image_id"], height=img.shape[0],
                                  width=img.shape[1])
        assert text == line, path.name
        mine = codetr.result_record(result, file_name=str(path), image_id=record["image_id"],
                                    height=img.shape[0], width=img.shape[1])
        assert mine == record, path.name  # bit for bit: same floats, same order
        assert len(result) > 0


def test_dynamic_engine_python_equals_cli(tmp_path_factory, images, tmp_path):
    from codetr.export import ExportOptions, export
    from conftest import TINY_R50_WEIGHTS

    out = tmp_path_factory.mktemp("tiny_r50_dynamic")
    export(ExportOptions(preset="tiny_r50", checkpoint=TINY_R50_WEIGHTS, output=out, dynamic=True, min_height=96,
                         max_height=256, min_width=96, max_width=288, format="aoti", device="cpu"),
           log=lambda line: None)
    spec = json.loads((out / "model.json").read_text())
    spec["preprocess"]["resize"]["scale"] = [256, 192]  # inside the exported range
    (out / "model.json").write_text(json.dumps(spec))
    records = cli_records(out, [p for p, _ in images], tmp_path)
    results = codetr.Detector(out).detect([img for _, img in images])
    for (path, img), record, result in zip(images, records, results):
        assert codetr.result_record(result, file_name=str(path), image_id=record["image_id"], height=img.shape[0],
                                    width=img.shape[1]) == record


def test_model_json_has_one_writer_checked_by_schema_and_parser(exported_tiny_package, lsj_package):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(modeljson.SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for model_dir in (exported_tiny_package, lsj_package):
        spec = json.loads((model_dir / "model.json").read_text())
        jsonschema.validate(spec, schema)
        # Round trip through the C++ parser: every field the runtime reads comes back unchanged
        # (real numbers as the float32 values the runtime computes with).
        parsed = json.loads(runtime.parse_model_config(json.dumps(spec)))
        written = {k: v for k, v in spec.items() if k != "random_weights"}
        assert as_float32(parsed) == as_float32(written), model_dir
    bad = dict(spec, format_version=1)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def as_float32(value):
    if isinstance(value, float):
        return float(np.float32(value))
    if isinstance(value, dict):
        return {k: as_float32(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_float32(v) for v in value]
    return value


def lying_copy(src, tmp_path, edit):
    d = tmp_path / "lying"
    shutil.copytree(src, d)
    spec = json.loads((d / "model.json").read_text())
    edit(spec)
    (d / "model.json").write_text(json.dumps(spec))
    return d


def set_dtype(spec):
    spec["dtype"] = spec["inputs"][0]["dtype"] = "float16"


def set_size(spec):
    spec["input"]["height"] = spec["inputs"][0]["shape"][2] = spec["inputs"][1]["shape"][1] = 160


def set_batch(spec):
    for t in spec["inputs"] + spec["outputs"]:
        t["shape"][0] = 2
    spec["input"]["batch"] = 2


@pytest.mark.parametrize("edit,field,said,compiled", [
    (set_dtype, "dtype", "float16", "float32"),
    (set_size, "inputs[0] 'images' shape", "[1, 3, 160, 160]", "[1, 3, 128, 160]"),
    (set_batch, "inputs[0] 'images' shape", "[2, 3, 128, 160]", "[1, 3, 128, 160]"),
])
def test_a_lying_model_json_is_refused_naming_both_values(exported_tiny_package, tmp_path, edit, field, said,
                                                          compiled):
    d = lying_copy(exported_tiny_package, tmp_path, edit)
    # In a subprocess: whatever happens must be an error, not a crash.
    proc = subprocess.run([sys.executable, "-c", f"import codetr; codetr.Detector({str(d)!r})"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" in proc.stderr  # a Python exception, not a signal
    assert f"says {field} {said}, but" in proc.stderr and f"was compiled for {compiled}" in proc.stderr, proc.stderr


def test_a_dynamic_range_that_lies_is_refused(tmp_path_factory, tmp_path):
    """A dynamic package whose model.json widens the range it was compiled for."""
    import runtime_standin as standin

    pkg = standin.build_package(tmp_path_factory.mktemp("dyn_standin"), dynamic=True)
    d = lying_copy(pkg, tmp_path, lambda spec: spec["input"].update(max_height=1280))
    with pytest.raises(codetr.Error, match=r"says input.max_height 1280, but .* was compiled for 640"):
        codetr.Detector(d)


def test_rules_that_drifted_hold_once(exported_tiny_package):
    det = codetr.Detector(exported_tiny_package)
    img = cv2.imread(str(DEMO))
    # No clip by default (mmdet); clip_boxes is the option.
    assert det.config["postprocess"]["clip"] is False
    clipped = codetr.Detector(exported_tiny_package, clip_boxes=True).detect(img)
    h, w = img.shape[:2]
    assert clipped.boxes[:, 0::2].max() <= w and clipped.boxes[:, 1::2].max() <= h
    # The input multiple is written, never defaulted.
    assert det.config["input"]["multiple"] == 32
    # Portrait into the landscape static engine: fitted by the one rule, and results for it.
    assert len(det.detect(cv2.imread(str(PORTRAIT)))) > 0
    # One non-finite message: Python's text is the core's.
    from codetr.precision import nonfinite_message

    assert nonfinite_message("x", 1, 2, "float16") == runtime.nonfinite_message("x", 1, 2, "float16")
    assert "re-export with --dtype bfloat16" in nonfinite_message("x", 1, 2, "float16")
    # One op-library locator: Python loads the library the C++ Detector reports.
    assert codetr._C.library_path() == runtime.find_ops_library()
    assert det._impl.ops_library == "registered"  # already loaded by `import codetr`


def test_keep_ratio_false_and_exact_half_resize_in_the_core():
    from codetr.presets import PipelineConfig, get_preset
    from codetr.preprocess import preprocess

    preset = get_preset("tiny_r50")
    fixed = preset.replace(pipeline=PipelineConfig(resize_scale=(160, 96), keep_ratio=False))
    batch, masks, metas = preprocess([np.zeros((50, 70, 3), np.uint8)], fixed)
    assert metas[0]["img_shape"] == (96, 160)  # mmdet's scale is (w, h)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1600, 2666, 3), dtype=np.uint8)
    from codetr.preprocess import resize_bilinear_u8

    np.testing.assert_array_equal(resize_bilinear_u8(img, 1333, 800),
                                  cv2.resize(img, (1333, 800), interpolation=cv2.INTER_LINEAR))


def test_examples_run(exported_tiny_package):
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "python" / "detect.py"), str(exported_tiny_package),
                           str(DEMO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.endswith("detections") and int(first.split()[0]) == len(codetr.Detector(exported_tiny_package)
                                                                          .detect(cv2.imread(str(DEMO))))


def test_detect_each_isolates_a_bad_image(exported_tiny_package, images):
    """Detector.detect_each (serve and batch call it): a batch holding an image the runtime refuses
    (too thin to resize) costs only that image; the others equal their results alone."""
    det = codetr.Detector(exported_tiny_package)
    good = [img for _, img in images[:2]]
    thin = np.zeros((1, 4000, 3), np.uint8)
    with pytest.raises(ValueError):
        det.detect([good[0], thin, good[1]])
    results = det.detect_each([good[0], thin, good[1]])
    assert isinstance(results[1], ValueError) and "too thin" in str(results[1])
    for got, img in zip((results[0], results[2]), good):
        want = det.detect(img)
        assert np.array_equal(got.boxes, want.boxes) and np.array_equal(got.scores, want.scores)
        assert np.array_equal(got.labels, want.labels)
