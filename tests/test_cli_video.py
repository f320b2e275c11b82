"""codetr-detect on video files (OpenCV videoio, through Detector::run_stream): per-frame results equal
running the same frames as images, frame count and order are kept, the annotated video has every
frame, and a truncated file gives every decodable frame plus a clear error. The clips are generated
here, losslessly (FFV1 in Matroska), so the decoded frames are exactly the generated arrays."""
import json
import subprocess

import numpy as np
import pytest

from runtime_standin import require_opencv_cli, runtime_binary

cv2 = pytest.importorskip("cv2")
CLI = runtime_binary("codetr-detect")


@pytest.fixture(scope="module")
def video_cli():
    return require_opencv_cli()


def make_clip(path, frames=7, size=(150, 202), fps=10.0):
    # Even width: OpenCV's FFmpeg writer rounds an odd width down; FFV1 at this size is lossless.
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write FFV1 video")
    rng = np.random.default_rng(0)
    background = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = []
    for i in range(frames):
        frame = background.copy()
        cv2.rectangle(frame, (10 + 12 * i, 20 + 5 * i), (60 + 12 * i, 90 + 5 * i), (0, 255, 255), -1)
        cv2.circle(frame, (w - 30 - 9 * i, h // 2), 18, (255, 0, 80), -1)
        writer.write(frame)
        out.append(frame)
    writer.release()
    decoded = []
    capture = cv2.VideoCapture(str(path))
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(frame)
    assert len(decoded) == frames and all(np.array_equal(a, b) for a, b in zip(decoded, out)), "not lossless"
    return out


def run(args):
    proc = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, errors="replace", timeout=600)
    assert proc.returncode in (0, 1, 2), f"crashed: {proc.stderr[-2000:]}"
    return proc


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_video_frames_equal_the_same_frames_as_images(video_cli, exported_tiny_package, tmp_path):
    clip = tmp_path / "clip.mkv"
    frames = make_clip(clip)
    stills = tmp_path / "frames"
    stills.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(stills / f"{i:03d}.png"), frame)
    out = tmp_path / "vis"
    proc = run(["--model", exported_tiny_package, "--jsonl", tmp_path / "video.jsonl", "--out-dir", out, clip])
    assert proc.returncode == 0, proc.stderr
    video = records(tmp_path / "video.jsonl")
    assert [r["frame"] for r in video] == list(range(len(frames)))
    assert all(b["timestamp_ms"] > a["timestamp_ms"] for a, b in zip(video, video[1:]))
    proc = run(["--model", exported_tiny_package, "--jsonl", tmp_path / "stills.jsonl", stills])
    assert proc.returncode == 0, proc.stderr
    still = records(tmp_path / "stills.jsonl")
    assert [r["detections"] for r in video] == [r["detections"] for r in still]
    assert all((r["height"], r["width"]) == (150, 202) for r in video)

    annotated = cv2.VideoCapture(str(out / "clip.annotated.mkv"))
    count = 0
    while annotated.read()[0]:
        count += 1
    assert count == len(frames)


def test_stride_start_and_end_select_frames(video_cli, exported_tiny_package, tmp_path):
    clip = tmp_path / "clip.mkv"
    make_clip(clip, frames=9)
    proc = run(["--model", exported_tiny_package, "--jsonl", tmp_path / "r.jsonl", "--stride", 3, "--start", 1,
                "--end", 8, clip])
    assert proc.returncode == 0, proc.stderr
    assert [r["frame"] for r in records(tmp_path / "r.jsonl")] == [1, 4, 7]


def test_truncated_video_gives_the_decodable_frames_and_an_error(video_cli, exported_tiny_package, tmp_path):
    clip = tmp_path / "clip.mkv"
    make_clip(clip, frames=12)
    data = clip.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    proc = run(["--model", exported_tiny_package, "--jsonl", tmp_path / "r.jsonl", cut])
    got = records(tmp_path / "r.jsonl")
    frames = [r["frame"] for r in got if "error" not in r]
    assert frames == list(range(len(frames))) and 0 < len(frames) < 12
    assert proc.returncode == 1 and "cut.mkv" in proc.stderr and "truncated or corrupt" in proc.stderr, proc.stderr


def test_unreadable_video_is_a_clear_error(video_cli, exported_tiny_package, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    proc = run(["--model", exported_tiny_package, "--jsonl", tmp_path / "r.jsonl", bad])
    assert proc.returncode == 1 and "bad.mp4" in proc.stderr and "cannot open" in proc.stderr, proc.stderr
