"""``codetr serve``: a Ray Serve application answering detection requests over HTTP.

One ``codetr.Detector`` per replica; concurrent requests are batched (``EngineBatcher``) into the
engine's batch size. Ray places the replicas on any number of GPUs and nodes.

HTTP API (route prefix "/"):
  POST /         an image (raw bytes, or multipart/form-data with one file field) -> one JSON record
                 with codetr-detect's per-image schema (``codetr.result_record``). Query parameters
                 ``file`` and ``image_id`` fill those fields (defaults: the multipart file name or
                 "request", and 0). An image that cannot be decoded -> 400 with the reason.
  GET /health    200 "ok" once the replica's engine is loaded.
  GET /metrics   this replica's Prometheus text: requests by status, request latency histogram,
                 engine batch sizes and the seconds the engine was busy.
"""
from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Optional


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

    ``run(items) -> results`` (blocking, one result per item, in order) runs in a thread, one call at
    a time. A batch takes every request waiting when the previous call returns, up to ``max_batch``;
    a request that finds the engine idle waits at most ``wait_s`` for companions. So under load
    every call is full: the requests that arrive during one engine call make up the next.
    (``@serve.batch`` forms its batches on its timer, independently of the engine being busy: under
    load it queued many partial batches, and a static batch-B engine costs the same for 1 image as
    for B.) ``on_batch(size, seconds)`` is told each call's size and wall time. Must be used from one
    event loop (a replica's)."""

    def __init__(self, run: Callable[[List[Any]], List[Any]], max_batch: int, wait_s: float,
                 on_batch: Optional[Callable[[int, float], None]] = None):
        if max_batch < 1 or wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and wait_s >= 0 (got {max_batch}, {wait_s})")
        self._run, self._max_batch, self._wait_s, self._on_batch = run, max_batch, wait_s, on_batch
        self._queue: Optional[asyncio.Queue] = None
        self._arrived: Optional[asyncio.Event] = None
        self._worker: Optional[asyncio.Task] = None

    async def submit(self, item: Any) -> Any:
        """The result of ``item``'s place in ``run``'s output (or the exception ``run`` raised)."""
        if self._worker is None:
            self._queue, self._arrived = asyncio.Queue(), asyncio.Event()
            self._worker = asyncio.create_task(self._serve())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        self._arrived.set()
        return await future

    async def _next_batch(self) -> list:
        loop = asyncio.get_running_loop()
        while self._queue.empty():
            self._arrived.clear()
            await self._arrived.wait()
        batch = [self._queue.get_nowait()]
        deadline = loop.time() + self._wait_s
        while True:
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            remaining = deadline - loop.time()
            if len(batch) >= self._max_batch or remaining <= 0:
                return batch
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def _serve(self) -> None:
        # Invariant: never returns nor raises (every failure goes to the requests of its batch), so
        # no submitted request is left waiting.
        while True:
            # A client that went away (its request cancelled) does not cost an engine slot.
            batch = [(item, future) for item, future in await self._next_batch() if not future.done()]
            if not batch:
                continue
            try:
                start = time.monotonic()
                results = await asyncio.to_thread(self._run, [item for item, _ in batch])
                if self._on_batch is not None:
                    self._on_batch(len(batch), time.monotonic() - start)
                if len(results) != len(batch):
                    raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} images")
            except Exception as exc:  # every request of the batch gets the error; the worker goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)


def parse_image_id(text: str) -> int:
    """The ``image_id`` query parameter; ValueError naming it."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not -2**63 <= value < 2**63:
        raise ValueError(f"query parameter image_id must be a 64-bit integer, got {text!r}")
    return value


def build_app(model_dir: str, *, replicas: int = 1, gpus_per_replica: float = 0.0, max_batch: Optional[int] = None,
              batch_wait_ms: float = 10.0, device: Optional[str] = None):
    """The Serve application (bind()-ed deployment) for ``serve.run``."""
    from ray import serve
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse

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
            from codetr.runtime import decode_image, result_record

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
            status, body = 200, None
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
                body = result_record(dets, file_name=name, image_id=image_id, height=img.shape[0],
                                     width=img.shape[1])
            except ValueError as exc:
                status, body = 400, {"error": str(exc)}
            self.metrics.observe(status, time.monotonic() - start)
            return JSONResponse(body, status_code=status)

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
