"""`codetr serve` (Ray Serve) on a bounded local cluster, loopback only: concurrent requests get
records equal to codetr-detect --jsonl on the same images; malformed requests get a 4xx naming the
problem, the replica survives and the next request succeeds; killing a replica mid-load loses no
accepted request (each is answered with the right record, or with a 5xx the client retries) and
the service recovers. /metrics is checked against a hand-computed case and against the requests
the answering replica saw."""
import json
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPException

import numpy as np
import pytest

from ray_cluster import codetr_detect_records, local_ray

pytest.importorskip("ray", reason="the 'serve' extra (ray[serve,data]) is not installed")

DEPLOYMENT = "CodetrDetector"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(exported_tiny_package):
    ray = local_ray(dashboard=True)
    from ray import serve

    from codetr.serve import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # max_batch 4 over the static batch-1 engine: the replica groups requests, the Detector runs
    # them one engine call each.
    serve.run(build_app(str(exported_tiny_package), replicas=2, max_batch=4, batch_wait_ms=20), name="codetr",
              route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(exported_tiny_package, tmp_path_factory):
    cv2 = pytest.importorskip("cv2")

    d = tmp_path_factory.mktemp("serve_images")
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(120, 170), (97, 64), (128, 160), (200, 90), (64, 64), (150, 150)]):
        cv2.imwrite(str(d / f"req_{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return codetr_detect_records(exported_tiny_package, [d], tmp_path_factory.mktemp("serve_ref") / "ref.jsonl")


def replicas():
    """The deployment's live replica actors, from Ray's state API (class name ...:CodetrDetector)."""
    from ray.util.state import list_actors

    return [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
            if a.class_name.split(":")[-1] == DEPLOYMENT]


def post(url, data: bytes, query: str = "", content_type: str = "application/octet-stream", timeout: float = 120):
    """POST -> (status, JSON body); a dropped connection is status 0 (the client may retry it)."""
    req = urllib.request.Request(url + "/" + query, data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, {"error": body.decode(errors="replace")}
    except (urllib.error.URLError, HTTPException, ConnectionError) as e:
        return 0, {"error": repr(e)}


def ask(url, ref):
    data = open(ref["file"], "rb").read()
    return post(url, data, f"?file={urllib.parse.quote(ref['file'])}&image_id={ref['image_id']}")


def ask_retrying(url, ref, attempts: int = 5):
    """What a client does: retry a request reported as failed by the server (5xx) or dropped.
    -> (status, body, retries)."""
    for retry in range(attempts):
        status, body = ask(url, ref)
        if status == 200 or 400 <= status < 500:
            return status, body, retry
        time.sleep(0.5)
    return status, body, attempts


def metrics(url):
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        return r.read().decode()


def samples(text: str, name: str):
    """{labels text: value} of the samples of metric NAME."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(rf"^{name}\{{(.*)\}} (\S+)$", text, re.M)}


def test_metrics_text_hand_computed():
    from codetr.serve import Metrics

    m = Metrics(4, "r1")
    for status, seconds in [(200, 0.02), (200, 0.3), (400, 0.001), (200, 100.0)]:
        m.observe(status, seconds)
    m.observe_batch(1, 0.5)
    m.observe_batch(3, 0.25)
    m.observe_batch(3, 0.125)
    text = m.text()
    assert samples(text, "codetr_requests_total") == {'replica="r1",status="200"': 3, 'replica="r1",status="400"': 1}
    buckets = samples(text, "codetr_request_latency_seconds_bucket")
    # 0.001 <= 0.01; 0.02 <= 0.025; 0.3 <= 0.5; 100 only in +Inf.
    assert buckets['replica="r1",le="0.01"'] == 1 and buckets['replica="r1",le="0.025"'] == 2
    assert buckets['replica="r1",le="0.25"'] == 2 and buckets['replica="r1",le="0.5"'] == 3
    assert buckets['replica="r1",le="30.0"'] == 3 and buckets['replica="r1",le="+Inf"'] == 4
    assert samples(text, "codetr_request_latency_seconds_count") == {'replica="r1"': 4}
    assert samples(text, "codetr_request_latency_seconds_sum")['replica="r1"'] == pytest.approx(100.321)
    assert samples(text, "codetr_engine_batches_total") == {'replica="r1",size="1"': 1, 'replica="r1",size="3"': 2}
    assert samples(text, "codetr_engine_seconds_total") == {'replica="r1"': 0.875}


def test_concurrent_requests_equal_codetr_detect(service, reference):
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda r: ask(service, r), reference * 2))
    for (status, body), ref in zip(answers, reference * 2):
        assert status == 200, body
        assert body == ref
    # The answering replica's metrics agree with themselves: every request it answered 200 went
    # through one engine batch slot, and the latency histogram counts every request.
    text = metrics(service)
    ok = sum(v for k, v in samples(text, "codetr_requests_total").items() if k.endswith('status="200"'))
    batched = sum(int(re.search(r'size="(\d+)"', k).group(1)) * v
                  for k, v in samples(text, "codetr_engine_batches_total").items())
    assert ok >= 1 and batched == ok
    assert sum(samples(text, "codetr_request_latency_seconds_count").values()) == sum(
        samples(text, "codetr_requests_total").values())


def multipart(fields):
    """multipart/form-data body of (name, filename, bytes) file fields -> (body, content type)."""
    boundary = "codetr-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"; filename="{f}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for n, f, data in fields]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_malformed_requests_are_4xx_and_the_replica_survives(service, reference):
    before = sorted(a.actor_id for a in replicas())
    assert len(before) == 2
    image = open(reference[0]["file"], "rb").read()
    status, body = post(service, b"this is not an image")
    assert status == 400 and "cannot decode" in body["error"]
    status, body = post(service, image[: len(image) // 3])
    assert status == 400 and "cannot decode" in body["error"]
    status, body = post(service, b"")
    assert status == 400 and "empty request body" in body["error"]
    for bad in ("seven", str(2**64)):
        status, body = post(service, image, f"?image_id={bad}")
        assert status == 400 and f"image_id must be a 64-bit integer, got '{bad}'" in body["error"]
    data, content_type = multipart([("a", "x.png", image), ("b", "y.png", image)])
    status, body = post(service, data, content_type=content_type)
    assert status == 400 and "2 file fields" in body["error"]
    status, body = post(service, b"--nope\r\nnot multipart", content_type="multipart/form-data")
    assert status == 400 and "malformed multipart body" in body["error"]
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(service + "/", timeout=30)
    assert e.value.code == 405
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(service + "/detect", timeout=30)
    assert e.value.code == 404
    # The next requests succeed, raw and multipart, on the same replicas (none was restarted).
    ref = reference[0]
    assert ask(service, ref) == (200, ref)
    data, content_type = multipart([("image", ref["file"], image)])
    assert post(service, data, f"?image_id={ref['image_id']}", content_type=content_type) == (200, ref)
    assert sorted(a.actor_id for a in replicas()) == before


def test_killing_a_replica_loses_no_accepted_request(service, reference):
    import ray

    alive = replicas()
    assert len(alive) == 2
    victim = alive[0]
    load = reference * 4
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ask_retrying, service, r) for r in load]
        # Kill once the load is flowing: some answers are in, most requests are queued or running.
        deadline = time.monotonic() + 120
        while sum(f.done() for f in futures) < 2:
            assert time.monotonic() < deadline, "no answer under load"
            time.sleep(0.05)
        ray.kill(ray.get_actor(victim.name, namespace=victim.ray_namespace), no_restart=True)
        answers = [f.result(timeout=600) for f in futures]
    # Every request ends with the right record: answered, or reported (5xx / dropped) and retried.
    for (status, body, _), ref in zip(answers, load):
        assert status == 200 and body == ref, (status, body)
    # Recovery: the controller starts a new replica in place of the killed one.
    deadline = time.monotonic() + 180
    while True:
        now = {a.actor_id for a in replicas()}
        if len(now) == 2 and victim.actor_id not in now:
            break
        assert time.monotonic() < deadline, f"the service did not recover: live replicas {now}"
        time.sleep(1)
    with ThreadPoolExecutor(4) as pool:
        after = list(pool.map(lambda r: ask(service, r), reference))
    assert after == [(200, r) for r in reference]
    with urllib.request.urlopen(service + "/health", timeout=30) as r:
        assert r.status == 200
