"""`codetr eval` (codetr.evaluate) on a small synthetic COCO-format set made here: generated images
with coloured rectangles and their boxes as annotations, category ids that are NOT the class
indices (so the name -> id mapping is exercised).

References: pycocotools called directly in the test with mmdetection's CocoMetric settings
(maxDets 100/300/1000) on hand-built result lists; hand-computed matching cases; the runtime
artifacts (ONNX, AOTInductor through codetr.Detector) against each other and against eager."""
import dataclasses
import json

import numpy as np
import pytest

from codetr import cli, evaluate
from codetr.presets import COCO_CLASSES, REDUCED_PRESETS
from codetr.runtime import Detections
from conftest import TINY_PACKAGE_SIZE, TINY_R50_WEIGHTS

cv2 = pytest.importorskip("cv2")
pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

# (category id, name): ids deliberately unlike COCO's and the class indices (person is class 0).
CATEGORIES = [(7, "person"), (3, "car"), (42, "dog")]
# Landscape images: a static 128x160 engine and mmdet's rule at scale (160, 128) resize them alike.
IMAGE_SIZES = [(120, 160), (150, 200), (240, 320)]


def _make_dataset(root, sizes=IMAGE_SIZES):
    """Images with 2-3 filled rectangles each (the annotations are their boxes) + the JSON file."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for n, (h, w) in enumerate(sizes):
        img = np.full((h, w, 3), 40, np.uint8)
        for k in range(2 + n % 2):
            x1, y1 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            bw, bh = int(rng.integers(w // 8, w // 2)), int(rng.integers(h // 8, h // 2))
            img[y1:y1 + bh, x1:x1 + bw] = rng.integers(60, 255, 3)
            cat_id = CATEGORIES[(n + k) % len(CATEGORIES)][0]
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + n, "category_id": cat_id,
                                "bbox": [x1, y1, bw, bh], "area": bw * bh, "iscrowd": 0})
        name = f"img_{n}.png"
        cv2.imwrite(str(root / "images" / name), img)
        images.append({"id": 100 + n, "file_name": name, "height": h, "width": w})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": name} for i, name in CATEGORIES]}
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path, root / "images", data


def _class_index(cat_id):
    name = dict(CATEGORIES)[cat_id]
    return COCO_CLASSES.index(name)


def _fixed_model(per_image):
    """An adapter that answers from a table {file shape (h, w): Detections} (the evaluation
    pipeline's oracle input: what it must score, not a stand-in for a model under test)."""
    def detect(images):
        return [per_image[img.shape[:2]] for img in images]
    return evaluate.Model("table", list(COCO_CLASSES), detect)


def _detections_from(data, transform):
    """{(h, w): Detections} built from the annotations; transform(ann) -> (xyxy, score)."""
    table = {}
    for im in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        boxes, scores = zip(*(transform(a) for a in anns))
        table[(im["height"], im["width"])] = Detections(
            np.array(boxes, np.float32), np.array(scores, np.float32),
            np.array([_class_index(a["category_id"]) for a in anns], np.int64), list(COCO_CLASSES))
    return table


def _pycocotools_map(gt_path, results):
    """The reference: pycocotools on the same inputs, with mmdetection's CocoMetric maxDets."""
    gt = COCO(str(gt_path))
    ev = COCOeval(gt, gt.loadRes(results), "bbox")
    ev.params.maxDets = [100, 300, 1000]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def test_ground_truth_as_detections_scores_ap_1(tmp_path):
    ann, image_dir, data = _make_dataset(tmp_path)
    table = _detections_from(data, lambda a: ([a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                               a["bbox"][1] + a["bbox"][3]], 1.0))
    metrics = evaluate.evaluate(_fixed_model(table), evaluate.load_dataset(ann, image_dir), tmp_path / "out",
                                log=lambda line: None)
    assert metrics["model"]["mAP"] == 1.0 and metrics["model"]["mAP_50"] == 1.0 and metrics["model"]["AR@100"] == 1.0
    assert metrics["model"]["failed"] == {}
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    # One result per annotation, with the annotation's category id (mapped from the class name).
    got = sorted((r["image_id"], r["category_id"], tuple(r["bbox"])) for r in results)
    want = sorted((a["image_id"], a["category_id"], tuple(float(v) for v in a["bbox"])) for a in data["annotations"])
    assert got == want
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["model"]["mAP"] == 1.0


def test_shifted_detections_score_what_pycocotools_computes(tmp_path):
    """GT boxes shifted by a few pixels (different per box), scores spread, one false positive per
    image and one wrong label: the mAP equals pycocotools' on a result list built independently."""
    ann, image_dir, data = _make_dataset(tmp_path)
    shifts = {a["id"]: (a["id"] % 4, (a["id"] * 3) % 5) for a in data["annotations"]}

    def shifted(a):
        dx, dy = shifts[a["id"]]
        x, y, w, h = a["bbox"]
        return [x + dx, y + dy, x + dx + w, y + dy + h], 0.9 - 0.05 * a["id"]

    table = _detections_from(data, shifted)
    reference = []
    for im in data["images"]:
        dets = table[(im["height"], im["width"])]
        # A false positive (a person box in the corner) and one relabelled copy of the first box.
        extra_box = np.array([[0, 0, 9, 9], dets.boxes[0]], np.float32)
        table[(im["height"], im["width"])] = Detections(
            np.concatenate([dets.boxes, extra_box]), np.concatenate([dets.scores, [0.95, 0.5]]).astype(np.float32),
            np.concatenate([dets.labels, [0, _class_index(42)]]), list(COCO_CLASSES))
    for a in data["annotations"]:
        (x1, y1, x2, y2), score = shifted(a)
        reference.append({"image_id": a["image_id"], "category_id": a["category_id"],
                          "bbox": [x1, y1, x2 - x1, y2 - y1], "score": np.float32(score).item()})
    for im, first in zip(data["images"], [next(a for a in data["annotations"] if a["image_id"] == im["id"])
                                          for im in data["images"]]):
        reference.append({"image_id": im["id"], "category_id": 7, "bbox": [0, 0, 9, 9], "score": np.float32(0.95).item()})
        (x1, y1, x2, y2), _ = shifted(first)
        reference.append({"image_id": im["id"], "category_id": 42, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 0.5})

    metrics = evaluate.evaluate(_fixed_model(table), evaluate.load_dataset(ann, image_dir), tmp_path / "out",
                                log=lambda line: None)
    want = _pycocotools_map(ann, reference)
    got = [metrics["model"][name] for name in evaluate.STAT_NAMES]
    assert got == [float(v) for v in want]
    assert 0.2 < metrics["model"]["mAP"] < 0.9  # the shifts and extras cost something, not everything


def test_compare_runs_hand_computed():
    """Two runs on two images; matches worked out by hand (greedy in run a's score order)."""
    classes = list(COCO_CLASSES)

    def dets(boxes, scores, labels):
        return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                          np.array(labels, np.int64), classes)

    box = [10, 10, 110, 60]                    # area 5000
    nudged = [10, 10, 110, 60.2]               # IoU 5000/5020 = 0.996 -> a match
    moved = [10, 10, 110, 60.5]                # IoU 5000/5050 = 0.990099 -> a match at 0.99
    far = [10, 10, 110, 61]                    # IoU 5000/5100 = 0.980 -> no match
    a = {1: dets([box, far, box], [0.9, 0.8, 0.3], [1, 2, 3]),
         2: dets([moved], [0.7], [5])}
    b = {1: dets([nudged, box, box], [0.85, 0.8, 0.6], [1, 2, 4]),   # label 3 vs 4: no match
         2: dets([box, box], [0.7, 0.2], [5, 5]),
         3: dets([box], [0.5], [0])}                                  # image 3 only in b: ignored
    out = evaluate.compare_runs(a, b, iou_threshold=0.99)
    assert (out["images"], out["detections_a"], out["detections_b"], out["matched"]) == (2, 4, 5, 2)
    assert out["matched_fraction"] == 2 / 5
    assert out["max_score_diff"] == pytest.approx(0.05, abs=1e-6)   # 0.9 vs 0.85; image 2: 0.7 vs 0.7
    # A score floor leaves out the low-scoring detections on both sides before matching.
    floor = evaluate.compare_runs(a, b, iou_threshold=0.99, min_score=0.65)
    assert (floor["detections_a"], floor["detections_b"], floor["matched"]) == (3, 3, 2)
    assert evaluate.compare_runs(a, a)["matched_fraction"] == 1.0
    assert evaluate.compare_runs({1: dets([], [], [])}, {1: dets([], [], [])})["matched_fraction"] == 1.0


