"""Full-model benchmark of Co-DINO in PyTorch (eager / torch.compile), with per-stage times,
FLOPs, peak memory and a reduced-precision vs fp32 comparison.

The AOTInductor engine is timed by the C++ runtime (`codetr-detect --benchmark`); this script
times what it is compared against, in the same session. Method (BENCHMARKS.md): CUDA events around
each call, warm-up first, median of many calls, inputs rotated among several random images
(--device cpu: wall-clock timers instead, for dry runs).

Stages (--stages; --flops adds their FLOPs and achieved TFLOP/s): backbone, neck, encoder, decoder
(with its per-layer box refinement), head (the rest of the query head: positional encodings,
proposals from the encoder output and their top-k, the final class/box branches) and other (the
rest of the call: top-k over the final scores, box conversion). FLOPs are counted on the meta
device (--flops-only needs no GPU).

Example (on the GPU machine):
  python tools/bench_model.py --preset swin_l --size 1152x768 --modes eager_fp32,eager_fp16,compile_fp16 \
      --stages --flops --precision --json $OUT/bench_swin_l.json
  python tools/bench_model.py --preset r50 --size 1152x768,1920x1280 --flops-only
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from codetr.models import build_model, set_cuda_fusions  # noqa: E402
from codetr.nn import MultiScaleDeformableAttention  # noqa: E402
from codetr.precision import compare_detections  # noqa: E402

SHORT_PRESETS = {
    "r50": "co_dino_5scale_r50_8xb2_1x_coco",
    "swin_l": "co_dino_5scale_swin_l_16xb1_1x_coco",
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class HostEvent:
    """torch.cuda.Event's timing interface on the host clock (CPU runs, where calls are synchronous)."""

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3

    def synchronize(self):
        pass


def new_event(device):
    return torch.cuda.Event(enable_timing=True) if device.type == "cuda" else HostEvent()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_calls(fn, inputs, warmup, iters):
    """Median / p90 milliseconds of fn(x) over `iters` calls, inputs rotated, CUDA events."""
    device = inputs[0].device
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    synchronize(device)
    times = []
    for i in range(iters):
        start, end = new_event(device), new_event(device)
        start.record()
        fn(inputs[i % len(inputs)])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "p90_ms": percentile(times, 90),
            "min_ms": min(times), "n": iters}


# The modules whose calls bound the stages (each runs once per model call); split_stages derives
# the stages from them (module docstring).
STAGE_MODULES = {"backbone": "backbone", "neck": "neck", "query_head": "query_head",
                 "encoder": "query_head.transformer.encoder", "decoder": "query_head.transformer.decoder"}
STAGES = ("backbone", "neck", "encoder", "decoder", "head", "other")


def split_stages(per_module):
    """Stage values (ms or FLOPs) from the values of STAGE_MODULES and of the whole call ("total")."""
    m = per_module
    return {"backbone": m["backbone"], "neck": m["neck"], "encoder": m["encoder"], "decoder": m["decoder"],
            "head": m["query_head"] - m["encoder"] - m["decoder"],
            "other": m["total"] - m["backbone"] - m["neck"] - m["query_head"], "total": m["total"]}


def time_stages(model, inputs, warmup, iters):
    """Per-stage median ms (eager only): events recorded by forward hooks at the boundaries of
    STAGE_MODULES, the stages split per call, then the median of each over the calls."""
    device = inputs[0].device
    events = {}

    def pre(name):
        def hook(module, args):
            ev = new_event(device)
            ev.record()
            events[name] = [ev, None]
        return hook

    def post(name):
        def hook(module, args, output):
            ev = new_event(device)
            ev.record()
            events[name][1] = ev
        return hook

    handles = []
    for name, path in STAGE_MODULES.items():
        module = model.get_submodule(path)
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name)))
    try:
        for i in range(warmup):
            model(inputs[i % len(inputs)])
        synchronize(device)
        calls = []
        for i in range(iters):
            events.clear()
            start, end = new_event(device), new_event(device)
            start.record()
            model(inputs[i % len(inputs)])
            end.record()
            end.synchronize()
            per_module = {name: a.elapsed_time(b) for name, (a, b) in events.items()}
            per_module["total"] = start.elapsed_time(end)
            calls.append(split_stages(per_module))
    finally:
        for h in handles:
            h.remove()
    return {name: statistics.median(c[name] for c in calls) for name in calls[0]}


