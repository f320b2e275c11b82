"""torch.ops.codetr.window_attention (fused Swin window attention) against an independent fp64
reference written per window and head; its input checks; its fake impl under torch.export; and on
CUDA the fused kernel inside WindowMSA / the FFN's GEMM-epilogue ReLU against their PyTorch paths.
"""
from __future__ import annotations

import copy

import pytest
import torch

from codetr import ops
from codetr.models.swin import SwinBlock
from codetr.models.transformer import FFN

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make_case(windows=6, mask_windows=3, window=4, heads=2, head_dim=32, dtype=torch.float32, seed=0,
              masked=True, logit_scale=1.0):
    """qkv (Bw, N, 3*C), bias (H, N, N), regions (nW, N) int32 with 1-4 regions per window."""
    g = torch.Generator().manual_seed(seed)
    N, C = window * window, heads * head_dim
    qkv = torch.randn(windows, N, 3 * C, generator=g, dtype=torch.float64) * logit_scale
    bias = torch.randn(heads, N, N, generator=g, dtype=torch.float64)
    regions = torch.randint(0, 4, (mask_windows, N), generator=g, dtype=torch.int32) if masked else None
    return qkv.to(dtype), bias.to(dtype), regions


def reference(qkv, bias, regions, heads, scale):
    """fp64, one window and head at a time, the mask built from the region ids element by element."""
    qkv, bias = qkv.double().cpu(), bias.double().cpu()
    Bw, N, C3 = qkv.shape
    D = C3 // 3 // heads
    out = torch.zeros(Bw, N, heads * D, dtype=torch.float64)
    for w in range(Bw):
        for h in range(heads):
            q = qkv[w, :, h * D:(h + 1) * D]
            k = qkv[w, :, heads * D + h * D:heads * D + (h + 1) * D]
            v = qkv[w, :, 2 * heads * D + h * D:2 * heads * D + (h + 1) * D]
            logits = scale * q @ k.T + bias[h]
            if regions is not None:
                r = regions[w % regions.shape[0]].cpu()
                for i in range(N):
                    for j in range(N):
                        if r[i] != r[j]:
                            logits[i, j] -= 100.0
            out[w, :, h * D:(h + 1) * D] = logits.softmax(-1) @ v
    return out


def rel_err(out, ref):
    return ((out.detach().cpu().double() - ref).norm() / ref.norm()).item()


# ---- CPU: the reference kernel, checks, fake impl -------------------------------------------------

@pytest.mark.parametrize("masked", [True, False], ids=["regions", "no_regions"])
@pytest.mark.parametrize("window,head_dim", [(4, 32), (3, 8)])
def test_cpu_matches_reference(masked, window, head_dim):
    qkv, bias, regions = make_case(window=window, head_dim=head_dim, masked=masked, dtype=torch.float64)
    out = ops.window_attention(qkv, bias, regions, 2, head_dim ** -0.5)
    assert out.shape == (6, window * window, 2 * head_dim) and out.dtype == torch.float64
    assert rel_err(out, reference(qkv, bias, regions, 2, head_dim ** -0.5)) < 1e-12


