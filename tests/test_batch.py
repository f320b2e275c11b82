"""`codetr batch` (Ray Data) against codetr-detect --jsonl on the same folder: the same records;
after a `codetr batch` killed midway (SIGKILL, plus a torn last line), a rerun writes only the
missing images, and the union of shards equals a clean run with no image twice. The folder rules
(which files, which image_id) are codetr-detect's own, through the binding."""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ray_cluster import codetr_detect_records, local_ray, requires_ray


@pytest.fixture(scope="module")
def ray_cluster():
    ray = local_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    cv2 = pytest.importorskip("cv2")

    d = tmp_path_factory.mktemp("batch_images")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(120, 170), (97, 64), (128, 160), (200, 90), (64, 64)]):
        cv2.imwrite(str(d / f"img_{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return d


@pytest.fixture(scope="module")
def reference(exported_tiny_package, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch_ref") / "ref.jsonl"
    return {r["file"]: r for r in codetr_detect_records(exported_tiny_package, [folder], out)}


def shard_records(out: Path):
    """Every parseable record of OUT's shards (a torn last line of a crashed run is skipped)."""
    records = []
    for shard in sorted(out.glob("*.jsonl")):
        for line in shard.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def test_inputs_follow_codetr_detect(exported_tiny_package, tmp_path):
    """Which files a folder contributes and their image_ids: codetr-detect's records decide."""
    cv2 = pytest.importorskip("cv2")
    from codetr.batch import expand_inputs, image_ids

    img = np.full((40, 50, 3), 127, np.uint8)
    numeric = tmp_path / "numeric"
    numeric.mkdir()
    png = cv2.imencode(".png", img)[1].tobytes()
    for name in ("000000000139.png", "7.PNG", "42.jpeg"):
        (numeric / name).write_bytes(png)
    (numeric / "notes.txt").write_text("not an image\n")
    (numeric / "raw.ppm2").write_bytes(b"not an image either")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("5.png", "b.png"):
        (mixed / name).write_bytes(png)
    for d in (numeric, mixed):
        files = expand_inputs([str(d)])
        ref = codetr_detect_records(exported_tiny_package, [d], tmp_path / f"{d.name}.jsonl")
        assert [(f, i) for f, i in zip(files, image_ids(files))] == [(r["file"], r["image_id"]) for r in ref]
    # Hand-checked: COCO-style numeric stems are their ids; one non-numeric stem makes them positions.
    assert image_ids(expand_inputs([str(numeric)])) == [139, 42, 7]
    assert image_ids(expand_inputs([str(mixed)])) == [0, 1]


@requires_ray
def test_batch_equals_codetr_detect(ray_cluster, exported_tiny_package, folder, reference, tmp_path):
    from codetr.batch import run_batch

    summary = run_batch(str(exported_tiny_package), [str(folder)], str(tmp_path), progress=False)
    assert summary["images"] == 5 and summary["failed"] == 0 and summary["skipped"] == 0
    assert 0 < summary["first_result_s"] <= summary["seconds"]
    assert summary["steady_images_per_s"] > 0 and summary["images_per_s"] > 0
    got = shard_records(tmp_path)
    assert len(got) == 5
    assert {r["file"]: r for r in got} == reference


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory):
    """Enough images that a run can be killed with some of them done and the rest not."""
    cv2 = pytest.importorskip("cv2")

    d = tmp_path_factory.mktemp("batch_many")
    rng = np.random.default_rng(2)
    for i in range(16):
        h, w = rng.integers(40, 130, 2)
        cv2.imwrite(str(d / f"many_{i:02d}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return d


@requires_ray
def test_killed_run_then_rerun_equals_a_clean_run(ray_cluster, exported_tiny_package, big_folder, tmp_path):
    from codetr.batch import run_batch

    reference = {r["file"]: r for r in codetr_detect_records(exported_tiny_package, [big_folder],
                                                             tmp_path / "ref.jsonl")}
    out = tmp_path / "out"
    # `codetr batch` as a separate driver on this cluster, SIGKILLed once some records are written.
    address = ray_cluster.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "codetr", "batch", "--model", str(exported_tiny_package),
                             str(big_folder), "--output", str(out), "--address", address, "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(shard_records(out)) < 3:
            assert proc.poll() is None, f"codetr batch exited ({proc.returncode}) before writing 3 records"
            assert time.monotonic() < deadline, "codetr batch wrote no records"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    done = len(shard_records(out))
    assert 3 <= done < len(reference), f"the run was not killed midway ({done} of {len(reference)} done)"
    # A kill in the middle of a write leaves a torn line: the rerun must ignore it too.
    shard = next(out.glob("*.jsonl"))
    with open(shard, "a") as f:
        f.write(json.dumps(reference[sorted(reference)[-1]])[:40])

    summary = run_batch(str(exported_tiny_package), [str(big_folder)], str(out), progress=False)
    assert summary["skipped"] == done and summary["images"] == len(reference) - done and summary["failed"] == 0
    got = shard_records(out)
    files = [r["file"] for r in got]
    assert len(files) == len(set(files)) == len(reference)
    assert {r["file"]: r for r in got} == reference
    # A third run has nothing left to do.
    assert run_batch(str(exported_tiny_package), [str(big_folder)], str(out), progress=False)["images"] == 0


@requires_ray
def test_bad_image_is_reported_and_costs_no_other(ray_cluster, exported_tiny_package, folder, reference, tmp_path):
    from codetr.batch import run_batch

    bad = tmp_path / "in" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    listing = tmp_path / "in" / "list.txt"
    listing.write_text("".join(f"{f}\n" for f in sorted(reference)) + "broken.png\n")
    out = tmp_path / "out"
    summary = run_batch(str(exported_tiny_package), [str(listing)], str(out), progress=False)
    assert summary["images"] == 6 and summary["failed"] == 1
    got = {r["file"]: r for r in shard_records(out)}
    assert "cannot decode" in got.pop(str(bad))["error"]
    # The list's image_ids are positions (non-numeric names), as codetr-detect numbers its inputs.
    assert got == reference
