"""Throughput of an exported model through the runtime, from Python (codetr.Detector):

  images  detect() on a batch of copies of one image: median wall time per call, images/s, and the
          stage split (preprocess / engine / postprocess, from calls that synchronise per stage);
          compare with `codetr-detect --benchmark` on the same model and image for the binding's cost.
  video   a video through Detector.detect_stream: OpenCV decoding (cv2.VideoCapture) in the source
          thread, annotated encoding (cv2.VideoWriter) in the sink thread, the engine in between;
          frames/s end to end next to the engine's own batch throughput. Without --video a synthetic
          clip (moving shapes) of --video-size is written first.

  python tools/bench_runtime.py --model engines/swin_l --mode images --image photo.jpg --iters 100
  python tools/bench_runtime.py --model engines/swin_l --mode video --video-size 1920x1080 --frames 400
Prints one JSON line per measurement.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import codetr  # noqa: E402


def synthetic_video(path: Path, width: int, height: int, frames: int, fps: float = 30.0) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"cannot write {path}")
    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    for i in range(frames):
        frame = background.copy()
        for k in range(6):
            x = int((i * (3 + k) + k * width / 6) % (width - 120))
            y = int((k * height / 7 + 40 * np.sin(i / 15 + k)) % (height - 120))
            cv2.rectangle(frame, (x, y), (x + 100, y + 80), (40 * k % 255, 200, 255 - 30 * k), -1)
        writer.write(frame)
    writer.release()


def bench_images(det: codetr.Detector, image: np.ndarray, batch: int, iters: int) -> dict:
    images = [image] * batch
    for _ in range(max(3, iters // 10)):
        det.detect(images)
    wall, stages = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        det.detect(images)
        wall.append((time.perf_counter() - t0) * 1e3)
        stages.append(det.detect_timed(images)[1])
    median = statistics.median(wall)
    return {"mode": "images", "batch": batch, "iters": iters, "end_to_end_ms": median,
            "images_per_s": 1e3 * batch / median,
            **{k: statistics.median(s[k] for s in stages) for k in ("preprocess_ms", "engine_ms", "postprocess_ms")}}


def codec_rates(video: Path, out: Path) -> dict:
    """Decoding alone and encoding alone (frames/s): the ceilings of the pipeline's two ends."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    frames = []
    t0 = time.perf_counter()
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    decode = len(frames) / (time.perf_counter() - t0)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
    t0 = time.perf_counter()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return {"decode_fps": decode, "encode_fps": len(frames) / (time.perf_counter() - t0)}


def bench_video(det: codetr.Detector, video: Path, out: Path, batch: int, draw_thr: float = 0.3) -> dict:
    import cv2

    capture = cv2.VideoCapture(str(video))
    fps = capture.get(cv2.CAP_PROP_FPS)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    frames = {}

    def source():
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            frames[index] = frame
            yield frame
            index += 1

    def sink(index, timestamp, dets, error):
        frame = frames.pop(index)
        if dets is not None:
            for x1, y1, x2, y2 in dets.boxes[dets.scores >= draw_thr].astype(int).tolist():
                cv2.rectangle(frame, (x1, y1), (x2, y2), (0, 255, 0), 2)
        writer.write(frame)

    _, stats = det.detect_stream(source(), on_result=sink, batch=batch)
    writer.release()
    return {"mode": "video", "batch": batch, "frames": stats["frames"], "failed": stats["failed"],
            "seconds": stats["seconds"], "frames_per_s": stats["frames"] / stats["seconds"],
            "video": f"{size[0]}x{size[1]}"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--mode", choices=["images", "video"], default="images")
    p.add_argument("--image", default=str(Path(__file__).resolve().parents[1] / "python/codetr/assets/demo.jpg"))
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--batch", type=int, default=0, help="images per call (default: the engine batch)")
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--video")
    p.add_argument("--video-size", default="1152x768")
    p.add_argument("--frames", type=int, default=300)
    args = p.parse_args()

    det = codetr.Detector(args.model, cuda_graphs=args.cuda_graphs)
    batch = args.batch or det.max_batch
    if args.mode == "images":
        import cv2

        image = cv2.imread(args.image)
        print(json.dumps({"model": args.model, **bench_images(det, image, batch, args.iters)}))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(args.video) if args.video else Path(tmp) / "clip.mp4"
        if not args.video:
            w, h = (int(v) for v in args.video_size.split("x"))
            synthetic_video(video, w, h, args.frames)
        # The engine alone at the same batch, for the pipeline's share of it.
        import cv2

        capture = cv2.VideoCapture(str(video))
        ok, frame = capture.read()
        engine = bench_images(det, frame, batch, 30)
        result = bench_video(det, video, Path(tmp) / "annotated.mp4", batch)
        result.update(codec_rates(video, Path(tmp) / "reencoded.mp4"))
        result["engine_images_per_s"] = 1e3 * batch / engine["engine_ms"]
        result["share_of_engine"] = result["frames_per_s"] / result["engine_images_per_s"]
        print(json.dumps({"model": args.model, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
