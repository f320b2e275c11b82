"""Detector.detect_stream / codetr::Detector::run_stream (the decode -> detect -> output pipeline)
against plain detect() calls on the same frames: every frame delivered once, in order, with the
same detections; a frame that fails carries its own error and the others go on; a source that
breaks ends the stream after the frames read before it; memory stays bounded (the source is not
drained ahead of the pipeline)."""
import numpy as np
import pytest

import codetr


@pytest.fixture(scope="module")
def detector(exported_tiny_package):
    return codetr.Detector(exported_tiny_package)


def frames_of(count, seed=0, size=(120, 170)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


def test_stream_equals_detect_in_order(detector):
    frames = frames_of(7)
    results, stats = detector.detect_stream(frames, batch=3, queue_depth=2)
    assert stats["frames"] == 7 and stats["failed"] == 0
    assert [r[0] for r in results] == list(range(7))
    reference = detector.detect(frames)
    for (_, _, dets, error), ref in zip(results, reference):
        assert error is None
        np.testing.assert_array_equal(dets.boxes, ref.boxes)
        np.testing.assert_array_equal(dets.scores, ref.scores)
        np.testing.assert_array_equal(dets.labels, ref.labels)


def test_stream_keeps_source_indices_and_timestamps(detector):
    frames = frames_of(3, seed=1)
    items = [(10 + 5 * i, 40.0 * i, f) for i, f in enumerate(frames)]
    results, _ = detector.detect_stream(items)
    assert [(r[0], r[1]) for r in results] == [(10, 0.0), (15, 40.0), (20, 80.0)]


def test_bad_frame_fails_alone(detector):
    frames = frames_of(5, seed=2)
    frames.insert(2, np.zeros((1, 4000, 3), np.uint8))  # resizes to nothing
    results, stats = detector.detect_stream(frames, batch=4)
    assert stats == {"frames": 6, "failed": 1, "seconds": pytest.approx(stats["seconds"])}
    assert results[2][2] is None and "too thin" in results[2][3]
    good = [r for i, r in enumerate(results) if i != 2]
    for (_, _, dets, error), ref in zip(good, detector.detect([f for i, f in enumerate(frames) if i != 2])):
        assert error is None
        np.testing.assert_array_equal(dets.boxes, ref.boxes)


def test_source_error_delivers_earlier_frames_then_raises(detector):
    frames = frames_of(4, seed=3)
    delivered = []

    def source():
        yield from frames[:3]
        raise RuntimeError("decoder broke at frame 3")

    with pytest.raises(RuntimeError, match="decoder broke"):
        detector.detect_stream(source(), on_result=lambda i, t, d, e: delivered.append(i))
    assert delivered == [0, 1, 2]


def test_source_is_not_read_far_ahead(detector):
    """Bounded queues: while the sink holds the first frame, the source can run ahead by at most
    the queues' capacity, not to the end of the stream."""
    frames = frames_of(40, seed=4)
    read = []
    ahead = []

    def source():
        for i, f in enumerate(frames):
            read.append(i)
            yield f

    def on_result(index, timestamp, dets, error):
        if index == 0:
            import time
            time.sleep(0.5)  # the pipeline backs up behind a slow sink
            ahead.append(len(read))

    detector.detect_stream(source(), on_result=on_result, batch=1, queue_depth=2)
    assert len(read) == 40
    assert ahead[0] <= 1 + 2 + 2 + 2  # in the sink + two queues of 2 + the frames in flight