# Kernel name patterns, first match wins: where the GPU time of a compiled model goes, without
# module boundaries (Inductor fuses across them).
# Triton before sort/top-k: Inductor names fused kernels after their ops (e.g. ..._index_select_...).
KERNEL_CATEGORIES = [
    ("msda", ("ms_deform", "msda")),
    ("attention (fused)", ("flash", "fmha", "attention", "efficient")),
    ("triton (fused pointwise / reduction)", ("triton",)),
    ("gemm", ("gemm", "xmma", "cutlass", "nvjet", "cublas", "sm90_", "matmul")),
    ("convolution", ("conv", "implicit", "cudnn", "winograd")),
    ("sort / top-k / scan", ("sort", "topk", "radix", "scan", "select")),
    ("memcpy / memset", ("memcpy", "memset")),
]


def profile_kernels(fn, inputs, calls=10, top=25):
    """Per-call GPU time by kernel category and the `top` kernels (ms per call)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            fn(inputs[i % len(inputs)])
        torch.cuda.synchronize()
    per_kernel = {}
    for event in prof.events():  # GPU activity only: CPU ranges would count their kernels twice
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[event.name] = per_kernel.get(event.name, 0.0) + event.time_range.elapsed_us() / 1e3 / calls
    kernels = list(per_kernel.items())
    categories = {}
    for name, ms in kernels:
        lower = name.lower()
        category = next((c for c, keys in KERNEL_CATEGORIES if any(k in lower for k in keys)), "other")
        categories[category] = categories.get(category, 0.0) + ms
    kernels.sort(key=lambda k: -k[1])
    print(f"  GPU ms per call by category (sum {sum(categories.values()):.2f}):", flush=True)
    for category, ms in sorted(categories.items(), key=lambda c: -c[1]):
        print(f"    {ms:8.3f}  {category}")
    print(f"  top {top} kernels (ms per call):")
    for name, ms in kernels[:top]:
        print(f"    {ms:8.3f}  {name[:110]}")
    return {"categories_ms": {k: round(v, 3) for k, v in categories.items()},
            "top_kernels_ms": [[name[:200], round(ms, 4)] for name, ms in kernels[:top]]}


def count_flops(preset, batch, height, width):
    """FLOPs of one call on a (batch, 3, height, width) input, in total and per stage: matmuls/convs
    from torch's FlopCounterMode plus the deformable sampling counted by hand (per sample: 4 corners
    x D multiply-adds + the weight, x2 FLOPs). Counted on the meta device, in fp32, without the
    CUDA-only fused paths (FlopCounterMode cannot see inside those ops): FLOPs depend on neither
    the dtype, the weights nor the device. Returns {"total", "msda", "stages": {stage: FLOPs}}."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(preset, device="meta")
    names = {module: name for name, module in model.named_modules()}
    msda_flops = {}

    def hook(module, args, output):
        B, Q = output.shape[:2]
        D = module.embed_dims // module.num_heads
        flops = B * Q * module.num_heads * module.num_levels * module.num_points * (4 * D + D) * 2
        msda_flops[names[module]] = msda_flops.get(names[module], 0) + flops

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, MultiScaleDeformableAttention)]
    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(torch.empty(batch, 3, height, width, device="meta"))
    finally:
        for h in handles:
            h.remove()
    # FlopCounterMode names modules by their path under the root's class name.
    counts = counter.get_flop_counts()
    root = type(model).__name__

    def flops_under(path):
        return (sum(counts.get(f"{root}.{path}", {}).values())
                + sum(v for name, v in msda_flops.items() if name.startswith(path + ".")))

    per_module = {name: flops_under(path) for name, path in STAGE_MODULES.items()}
    per_module["total"] = counter.get_total_flops() + sum(msda_flops.values())
    return {"total": per_module["total"], "msda": sum(msda_flops.values()), "stages": split_stages(per_module)}