def test_failed_image_costs_only_itself(tmp_path):
    ann, image_dir, data = _make_dataset(tmp_path)
    (image_dir / "img_1.png").write_bytes(b"not a png")
    table = _detections_from(data, lambda a: ([a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                               a["bbox"][1] + a["bbox"][3]], 1.0))
    model = _fixed_model(table)
    run = evaluate.run_model(model, evaluate.load_dataset(ann, image_dir), batch=2)
    assert sorted(run.detections) == [100, 102]
    assert list(run.failures) == [101] and "not a readable image" in run.failures[101]

    # A model error in a batch of two is retried image by image: only the bad image is lost.
    def picky(images):
        if any(img.shape[:2] == (240, 320) for img in images):
            raise RuntimeError("engine refused 240x320")
        return model.detect(images)

    (image_dir / "img_1.png").unlink()
    cv2.imwrite(str(image_dir / "img_1.png"), np.zeros((150, 200, 3), np.uint8))
    run = evaluate.run_model(evaluate.Model("picky", list(COCO_CLASSES), picky),
                             evaluate.load_dataset(ann, image_dir), batch=2)
    assert sorted(run.detections) == [100, 101]
    assert run.failures == {102: "RuntimeError: engine refused 240x320"}


def test_category_mapping_by_name(tmp_path):
    ann, image_dir, _ = _make_dataset(tmp_path)
    coco = evaluate.load_dataset(ann, image_dir).coco
    assert evaluate.category_ids(COCO_CLASSES, coco) == {0: 7, 2: 3, 16: 42}  # person, car, dog
    with pytest.raises(evaluate.EvalError, match="none of the model's 2 class names"):
        evaluate.category_ids(["disc", "ring"], coco)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("categories"), "'categories' must be a list"),
    (lambda d: d["images"][0].pop("height"), r"images\[0\] has no 'height'"),
    (lambda d: d["annotations"][1].pop("bbox"), r"annotations\[1\] has no 'bbox'"),
    (lambda d: d.update(images=[]), "no images"),
])
def test_bad_annotation_file_is_one_line_exit_2(tmp_path, capsys, mutate, message):
    ann, image_dir, data = _make_dataset(tmp_path)
    mutate(data)
    ann.write_text(json.dumps(data))
    assert cli.main(["eval", "eager", "--preset", "tiny_r50", "-a", str(ann), "-i", str(image_dir),
                     "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("codetr eval: error:")
    assert __import__("re").search(message, err), err


def test_bad_requests_exit_2(tmp_path, capsys):
    ann, image_dir, _ = _make_dataset(tmp_path)
    base = ["-a", str(ann), "-i", str(image_dir), "-o", str(tmp_path / "out")]
    cases = [
        (["eval", str(tmp_path / "nowhere")] + base, "not a model directory"),
        (["eval", "eager"] + base, "needs --preset"),
        (["eval", "eager", "--preset", "no_such_preset"] + base, "unknown preset 'no_such_preset'"),
        (["eval", "eager", "--preset", "tiny_r50", "--checkpoint", str(tmp_path / "x.pth")] + base, "no such file"),
        (["eval", "eager", "-a", str(tmp_path / "none.json"), "-i", str(image_dir), "-o", str(tmp_path)],
         "--annotations .*none.json: no such file"),
        (["eval", "eager", "-a", str(ann), "-i", str(tmp_path / "noimg"), "-o", str(tmp_path)], "no such directory"),
        (["eval", str(tmp_path)] + base, "no model.json"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and __import__("re").search(message, err), (argv, err)


def test_eager_tiny_preset_end_to_end(tmp_path, capsys):
    """`codetr eval eager` on the tiny preset (golden weights, mmdet's full-size pipeline): results
    written for both images, metrics.json consistent with them and with pycocotools."""
    ann, image_dir, _ = _make_dataset(tmp_path, sizes=IMAGE_SIZES[:2])
    out = tmp_path / "out"
    assert cli.main(["eval", "eager", "--preset", "tiny_r50", "--checkpoint", str(TINY_R50_WEIGHTS),
                     "-a", str(ann), "-i", str(image_dir), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "2/2 images" in captured.err and "mAP" in captured.out
    results = json.loads((out / "results.json").read_text())
    assert {r["image_id"] for r in results} == {100, 101}
    assert {r["category_id"] for r in results} <= {7, 3, 42}  # only classes the file names are scored
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["failed"] == {}
    assert [metrics["model"][k] for k in evaluate.STAT_NAMES] == [float(v) for v in _pycocotools_map(ann, results)]


# ----------------------------------------------------------------------------------------------
# runtime artifacts
# ----------------------------------------------------------------------------------------------
def _engine_scale_preset():
    """tiny_r50 as its 128x160 static engines run it: the resize scale they write into model.json
    (160, 128) and every image padded to 128x160 (a multiple of 32 here)."""
    base = REDUCED_PRESETS["tiny_r50"]
    return base.replace(pipeline=dataclasses.replace(base.pipeline, resize_scale=(160, 128), pad_size_divisor=32))


@pytest.fixture(scope="module")
def onnx_tiny_dir(tmp_path_factory):
    """tiny_r50 (golden weights) as a static ONNX engine of the shared AOTI package's size."""
    from codetr.export import ExportOptions, export

    out = tmp_path_factory.mktemp("tiny_r50_onnx")
    height, width = TINY_PACKAGE_SIZE
    export(ExportOptions(preset="tiny_r50", checkpoint=TINY_R50_WEIGHTS, output=out, format="onnx", height=height,
                         width=width, onnx_optimize=False), log=lambda line: None)
    return out


def test_onnx_model_dir_matches_eager(tmp_path, onnx_tiny_dir):
    """The ONNX engine through OnnxEngine.detect vs eager PyTorch with the same resize rule (the
    tiny preset at scale (160, 128): mmdet's rule then yields the engine's 128x160 for these
    landscape images): same detections, same mAP."""
    ann, image_dir, _ = _make_dataset(tmp_path)
    eager = evaluate.open_model("eager", preset=_engine_scale_preset(), checkpoint=TINY_R50_WEIGHTS)
    onnx_model = evaluate.open_model(str(onnx_tiny_dir))
    metrics = evaluate.evaluate(onnx_model, evaluate.load_dataset(ann, image_dir), tmp_path / "out", compare=eager,
                                log=lambda line: None)
    cmp = metrics["comparison"]
    assert cmp["images"] == 3 and cmp["detections_a"] > 100
    assert cmp["matched_fraction"] >= 0.99, cmp
    assert cmp["max_score_diff"] <= 1e-4, cmp
    assert abs(cmp["mAP_delta"]) <= 1e-3


def test_aoti_through_runtime_compared_with_onnx(tmp_path, capsys, exported_tiny_package, onnx_tiny_dir):
    """`codetr eval AOTI_DIR --compare ONNX_DIR`: the AOTInductor package through codetr.Detector
    (the C++ runtime) and the ONNX file of the same model agree."""
    if not hasattr(__import__("codetr"), "Detector"):
        pytest.skip("codetr.Detector (the runtime binding) is not available in this build")
    ann, image_dir, _ = _make_dataset(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["eval", str(exported_tiny_package), "--compare", str(onnx_tiny_dir), "-a", str(ann),
                     "-i", str(image_dir), "-o", str(out), "--batch", "2"]) == 0
    captured = capsys.readouterr()
    assert "compare: mAP delta" in captured.out
    metrics = json.loads((out / "metrics.json").read_text())
    cmp = metrics["comparison"]
    assert "(aoti, cpu)" in metrics["model"]["name"] and "(onnx)" in metrics["compare"]["name"]
    assert cmp["images"] == 3 and cmp["matched_fraction"] >= 0.99 and cmp["max_score_diff"] <= 1e-4, cmp
    a = json.loads((out / "results.json").read_text())
    b = json.loads((out / "results_compare.json").read_text())
    # Only the classes the annotation file names are written (person, car, dog of the 80).
    assert 0 < len(a) < cmp["detections_a"] and 0 < len(b) < cmp["detections_b"]
    assert {r["category_id"] for r in a + b} <= {7, 3, 42}

    # One unreadable image: exit 1, it is named, the other two are still scored.
    (image_dir / "img_2.png").write_bytes(b"broken")
    assert cli.main(["eval", str(onnx_tiny_dir), "-a", str(ann), "-i", str(image_dir), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert "1 FAILED" in captured.out and "image 102 failed" in captured.out and "img_2.png" in captured.out
    assert {r["image_id"] for r in json.loads((out / "results.json").read_text())} == {100, 101}


def test_onnx_detect_equals_manual_pipeline(onnx_tiny_dir):
    """OnnxEngine.detect == the runtime core's preprocess -> engine -> postprocess done by hand."""
    from codetr import postprocess, preprocess
    from codetr.onnx_engine import OnnxEngine

    engine = OnnxEngine(onnx_tiny_dir)
    img = np.random.default_rng(1).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    got = engine.detect(img)
    batch, masks, metas = preprocess.preprocess([img], _engine_scale_preset(), pad_size=TINY_PACKAGE_SIZE)
    assert metas[0]["img_shape"] == (120, 160)
    boxes, scores, labels = engine(batch, masks)
    want = postprocess.postprocess_single(boxes[0], scores[0], labels[0], metas[0], "tiny_r50")
    assert np.array_equal(got.boxes, want["bboxes"].numpy()) and np.array_equal(got.scores, want["scores"].numpy())
    assert np.array_equal(got.labels, want["labels"].numpy())
    assert got.class_names[:1] == [COCO_CLASSES[int(want["labels"][0])]]
    both = engine.detect([img, img[::-1].copy()])
    assert len(both) == 2 and np.array_equal(both[0].boxes, got.boxes)
