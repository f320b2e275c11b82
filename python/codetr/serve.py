"""``codetr serve``: a Ray Serve application answering detection requests over HTTP.

One ``codetr.Detector`` per replica; concurrent requests are batched (``EngineBatcher``) into the
engine's batch size. Ray places the replicas on any number of GPUs and nodes.

HTTP API (route prefix "/"):
  POST /         an image (raw bytes, or multipart/form-data with one file field) -> one JSON record
                 with codetr-detect's per-image schema (``codetr.result_json``'s text). Query parameters
                 ``file`` and ``image_id`` fill those fields (defaults: the multipart file name or
                 "request", and 0). An image that cannot be decoded -> 400 with the reason.
  GET /health    200 "ok" once the replica's engine is loaded.
  GET /metrics   this replica's Prometheus text: requests by status, request latency histogram,
                 engine batch sizes and the seconds the engine was busy.
"""
from __future__ import annotations

import asyncio
import queue
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple


APP_NAME = "codetr"
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Counters of one replica, rendered as Prometheus text; every sample carries the replica's id
    (``replica`` label), since each GET /metrics is answered by one replica."""

    def __init__(self, max_batch: int, replica: str = ""):
        self._lock = threading.Lock()
        self.label = f'replica="{replica}"'
        self.requests: Dict[int, int] = {}
        self.latency = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.latency_sum = 0.0
        self.batch_sizes = [0] * (max_batch + 1)
        self.engine_seconds = 0.0

    def observe(self, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[status] = self.requests.get(status, 0) + 1
            self.latency[next((i for i, b in enumerate(LATENCY_BUCKETS_S) if seconds <= b), len(LATENCY_BUCKETS_S))] += 1
            self.latency_sum += seconds

    def observe_batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batch_sizes[min(size, len(self.batch_sizes) - 1)] += 1
            self.engine_seconds += seconds

    def text(self) -> str:
        with self._lock:
            lines = ["# TYPE codetr_requests_total counter"]
            lines += [f'codetr_requests_total{{{self.label},status="{s}"}} {n}' for s, n in sorted(self.requests.items())]
            lines.append("# TYPE codetr_request_latency_seconds histogram")
            cumulative = 0
            for bound, n in zip(list(LATENCY_BUCKETS_S) + ["+Inf"], self.latency):
                cumulative += n
                lines.append(f'codetr_request_latency_seconds_bucket{{{self.label},le="{bound}"}} {cumulative}')
            lines.append(f"codetr_request_latency_seconds_sum{{{self.label}}} {self.latency_sum}")
            lines.append(f"codetr_request_latency_seconds_count{{{self.label}}} {cumulative}")
            lines.append("# TYPE codetr_engine_batches_total counter")
            lines += [f'codetr_engine_batches_total{{{self.label},size="{s}"}} {n}'
                      for s, n in enumerate(self.batch_sizes) if n]
            # Its rate is the engine's utilisation: below 1 under load means the engine waits for requests.
            lines.append("# TYPE codetr_engine_seconds_total counter")
            lines.append(f"codetr_engine_seconds_total{{{self.label}}} {self.engine_seconds}")
            return "\n".join(lines) + "\n"


class EngineBatcher:
    """Groups concurrent requests into engine calls, forming each batch when the engine is free.

    ``run(items) -> results`` (blocking, one result per item, in order) runs in the batcher's own
    engine thread, one call at a time. A batch takes every request waiting when the previous call
    returns, up to ``max_batch``; a request that finds the engine idle waits at most ``wait_s`` for
    companions. So under load every call is full: the requests that arrive during one engine call
    make up the next. The engine thread forms the next batch and starts it itself, without a round
    trip through the event loop, which under load is busy with the requests themselves (parsing,
    decoding, JSON): only the delivery of results waits for the loop. (``@serve.batch`` forms its
    batches on its timer, independently of the engine being busy: under load it queued many partial
    batches, and a static batch-B engine costs the same for 1 image as for B.)
    ``on_batch(size, seconds)`` is told each call's size and wall time, from the engine thread.
    ``submit`` must be called from one event loop (a replica's)."""

    def __init__(self, run: Callable[[List[Any]], List[Any]], max_batch: int, wait_s: float,
                 on_batch: Optional[Callable[[int, float], None]] = None):
        if max_batch < 1 or wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and wait_s >= 0 (got {max_batch}, {wait_s})")
        self._run, self._max_batch, self._wait_s, self._on_batch = run, max_batch, wait_s, on_batch
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    async def submit(self, item: Any) -> Any:
        """The result of ``item``'s place in ``run``'s output (or the exception ``run`` raised)."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            threading.Thread(target=self._serve, name="codetr-engine", daemon=True).start()
        elif loop is not self._loop:
            raise RuntimeError("EngineBatcher.submit called from a second event loop")
        future = loop.create_future()
        self._queue.put((item, future))
        return await future

    def _next_batch(self) -> list:
        batch = [self._queue.get()]
        deadline = time.monotonic() + self._wait_s
        while len(batch) < self._max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _serve(self) -> None:
        # Invariant: never returns nor raises (every failure goes to the requests of its batch), so
        # no submitted request is left waiting.
        while True:
            # A client that went away (its request cancelled) does not cost an engine slot. done() is
            # read outside the loop: a request cancelled at this very moment may still take its slot.
            batch = [(item, future) for item, future in self._next_batch() if not future.done()]
            if not batch:
                continue
            results: Optional[List[Any]] = None
            error: Optional[BaseException] = None
            try:
                start = time.monotonic()
                results = self._run([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} images")
                if self._on_batch is not None:
                    self._on_batch(len(batch), time.monotonic() - start)
            except Exception as exc:  # every request of the batch gets the error; the thread goes on
                error = exc
            try:
                self._loop.call_soon_threadsafe(self._deliver, batch, results, error)
            except RuntimeError:  # the loop is closed: nobody waits for these results any more
                pass

    @staticmethod
    def _deliver(batch: list, results: Optional[List[Any]], error: Optional[BaseException]) -> None:
        for k, (_, future) in enumerate(batch):
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(results[k])


def parse_image_id(text: str) -> int:
    """The ``image_id`` query parameter; ValueError naming it."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not -2**63 <= value < 2**63:
        raise ValueError(f"query parameter image_id must be a 64-bit integer, got {text!r}")
    return value


def plan_replicas(replicas: Optional[int], gpus_per_replica: Optional[float], engine_on_gpu: bool,
                  cluster_gpus: Optional[float]) -> Tuple[int, float]:
    """(replicas, GPUs per replica) of ``codetr serve``. A replica of a CUDA engine holds one GPU unless
    told otherwise (a replica without a GPU resource would run on whatever GPU the process sees, all
    of them on the same one); ``replicas`` defaults to as many as the cluster's GPUs hold, or 1 for
    a CPU engine. ValueError naming the flag when the request is impossible, rather than replicas
    that wait for GPUs forever."""
    if replicas is not None and replicas < 1:
        raise ValueError(f"--replicas must be >= 1 (got {replicas})")
    if gpus_per_replica is not None and gpus_per_replica < 0:
        raise ValueError(f"--gpus-per-replica must be >= 0 (got {gpus_per_replica})")
    gpus = float(gpus_per_replica if gpus_per_replica is not None else (1.0 if engine_on_gpu else 0.0))
    if engine_on_gpu and gpus == 0:
        raise ValueError("--gpus-per-replica 0 with a CUDA engine: every replica would share one GPU "
                         "without Ray knowing; give a fraction (0.5: two replicas per GPU) instead")
    if gpus == 0:
        return replicas or 1, 0.0
    available = cluster_gpus or 0.0
    # Whole replicas only; the epsilon keeps 1 / 0.1 at 10 (float floor division gives 9).
    fit = int(available / gpus + 1e-9)
    if fit < 1 or (replicas is not None and replicas > fit):
        want = replicas or 1
        raise ValueError(f"{want} replica(s) x --gpus-per-replica {gpus:g} need {want * gpus:g} GPUs; "
                         f"the Ray cluster has {available:g}")
    return replicas or fit, gpus


def build_app(model_dir: str, *, replicas: int = 1, gpus_per_replica: float = 0.0, max_batch: Optional[int] = None,
              batch_wait_ms: float = 10.0, device: Optional[str] = None):
    """The Serve application (bind()-ed deployment) for ``serve.run``."""
    from ray import serve
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_gpus": gpus_per_replica},
                      max_ongoing_requests=64)
    class CodetrDetector:
        def __init__(self):
            from codetr.runtime import Detector

            self.det = Detector(model_dir, device)
            size = max_batch or self.det.max_batch
            self.metrics = Metrics(size, serve.get_replica_context().replica_id.unique_id)
            # The binding releases the GIL, so requests keep arriving during an engine call. One bad
            # image must not fail its batch: detect_each gives it its own error.
            self.batcher = EngineBatcher(self.det.detect_each, size, batch_wait_ms / 1000.0,
                                         self.metrics.observe_batch)

        async def __call__(self, request: Request):
            from codetr.runtime import decode_image, result_json

            # The path below the application's route prefix (Serve may mount it under one).
            path, root = request.url.path, request.scope.get("root_path", "")
            path = (path[len(root):] if root and path.startswith(root) else path).rstrip("/")
            if path not in ("", "/health", "/metrics"):
                return PlainTextResponse(f"no such path {request.url.path!r}: POST an image to /, or GET "
                                         "/health or /metrics\n", status_code=404)
            if request.method == "GET" and path == "/health":
                return PlainTextResponse("ok\n")
            if request.method == "GET" and path == "/metrics":
                return PlainTextResponse(self.metrics.text())
            if request.method != "POST" or path:
                return PlainTextResponse("POST an image to /, or GET /health or /metrics\n", status_code=405)
            start = time.monotonic()
            try:
                name = request.query_params.get("file", "request")
                image_id = parse_image_id(request.query_params.get("image_id", "0"))
                if request.headers.get("content-type", "").startswith("multipart/form-data"):
                    try:
                        form = await request.form()
                    except (MultiPartException, HTTPException) as exc:
                        raise ValueError(f"malformed multipart body: {getattr(exc, 'detail', exc)}") from None
                    uploads = [v for v in form.values() if hasattr(v, "read")]
                    if len(uploads) != 1:
                        raise ValueError(f"multipart request with {len(uploads)} file fields (send exactly one)")
                    name = request.query_params.get("file", uploads[0].filename or name)
                    data = await uploads[0].read()
                else:
                    data = await request.body()
                # Decoding off the event loop: requests keep arriving, and several decode at once.
                img = await asyncio.to_thread(decode_image, data, what="request body (POST the image bytes)")
                dets = await self.batcher.submit(img)
                if isinstance(dets, Exception):
                    raise dets
                # The core's JSON text as it is: no parse and re-encode on the event loop.
                response = Response(result_json(dets, file_name=name, image_id=image_id, height=img.shape[0],
                                                width=img.shape[1]), media_type="application/json")
            except ValueError as exc:
                response = JSONResponse({"error": str(exc)}, status_code=400)
            self.metrics.observe(response.status_code, time.monotonic() - start)
            return response

    return CodetrDetector.bind()


def run_server(model_dir: str, *, host: str = "127.0.0.1", port: int = 8000, address: Optional[str] = None,
               **options) -> None:
    """Start (or join, with ``address``) a Ray cluster and serve until Ctrl-C or SIGTERM; then the
    application is deleted, so that on a shared cluster it does not outlive the command."""
    import ray
    from ray import serve

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if not ray.is_initialized():
        ray.init(address=address)
    # After ray.init, which installs a SIGTERM handler of its own that just dies.
    signal.signal(signal.SIGTERM, interrupt)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(model_dir, **options), name=APP_NAME, route_prefix="/")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
