"""``codetr batch``: offline detection over many images on Ray Data.

Images (folders, sorted and not recursive as codetr-detect reads them, or list files with one path a
line) are decoded on CPU tasks and detected by engine actors: one per GPU on a GPU cluster, CPU
actors otherwise; Ray places both on any number of nodes. Results are JSON Lines shards in OUT, one
record per image with exactly codetr-detect's schema (``codetr.result_record``).

Resumable: the driver appends each record to this run's shard and flushes it as soon as it arrives,
so after a crash every finished image is in some shard (a torn last line is ignored); a rerun reads
every shard, skips the images already recorded and writes only the rest, so the union of shards holds
each image exactly once.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np


class BatchError(ValueError):
    """A request that cannot be run as asked (the message names the input)."""


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """Folders -> their image files (sorted, not recursive; codetr-detect's extensions, from the
    core); a ``.txt``/``.lst`` file -> the paths it lists (relative ones against its folder); an
    image file -> itself."""
    from codetr._native import runtime

    files: List[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(str(c) for c in p.iterdir() if c.is_file() and runtime.is_image_name(os.fsencode(c)))
        elif p.is_file() and p.suffix.lower() in (".txt", ".lst"):
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line)
                    files.append(str(q if q.is_absolute() else p.parent / q))
        elif p.is_file():
            files.append(str(p))
        else:
            raise BatchError(f"input {item!r}: no such file or folder")
    if not files:
        raise BatchError(f"no images in {list(inputs)}")
    return files


def image_ids(files: Sequence[str]) -> List[int]:
    """codetr-detect's image_id of each file (the core's rule: numeric distinct stems, else positions)."""
    from codetr._native import runtime

    return list(runtime.image_ids([os.fsencode(f) for f in files]))


def finished_files(output: Path) -> Set[str]:
    """File names already recorded in OUT's shards (a torn last line from a crash is skipped)."""
    done: Set[str] = set()
    for shard in sorted(output.glob("*.jsonl")):
        with open(shard, "rb") as f:
            for line in f:
                try:
                    done.add(json.loads(line)["file"])
                except (ValueError, KeyError):
                    continue
    return done


def _decode(batch: Dict[str, np.ndarray]) -> Dict[str, list]:
    """Ray Data CPU task: read and decode each image; a failure is carried as an error string."""
    from codetr.runtime import decode_image

    images, errors = [], []
    for path in batch["file"]:
        img, err = None, ""
        try:
            img = decode_image(Path(path).read_bytes())
        except OSError as exc:
            err = f"cannot read: {exc.strerror or exc}"
        except ValueError as exc:
            err = str(exc)
        images.append(img if img is not None else np.zeros((0, 0, 3), np.uint8))
        errors.append(err)
    return {"file": list(batch["file"]), "image_id": list(batch["image_id"]), "image": images, "error": errors}


class _EngineActor:
    """Ray Data actor: one Detector, reused for every batch it is given."""

    def __init__(self, model_dir: str, device: Optional[str]):
        from codetr.runtime import Detector

        self.det = Detector(model_dir, device)

    def __call__(self, batch: Dict[str, list]) -> Dict[str, list]:
        from codetr.runtime import result_json

        records = []
        good = [i for i, e in enumerate(batch["error"]) if not e]
        dets = {}
        # One bad image must not cost the others: detect_each gives it its error.
        for i, result in zip(good, self.det.detect_each([batch["image"][i] for i in good]) if good else []):
            if isinstance(result, ValueError):
                batch["error"][i] = str(result)
            else:
                dets[i] = result
        for i, (f, iid) in enumerate(zip(batch["file"], batch["image_id"])):
            img = batch["image"][i]
            h, w = (int(img.shape[0]), int(img.shape[1])) if i in dets else (0, 0)
            records.append(result_json(dets.get(i), file_name=str(f), image_id=int(iid), height=h, width=w,
                                       error=batch["error"][i] or None))
        return {"record": records}


