"""Minimal use of codetr from Python: run an exported model directory on one image.

    python examples/python/detect.py MODEL_DIR IMAGE

The Detector is the C++ runtime (libcodetr) through its binding: the same preprocessing, engine and
postprocessing as codetr-detect and the C++ example (examples/minimal).
"""
import sys

import cv2

import codetr


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: detect.py MODEL_DIR IMAGE", file=sys.stderr)
        return 2
    model_dir, path = sys.argv[1], sys.argv[2]
    image = cv2.imread(path)  # BGR uint8 HxWx3, the order codetr expects by default
    if image is None:
        print(f"cannot read {path}", file=sys.stderr)
        return 1
    detector = codetr.Detector(model_dir)
    result = detector.detect(image)
    print(f"{len(result)} detections")
    for box, score, name in list(zip(result.boxes, result.scores, result.class_names))[:5]:
        x1, y1, x2, y2 = (float(v) for v in box)
        print(f"{name} {score:.3f} [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
