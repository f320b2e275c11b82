"""codetr.serve.EngineBatcher, the replica's request batching, without Ray: an engine stand-in
records every call, so the tests see how requests were grouped (the service test in
test_serve.py runs the real Detector behind it)."""
import asyncio
import threading
import time

import pytest

from codetr.serve import EngineBatcher


class Engine:
    """Multiplies by 10 after ``seconds``; records batch sizes and the most calls in flight."""

    def __init__(self, seconds=0.0, fail_on=None):
        self.seconds, self.fail_on = seconds, fail_on
        self.batches, self.in_flight, self.most_in_flight = [], 0, 0
        self._lock = threading.Lock()

    def __call__(self, items):
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.batches.append(list(items))
        time.sleep(self.seconds)
        with self._lock:
            self.in_flight -= 1
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError(f"engine failed on {self.fail_on}")
        return [10 * x for x in items]


def test_under_load_every_engine_call_is_full():
    # 32 clients, each sending its next request as soon as the previous is answered (as
    # tools/bench_serve.py does): the 24 that wait during one call make up the next ones.
    engine = Engine(seconds=0.02)
    reported = []

    async def main():
        batcher = EngineBatcher(engine, max_batch=8, wait_s=0.005,
                                on_batch=lambda n, seconds: reported.append((n, seconds)))

        async def client(c):
            return [await batcher.submit(100 * c + k) for k in range(3)]

        return await asyncio.gather(*(client(c) for c in range(32)))

    results = asyncio.run(main())
    assert results == [[10 * (100 * c + k) for k in range(3)] for c in range(32)]
    assert [len(b) for b in engine.batches] == [8] * 12
    assert engine.most_in_flight == 1
    # Each call's size and wall time (the engine sleeps 20 ms) reach the callback.
    assert [n for n, _ in reported] == [8] * 12 and all(0.02 <= s < 1.0 for _, s in reported)
    assert sorted(x for b in engine.batches for x in b) == sorted(100 * c + k for c in range(32) for k in range(3))


def test_a_busy_event_loop_does_not_hold_up_the_next_engine_call():
    # Under load the replica's loop is busy with the requests themselves; the engine thread starts
    # the next batch when the previous call returns, not when the loop gets round to it.
    engine = Engine(seconds=0.02)
    starts = []

    def run(items):
        starts.append(time.monotonic())
        return engine(items)

    async def main():
        batcher = EngineBatcher(run, max_batch=8, wait_s=0.05)
        tasks = [asyncio.create_task(batcher.submit(x)) for x in range(16)]
        await asyncio.sleep(0)  # every submit queued its request
        time.sleep(0.3)         # the loop is blocked; the engine thread is not
        blocked_until = time.monotonic()
        return await asyncio.gather(*tasks), blocked_until

    results, blocked_until = asyncio.run(main())
    assert results == [10 * x for x in range(16)]
    assert [len(b) for b in engine.batches] == [8, 8]
    assert starts[1] < blocked_until - 0.1, "the second call waited for the event loop"


def test_an_idle_engine_waits_for_companions_at_most_wait_s():
    async def two_requests(wait_s):
        engine = Engine()
        batcher = EngineBatcher(engine, max_batch=8, wait_s=wait_s)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.02)
        second = asyncio.create_task(batcher.submit(2))
        assert await asyncio.gather(first, second) == [10, 20]
        return engine.batches

    assert asyncio.run(two_requests(0.5)) == [[1, 2]]
    assert asyncio.run(two_requests(0.0)) == [[1], [2]]


def test_a_failed_call_fails_its_requests_only():
    engine = Engine(fail_on=3)

    async def main():
        # A wait long enough that the first call takes two requests whatever the thread timing.
        batcher = EngineBatcher(engine, max_batch=2, wait_s=1.0)
        return await asyncio.gather(*(batcher.submit(x) for x in (1, 2, 3, 4, 5, 6)), return_exceptions=True)

    results = asyncio.run(main())
    assert engine.batches == [[1, 2], [3, 4], [5, 6]]
    assert results[:2] == [10, 20] and results[4:] == [50, 60]
    assert all(isinstance(r, RuntimeError) and "failed on 3" in str(r) for r in results[2:4])


def test_a_wrong_result_count_is_an_error_not_a_shifted_answer():
    async def main():
        batcher = EngineBatcher(lambda items: [0], max_batch=4, wait_s=0.05)
        return await asyncio.gather(*(batcher.submit(x) for x in range(3)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "1 results for 3 images" in str(r) for r in results)


def test_a_cancelled_request_takes_no_engine_slot():
    engine = Engine()

    async def main():
        batcher = EngineBatcher(engine, max_batch=4, wait_s=0.1)
        gone = asyncio.create_task(batcher.submit(1))
        kept = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        return await kept

    assert asyncio.run(main()) == 20
    assert engine.batches == [[2]]


@pytest.mark.parametrize("max_batch, wait_s", [(0, 0.01), (4, -1.0)])
def test_bad_settings_are_refused(max_batch, wait_s):
    with pytest.raises(ValueError, match="max_batch must be >= 1 and wait_s >= 0"):
        EngineBatcher(lambda items: items, max_batch, wait_s)


def test_a_failing_batch_callback_fails_that_batch_only():
    sizes = []

    def on_batch(n, seconds):
        assert seconds >= 0
        sizes.append(n)
        if len(sizes) == 1:
            raise RuntimeError("metrics broke")

    async def main():
        batcher = EngineBatcher(Engine(), max_batch=2, wait_s=0.2, on_batch=on_batch)
        first = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        return first, await batcher.submit(3)

    first, later = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "metrics broke" in str(r) for r in first)
    assert later == 30 and sizes == [2, 1]