def test_cpu_mask_separates_regions():
    """Two regions per window: a token's output is a mix of its own region's values only."""
    qkv, bias, _ = make_case(windows=2, mask_windows=1, heads=1, masked=False, dtype=torch.float64)
    regions = torch.tensor([[0] * 8 + [1] * 8], dtype=torch.int32)
    qkv[:, :8, 2 * 32:] = 1.0   # v of region 0
    qkv[:, 8:, 2 * 32:] = -1.0  # v of region 1
    out = ops.window_attention(qkv, bias * 0, regions, 1, 32 ** -0.5)
    # exp(-100) leaks ~4e-44 of the other region: equal to +-1 within fp64 rounding
    assert torch.allclose(out[:, :8], torch.ones(2, 8, 32, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out[:, 8:], -torch.ones(2, 8, 32, dtype=torch.float64), atol=1e-12)


BAD_INPUTS = {
    "qkv_rank": (lambda q, b, r: (q[0], b, r, 2), r"qkv must be 3-D \(num_windows, N, 3\*C\), got shape \[16, 192\]"),
    "heads_split": (lambda q, b, r: (q, b, r, 5), r"qkv's last dim \(192\) must be 3 \* num_heads \* head_dim"),
    "heads_zero": (lambda q, b, r: (q, b, r, 0), r"num_heads must be > 0"),
    "bias_shape": (lambda q, b, r: (q, b[:, :8], r, 2), r"bias must be \(num_heads, N, N\) = \[2, 16, 16\]"),
    "bias_dtype": (lambda q, b, r: (q, b.double(), r, 2), r"bias must have qkv's dtype \(Float\), got Double"),
    "regions_dtype": (lambda q, b, r: (q, b, r.long(), 2), r"regions must be int32, got Long"),
    "regions_shape": (lambda q, b, r: (q, b, r[:, :5], 2), r"regions must be \(num_mask_windows, N\) with N = 16"),
    "regions_windows": (lambda q, b, r: (q, b, r[:1].repeat(4, 1), 2),
                        r"num_windows \(6\) must be a multiple of regions' num_mask_windows \(4\)"),
    "qkv_dtype": (lambda q, b, r: (q.int(), b.int(), r, 2), r"qkv must be float32, float16, bfloat16 or float64"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_rejected_with_a_clear_message(case):
    from codetr import _C  # noqa: F401
    make_bad, pattern = BAD_INPUTS[case]
    qkv, bias, regions = make_case()
    with pytest.raises(RuntimeError, match=pattern):
        torch.ops.codetr.window_attention(*make_bad(qkv, bias, regions), 0.25)


def test_export_traces_the_op():
    class Attention(torch.nn.Module):
        def forward(self, qkv, bias, regions):
            return ops.window_attention(qkv, bias, regions, 2, 0.25) * 2.0

    qkv, bias, regions = make_case()
    program = torch.export.export(Attention(), (qkv, bias, regions))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert "codetr.window_attention.default" in targets
    out = program.module()(qkv, bias, regions)
    assert out.shape == (6, 16, 64)
    assert torch.equal(out, Attention()(qkv, bias, regions))


# ---- CUDA ----------------------------------------------------------------------------------------

CUDA_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("window,heads", [(4, 2), (8, 3), (12, 6)])
@pytest.mark.parametrize("masked", [True, False], ids=["regions", "no_regions"])
def test_cuda_matches_reference(dtype, window, heads, masked):
    """Inputs exact in the dtype; logits up to ~+-30 (softmax far from uniform); batch 2 of nW."""
    qkv, bias, regions = make_case(windows=2 * 3, mask_windows=3, window=window, heads=heads, dtype=dtype,
                                   masked=masked, logit_scale=2.0, seed=window)
    out = ops.window_attention(qkv.cuda(), bias.cuda(), None if regions is None else regions.cuda(), heads,
                               32 ** -0.5)
    assert out.dtype == dtype and out.shape == (6, window * window, heads * 32)
    ref = reference(qkv, bias, regions, heads, 32 ** -0.5)
    assert rel_err(out, ref) <= CUDA_TOL[dtype]
    # the CPU kernel (same contract: probabilities rounded to dtype) agrees to rounding
    cpu = ops.window_attention(qkv, bias, regions, heads, 32 ** -0.5)
    assert rel_err(out, cpu.double()) <= CUDA_TOL[dtype]


@cuda
def test_cuda_hot_logits_stay_finite_in_float16():
    """|q.k| ~ 1e6, far beyond float16: the kernel accumulates logits in fp32, no overflow."""
    qkv, bias, regions = make_case(window=12, heads=2, logit_scale=1.0, dtype=torch.float64)
    qkv[..., :2 * 64] *= 150.0  # q and k: products ~2e4 per channel, sums ~1e6 > 65504
    qkv = qkv.half()
    out = ops.window_attention(qkv.cuda(), bias.half().cuda(), regions.cuda(), 2, 32 ** -0.5)
    assert torch.isfinite(out).all()
    assert rel_err(out, reference(qkv, bias.half(), regions, 2, 32 ** -0.5)) <= 2e-2


@cuda
def test_cuda_views_at_odd_element_offsets():
    """qkv and bias as views one element into a buffer: the kernel's 16-byte and pair loads need
    aligned data, so the op copies such views first; the result equals the aligned call's."""
    qkv, bias, regions = make_case(window=4, dtype=torch.float16)
    qkv, bias, regions = qkv.cuda(), bias.cuda(), regions.cuda()
    qkv_view = torch.cat([qkv.new_zeros(1), qkv.reshape(-1)])[1:].view(qkv.shape)
    bias_view = torch.cat([bias.new_zeros(1), bias.reshape(-1)])[1:].view(bias.shape)
    assert qkv_view.data_ptr() % 4 != 0 and bias_view.data_ptr() % 4 != 0
    expected = ops.window_attention(qkv, bias, regions, 2, 32 ** -0.5)
    assert torch.equal(ops.window_attention(qkv_view, bias_view, regions, 2, 32 ** -0.5), expected)


@cuda
def test_cuda_unsupported_calls_are_rejected():
    qkv, bias, regions = make_case(window=7, dtype=torch.float16)
    with pytest.raises(RuntimeError, match=r"needs head_dim = 32 and N = 16, 64 or 144 .* got head_dim = 32, N = 49"):
        ops.window_attention(qkv.cuda(), bias.cuda(), regions.cuda(), 2, 0.25)
    qkv, bias, regions = make_case(dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"CUDA kernel takes float16 or bfloat16 qkv, got Float"):
        ops.window_attention(qkv.cuda(), bias.cuda(), regions.cuda(), 2, 0.25)
    qkv, bias, regions = make_case(dtype=torch.float16)
    with pytest.raises(RuntimeError, match=r"bias must be on qkv's device"):
        ops.window_attention(qkv.cuda(), bias, regions.cuda(), 2, 0.25)


@cuda
@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_swin_l_block_fused_matches_pytorch_path(dtype):
    """A Swin-L stage-1 block (192 channels, 6 heads, 12x12 shifted windows, padded 30x40 map):
    the fused window attention against the block's own PyTorch formulation, both in dtype."""
    torch.manual_seed(0)
    block = SwinBlock(embed_dims=192, num_heads=6, hidden=768, window=12, shift=True).eval()
    with torch.no_grad():
        block.attn.w_msa.relative_position_bias_table.normal_(std=0.5)
    block = block.to("cuda", dtype)
    x = torch.randn(2, 30 * 40, 192, device="cuda")
    fused = block(x, (30, 40))
    unfused_block = copy.deepcopy(block)
    unfused_block.attn.w_msa.cuda_fusions = False
    unfused = unfused_block(x, (30, 40))
    assert rel_err(fused, unfused.double().cpu()) <= {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]


@cuda
@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cuda_ffn_epilogue_relu_matches_plain_layers(dtype):
    """FFN on CUDA: fc1's bias + ReLU in the GEMM epilogue; vs nn.Sequential of Linear, ReLU, Linear."""
    torch.manual_seed(0)
    ffn = FFN(256, 2048).eval().to("cuda", dtype)
    x = torch.randn(2, 500, 256, device="cuda", dtype=dtype)
    ref = x.double() + copy.deepcopy(ffn.layers).double()(x.double())
    assert rel_err(ffn(x), ref.cpu()) <= {torch.float32: 1e-5, torch.float16: 2e-3}[dtype]


@cuda
@torch.no_grad()
def test_cuda_fused_path_under_autocast():
    """An fp32 block under torch.autocast(float16): qkv comes out fp16, the bias table stays fp32;
    the fused path casts the bias and the result stays close to fp32."""
    torch.manual_seed(0)
    block = SwinBlock(embed_dims=64, num_heads=2, hidden=128, window=4, shift=True).eval().cuda()
    x = torch.randn(2, 8 * 8, 64, device="cuda")
    ref = block(x, (8, 8))
    with torch.autocast("cuda", dtype=torch.float16):
        out = block(x, (8, 8))
    assert rel_err(out, ref.double().cpu()) <= 5e-3
