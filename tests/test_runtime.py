"""End-to-end tests of the C++ CLI `codetr-detect` on a stand-in AOTInductor package.

The stand-in engine (tests/runtime_standin.py) follows model.json's engine contract; the C++
detections are compared with a Python reference: cv2 preprocessing, the stand-in module run
eagerly, and an independent Python implementation of mmcv's batched soft-NMS / torchvision NMS.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import runtime_standin as standin

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless provides the cv2 reference")
torchvision = pytest.importorskip("torchvision")

from reference_nms import reference_soft_nms  # noqa: E402  (needs torchvision)

DATA = Path(__file__).resolve().parent / "data"
DEMO = standin.REPO / "python" / "codetr" / "assets" / "demo.jpg"
CLI = standin.runtime_binary("codetr-detect")
JSON_KEYS = {"file_name", "image_id", "category_id", "bbox", "score"}


@pytest.fixture(scope="session")
def cli() -> Path:
    return standin.require_opencv_cli()


@pytest.fixture(scope="session")
def package(tmp_path_factory) -> Path:
    # Static batch 2 with a padding mask: 3+ images exercise chunking and batch filling.
    return standin.build_package(tmp_path_factory.mktemp("standin"), batch=2, height=160, width=224)


def run_cli(cli, *args, check_rc=None):
    proc = subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


# --- Python reference ------------------------------------------------------------------------

def reference_preprocess(bgrs: list, cfg: dict):
    """One engine batch: resized images padded to the static engine size, or for a dynamic
    engine to the batch's largest size rounded up to the divisor (at least the minimum)."""
    pp, geo = cfg["preprocess"], cfg["input"]
    normed, scales = [], []
    for bgr in bgrs:
        h, w = bgr.shape[:2]
        long_edge, short_edge = max(pp["resize"]["scale"]), min(pp["resize"]["scale"])
        factor = min(long_edge / max(h, w), short_edge / min(h, w))
        nh, nw = int(h * factor + 0.5), int(w * factor + 0.5)
        if not geo["dynamic"] and (nh > geo["height"] or nw > geo["width"]):  # static: fit
            fit = min(geo["height"] / h, geo["width"] / w)
            nh, nw = min(int(h * fit + 0.5), geo["height"]), min(int(w * fit + 0.5), geo["width"])
        img = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
        if pp["bgr_to_rgb"]:
            img = img[:, :, ::-1]
        normed.append((img.astype(np.float32) - np.float32(pp["mean"])) / np.float32(pp["std"]))
        scales.append((nw / w, nh / h))
    if geo["dynamic"]:
        div = pp["pad"]["size_divisor"]
        H = max(-(-max(n.shape[0] for n in normed) // div) * div, geo["min_height"])
        W = max(-(-max(n.shape[1] for n in normed) // div) * div, geo["min_width"])
    else:
        H, W = geo["height"], geo["width"]
    images = torch.full((len(bgrs), 3, H, W), float(pp["pad_value"]))
    masks = torch.ones(len(bgrs), H, W, dtype=torch.bool)
    for i, n in enumerate(normed):
        images[i, :, :n.shape[0], :n.shape[1]] = torch.from_numpy(np.ascontiguousarray(n.transpose(2, 0, 1)))
        masks[i, :n.shape[0], :n.shape[1]] = False
    return images, masks, scales


def reference_postprocess(boxes, scores, labels, scale, ori_hw, post: dict):
    """mmdet CoDINOHead order: threshold, rescale, batched NMS, max_per_img; then clip only when
    model.json's postprocess.clip asks for it (mmdet does not clip)."""
    if post["score_thr"] > 0:
        valid = scores > post["score_thr"]
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
    w_scale, h_scale = scale
    boxes = boxes / torch.tensor([w_scale, h_scale, w_scale, h_scale], dtype=torch.float32)
    nms = post["nms"]
    if nms["type"] == "soft_nms":
        shifted = boxes + (labels.float() * (boxes.max() + 1))[:, None]
        keep, scores = reference_soft_nms(shifted, scores, nms["iou_threshold"], nms["method"], nms["sigma"],
                                          nms["min_score"])
    elif nms["type"] == "nms":
        keep = torchvision.ops.batched_nms(boxes, scores, labels, nms["iou_threshold"])
        scores = scores[keep]
    else:
        keep = torch.arange(len(scores))
    keep, scores = keep[:post["max_per_img"]], scores[:post["max_per_img"]]
    out = boxes[keep]
    if post.get("clip"):
        out[:, 0::2] = out[:, 0::2].clamp(0, ori_hw[1])
        out[:, 1::2] = out[:, 1::2].clamp(0, ori_hw[0])
    return out, scores.float(), labels[keep]


def reference_detections(batches: list, cfg: dict, post: dict, engine=None) -> dict:
    """file name -> (boxes, scores, labels), running the engine (default: the stand-in module,
    eagerly) batch by batch like the CLI."""
    engine = engine or standin.StandInEngine(len(cfg["classes"]), with_mask=True).eval()
    out = {}
    for paths in batches:
        bgrs = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
        images, masks, scales = reference_preprocess(bgrs, cfg)
        with torch.no_grad():
            boxes, scores, labels = engine(images, masks)
        for i, p in enumerate(paths):
            out[p.name] = reference_postprocess(boxes[i], scores[i], labels[i], scales[i], bgrs[i].shape[:2], post)
    return out


def detections_by_file(results: list) -> dict:
    by_file = {}
    for r in results:
        by_file.setdefault(r["file_name"], []).append(r)
    return by_file


def assert_matches_reference(results, batches, cfg, post, engine=None):
    by_file = detections_by_file(results)
    reference = reference_detections(batches, cfg, post, engine)
    for path in (p for batch in batches for p in batch):
        ref_boxes, ref_scores, ref_labels = reference[path.name]
        got = by_file.get(path.name, [])
        assert len(got) == len(ref_labels), path.name
        got_xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (g["bbox"] for g in got)])
        torch.testing.assert_close(got_xyxy, ref_boxes, rtol=1e-3, atol=1e-3, msg=path.name)
        assert [g["category_id"] for g in got] == ref_labels.tolist(), path.name
        torch.testing.assert_close(torch.tensor([g["score"] for g in got]), ref_scores, rtol=1e-4, atol=1e-5)


# --- tests -------------------------------------------------------------------------------------

def test_cli_matches_python_reference_and_writes_outputs(cli, package, tmp_path):
    cfg = json.loads((package / "model.json").read_text())
    images = sorted(DATA.iterdir()) + [DEMO]  # 4 images on a batch-2 engine: two engine calls
    out_dir, out_json = tmp_path / "annotated", tmp_path / "results.json"
    proc = run_cli(cli, "--model", package, "--out-dir", out_dir, "--json", out_json, DATA, DEMO, check_rc=0)
    assert "[4/4]" in proc.stderr  # progress over the directory's images

    results = json.loads(out_json.read_text())
    assert results, "no detections"
    for r in results:
        assert set(r) == JSON_KEYS
        assert isinstance(r["category_id"], int) and 0 <= r["category_id"] < len(cfg["classes"])
        assert isinstance(r["image_id"], int)
        assert len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0
        assert 0 < r["score"] <= 1
    assert sorted({r["file_name"] for r in results}) == sorted(p.name for p in images)
    ids = {r["file_name"]: r["image_id"] for r in results}
    assert [ids[p.name] for p in images] == [0, 1, 2, 3]  # input positions (names are not numbers)

    for path in images:
        annotated = cv2.imread(str(out_dir / path.name))
        original = cv2.imread(str(path))
        assert annotated is not None and annotated.shape == original.shape, path.name
        assert np.abs(annotated.astype(int) - original.astype(int)).max() > 100, f"{path.name}: nothing drawn"

    assert_matches_reference(results, [[p] for p in images], cfg, cfg["postprocess"])


def test_cli_overrides_match_reference_with_hard_nms_and_a_batch_filled_up(cli, package, tmp_path):
    cfg = json.loads((package / "model.json").read_text())
    post = dict(cfg["postprocess"], score_thr=0.3, nms={"type": "nms", "iou_threshold": 0.4})
    images = [DATA / "shapes_517x333.jpg", DATA / "shapes_90x140_portrait.png", DEMO]  # 2 + 1 (filled)
    out_json = tmp_path / "r.json"
    run_cli(cli, "--model", package, "--nms", "hard", "--iou", 0.4, "--score-thr", 0.3, "--batch", 3,
            "--json", out_json, *images, check_rc=0)
    results = json.loads(out_json.read_text())
    assert all(r["score"] > 0.3 for r in results)
    assert_matches_reference(results, [[p] for p in images], cfg, post)


@pytest.fixture(scope="session")
def dynamic_package(tmp_path_factory) -> Path:
    return standin.build_package(tmp_path_factory.mktemp("standin_dynamic"), batch=2, height=192, width=256,
                                 dynamic=True)


def test_cli_dynamic_engine_pads_each_image_as_alone(cli, dynamic_package, tmp_path):
    """Batching rule: only images of one padded size share an engine call, so every image is padded
    exactly as it would be alone and its result does not depend on its batch companions."""
    cfg = json.loads((dynamic_package / "model.json").read_text())
    images = sorted(DATA.iterdir()) + [DEMO]  # --batch 3 over images of mixed size
    out_json = tmp_path / "r.json"
    run_cli(cli, "--model", dynamic_package, "--batch", 3, "--json", out_json, *images, check_rc=0)
    results = json.loads(out_json.read_text())
    alone = tmp_path / "alone.json"
    run_cli(cli, "--model", dynamic_package, "--batch", 1, "--json", alone, *images, check_rc=0)
    assert results == json.loads(alone.read_text())
    # The reference engine is the package itself, run by Python: the dynamic stand-in package
    # does not reproduce its eager module at sizes above the trace size (its mask-derived
    # valid sizes come out capped at 192x256); this test is about the runtime's per-batch
    # padding, masks and batching, which the reference pipeline computes independently.
    runner = torch._inductor.aoti_load_package(str(dynamic_package / "model.pt2"))
    assert_matches_reference(results, [[image] for image in images], cfg, cfg["postprocess"], engine=runner)


def test_cli_reports_bad_images_and_processes_the_others(cli, package, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(DATA / "shapes_200x150.png", inputs / "good.png")
    (inputs / "empty.jpg").write_bytes(b"")
    (inputs / "corrupt.jpg").write_bytes(b"this is not a jpeg" * 10)
    (inputs / "truncated.png").write_bytes((DATA / "shapes_200x150.png").read_bytes()[:200])
    out_json = tmp_path / "r.json"
    proc = run_cli(cli, "--model", package, "--json", out_json, inputs, tmp_path / "missing.png", check_rc=1)
    for name in ["empty.jpg", "corrupt.jpg", "truncated.png", "missing.png"]:
        assert name in proc.stderr, name
    assert "processed 1 of 4 image(s), 4 failure(s)" in proc.stderr
    names = {r["file_name"] for r in json.loads(out_json.read_text())}
    assert names == {"good.png"}


def test_detect_each_gives_a_bad_image_its_own_error(package):
    """Detector::detect_each (codetr-detect, run_stream, serve and batch call it), through the
    binding: in a list holding an image the Detector refuses (too thin for the resize scale) and an
    array that is not an image, each of those gets the error detect() gives it alone; the others,
    in order, exactly the detections detect() gives them alone, which match the Python reference."""
    import codetr

    cfg = json.loads((package / "model.json").read_text())
    paths = sorted(DATA.iterdir()) + [DEMO]  # 4 images on a batch-2 engine
    goods = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    thin = np.zeros((1, 4000, 3), np.uint8)
    not_uint8 = goods[0].astype(np.float32)
    det = codetr.Detector(package)
    with pytest.raises(codetr.Error, match="too thin"):
        det.detect([goods[0], thin, goods[1]])  # the batched call fails: detect_each must retry

    results = det.detect_each([goods[0], thin, goods[1], not_uint8, goods[2], goods[3]])
    assert len(results) == 6
    for got, bad in ((results[1], thin), (results[3], not_uint8)):
        with pytest.raises(codetr.Error) as alone:
            det.detect(bad)
        assert isinstance(got, codetr.Error) and str(got) == str(alone.value)
    assert "too thin" in str(results[1]) and "expected a uint8 array" in str(results[3])
    reference = reference_detections([[p] for p in paths], cfg, cfg["postprocess"])
    for path, img, got in zip(paths, goods, (results[0], results[2], results[4], results[5])):
        want = det.detect(img)
        assert np.array_equal(got.boxes, want.boxes) and np.array_equal(got.scores, want.scores), path.name
        assert np.array_equal(got.labels, want.labels), path.name
        ref_boxes, ref_scores, ref_labels = reference[path.name]
        assert len(got) > 0 and got.labels.tolist() == ref_labels.tolist(), path.name
        torch.testing.assert_close(torch.from_numpy(got.boxes), ref_boxes, rtol=1e-3, atol=1e-3, msg=path.name)
        torch.testing.assert_close(torch.from_numpy(got.scores), ref_scores, rtol=1e-4, atol=1e-5)

    # Without a failure: the batched detect()'s results.
    for got, want in zip(det.detect_each(goods), det.detect(goods)):
        assert np.array_equal(got.boxes, want.boxes) and np.array_equal(got.scores, want.scores)
        assert np.array_equal(got.labels, want.labels)
    assert det.detect_each([]) == []


def test_cli_refuses_missing_or_mismatched_model_dirs(cli, package, tmp_path):
    image = DATA / "shapes_200x150.png"
    proc = run_cli(cli, "--model", tmp_path / "nope", image, check_rc=2)
    assert "nope" in proc.stderr and "does not exist" in proc.stderr

    def variant(name, edit=None, drop_package=False):
        d = tmp_path / name
        d.mkdir()
        cfg = json.loads((package / "model.json").read_text())
        if edit:
            edit(cfg)
        (d / "model.json").write_text(json.dumps(cfg))
        if not drop_package:
            (d / "model.pt2").symlink_to(package / "model.pt2")
        return d

    cases = {
        "old_torch": (lambda c: c.update(torch_version="1.13.1"), "built with torch 1.13.1"),
        "no_mean": (lambda c: c["preprocess"].pop("mean"), "missing key 'preprocess.mean'"),
        "bad_type": (lambda c: c["input"].update(height="160"), "'input.height' must be an integer"),
        "onnx": (lambda c: c.update(engine={"format": "onnx", "file": "model.onnx"}), "engine format 'onnx'"),
    }
    for name, (edit, message) in cases.items():
        proc = run_cli(cli, "--model", variant(name, edit), image, check_rc=2)
        assert message in proc.stderr, (name, proc.stderr)
    proc = run_cli(cli, "--model", variant("no_package", drop_package=True), image, check_rc=2)
    assert "model.pt2 does not exist" in proc.stderr
    # A CPU package asked to run on CUDA: refused (whether or not this machine has a GPU).
    proc = run_cli(cli, "--model", package, "--device", "cuda", image, check_rc=2)
    assert "compiled for cpu" in proc.stderr
    proc = run_cli(cli, "--model", package, "--nms", "fast", image, check_rc=2)
    assert "--nms must be soft, hard or none" in proc.stderr
    # An explicitly named op library that cannot be loaded is an error, not silently skipped.
    proc = subprocess.run([str(cli), "--model", str(package), str(image)], capture_output=True, text=True,
                          env={**os.environ, "CODETR_OPS_LIBRARY": str(tmp_path / "libmissing_ops.so")})
    assert proc.returncode == 2 and "cannot load the codetr op library" in proc.stderr, proc.stderr


def write_ppm(path: Path, bgr: np.ndarray) -> None:
    """Binary PPM (P6, maxval 255) written by hand: header, then RGB bytes."""
    h, w = bgr.shape[:2]
    path.write_bytes(f"P6\n{w} {h}\n255\n".encode() + np.ascontiguousarray(bgr[:, :, ::-1]).tobytes())


def test_cli_reads_and_writes_ppm_like_png(cli, package, tmp_path):
    # .ppm is the one format every build reads (OpenCV or the built-in PPM reader): its
    # detections must equal those of the same pixels as PNG, and the annotated copy is a PPM.
    bgr = cv2.imread(str(DATA / "shapes_200x150.png"))
    write_ppm(tmp_path / "shapes.ppm", bgr)
    png_json, ppm_json, out_dir = tmp_path / "png.json", tmp_path / "ppm.json", tmp_path / "annotated"
    run_cli(cli, "--model", package, "--json", png_json, DATA / "shapes_200x150.png", check_rc=0)
    run_cli(cli, "--model", package, "--json", ppm_json, "--out-dir", out_dir, "--draw-thr", 0.0,
            tmp_path / "shapes.ppm", check_rc=0)
    from_png, from_ppm = json.loads(png_json.read_text()), json.loads(ppm_json.read_text())
    assert from_png, "no detections"
    strip = lambda rs: [{k: v for k, v in r.items() if k != "file_name"} for r in rs]  # noqa: E731
    assert strip(from_ppm) == strip(from_png)
    annotated = cv2.imread(str(out_dir / "shapes.ppm"))
    assert annotated is not None and annotated.shape == bgr.shape
    assert np.abs(annotated.astype(int) - bgr.astype(int)).max() > 100, "nothing drawn"


def test_cli_cuda_graphs_flag_is_checked(cli, package, dynamic_package):
    image = DATA / "shapes_200x150.png"
    proc = run_cli(cli, "--model", package, "--cuda-graphs", "maybe", image, check_rc=2)
    assert "--cuda-graphs must be on or off, got 'maybe'" in proc.stderr
    # Graphs need a CUDA engine: on the CPU stand-in the Detector refuses them (not ignored).
    proc = run_cli(cli, "--model", package, "--cuda-graphs", "on", image, check_rc=2)
    assert "cuda_graphs needs a CUDA engine" in proc.stderr and "runs on cpu" in proc.stderr, proc.stderr
    # ... and fully static inputs, checked first (the dynamic stand-in has -1 dimensions).
    proc = run_cli(cli, "--model", dynamic_package, "--cuda-graphs", "on", image, check_rc=2)
    assert "cuda_graphs needs fully static engine inputs" in proc.stderr, proc.stderr
    run_cli(cli, "--model", package, "--cuda-graphs", "off", image, check_rc=0)


def test_cli_benchmark_reports_stage_split(cli, package):
    proc = run_cli(cli, "--model", package, "--benchmark", 5, "--batch", 2, DATA, check_rc=0)
    for word in ["preprocess", "engine", "postprocess", "end-to-end", "median", "p90", "p99", "images/s"]:
        assert word in proc.stdout, word

