"""Throughput and latency of a running `codetr serve` service at several concurrency levels.

Each level sends --requests POSTs of one image (raw bytes) from that many client threads and
reports images/s, p50 and p99 latency and the non-200 count. Each client thread keeps one HTTP/1.1
connection, as a camera or a load generator such as wrk does (--no-keep-alive: a new connection per
request, whose set-up the measurement then includes). Compare images/s with `codetr-detect
--benchmark` on the same engine and image (the service's target: >= 90 % of the engine's batch
throughput at concurrency 32). Standard library only, so it runs wherever Python does.

  codetr serve --model engines/r50_b8 --port 8000 &
  python tools/bench_serve.py --url http://127.0.0.1:8000/ --image photo.jpg --concurrency 1 8 32
Prints one JSON line per level.
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


def post(url: str, body: bytes, timeout: float) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


class KeepAliveClient:
    """POSTs over one persistent connection, opened again when the server closed it."""

    def __init__(self, url: str, timeout: float):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.conn: "http.client.HTTPConnection | None" = None

    def post(self, body: bytes) -> int:
        try:
            return self._post(body)
        except (http.client.HTTPException, ConnectionError):
            # The server closed the connection while it was idle: once more on a new one.
            self._close()
            return self._post(body)

    def _post(self, body: bytes) -> int:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self.conn.request("POST", self.path, body, {"Content-Type": "application/octet-stream"})
        response = self.conn.getresponse()
        response.read()
        if response.will_close:
            self._close()
        return response.status

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run_level(url: str, body: bytes, concurrency: int, requests: int, timeout: float,
              keep_alive: bool = True) -> dict:
    latencies, statuses = [], []
    lock = threading.Lock()
    remaining = [requests]

    def client():
        session = KeepAliveClient(url, timeout) if keep_alive else None
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            start = time.perf_counter()
            status = session.post(body) if session else post(url, body, timeout)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed * 1e3)
                statuses.append(status)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"concurrency": concurrency, "requests": requests, "images_per_s": round(requests / wall, 2),
            "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
            "non_200": sum(s != 200 for s in statuses), "keep_alive": keep_alive}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=400, help="requests per level (default: 400)")
    parser.add_argument("--warmup", type=int, default=20, help="requests before the first level (default: 20)")
    parser.add_argument("--keep-alive", action=argparse.BooleanOptionalAction, default=True,
                        help="one persistent connection per client thread (default), or a new one per request")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default: 120)")
    args = parser.parse_args()
    if not args.image.is_file():
        print(f"bench_serve: --image {args.image}: no such file", file=sys.stderr)
        return 2
    if args.requests < 1 or args.warmup < 0 or min(args.concurrency) < 1:
        print("bench_serve: --requests and --concurrency must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    body = args.image.read_bytes()
    if args.warmup:
        run_level(args.url, body, max(args.concurrency), args.warmup, args.timeout, args.keep_alive)
    for level in args.concurrency:
        print(json.dumps(run_level(args.url, body, level, args.requests, args.timeout, args.keep_alive)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
