"""Shared by the Ray tests: one bounded local Ray cluster per test module (num_cpus=2, loopback
only) and the codetr-detect reference run under the same engine thread count.

The engine's CPU kernels split their reductions by thread count, so its float outputs (and the
detections' last bits) depend on OMP_NUM_THREADS. Ray runs a 1-CPU actor or replica with
OMP_NUM_THREADS=1 unless the environment sets it; the cluster pins it for every worker and
the reference codetr-detect runs with the same value, so the records must be equal, not close.
"""
import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import List

import pytest

from runtime_standin import require_opencv_cli

ENGINE_THREADS = "1"

# On a test that needs a Ray cluster: skip before any fixture (the model export) runs.
requires_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                  reason="the 'serve' extra (ray[serve,data]) is not installed")


def local_ray(*, dashboard: bool = False):
    """Start the module's cluster. ``dashboard``: also its API server on 127.0.0.1 (ray.util.state
    needs it). Its processes start with OMP_NUM_THREADS=ENGINE_THREADS, so every worker of every job
    (also a `codetr batch --address` subprocess) inherits it; this process's own value is kept."""
    ray = pytest.importorskip("ray", reason="the 'serve' extra (ray[serve,data]) is not installed")
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = ENGINE_THREADS
    try:
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
    finally:
        if saved is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return ray


def codetr_detect_records(model_dir: Path, inputs: List[Path], jsonl: Path) -> List[dict]:
    """codetr-detect --jsonl over INPUTs (OMP_NUM_THREADS=ENGINE_THREADS) -> its records in order."""
    cli = require_opencv_cli()
    env = dict(os.environ, OMP_NUM_THREADS=ENGINE_THREADS)
    subprocess.run([str(cli), "--model", str(model_dir), "--jsonl", str(jsonl), *map(str, inputs)],
                   check=True, capture_output=True, timeout=300, env=env)
    return [json.loads(line) for line in jsonl.read_text().splitlines()]
