"""How much of the engine's throughput codetr.serve.EngineBatcher delivers when the replica's event
loop is busy with the requests themselves. Runs here (CPU, no Ray, no engine).

The engine stand-in releases the GIL for --engine-ms (as the binding's C++ call does), then holds it
for --convert-ms (building the Python results). Each of --clients coroutines sends its next request
when the last is answered and burns --request-ms of pure Python on the loop per request (Serve,
starlette, JSON), half before submitting and half after its answer, and is away --client-ms (the
network and the client, off the loop; each time drawn from 0.5-1.5x, seeded) before the next.
Prints images/s and its share of the engine's own batch throughput.

  python dev/serve_batcher_sim.py --request-ms 0 3 6
  python dev/serve_batcher_sim.py --clients 8 --client-ms 20 --wait-ms 10   # then --wait-ms 30
"""
import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from codetr.serve import EngineBatcher  # noqa: E402


def burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def simulate(request_s: float, args: argparse.Namespace) -> dict:
    def engine(items):
        time.sleep(args.engine_ms / 1e3)
        burn(args.convert_ms / 1e3)
        return items

    async def main():
        batcher = EngineBatcher(engine, args.batch, args.wait_ms / 1e3)
        left = [args.requests]
        rng = random.Random(0)

        async def client():
            while left[0] > 0:
                left[0] -= 1
                burn(request_s / 2)
                await batcher.submit(None)
                burn(request_s / 2)
                await asyncio.sleep(rng.uniform(0.5, 1.5) * args.client_ms / 1e3)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.clients)))
        return time.perf_counter() - start

    wall = asyncio.run(main())
    engine_alone = args.batch / ((args.engine_ms + args.convert_ms) / 1e3)
    return {"request_ms": request_s * 1e3, "images_per_s": round(args.requests / wall, 1),
            "engine_images_per_s": round(engine_alone, 1), "share": round(args.requests / wall / engine_alone, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--request-ms", type=float, nargs="+", default=[0.0, 3.0, 6.0])
    parser.add_argument("--engine-ms", type=float, default=58.0, help="GIL released (default: R50 batch 8 on the H200)")
    parser.add_argument("--convert-ms", type=float, default=1.0, help="GIL held after the engine (default 1)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--wait-ms", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--client-ms", type=float, default=0.0, help="a client's time away between requests")
    parser.add_argument("--requests", type=int, default=800)
    args = parser.parse_args()
    for request_ms in args.request_ms:
        print(simulate(request_ms / 1e3, args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
