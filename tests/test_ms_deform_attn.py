"""codetr::ms_deform_attn (C++/CUDA op) against the fp64 grid_sample reference, autograd,
fake/export/compile tracing and input validation. CUDA tests skip without a GPU."""
from __future__ import annotations

import pytest
import torch

from codetr import ops
from codetr.ops import ms_deform_attn, ms_deform_attn_pytorch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ONE_LEVEL = [(7, 5)]
FIVE_LEVELS = [(13, 9), (7, 5), (4, 3), (2, 2), (1, 1)]  # odd sizes, down to a single pixel


def make_case(levels, B=2, Q=11, H=2, D=32, P=4, dtype=torch.float32, coord_dtype=None,
              device="cpu", seed=0, exact=False):
    """Random inputs; ~1/4 of the locations fall outside the unit square (partly or fully off the map).
    exact: snap pixel coordinates to odd multiples of 1/512 px, so that with power-of-two level
    sizes every location and pixel coordinate is exact in fp32 and never an integer (the kernel
    and the fp64 reference then floor every coordinate alike; see encoder_like_case)."""
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in levels)
    L = len(levels)
    coord_dtype = coord_dtype or dtype
    value = torch.randn(B, S, H, D, generator=g, dtype=torch.float64)
    loc = torch.rand(B, Q, H, L, P, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    if exact:
        sizes = torch.tensor([[w, h] for h, w in levels], dtype=torch.float64)[:, None, :]  # (L, 1, 2)
        loc = ((loc * sizes * 256).floor() + 0.5) / 256 / sizes
    attn = torch.rand(B, Q, H, L * P, generator=g, dtype=torch.float64).softmax(-1).view(B, Q, H, L, P)
    return (value.to(device=device, dtype=dtype), loc.to(device=device, dtype=coord_dtype),
            attn.to(device=device, dtype=coord_dtype))


def reference(value, levels, loc, attn):
    """fp64 grid_sample reference on the CPU, computed from the (possibly rounded) inputs."""
    return ms_deform_attn_pytorch(value.cpu().double(), levels, loc.cpu().double(), attn.cpu().double())


def rel_err(out, ref):
    out = out.detach().cpu().double()
    return ((out - ref).norm() / ref.norm()).item()


# ---- forward ----------------------------------------------------------------------------------

CPU_TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("levels", [ONE_LEVEL, FIVE_LEVELS], ids=["L1", "L5"])
@pytest.mark.parametrize("P", [1, 4])
@pytest.mark.parametrize("D", [32, 64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_forward_cpu_matches_reference(levels, P, D, dtype):
    value, loc, attn = make_case(levels, P=P, D=D, dtype=dtype, seed=P * 100 + D)
    out = ms_deform_attn(value, levels, loc, attn)
    assert out.shape == (2, 11, 2 * D) and out.dtype == dtype
    assert rel_err(out, reference(value, levels, loc, attn)) <= CPU_TOL[dtype]


@pytest.mark.parametrize("dtype,coord_dtype", [(torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
                                               (torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                               (torch.float64, torch.float32)], ids=str)
def test_forward_cpu_half_types_and_fp32_coordinates(dtype, coord_dtype):
    value, loc, attn = make_case(FIVE_LEVELS, dtype=dtype, coord_dtype=coord_dtype)
    out = ms_deform_attn(value, FIVE_LEVELS, loc, attn)
    assert out.dtype == dtype
    assert rel_err(out, reference(value, FIVE_LEVELS, loc, attn)) <= CPU_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_pytorch_formulation_half_types_on_cpu(dtype):
    """The grid_sample formulation (ONNX lowering) in fp16/bf16 on the CPU is finite and close to
    fp64 (torch 2.11's CPU grid_sample gives NaN in fp16 for a strided input)."""
    value, loc, attn = make_case(FIVE_LEVELS, dtype=dtype)
    out = ms_deform_attn_pytorch(value, FIVE_LEVELS, loc, attn)
    assert out.dtype == dtype and torch.isfinite(out).all()
    # grid_sample interpolates and the weighted sum runs in the tensor dtype (not fp32 like the
    # op), so bf16 gets twice the op's bound
    tolerance = {torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    assert rel_err(out, reference(value, FIVE_LEVELS, loc, attn)) <= tolerance


def test_points_outside_the_map_give_zero():
    value, loc, attn = make_case(FIVE_LEVELS)
    far = loc.clone()
    far[..., 0] = 1.6  # x beyond the right edge on every level (pixel >= w)
    assert torch.equal(ms_deform_attn(value, FIVE_LEVELS, far, attn), torch.zeros(2, 11, 64))


def test_non_contiguous_inputs():
    value, loc, attn = make_case(FIVE_LEVELS, B=2, H=2, D=32)
    value_nc = value.transpose(2, 3).contiguous().transpose(2, 3)
    loc_nc = loc.transpose(1, 4).contiguous().transpose(1, 4)
    attn_nc = attn.transpose(0, 1).contiguous().transpose(0, 1)
    assert not (value_nc.is_contiguous() or loc_nc.is_contiguous() or attn_nc.is_contiguous())
    torch.testing.assert_close(ms_deform_attn(value_nc, FIVE_LEVELS, loc_nc, attn_nc),
                               ms_deform_attn(value, FIVE_LEVELS, loc, attn), rtol=0, atol=0)


@pytest.mark.parametrize("B,Q", [(0, 5), (2, 0)])
def test_empty_batch_or_queries(B, Q):
    value, loc, attn = make_case(ONE_LEVEL, B=max(B, 1), Q=max(Q, 1))
    value, loc, attn = value[:B], loc[:B, :Q], attn[:B, :Q]
    out = ms_deform_attn(value, ONE_LEVEL, loc, attn)
    assert out.shape == (B, Q, 64)


def test_tensor_spatial_shapes_are_accepted_by_the_wrapper():
    value, loc, attn = make_case(FIVE_LEVELS)
    torch.testing.assert_close(ms_deform_attn(value, torch.tensor(FIVE_LEVELS), loc, attn),
                               ms_deform_attn(value, FIVE_LEVELS, loc, attn), rtol=0, atol=0)


# ---- backward ---------------------------------------------------------------------------------

def test_gradcheck_fp64():
    levels = [(3, 4), (2, 3)]
    value, loc, attn = make_case(levels, B=2, Q=3, H=2, D=3, P=2, dtype=torch.float64, seed=7)
    inputs = [t.clone().requires_grad_() for t in (value, loc, attn)]
    assert torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn(v, levels, l, a), inputs,
                                    eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_backward_cpu_matches_reference_autograd(dtype):
    grads, ref_grads = backward_pair(FIVE_LEVELS, dtype, dtype, "cpu", D=32)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for name, got, want in zip(("value", "loc", "attn"), grads, ref_grads):
        assert rel_err(got, want) <= tol, name


def backward_pair(levels, dtype, coord_dtype, device, D=32, seed=3, Q=11, P=4, exact=False):
    """(op gradients on `device`, fp64 reference gradients through grid_sample on the CPU)."""
    value, loc, attn = make_case(levels, Q=Q, D=D, P=P, dtype=dtype, coord_dtype=coord_dtype, device=device,
                                 seed=seed, exact=exact)
    grad_out = torch.randn(2, Q, 2 * D, generator=torch.Generator().manual_seed(seed + 1),
                           dtype=torch.float64).to(device=device, dtype=dtype)
    inputs = [t.clone().requires_grad_() for t in (value, loc, attn)]
    ms_deform_attn(inputs[0], levels, inputs[1], inputs[2]).backward(grad_out)
    ref_inputs = [t.detach().cpu().double().requires_grad_() for t in (value, loc, attn)]
    ms_deform_attn_pytorch(ref_inputs[0], levels, ref_inputs[1], ref_inputs[2]).backward(grad_out.cpu().double())
    for got, t in zip(inputs, (value, loc, attn)):
        assert got.grad.dtype == t.dtype and got.grad.device == t.device
    return [t.grad for t in inputs], [t.grad for t in ref_inputs]


def test_backward_op_direct_call_shapes():
    from codetr import _C  # noqa: F401
    value, loc, attn = make_case(ONE_LEVEL)
    gv, gl, ga = torch.ops.codetr.ms_deform_attn_backward(torch.ones(2, 11, 64), value, [7, 5], loc, attn)
    assert gv.shape == value.shape and gl.shape == loc.shape and ga.shape == attn.shape


# ---- fake impl, export, compile ---------------------------------------------------------------

class MSDA(torch.nn.Module):
    def __init__(self, levels):
        super().__init__()
        self.levels = levels

    def forward(self, value, loc, attn):
        return ms_deform_attn(value, self.levels, loc, attn) * 2.0


def test_fake_tensor_shapes_and_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        value, loc, attn = (torch.empty(3, 35, 2, 16, dtype=torch.float16),
                            torch.empty(3, 9, 2, 1, 4, 2), torch.empty(3, 9, 2, 1, 4))
        out = ms_deform_attn(value, ONE_LEVEL, loc, attn)
        assert out.shape == (3, 9, 32) and out.dtype == torch.float16
        gv, gl, ga = torch.ops.codetr.ms_deform_attn_backward(torch.empty(3, 9, 32, dtype=torch.float16),
                                                              value, [7, 5], loc, attn)
        assert (gv.shape, gl.shape, ga.shape) == (value.shape, loc.shape, attn.shape)
        assert gl.dtype == torch.float32


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic_q_and_batch"])
def test_export_runs_and_matches_eager(dynamic):
    module = MSDA(FIVE_LEVELS)
    args = make_case(FIVE_LEVELS, B=2, Q=11)
    shapes = None
    if dynamic:
        q, b = torch.export.Dim("q", min=2), torch.export.Dim("b", min=2)
        shapes = ({0: b}, {0: b, 1: q}, {0: b, 1: q})
    exported = torch.export.export(module, args, dynamic_shapes=shapes)
    assert any(n.target is torch.ops.codetr.ms_deform_attn.default for n in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(*args), module(*args), rtol=0, atol=0)
    if dynamic:
        other = make_case(FIVE_LEVELS, B=3, Q=17, seed=5)
        torch.testing.assert_close(exported.module()(*other), module(*other), rtol=0, atol=0)


def test_compile_fullgraph_forward_and_backward():
    module = MSDA(FIVE_LEVELS)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    value, loc, attn = make_case(FIVE_LEVELS)
    inputs = [t.clone().requires_grad_() for t in (value, loc, attn)]
    eager_inputs = [t.clone().requires_grad_() for t in (value, loc, attn)]
    out = compiled(*inputs)
    eager = module(*eager_inputs)
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    out.sum().backward()
    eager.sum().backward()
    for a, b in zip(inputs, eager_inputs):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


# ---- bad input --------------------------------------------------------------------------------

def call_op(value, shapes, loc, attn):
    from codetr import _C  # noqa: F401
    return torch.ops.codetr.ms_deform_attn(value, shapes, loc, attn)


BAD_INPUTS = {
    "value_rank": (lambda v, l, a: (v[0], [7, 5], l, a), r"value must be 4-D \(B, S, H, D\)"),
    "loc_rank": (lambda v, l, a: (v, [7, 5], l[..., 0], a), r"sampling_locations must be 6-D"),
    "attn_rank": (lambda v, l, a: (v, [7, 5], l, a[..., 0]), r"attention_weights must be 5-D"),
    "batch": (lambda v, l, a: (v[:1], [7, 5], l, a), r"sampling_locations must be \(B=1, Q, H=2"),
    "heads": (lambda v, l, a: (v, [7, 5], l[:, :, :1], a[:, :, :1]), r"sampling_locations must be \(B=2, Q, H=2"),
    "last_dim": (lambda v, l, a: (v, [7, 5], torch.cat([l, l[..., :1]], -1), a), r"L, P, 2\)"),
    "attn_points": (lambda v, l, a: (v, [7, 5], l, a[..., :2]), r"attention_weights must be \(B, Q, H, L, P\)"),
    "attn_queries": (lambda v, l, a: (v, [7, 5], l, a[:, :3]), r"attention_weights must be \(B, Q, H, L, P\)"),
    "shapes_odd": (lambda v, l, a: (v, [7, 5, 1], l, a), r"spatial_shapes must be a flat list .* even length"),
    "shapes_levels": (lambda v, l, a: (v, [7, 4, 1, 1], l, a), r"spatial_shapes has 2 levels .* L=1"),
    "shapes_negative": (lambda v, l, a: (v, [-7, -5], l, a), r"h > 0 and w > 0, got \(-7, -5\)"),
    "shapes_zero": (lambda v, l, a: (v, [0, 5], l, a), r"h > 0 and w > 0"),
    "shapes_sum": (lambda v, l, a: (v, [6, 5], l, a), r"S = sum\(h\*w\) over spatial_shapes = 30, got S=35"),
    "dtype_mix": (lambda v, l, a: (v, [7, 5], l, a.double()), r"same dtype, got Float and Double"),
    "coord_dtype": (lambda v, l, a: (v.double(), [7, 5], l.half(), a.half()), r"value's dtype \(Double\) or float32"),
    "value_dtype": (lambda v, l, a: (v.int(), [7, 5], l, a), r"value must be float32, float16, bfloat16 or float64"),
    "device_mix": (lambda v, l, a: (v, [7, 5], l.to("meta"), a), r"all tensors must be on one device"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_rejected_with_a_clear_message(case):
    make_bad, pattern = BAD_INPUTS[case]
    value, loc, attn = make_case(ONE_LEVEL, B=2, Q=5, H=2, D=8)
    with pytest.raises(RuntimeError, match=pattern):
        call_op(*make_bad(value, loc, attn))


def test_bad_grad_output_is_rejected():
    from codetr import _C  # noqa: F401
    value, loc, attn = make_case(ONE_LEVEL, B=2, Q=5, H=2, D=8)
    with pytest.raises(RuntimeError, match=r"grad_output must be \(B, Q, H\*D\) = \[2, 5, 16\]"):
        torch.ops.codetr.ms_deform_attn_backward(torch.ones(2, 5, 15), value, [7, 5], loc, attn)


def test_missing_library_names_the_build_command(tmp_path, monkeypatch):
    import subprocess
    import sys
    env = {"CODETR_OPS_LIBRARY": str(tmp_path / "nope.so"), "PYTHONPATH": str(ops.__file__.rsplit("/codetr/", 1)[0])}
    result = subprocess.run([sys.executable, "-c", "import codetr._C"], capture_output=True, text=True,
                            env={**__import__("os").environ, **env})
    assert result.returncode != 0 and "tools/build.sh" in result.stderr and "nope.so" in result.stderr


# ---- CUDA -------------------------------------------------------------------------------------

CUDA_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-12}
CUDA_GRAD_TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float64: 1e-10}
CUDA_DTYPES = [(torch.float32, torch.float32), (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
               (torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.float64, torch.float64)]


@cuda
@pytest.mark.parametrize("dtype,coord_dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("levels", [ONE_LEVEL, FIVE_LEVELS], ids=["L1", "L5"])
@pytest.mark.parametrize("P", [1, 4])
@pytest.mark.parametrize("D", [32, 64, 24])
def test_forward_cuda_matches_reference(dtype, coord_dtype, levels, P, D):
    value, loc, attn = make_case(levels, P=P, D=D, dtype=dtype, coord_dtype=coord_dtype, device="cuda",
                                 seed=P + D)
    out = ms_deform_attn(value, levels, loc, attn)
    assert out.dtype == dtype and out.device.type == "cuda"
    assert rel_err(out, reference(value, levels, loc, attn)) <= CUDA_TOL[dtype]


@cuda
@pytest.mark.parametrize("dtype,coord_dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("D", [32, 24])
def test_backward_cuda_matches_reference(dtype, coord_dtype, D):
    grads, ref_grads = backward_pair(FIVE_LEVELS, dtype, coord_dtype, "cuda", D=D)
    for name, got, want in zip(("value", "loc", "attn"), grads, ref_grads):
        assert rel_err(got, want) <= CUDA_GRAD_TOL[dtype], name


@cuda
@pytest.mark.parametrize("P,D,Q", [(1, 32, 300), (3, 64, 100), (4, 7, 70), (4, 32, 200), (128, 32, 3), (4, 32, 4500)])
def test_backward_cuda_more_shapes(P, D, Q):
    """Enough queries for several thread blocks (the last one partial), P = 1, 3 and 128, odd D
    (one channel per lane) and D = 64, random locations on larger maps, in fp32 and fp16. In fp16,
    up to Q*P = 16384 samples per level, grad_value of the large levels is gathered per output
    tile; Q = 4500 x 4 points (and fp32) take the per-corner atomics into a zero-filled
    accumulator instead."""
    levels = [(32, 64), (16, 32), (8, 16)]
    for dtype in (torch.float32, torch.float16):
        grads, ref_grads = backward_pair(levels, dtype, torch.float32, "cuda", D=D, Q=Q, P=P, seed=P + D, exact=True)
        for name, got, want in zip(("value", "loc", "attn"), grads, ref_grads):
            assert rel_err(got, want) <= CUDA_GRAD_TOL[dtype], (dtype, name)


@cuda
def test_backward_cuda_queries_as_many_as_pixels_but_random():
    """Q == S selects the encoder backward kernel even when the queries are not the pixels: with
    random locations (and batch 2) most corners miss the block windows and are added directly."""
    levels = [(32, 64), (16, 32), (8, 16)]
    S = sum(h * w for h, w in levels)
    for dtype in (torch.float32, torch.float16):
        grads, ref_grads = backward_pair(levels, dtype, torch.float32, "cuda", D=32, Q=S, P=4, seed=11, exact=True)
        for name, got, want in zip(("value", "loc", "attn"), grads, ref_grads):
            assert rel_err(got, want) <= CUDA_GRAD_TOL[dtype], (dtype, name)


@cuda
@pytest.mark.parametrize("dtype,coord_dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("D", [32, 7])
def test_backward_cuda_few_queries_leaves_untouched_rows_zero(dtype, coord_dtype, D):
    """Few queries on large maps (the decoder's case): the op allocates grad_value and its fp32
    accumulator uninitialised and fills them itself. With the caching allocator first filled with
    NaN, every row no corner reaches must be exactly 0, the others must match the reference, and
    running the call again must give the same result."""
    levels = [(64, 96), (32, 48), (16, 24)]
    S = sum(h * w for h, w in levels)
    # Freed at once: NaN-filled blocks in the allocator's large (> 1 MiB) and small pools.
    torch.full((8 * S * 2 * D * 2,), float("nan"), device="cuda")
    [torch.full((1 << 16,), float("nan"), device="cuda") for _ in range(32)]
    grads, ref_grads = backward_pair(levels, dtype, coord_dtype, "cuda", D=D, Q=9, seed=D, exact=True)
    untouched = ref_grads[0].abs().amax(-1) == 0  # (B, S, H)
    assert 0.3 < untouched.float().mean() < 1.0
    assert (grads[0][untouched.to(grads[0].device)] == 0).all()
    for name, got, want in zip(("value", "loc", "attn"), grads, ref_grads):
        assert rel_err(got, want) <= CUDA_GRAD_TOL[dtype], name
    again, _ = backward_pair(levels, dtype, coord_dtype, "cuda", D=D, Q=9, seed=D, exact=True)
    for got, repeat in zip(grads, again):
        assert torch.allclose(got.float(), repeat.float(), rtol=1e-5, atol=1e-6)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("Q,levels", [(4000, [(16, 24), (8, 12)]), (500, [(128, 192), (64, 96)])],
                         ids=["small_maps", "large_map"])
def test_backward_cuda_all_samples_on_one_spot(dtype, Q, levels):
    """Every sample lands in the same 2x2 pixels of each level (with an odd D): thousands of
    contributions per pixel at once. small_maps: 16 000 samples per (head, level) on small levels
    go through per-corner atomics into a zero-filled accumulator; large_map: in fp16 the 128x192
    level is made by output tiles (its expected hits per tile are few), and all 2 000 samples land
    on one tile's pixel lists (fp32/fp64: atomics throughout). Every contribution must arrive
    exactly once (fp32 sums: fp16 stays within its tolerance); the rest of grad_value must be 0."""
    from codetr import _C  # noqa: F401
    S = sum(h * w for h, w in levels)
    B, H, D, L, P = 1, 2, 7, len(levels), 4
    g = torch.Generator().manual_seed(23)
    spot = torch.tensor([0.37, 0.61], dtype=torch.float64)
    loc = spot + 1e-3 * torch.rand(B, Q, H, L, P, 2, generator=g, dtype=torch.float64)
    attn = torch.rand(B, Q, H, L, P, generator=g, dtype=torch.float64)
    value = torch.randn(B, S, H, D, generator=g, dtype=torch.float64)
    grad_out = torch.randn(B, Q, H * D, generator=g, dtype=torch.float64)
    flat = [v for hw in levels for v in hw]
    coord_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    grads = torch.ops.codetr.ms_deform_attn_backward(grad_out.to("cuda", dtype), value.to("cuda", dtype), flat,
                                                     loc.to("cuda", coord_dtype), attn.to("cuda", coord_dtype))
    ref_inputs = [t.clone().requires_grad_() for t in (value.to(dtype).double(), loc.to(coord_dtype).double(),
                                                       attn.to(coord_dtype).double())]
    ms_deform_attn_pytorch(ref_inputs[0], levels, ref_inputs[1], ref_inputs[2]).backward(grad_out.to(dtype).double())
    reached = ref_inputs[0].grad.abs().amax(-1) != 0
    assert reached.sum() <= 2 * 4 * L  # 2x2 corners per level and head
    assert (grads[0].cpu()[~reached] == 0).all()
    for name, got, ref_input in zip(("value", "loc", "attn"), grads, ref_inputs):
        assert rel_err(got, ref_input.grad) <= CUDA_GRAD_TOL[dtype], name


def encoder_like_case(levels, H, D, dtype, coord_dtype, seed=5, P=4):
    """Encoder-style inputs: one query per pixel of every level (level-major, row-major), sampling
    around its own pixel centre with N(0, 2 px) offsets, some off the map. Power-of-two level sizes
    and offsets on an odd multiple of 1/512 px make every location exact in fp32 and never an integer
    pixel coordinate, so the kernel and the fp64 reference floor the same coordinates and no sample
    sits exactly on the map's edge x = -1 or x = w, where grid_sample still gives a location gradient
    and the op, like mmcv, none (see BENCHMARKS.md on grad_loc near integer pixels)."""
    g = torch.Generator().manual_seed(seed)
    L = len(levels)
    centres = []
    for h, w in levels:
        ys, xs = torch.meshgrid((torch.arange(h, dtype=torch.float64) + 0.5) / h,
                                (torch.arange(w, dtype=torch.float64) + 0.5) / w, indexing="ij")
        centres.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    ref = torch.cat(centres)  # (Q, 2)
    Q = ref.shape[0]
    sizes = torch.tensor([[w, h] for h, w in levels], dtype=torch.float64)
    offsets = ((2.0 * torch.randn(1, Q, H, L, P, 2, generator=g, dtype=torch.float64) * 256).floor() + 0.5) / 256
    loc = ref[None, :, None, None, None, :] + offsets / sizes[None, None, None, :, None, :]
    attn = torch.randn(1, Q, H, L * P, generator=g, dtype=torch.float64).softmax(-1).view(1, Q, H, L, P)
    value = torch.randn(1, Q, H, D, generator=g, dtype=torch.float64)
    grad_out = torch.randn(1, Q, H * D, generator=g, dtype=torch.float64)
    return (value.to(dtype), loc.to(coord_dtype), attn.to(coord_dtype), grad_out.to(dtype))


@cuda
@pytest.mark.parametrize("dtype,coord_dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("P,D", [(4, 32), (1, 64), (3, 16)])
def test_backward_cuda_encoder_like_queries(dtype, coord_dtype, P, D):
    """Encoder-style, spatially coherent queries on maps of realistic width: thousands of
    concurrent updates land on the same grad_value corners of the coarse levels (the contended case
    of the scatter), some samples fall off the map; the gradients must still match the reference.
    Q == S selects the encoder backward kernel (fp64: the general one): blocks of 128/P queries,
    some straddling a row end (widths 16 and 8), per-level windows with corners inside and outside."""
    from codetr import _C  # noqa: F401
    levels = [(64, 128), (32, 64), (16, 32), (8, 16), (4, 8)]
    value, loc, attn, grad_out = encoder_like_case(levels, H=8, D=D, dtype=dtype, coord_dtype=coord_dtype, P=P)
    flat = [v for hw in levels for v in hw]
    grads = torch.ops.codetr.ms_deform_attn_backward(grad_out.cuda(), value.cuda(), flat, loc.cuda(), attn.cuda())
    ref_inputs = [t.double().requires_grad_() for t in (value, loc, attn)]
    ms_deform_attn_pytorch(ref_inputs[0], levels, ref_inputs[1], ref_inputs[2]).backward(grad_out.double())
    for name, got, ref_input in zip(("value", "loc", "attn"), grads, ref_inputs):
        assert rel_err(got, ref_input.grad) <= CUDA_GRAD_TOL[dtype], name


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("H", [1, 2, 3])
def test_backward_cuda_encoder_fills_its_uninitialised_buffers(dtype, H):
    """The op allocates the encoder path's fp32 accumulator and (fp16/bf16) grad_value uninitialised
    and fills them itself: with 1, 2 and 3 (b, h) pairs and the caching allocator first filled with
    NaN at exactly those sizes, every element must come out finite and match the reference, twice in
    a row."""
    from codetr import _C  # noqa: F401
    levels = [(32, 64), (16, 32), (8, 16), (4, 8)]
    value, loc, attn, grad_out = encoder_like_case(levels, H=H, D=32, dtype=dtype, coord_dtype=torch.float32)
    S = value.shape[1]
    # Freed at once: NaN blocks of the accumulator's and grad_value's sizes in the allocator's pool.
    [torch.full((S * H * 32,), float("nan"), dtype=t, device="cuda") for t in (torch.float32, dtype)]
    flat = [v for hw in levels for v in hw]
    ref_inputs = [t.double().requires_grad_() for t in (value, loc, attn)]
    ms_deform_attn_pytorch(ref_inputs[0], levels, ref_inputs[1], ref_inputs[2]).backward(grad_out.double())
    for _ in range(2):
        grads = torch.ops.codetr.ms_deform_attn_backward(grad_out.cuda(), value.cuda(), flat, loc.cuda(), attn.cuda())
        assert torch.isfinite(grads[0]).all()
        for name, got, ref_input in zip(("value", "loc", "attn"), grads, ref_inputs):
            assert rel_err(got, ref_input.grad) <= CUDA_GRAD_TOL[dtype], name


@cuda
def test_cuda_non_contiguous_and_empty():
    value, loc, attn = make_case(FIVE_LEVELS, device="cuda")
    out = ms_deform_attn(value.transpose(2, 3).contiguous().transpose(2, 3), FIVE_LEVELS, loc, attn)
    assert rel_err(out, reference(value, FIVE_LEVELS, loc, attn)) <= 1e-5
    assert ms_deform_attn(value[:0], FIVE_LEVELS, loc[:0], attn[:0]).shape == (0, 11, 64)


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_cuda_views_at_odd_element_offsets(dtype):
    """Contiguous views that start mid-vector are copied to aligned memory, not read with
    misaligned vector loads."""
    value, loc, attn = make_case(FIVE_LEVELS, device="cuda", dtype=dtype)

    def shifted(t):
        buf = torch.empty(t.numel() + 1, device=t.device, dtype=t.dtype)
        view = buf[1:].view(t.shape)
        view.copy_(t)
        return view

    out = ms_deform_attn(shifted(value), FIVE_LEVELS, shifted(loc), attn)
    assert rel_err(out, reference(value, FIVE_LEVELS, loc, attn)) <= CUDA_TOL[dtype]
    inputs = [shifted(t).requires_grad_() for t in (value, loc, attn)]
    ms_deform_attn(*inputs[:1], FIVE_LEVELS, *inputs[1:]).sum().backward()
    ref_inputs = [t.detach().cpu().double().requires_grad_() for t in (value, loc, attn)]
    ms_deform_attn_pytorch(ref_inputs[0], FIVE_LEVELS, *ref_inputs[1:]).sum().backward()
    for got, want in zip(inputs, ref_inputs):
        assert rel_err(got.grad, want.grad) <= CUDA_GRAD_TOL[dtype]


@cuda
def test_cuda_device_mix_is_rejected():
    value, loc, attn = make_case(ONE_LEVEL, device="cuda")
    with pytest.raises(RuntimeError, match="all tensors must be on one device"):
        call_op(value, [7, 5], loc.cpu(), attn)


@cuda
def test_cuda_graph_capture_and_replay():
    value, loc, attn = make_case(FIVE_LEVELS, device="cuda", dtype=torch.float16, coord_dtype=torch.float32)
    ms_deform_attn(value, FIVE_LEVELS, loc, attn)  # load and warm up outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = ms_deform_attn(value, FIVE_LEVELS, loc, attn)
    torch.cuda.current_stream().wait_stream(stream)
    new_value, new_loc, new_attn = make_case(FIVE_LEVELS, device="cuda", dtype=torch.float16,
                                             coord_dtype=torch.float32, seed=11)
    value.copy_(new_value), loc.copy_(new_loc), attn.copy_(new_attn)
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(out, reference(new_value, FIVE_LEVELS, new_loc, new_attn)) <= 2e-3


@cuda
@pytest.mark.parametrize("Q", [50, 8064], ids=["decoder_like", "encoder_like"])
def test_cuda_graph_capture_of_the_backward(Q):
    """Captured in a CUDA graph on a non-default stream, a replay with new inputs gives their
    gradients. With few queries (fp16) the backward makes its large levels by output tiles on a
    second stream, forked from the capturing stream and joined back: that branch must land in the
    graph too. Q == S takes the encoder kernel, on the capturing stream alone."""
    from codetr import _C  # noqa: F401
    levels = [(64, 96), (32, 48), (16, 24)]
    H, D = 4, 32
    case = dict(B=2, Q=Q, H=H, D=D, dtype=torch.float16, coord_dtype=torch.float32, device="cuda", exact=True)
    value, loc, attn = make_case(levels, seed=4, **case)
    grad_out = torch.randn(2, Q, H * D, device="cuda", dtype=torch.float16)
    flat = [v for hw in levels for v in hw]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        # Warm up outside the capture: the side stream's pool and events are made on first use.
        torch.ops.codetr.ms_deform_attn_backward(grad_out, value, flat, loc, attn)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            grads = torch.ops.codetr.ms_deform_attn_backward(grad_out, value, flat, loc, attn)
    torch.cuda.current_stream().wait_stream(stream)
    new_value, new_loc, new_attn = make_case(levels, seed=9, **case)
    new_grad_out = torch.randn_like(grad_out)
    for t, new in zip((value, loc, attn, grad_out), (new_value, new_loc, new_attn, new_grad_out)):
        t.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    inputs = [t.cpu().double().requires_grad_() for t in (new_value, new_loc, new_attn)]
    ms_deform_attn_pytorch(inputs[0], levels, inputs[1], inputs[2]).backward(new_grad_out.cpu().double())
    for name, got, ref_input in zip(("value", "loc", "attn"), grads, inputs):
        assert rel_err(got, ref_input.grad) <= CUDA_GRAD_TOL[torch.float16], name