def plan_actors(actors: Optional[int], engine_on_gpu: bool, cluster_gpus: float) -> Tuple[int, int]:
    """(engine actors, GPUs each): a CUDA engine's actor holds one GPU, one actor per cluster GPU by
    default; a CPU engine runs one actor unless told otherwise. BatchError when the cluster cannot
    hold the actors (rather than a pool that waits for GPUs forever)."""
    if not engine_on_gpu:
        return actors or 1, 0
    available = int(cluster_gpus)
    if available == 0:
        raise BatchError("the engine runs on cuda but the Ray cluster has no GPU")
    if actors is not None and actors > available:
        raise BatchError(f"--actors {actors}: each actor of a cuda engine holds one GPU; the Ray cluster "
                         f"has {available}")
    return actors or available, 1


def run_batch(model_dir: str, inputs: Sequence[str], output: str, *, device: Optional[str] = None,
              actors: Optional[int] = None, batch_size: Optional[int] = None, address: Optional[str] = None,
              progress: bool = True) -> Dict:
    """Detect every input image not yet in OUT; returns the summary
    {"images", "skipped", "failed", "seconds", "images_per_s", "first_result_s", "steady_images_per_s",
    "shard"}: seconds and images_per_s from the dataset's start (engine loading included);
    steady_images_per_s over the images after the first result, from its arrival."""
    import ray

    from codetr.modeljson import load_model_json

    for name, value in (("actors", actors), ("batch_size", batch_size)):
        if value is not None and value < 1:
            raise BatchError(f"--{name.replace('_', '-')} must be >= 1 (got {value})")
    engine = load_model_json(model_dir)  # checked by the runtime's parser: errors name the key
    files = expand_inputs(inputs)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    ids = image_ids(files)
    done = finished_files(out)
    todo = [(f, i) for f, i in zip(files, ids) if f not in done]
    summary = {"images": 0, "skipped": len(files) - len(todo), "failed": 0, "seconds": 0.0, "images_per_s": 0.0,
               "first_result_s": None, "steady_images_per_s": None, "shard": None}
    if not todo:
        return summary

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    dev = device or engine.get("device", "cpu")
    n_actors, gpus = plan_actors(actors, dev == "cuda", ray.cluster_resources().get("GPU", 0.0))
    geometry = engine.get("input", {})
    per_call = batch_size or int(geometry.get("batch") or geometry.get("max_batch") or 1)

    ds = ray.data.from_items([{"file": f, "image_id": i} for f, i in todo])
    ds = ds.map_batches(_decode, batch_size=per_call)
    # A CPU actor holds one CPU, so Ray runs it with OMP_NUM_THREADS=1 unless the environment sets
    # it; the engine's float results depend on that thread count (docs/serving.md).
    ds = ds.map_batches(_EngineActor, fn_constructor_args=(str(model_dir), device), batch_size=per_call,
                        compute=ray.data.ActorPoolStrategy(size=n_actors), num_gpus=gpus,
                        num_cpus=0 if gpus else 1)

    shard = out / f"part-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.jsonl"
    summary["shard"] = str(shard)
    start = time.monotonic()
    first = None
    with open(shard, "a", encoding="utf-8") as f:
        for row in ds.iter_rows():
            f.write(row["record"] + "\n")
            f.flush()
            summary["images"] += 1
            if first is None:
                first = time.monotonic()
            if '"error"' in row["record"] and "error" in json.loads(row["record"]):
                summary["failed"] += 1
    end = time.monotonic()
    summary["seconds"] = end - start
    summary["images_per_s"] = summary["images"] / summary["seconds"] if summary["seconds"] else 0.0
    if first is not None:
        summary["first_result_s"] = first - start
        after = end - first
        summary["steady_images_per_s"] = (summary["images"] - 1) / after if summary["images"] > 1 and after else None
    return summary
