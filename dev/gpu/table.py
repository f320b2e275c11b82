"""Helper of dev/gpu/table.sh (GPU machine, or a CPU dry run):

  bench   one `codetr-detect --benchmark` run while its peak memory is sampled; appends one JSON
          row (engine / end-to-end medians, images/s, peak memory) to --rows.
  render  the rows, the FLOPs per image (tools/bench_model.py --flops-only files) and the export
          times -> one markdown table and one JSON file.
  stages  the rows that tools/bench_model.py --stages --flops printed -> a markdown table.

Peak memory: on CUDA, the benchmark process's GPU memory as NVML reports it (pynvml, else
nvidia-smi), polled every 20 ms: the CUDA context, the engine's weights (AOTInductor allocates
them outside torch's caching allocator), torch's caching-allocator pool and the CUDA-graph pool
together; where NVML lists no per-process figure, the device's used memory minus its reading just
before the process started. On CPU, the process's peak resident set (getrusage).
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path


class GpuMemorySampler:
    """Highest GPU memory of one process (and of the device, above its baseline) while it runs."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.process_bytes = 0
        self.device_bytes = 0
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._used = lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used
            self._per_process = lambda: {p.pid: p.usedGpuMemory or 0
                                         for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
            self.source = "nvml"
        except Exception:  # no pynvml (or no NVML through it): nvidia-smi, slower but the same numbers
            self._used = lambda: 2**20 * int(_smi("--query-gpu=memory.used")[0])
            self._per_process = lambda: {int(p): 2**20 * int(m) for p, m in
                                         (line.split(",") for line in _smi("--query-compute-apps=pid,used_memory"))}
            self.source = "nvidia-smi"
        self.baseline = self._used()
        self._stop = threading.Event()

    def start(self, pid: int) -> None:
        self._thread = threading.Thread(target=self._run, args=(pid,), daemon=True)
        self._thread.start()

    def _run(self, pid: int) -> None:
        while not self._stop.is_set():
            try:
                self.device_bytes = max(self.device_bytes, self._used() - self.baseline)
                self.process_bytes = max(self.process_bytes, self._per_process().get(pid, 0))
            except Exception:  # a failed poll loses one sample, not the run
                pass
            time.sleep(self.interval)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        if self.process_bytes:
            return {"peak_mem_gib": round(self.process_bytes / 2**30, 2), "mem_method": f"{self.source} process"}
        return {"peak_mem_gib": round(self.device_bytes / 2**30, 2), "mem_method": f"{self.source} device delta"}


def _smi(query: str) -> list:
    out = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         timeout=10).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def parse_benchmark(text: str) -> dict:
    """Medians (and engine p90) of codetr-detect --benchmark's report."""
    row = {}
    for stage, key in (("engine", "engine"), ("end-to-end", "e2e"), ("preprocess", "preprocess"),
                       ("postprocess", "postprocess")):
        m = re.search(rf"^{stage}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", text, re.M)
        if m:
            row[f"{key}_ms"] = float(m.group(1))
            row[f"{key}_p90_ms"] = float(m.group(2))
    m = re.search(r"^batch (\d+), (\d+) runs: ([\d.]+) images/s", text, re.M)
    if m:
        row.update(batch_run=int(m.group(1)), runs=int(m.group(2)), images_per_s=float(m.group(3)))
    return row


