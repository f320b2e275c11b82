"""`codetr serve` (Ray Serve) on a bounded local cluster, loopback only: concurrent requests get
records equal to codetr-detect --jsonl on the same images; a malformed request gets a 400 naming the
problem and the next request succeeds; killing a replica mid-load loses no accepted request (each one
answers with the right record, or with an error status) and the service recovers."""
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ray_cluster import local_ray
from runtime_standin import runtime_binary

CLI = runtime_binary("codetr-detect")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(exported_tiny_package):
    ray = local_ray()
    from ray import serve

    from codetr.serve import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(str(exported_tiny_package), replicas=2, batch_wait_ms=20), name="codetr", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    import cv2

    d = tmp_path_factory.mktemp("serve_images")
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(120, 170), (97, 64), (128, 160), (200, 90), (64, 64), (150, 150)]):
        cv2.imwrite(str(d / f"req_{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return d


@pytest.fixture(scope="module")
def reference(exported_tiny_package, images, tmp_path_factory):
    if not CLI.exists():
        pytest.skip(f"{CLI} is not built")
    out = tmp_path_factory.mktemp("serve_ref") / "ref.jsonl"
    subprocess.run([str(CLI), "--model", str(exported_tiny_package), "--jsonl", str(out), str(images)],
                   check=True, capture_output=True, timeout=300)
    return [json.loads(line) for line in out.read_text().splitlines()]


def post(url, data: bytes, query: str = "", timeout: float = 120):
    req = urllib.request.Request(url + "/" + query, data=data, method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, {"error": body.decode(errors="replace")}


def ask(url, ref):
    data = open(ref["file"], "rb").read()
    return post(url, data, f"?file={urllib.request.quote(ref['file'])}&image_id={ref['image_id']}")


def test_concurrent_requests_equal_codetr_detect(service, reference):
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda r: ask(service, r), reference * 2))
    for (status, body), ref in zip(answers, reference * 2):
        assert status == 200, body
        assert body == ref
    with urllib.request.urlopen(service + "/metrics", timeout=30) as r:
        text = r.read().decode()
    assert 'codetr_requests_total{status="200"}' in text and "codetr_engine_batches_total" in text


def test_malformed_request_is_400_and_the_next_succeeds(service, reference):
    status, body = post(service, b"this is not an image")
    assert status == 400 and "cannot decode" in body["error"]
    status, body = post(service, b"")
    assert status == 400 and "empty request body" in body["error"]
    status, body = ask(service, reference[0])
    assert status == 200 and body == reference[0]


def test_killing_a_replica_loses_no_accepted_request(service, reference):
    import ray

    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
    assert len(replicas) == 2
    victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
    load = reference * 4
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ask, service, r) for r in load]
        time.sleep(0.5)
        ray.kill(victim, no_restart=True)
        answers = [f.result(timeout=300) for f in futures]
    # Every request is answered: the right record, or an error status that reports the loss.
    for (status, body), ref in zip(answers, load):
        assert status == 200 and body == ref or status >= 500, (status, body)
    assert sum(status == 200 for status, _ in answers) >= len(load) // 2
    # Recovery: the controller replaces the replica and requests succeed again.
    deadline = time.monotonic() + 120
    while True:
        status, body = ask(service, reference[1])
        alive = [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
        if status == 200 and len(alive) == 2:
            break
        assert time.monotonic() < deadline, f"service did not recover: {status} {body}, {len(alive)} replicas"
        time.sleep(1)
    assert body == reference[1]
    with urllib.request.urlopen(service + "/health", timeout=30) as r:
        assert r.status == 200
