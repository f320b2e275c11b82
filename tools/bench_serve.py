"""Throughput and latency of a running `codetr serve` service at several concurrency levels.

Each level sends --requests POSTs of one image (raw bytes) from that many client threads and
reports images/s, p50 and p99 latency and the non-200 count; compare images/s with
`codetr-detect --benchmark` on the same engine and image (the service's target: >= 90 % of the
engine's batch throughput at concurrency 32). Standard library only, so it runs wherever Python does.

  codetr serve --model engines/r50_b8 --port 8000 &
  python tools/bench_serve.py --url http://127.0.0.1:8000/ --image photo.jpg --concurrency 1 8 32
Prints one JSON line per level.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.error
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


def run_level(url: str, body: bytes, concurrency: int, requests: int, timeout: float) -> dict:
    latencies, statuses = [], []
    lock = threading.Lock()
    remaining = [requests]

    def client():
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            start = time.perf_counter()
            status = post(url, body, timeout)
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
            "non_200": sum(s != 200 for s in statuses)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=400, help="requests per level (default: 400)")
    parser.add_argument("--warmup", type=int, default=20, help="requests before the first level (default: 20)")
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
        run_level(args.url, body, max(args.concurrency), args.warmup, args.timeout)
    for level in args.concurrency:
        print(json.dumps(run_level(args.url, body, level, args.requests, args.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
