"""`codetr batch` (Ray Data) against codetr-detect --jsonl on the same folder: the same records;
after a run that died midway (its shard ends after some records and a torn line), a rerun writes
only the missing images, and the union of shards equals a clean run with no image twice."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ray_cluster import local_ray
from runtime_standin import runtime_binary

CLI = runtime_binary("codetr-detect")


@pytest.fixture(scope="module")
def ray_cluster():
    ray = local_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import cv2

    d = tmp_path_factory.mktemp("batch_images")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(120, 170), (97, 64), (128, 160), (200, 90), (64, 64)]):
        cv2.imwrite(str(d / f"img_{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return d


def shard_records(out: Path):
    return [json.loads(line) for shard in sorted(out.glob("*.jsonl")) for line in shard.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(exported_tiny_package, folder, tmp_path_factory):
    if not CLI.exists():
        pytest.skip(f"{CLI} is not built")
    out = tmp_path_factory.mktemp("batch_ref") / "ref.jsonl"
    subprocess.run([str(CLI), "--model", str(exported_tiny_package), "--jsonl", str(out), str(folder)],
                   check=True, capture_output=True, timeout=300)
    return {r["file"]: r for r in map(json.loads, out.read_text().splitlines())}


def test_batch_equals_codetr_detect(ray_cluster, exported_tiny_package, folder, reference, tmp_path):
    from codetr.batch import run_batch

    summary = run_batch(str(exported_tiny_package), [str(folder)], str(tmp_path), progress=False)
    assert summary["images"] == 5 and summary["failed"] == 0 and summary["skipped"] == 0
    got = shard_records(tmp_path)
    assert len(got) == 5
    assert {r["file"]: r for r in got} == reference


def test_rerun_after_crash_completes_without_duplicates(ray_cluster, exported_tiny_package, folder, reference,
                                                        tmp_path):
    from codetr.batch import run_batch

    # What a run killed midway leaves: two flushed records and a torn third line.
    ordered = [reference[k] for k in sorted(reference)]
    torn = json.dumps(ordered[2])[:40]
    (tmp_path / "part-crashed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ordered[:2]) + torn)
    summary = run_batch(str(exported_tiny_package), [str(folder)], str(tmp_path), progress=False)
    assert summary["skipped"] == 2 and summary["images"] == 3
    got = [r for r in shard_records_tolerant(tmp_path)]
    files = [r["file"] for r in got]
    assert sorted(files) == sorted(reference) and len(files) == len(set(files))
    assert {r["file"]: r for r in got} == reference
    # A third run has nothing left to do.
    assert run_batch(str(exported_tiny_package), [str(folder)], str(tmp_path), progress=False)["images"] == 0


def shard_records_tolerant(out: Path):
    for shard in sorted(out.glob("*.jsonl")):
        for line in shard.read_text().splitlines():
            try:
                yield json.loads(line)
            except ValueError:
                continue
