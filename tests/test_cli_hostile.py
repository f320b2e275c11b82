"""codetr-detect under hostile input: a corpus of bad files, names, folders and options generated in
tmp_path, replayed against the real CLI and the tiny exported model.

Every case must end with a clear error or a correct result: no signal exit (crash), no hang (each
run has a timeout), and no lost result: the good inputs' detections in the output equal a run
without the bad inputs."""
import json
import os
import shutil
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from runtime_standin import REPO, require_opencv_cli, runtime_binary

CLI = runtime_binary("codetr-detect")
DEMO = REPO / "python" / "codetr" / "assets" / "demo.jpg"
SHAPES = REPO / "tests" / "data" / "shapes_517x333.jpg"
TIMEOUT = 300


@pytest.fixture(scope="module")
def opencv_cli():
    return require_opencv_cli()


def run(args, **kw):
    # errors="replace": stderr names files that are not valid UTF-8.
    proc = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, errors="replace",
                          timeout=TIMEOUT, **kw)
    assert proc.returncode in (0, 1, 2), f"crashed (signal {-proc.returncode}): {proc.stderr[-2000:]}"
    return proc


def records(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def make_corpus(root: Path):
    """Good images plus every bad kind the sweep found; returns (folder, names of the good ones)."""
    import cv2

    d = root / "corpus"
    d.mkdir()
    shutil.copy(DEMO, d / "a_good.jpg")
    shutil.copy(SHAPES, d / "b_good.jpg")
    cv2.imwrite(str(d / "c_good.png"), np.random.default_rng(0).integers(0, 256, (97, 131, 3), dtype=np.uint8))
    (d / "d_truncated.jpg").write_bytes(DEMO.read_bytes()[:4000])
    (d / "e_huge_header.png").write_bytes(png_claiming(60000, 60000))
    (d / "f_empty.jpg").write_bytes(b"")
    (d / "g_random.jpg").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (d / "h_text.png").write_text("not an image")
    png = (d / "c_good.png").read_bytes()
    (d / "i_truncated.png").write_bytes(png[: len(png) // 2])
    os.mkfifo(d / "j_fifo.jpg")
    os.symlink(d / "k_loop.jpg", d / "k_loop.jpg")  # a symlink to itself: ELOOP
    cv2.imwrite(str(d / "l_thin.png"), np.zeros((1, 4000, 3), np.uint8))  # resizes to nothing
    bad_name = os.fsencode(str(d)) + b"/m_\xff\xfe_name.jpg"  # not UTF-8
    shutil.copy(DEMO, bad_name)
    return d, {"a_good.jpg", "b_good.jpg", "c_good.png", b"m_\xff\xfe_name.jpg"}


def detections_by_file(path: Path):
    out = {}
    for r in records(path):
        if "error" not in r:
            out[os.path.basename(r["file"])] = r["detections"]
    return out


def test_corpus_errors_are_named_and_good_results_kept(opencv_cli, exported_tiny_package, tmp_path):
    folder, good = make_corpus(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    proc = run(["--model", exported_tiny_package, "--batch", "3", "--jsonl", out / "all.jsonl", "--json",
                out / "all.json", folder])
    assert proc.returncode == 1, proc.stderr
    for name, reason in [("d_truncated.jpg", "truncated JPEG"), ("e_huge_header.png", "60000x60000"),
                         ("f_empty.jpg", "empty file"), ("g_random.jpg", "cannot decode"),
                         ("h_text.png", "cannot decode"), ("i_truncated.png", "cannot decode"),
                         ("k_loop.jpg", "Too many levels of symbolic links"),
                         ("l_thin.png", "too thin")]:
        assert any(name in line and reason in line for line in proc.stderr.splitlines()), (name, proc.stderr)
    # The same good images alone, in a clean folder.
    clean = tmp_path / "clean"
    clean.mkdir()
    for name in ("a_good.jpg", "b_good.jpg", "c_good.png"):
        shutil.copy(folder / name, clean / name)
    shutil.copy(DEMO, os.fsencode(str(clean)) + b"/m_\xff\xfe_name.jpg")
    ref = run(["--model", exported_tiny_package, "--jsonl", out / "clean.jsonl", clean])
    assert ref.returncode == 0, ref.stderr
    got, want = detections_by_file(out / "all.jsonl"), detections_by_file(out / "clean.jsonl")
    assert len(want) == 4 and got == want
    # Failed images have records too (with the error); the looping symlink fails the listing and the
    # FIFO is not a regular file, so neither is an image of the folder.
    errors = [r for r in records(out / "all.jsonl") if "error" in r]
    assert len(errors) == 7 and not any("detections" in r for r in errors)
    assert "j_fifo" not in (out / "all.jsonl").read_text()
    # Named explicitly, the FIFO is an error, not a hang.
    proc = run(["--model", exported_tiny_package, folder / "j_fifo.jpg", folder / "a_good.jpg"])
    assert proc.returncode == 1 and "j_fifo.jpg: not a regular file" in proc.stderr
    coco = json.loads((out / "all.json").read_text())  # valid JSON despite the non-UTF-8 name
    assert len({d["image_id"] for d in coco}) == 4


def test_sigterm_keeps_every_finished_image_and_leaves_no_temp_files(opencv_cli, exported_tiny_package, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        shutil.copy(DEMO, folder / f"img{i:02d}.jpg")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = subprocess.Popen([str(CLI), "--model", str(exported_tiny_package), "--json", str(out / "r.json"),
                             "--jsonl", str(out / "r.jsonl"), str(folder)], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and (not (out / "r.jsonl").exists() or len(records(out / "r.jsonl")) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 1, stderr
    assert "interrupted" in stderr
    finished = {r["image_id"] for r in records(out / "r.jsonl")}
    assert 2 <= len(finished) < 40
    coco = json.loads((out / "r.json").read_text())
    assert {d["image_id"] for d in coco} == finished
    assert list(tmp.iterdir()) == []
    assert not list(out.glob("*.tmp-*"))


def test_image_ids_are_unique(opencv_cli, exported_tiny_package, tmp_path):
    for sub, name in [("d1", "1.jpg"), ("d2", "1.jpg"), ("d1", "b.jpg")]:
        (tmp_path / sub).mkdir(exist_ok=True)
        shutil.copy(SHAPES, tmp_path / sub / name)
    proc = run(["--model", exported_tiny_package, "--jsonl", tmp_path / "r.jsonl", tmp_path / "d1", tmp_path / "d2"])
    assert proc.returncode == 0, proc.stderr
    ids = [r["image_id"] for r in records(tmp_path / "r.jsonl")]
    assert sorted(ids) == [0, 1, 2]
    # COCO's numeric names keep their numbers when they are distinct.
    coco = tmp_path / "coco"
    coco.mkdir()
    for n in (139, 285):
        shutil.copy(SHAPES, coco / f"{n:012d}.jpg")
    run(["--model", exported_tiny_package, "--jsonl", tmp_path / "c.jsonl", coco])
    assert sorted(r["image_id"] for r in records(tmp_path / "c.jsonl")) == [139, 285]


def test_outputs_are_checked_before_any_work(opencv_cli, exported_tiny_package, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SHAPES, folder / "x.jpg")
    before = (folder / "x.jpg").read_bytes()
    proc = run(["--model", exported_tiny_package, "--out-dir", folder, folder])
    assert proc.returncode == 2 and "holds the input" in proc.stderr
    assert (folder / "x.jpg").read_bytes() == before
    proc = run(["--model", exported_tiny_package, "--jsonl", tmp_path / "r.jsonl", "--json",
                tmp_path / "missing" / "r.json", folder])
    assert proc.returncode == 2 and "--json" in proc.stderr and "cannot write" in proc.stderr
    assert not (tmp_path / "r.jsonl").exists() or (tmp_path / "r.jsonl").read_text() == ""
    proc = run(["--model", exported_tiny_package, "--max-pixels", "0", folder])
    assert proc.returncode == 2 and "--max-pixels expects an integer >= 1" in proc.stderr


def test_fifo_model_json_is_refused_not_read(exported_tiny_package, tmp_path):
    if not CLI.exists():
        pytest.skip(f"{CLI} is not built")
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(exported_tiny_package / "model.pt2", model / "model.pt2")
    os.mkfifo(model / "model.json")
    proc = run(["--model", model, SHAPES])
    assert proc.returncode == 2 and "is not a regular file" in proc.stderr


def test_an_image_just_under_the_pixel_limit_stays_under_2_gb(opencv_cli, exported_tiny_package, tmp_path):
    # The largest image the default --max-pixels (100 million) lets through: decoding it and resizing
    # it to the model's size must not need more than 2 GB at peak (no full-size float or int32 copy).
    import cv2

    side = 9984
    assert side * side <= 100_000_000
    ramp = np.broadcast_to(np.arange(side, dtype=np.uint8)[None, :, None], (side, side, 3))
    cv2.imwrite(str(tmp_path / "huge.png"), np.ascontiguousarray(ramp))
    del ramp
    # The peak RSS of the CLI alone: a fresh parent whose only child is the CLI.
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
             "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run(["python3", "-c", probe, str(CLI), "--model", str(exported_tiny_package), "--jsonl",
                           str(tmp_path / "r.jsonl"), str(tmp_path / "huge.png")], capture_output=True, text=True,
                          timeout=TIMEOUT)
    returncode, peak_kib = map(int, proc.stdout.split())
    assert returncode == 0, proc.stderr
    [record] = records(tmp_path / "r.jsonl")
    assert (record["height"], record["width"]) == (side, side) and "error" not in record
    assert peak_kib < 2 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