def cmd_bench(args) -> int:
    cmd = [args.detect, "--model", args.model, "--benchmark", str(args.iters), "--cuda-graphs", args.cuda_graphs,
           args.image]
    row = {**json.loads(args.row), "cuda_graphs": args.cuda_graphs, "iters": args.iters,
           "image": Path(args.image).name, "command": " ".join(["codetr-detect"] + cmd[1:])}
    sampler = GpuMemorySampler() if args.device == "cuda" else None
    t0 = time.perf_counter()
    with open(args.log, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if sampler:
            sampler.start(proc.pid)
        try:
            text, _ = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate()
            text += f"\n[table.py] killed after {args.timeout} s\n"
        log.write(text)
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    row["rc"] = proc.returncode
    if sampler:
        row.update(sampler.stop())
    else:
        row.update(peak_mem_gib=round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
                   mem_method="host peak RSS")
    row.update(parse_benchmark(text))
    if proc.returncode != 0 or "engine_ms" not in row:
        row["error"] = (text.strip().splitlines() or ["no output"])[-1][:300]
    with open(args.rows, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return 0 if "error" not in row else 1


def _read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _fmt(value, digits=2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def cmd_render(args) -> int:
    # The last row of each run (engine, CUDA graphs, image): a run retried after an error replaces it.
    rows = list({(r["name"], r["cuda_graphs"], r["image"]): r for r in _read_jsonl(Path(args.rows))}.values())
    meta = json.loads(Path(args.meta).read_text()) if args.meta and Path(args.meta).is_file() else {}
    # GFLOP per image by (preset, W, H), from batch-1 counts (FLOPs grow linearly with the batch).
    gflops = {}
    for path in args.flops:
        doc = json.loads(Path(path).read_text())
        for r in doc["runs"]:
            gflops[(doc["preset"], *r["size"])] = r["gflops"] / r["batch"]
    exports = {}
    if args.exports and Path(args.exports).is_file():
        for line in Path(args.exports).read_text().splitlines():
            name, rc, seconds = line.split()[:3]
            exports[name] = {"rc": int(rc.split("=")[1]), "export_s": int(seconds)}
    for r in rows:
        g = gflops.get((r["preset"], *r["size"]))
        r["gflops_per_image"] = g
        if g is not None and r.get("engine_ms"):
            r["engine_tflops_per_s"] = round(g * r["batch"] / r["engine_ms"], 1)
        r.update(exports.get(r["name"], {}))

    lines = [f"## {meta.get('gpu', '?')} (torch {meta.get('torch', '?')}, driver {meta.get('driver', '?')}, "
             f"{meta.get('date', '?')})", "",
             f"Command: {meta.get('command', '?')}. {meta.get('engines', '')}", "",
             "| model | precision | size (WxH) | batch | engine ms | engine ms / image | end-to-end ms | images/s | "
             "GFLOP / image | TFLOP/s (engine) | peak memory GiB | export s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    table = [r for r in rows if r.get("kind") == "static" and r.get("cuda_graphs") == args.graphs and
             r.get("image") == meta.get("image")]
    for r in table:
        if "error" in r:
            lines.append(f"| {r['model']} | {r.get('dtype', '')} | {r['size'][0]}x{r['size'][1]} | {r['batch']} | "
                         f"failed: {r['error']} | | | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r.get('dtype', '')} | {r['size'][0]}x{r['size'][1]} | {r['batch']} | "
                     f"{_fmt(r['engine_ms'])} | "
                     f"{_fmt(r['engine_ms'] / r['batch'])} | {_fmt(r.get('e2e_ms'))} | "
                     f"{_fmt(r.get('images_per_s'), 1)} | {_fmt(r['gflops_per_image'], 0)} | "
                     f"{_fmt(r.get('engine_tflops_per_s'), 0)} | {_fmt(r.get('peak_mem_gib'))} | "
                     f"{r.get('export_s', '')} |")
    pair = [r for r in rows if r.get("pair")]
    if pair:
        static_off = next((r for r in pair if r["kind"] == "static" and r["cuda_graphs"] == "off"), None)
        lines += ["", f"Dynamic vs static engine, batch 1, on {pair[0]['image']} (both run it at "
                  f"{pair[0]['size'][0]}x{pair[0]['size'][1]}: {meta.get('pair_note', '')}):", "",
                  "| model | precision | engine | CUDA graphs | engine ms | end-to-end ms | images/s | peak memory GiB | "
                  "engine ms vs static, graphs off | export s |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in pair:
            ratio = (f"{100 * (r['engine_ms'] / static_off['engine_ms'] - 1):+.1f} %"
                     if static_off and static_off.get("engine_ms") and r.get("engine_ms") else "")
            lines.append(f"| {r['model']} | {r.get('dtype', '')} | {r['kind']} | {r['cuda_graphs']} | "
                         f"{_fmt(r.get('engine_ms'))} | "
                         f"{_fmt(r.get('e2e_ms'))} | {_fmt(r.get('images_per_s'), 1)} | "
                         f"{_fmt(r.get('peak_mem_gib'))} | {ratio} | {r.get('export_s', '')} |")
    missing = [name for name, e in exports.items() if e["rc"] != 0]
    if missing:
        lines += ["", "Exports that failed: " + ", ".join(missing)]
    mem = sorted({r["mem_method"] for r in rows if "mem_method" in r})
    lines += ["", f"Peak memory: {', '.join(mem) or '-'} (dev/gpu/table.py says what each includes)."]
    Path(args.md).write_text("\n".join(lines) + "\n")
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows, "exports": exports,
                                           "gflops_per_image": [[*k, v] for k, v in gflops.items()]}, indent=1))
    print("\n".join(lines))
    return 0


def cmd_stages(args) -> int:
    from_logs = []
    for path in args.logs:
        header = next((l for l in Path(path).read_text().splitlines() if l.startswith("# ")), "# ?")
        preset = header[2:].split(" on ")[0]
        for line in Path(path).read_text().splitlines():
            if line.startswith("{") and '"stages_ms"' in line:
                from_logs.append({"preset": preset, **json.loads(line)})
    stages = ("backbone", "neck", "encoder", "decoder", "head", "other", "total")
    lines = ["Per stage: ms (median) / GFLOP per call / achieved TFLOP/s; " + args.note, "",
             "| model | mode | size | batch | " + " | ".join(stages) + " |",
             "|---|---|---|---:|" + "---:|" * len(stages)]
    for r in from_logs:
        cells = []
        for s in stages:
            ms, g = r["stages_ms"].get(s), r.get("stages_gflops", {}).get(s)
            rate = r.get("stages_tflops_per_s", {}).get(s)
            cells.append(f"{_fmt(ms)} / {_fmt(g, 1)} / {_fmt(rate, 0) or '-'}")
        lines.append(f"| {r['preset']} | {r['mode']} | {r['size'][0]}x{r['size'][1]} | {r['batch']} | "
                     + " | ".join(cells) + " |")
    Path(args.md).write_text("\n".join(lines) + "\n")
    Path(args.json).write_text(json.dumps(from_logs, indent=1))
    print("\n".join(lines))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--detect", required=True)
    b.add_argument("--model", required=True)
    b.add_argument("--image", required=True)
    b.add_argument("--iters", type=int, default=100)
    b.add_argument("--cuda-graphs", choices=("on", "off"), default="on")
    b.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    b.add_argument("--row", default="{}", help="JSON object of fields to record with the row")
    b.add_argument("--rows", required=True, help="JSON Lines file the row is appended to")
    b.add_argument("--log", required=True)
    b.add_argument("--timeout", type=float, default=300)
    r = sub.add_parser("render")
    r.add_argument("--rows", required=True)
    r.add_argument("--flops", nargs="*", default=[])
    r.add_argument("--exports")
    r.add_argument("--meta")
    r.add_argument("--graphs", default="on", help="the CUDA-graphs setting of the main table's rows")
    r.add_argument("--md", required=True)
    r.add_argument("--json", required=True)
    s = sub.add_parser("stages")
    s.add_argument("logs", nargs="+")
    s.add_argument("--note", default="")
    s.add_argument("--md", required=True)
    s.add_argument("--json", required=True)
    args = p.parse_args()
    return {"bench": cmd_bench, "render": cmd_render, "stages": cmd_stages}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