def flops_row(preset, size, batch):
    W, H = size
    flops = count_flops(preset, batch, H, W)
    return {"size": [W, H], "batch": batch, "gflops": round(flops["total"] / 1e9, 1),
            "msda_gflops": round(flops["msda"] / 1e9, 2),
            "stages_gflops": {k: round(v / 1e9, 2) for k, v in flops["stages"].items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="swin_l", help="r50, swin_l or a full preset name")
    parser.add_argument("--size", default="1152x768", help="WxH list, comma separated")
    parser.add_argument("--batch", default="1", help="batch sizes, comma separated")
    parser.add_argument("--modes", default="eager_fp32,eager_fp16",
                        help="eager_{fp32,fp16,bf16}, compile_{fp32,fp16,bf16}")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--stages", action="store_true", help="per-stage breakdown (eager modes)")
    parser.add_argument("--flops", action="store_true", help="FLOPs and achieved TFLOP/s (eager modes)")
    parser.add_argument("--flops-only", action="store_true",
                        help="only count FLOPs (total and per stage) for each size and batch; no GPU needed")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: host timers, no peak memory (dry runs of the GPU scripts)")
    parser.add_argument("--precision", action="store_true", help="compare reduced precision with fp32")
    parser.add_argument("--profile", action="store_true",
                        help="GPU time per kernel category and the top kernels (torch.profiler, 10 calls)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--no-cuda-fusions", action="store_true",
                        help="time the PyTorch formulations instead (codetr.models.set_cuda_fusions)")
    args = parser.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    preset = SHORT_PRESETS.get(args.preset, args.preset)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.size.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    if args.flops_only:
        results = {"preset": preset, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                   "runs": [flops_row(preset, size, batch) for size in sizes for batch in batches]}
        for row in results["runs"]:
            print(json.dumps(row), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        return
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    results = {"preset": preset, "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "runs": []}
    model32 = build_model(preset, device=device, dtype=torch.float32)
    results["cuda_fusions"] = not args.no_cuda_fusions
    print(f"# {preset} on {results['device']}, torch {torch.__version__}, "
          f"cuda_fusions={results['cuda_fusions']}", flush=True)

    for W, H in sizes:
        for batch in batches:
            flops = flops_row(preset, (W, H), batch) if args.flops else None
            gen = torch.Generator(device="cpu").manual_seed(0)
            images = [torch.randn(batch, 3, H, W, generator=gen).to(device) for _ in range(3)]
            outputs = {}
            for mode in args.modes.split(","):
                kind, dname = mode.split("_")
                dtype = DTYPES[dname]
                model = model32 if dtype == torch.float32 else build_model(preset, device=device, dtype=dtype)
                model.load_state_dict(model32.state_dict())
                set_cuda_fusions(model, not args.no_cuda_fusions)
                inputs = [im.to(dtype) for im in images]
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                row = {"mode": mode, "size": [W, H], "batch": batch}
                with torch.inference_mode():
                    fn = model
                    if kind == "compile":
                        t0 = time.perf_counter()
                        fn = torch.compile(model)
                        fn(inputs[0])
                        synchronize(device)
                        row["compile_s"] = round(time.perf_counter() - t0, 1)
                    row.update(time_calls(fn, inputs, args.warmup, args.iters))
                    row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
                    outputs[mode] = [t.clone() for t in fn(inputs[0])]
                    if args.profile:
                        row["profile"] = profile_kernels(fn, inputs)
                    if args.stages and kind == "eager":
                        row["stages_ms"] = {k: round(v, 3) for k, v in
                                            time_stages(model, inputs, args.warmup, args.iters).items()}
                    if flops and kind == "eager":
                        row.update({k: flops[k] for k in ("gflops", "msda_gflops")})
                        row["tflops_per_s"] = round(flops["gflops"] / row["median_ms"], 1)
                        if "stages_ms" in row:
                            row["stages_gflops"] = flops["stages_gflops"]
                            # A stage of ~0 ms (e.g. "other") has no meaningful rate.
                            row["stages_tflops_per_s"] = {
                                k: round(g / row["stages_ms"][k], 1) if row["stages_ms"][k] > 0.05 else None
                                for k, g in flops["stages_gflops"].items()}
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
                if model is not model32:
                    del model, fn
                if cuda:
                    torch.cuda.empty_cache()
            if args.precision and "eager_fp32" in outputs:
                for mode, out in outputs.items():
                    if mode != "eager_fp32":
                        cmp = {"compare": f"{mode} vs eager_fp32", "size": [W, H], "batch": batch,
                               **compare_detections(outputs["eager_fp32"], out)}
                        results["runs"].append(cmp)
                        print(json.dumps(cmp), flush=True)

    print("\n| mode | size | batch | median ms | p90 ms | peak GiB | speed-up vs eager_fp32 |")
    print("|---|---|---|---|---|---|---|")
    base = {(tuple(r["size"]), r["batch"]): r["median_ms"] for r in results["runs"] if r.get("mode") == "eager_fp32"}
    for r in results["runs"]:
        if "mode" not in r:
            continue
        ref = base.get((tuple(r["size"]), r["batch"]))
        speed = f"{ref / r['median_ms']:.2f}x" if ref else "-"
        print(f"| {r['mode']} | {r['size'][0]}x{r['size'][1]} | {r['batch']} | {r['median_ms']:.2f} | "
              f"{r['p90_ms']:.2f} | {r['peak_mem_gib']} | {speed} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
