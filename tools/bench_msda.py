"""Microbenchmark of codetr::ms_deform_attn at Co-DINO shapes (H=8, D=32, L=5, P=4) on a GPU.

Sampling locations follow the model: each query's reference point plus N(0, 2 px) offsets per
level; attention weights are a softmax over L*P. Times are the median of CUDA-event-timed calls
after warm-up; rel err = ||out - ref|| / ||ref|| against the fp64 grid_sample formulation.

Usage: PYTHONPATH=python python3 tools/bench_msda.py [--iters 100] [--json out.json]
       [--cases "encoder 768,decoder"]  (prefixes of the case names; default: all three)
       [--variants "fp32,fp16"]         (dtype variants by exact name; default: all five)
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

from codetr.ops import ms_deform_attn, ms_deform_attn_pytorch

H, D, L, P = 8, 32, 5, 4
ENCODER_768 = [(192, 288), (96, 144), (48, 72), (24, 36), (12, 18)]
ENCODER_1280 = [(320, 480), (160, 240), (80, 120), (40, 60), (20, 30)]


def reference_points(levels, num_queries, encoder, gen):
    """(Q, 2) normalised (x, y): pixel centres of every level (encoder) or random points (decoder)."""
    if not encoder:
        return torch.rand(num_queries, 2, generator=gen, dtype=torch.float64)
    points = []
    for h, w in levels:
        ys, xs = torch.meshgrid((torch.arange(h, dtype=torch.float64) + 0.5) / h,
                                (torch.arange(w, dtype=torch.float64) + 0.5) / w, indexing="ij")
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    return torch.cat(points)


def make_inputs(levels, num_queries, encoder, seed=0):
    gen = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in levels)
    ref = reference_points(levels, num_queries, encoder, gen)  # (Q, 2)
    sizes = torch.tensor([[w, h] for h, w in levels], dtype=torch.float64)  # (L, 2) as (x, y)
    offsets_px = 2.0 * torch.randn(1, num_queries, H, L, P, 2, generator=gen, dtype=torch.float64)
    loc = ref[None, :, None, None, None, :] + offsets_px / sizes[None, None, None, :, None, :]
    logits = torch.randn(1, num_queries, H, L * P, generator=gen, dtype=torch.float64)
    attn = logits.softmax(-1).view(1, num_queries, H, L, P)
    value = torch.randn(1, S, H, D, generator=gen, dtype=torch.float64)
    return value.cuda(), loc.cuda(), attn.cuda()


def time_ms(fn, iters, warmup=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), min(times)


def time_graph_ms(fn, iters, warmup=5):
    """Median time of one call replayed from a CUDA graph: the kernel time without the host-side
    dispatch overhead that dominates the eager timing of short calls."""
    for _ in range(warmup):
        fn()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    return time_ms(graph.replay, iters, warmup=3)


def rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-pytorch", action="store_true")
    parser.add_argument("--cases", default="encoder 768,decoder,encoder 1280",
                        help="comma-separated prefixes of the case names to run")
    parser.add_argument("--variants", default=None,
                        help="comma-separated dtype variants (fp32, fp16, 'fp16 (fp16 loc)', bf16, 'bf16 (bf16 loc)')")
    args = parser.parse_args()

    cases = [("encoder 768x1152", ENCODER_768, sum(h * w for h, w in ENCODER_768), True),
             ("decoder Q=900 (768x1152)", ENCODER_768, 900, False),
             ("encoder 1280x1920", ENCODER_1280, sum(h * w for h, w in ENCODER_1280), True)]
    variants = [("fp32", torch.float32, torch.float32), ("fp16", torch.float16, torch.float32),
                ("fp16 (fp16 loc)", torch.float16, torch.float16), ("bf16", torch.bfloat16, torch.float32),
                ("bf16 (bf16 loc)", torch.bfloat16, torch.bfloat16)]
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",")]
        unknown = set(wanted) - {v[0] for v in variants}
        if unknown:
            parser.error(f"unknown --variants {sorted(unknown)}; choose from {[v[0] for v in variants]}")
        variants = [v for v in variants if v[0] in wanted]
    cases = [c for c in cases if any(c[0].startswith(prefix.strip()) for prefix in args.cases.split(","))]
    rows = []
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    for name, levels, Q, encoder in cases:
        value64, loc64, attn64 = make_inputs(levels, Q, encoder)
        ref = ms_deform_attn_pytorch(value64, levels, loc64, attn64)
        grad_out64 = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).cuda()
        for vname, dtype, coord_dtype in variants:
            value, loc, attn = value64.to(dtype), loc64.to(coord_dtype), attn64.to(coord_dtype)
            # Reference from the rounded inputs, so the error is the kernel's own.
            ref_rounded = ms_deform_attn_pytorch(value.double(), levels, loc.double(), attn.double())
            out = ms_deform_attn(value, levels, loc, attn)
            fwd_ms, fwd_min = time_ms(lambda: ms_deform_attn(value, levels, loc, attn), args.iters)
            fwd_graph_ms, _ = time_graph_ms(lambda: ms_deform_attn(value, levels, loc, attn), args.iters)
            row = {"case": name, "Q": Q, "variant": vname, "fwd_ms": fwd_ms, "fwd_min_ms": fwd_min,
                   "fwd_graph_ms": fwd_graph_ms,
                   "fwd_rel_err": rel_err(out, ref_rounded), "fwd_rel_err_vs_fp64_inputs": rel_err(out, ref)}
            grad_out = grad_out64.to(dtype)
            flat = [v for hw in levels for v in hw]
            bwd = lambda: torch.ops.codetr.ms_deform_attn_backward(grad_out, value, flat, loc, attn)  # noqa: E731
            grads = bwd()
            row["bwd_ms"], row["bwd_min_ms"] = time_ms(bwd, max(50, args.iters // 2))
            row["bwd_graph_ms"], _ = time_graph_ms(bwd, max(50, args.iters // 2))
            inputs = [t.double().requires_grad_() for t in (value, loc, attn)]
            ms_deform_attn_pytorch(inputs[0], levels, inputs[1], inputs[2]).backward(grad_out.double())
            ref_grads = [t.grad for t in inputs]
            del inputs
            row["bwd_rel_err"] = [rel_err(g, r) for g, r in zip(grads, ref_grads)]
            rows.append(row)
            print(f"{name:26s} {vname:16s} fwd {fwd_ms * 1e3:8.1f} us graph {fwd_graph_ms * 1e3:8.1f} us "
                  f"err {row['fwd_rel_err']:.2e} | bwd {row['bwd_ms'] * 1e3:8.1f} us graph "
                  f"{row['bwd_graph_ms'] * 1e3:8.1f} us bwd/fwd {row['bwd_graph_ms'] / fwd_graph_ms:4.1f} "
                  "grad err v/loc/attn "
                  + "/".join(f"{e:.1e}" for e in row["bwd_rel_err"]), flush=True)
            del grads
        if not args.skip_pytorch:
            for vname, dtype in [("pytorch fp32", torch.float32), ("pytorch fp16", torch.float16)]:
                value, loc, attn = value64.to(dtype), loc64.to(dtype), attn64.to(dtype)
                out = ms_deform_attn_pytorch(value, levels, loc, attn)
                ms, mn = time_ms(lambda: ms_deform_attn_pytorch(value, levels, loc, attn), 50, warmup=3)
                rows.append({"case": name, "Q": Q, "variant": vname, "fwd_ms": ms, "fwd_min_ms": mn,
                             "fwd_rel_err": rel_err(out, ref)})
                print(f"{name:26s} {vname:16s} fwd {ms * 1e3:9.1f} us (min {mn * 1e3:8.1f})  "
                      f"err {rows[-1]['fwd_rel_err']:.2e}", flush=True)
        del value64, loc64, attn64, ref, grad_out64
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
