"""float16 must not overflow where Swin-L is known to: Swin pieces whose weights push the
plain float16 formulation past 65504. The plain formulation (re-implemented here: the code before
the fix) gives inf/NaN; ours stays finite and close to float32 of the same weights, and in
float32 ours is bit-identical to the plain one. All on the CPU (torch 2.11 runs fp16
matmul/layer_norm/softmax there).
"""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from codetr.models import build_model
from codetr.models.swin import LOGIT_PRESCALE, SwinBlock, WindowMSA
from codetr.precision import NonFiniteOutputError, check_finite_outputs

from conftest import TINY_SWIN_WEIGHTS

FP16_MAX = torch.finfo(torch.float16).max
# The overflow guards on the CPU and, where there is one, on the GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA GPU"))]


# --- the plain formulation (before the fix), everything in the input dtype --------------------

def plain_window_attention(m: WindowMSA, x: torch.Tensor, mask=None) -> torch.Tensor:
    Bw, N, C = x.shape
    qkv = m.qkv(x).reshape(Bw, N, 3, m.num_heads, C // m.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q * m.scale) @ k.transpose(-2, -1)
    bias = m.relative_position_bias_table[m.relative_position_index.view(-1)]
    attn = attn + bias.view(N, N, -1).permute(2, 0, 1).unsqueeze(0)
    if mask is not None:
        nW = mask.shape[0]
        attn = attn.view(-1, nW, m.num_heads, N, N) + mask.to(x.dtype).unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, m.num_heads, N, N)
    return m.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(Bw, N, C))


def plain_block(block: SwinBlock, x: torch.Tensor, hw) -> torch.Tensor:
    """Residual stream in the input dtype, nn.LayerNorm in that dtype."""
    x = x + block.attn(block.norm1(x), hw)
    return x + block.ffn(block.norm2(x))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


# --- window attention logits ------------------------------------------------------------------

def _hot_attention(embed_dims, seed=0):
    """WindowMSA (2 heads, 4x4 windows) whose q/k projections make logits ~1e5-1e6."""
    gen = torch.Generator().manual_seed(seed)
    m = WindowMSA(embed_dims=embed_dims, num_heads=2, window=4).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 * (32 / embed_dims) ** 0.5)
        m.qkv.weight[:2 * embed_dims] *= 600.0  # q and k rows
    x = torch.randn(6, 16, embed_dims, generator=gen)  # LayerNorm-like input
    # weights/input exactly representable in fp16: fp32 and fp16 runs see the same numbers
    return m.half().float(), x.half().float()


@torch.no_grad()
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("embed_dims", [32, 64], ids=["head16", "head32"])
def test_window_attention_logits_do_not_overflow_float16(device, embed_dims):
    """head32 on CUDA: the fused window-attention kernel; otherwise the PyTorch formulation."""
    m32, x = _hot_attention(embed_dims)
    m32, x = m32.to(device), x.to(device)
    qkv = m32.qkv(x).reshape(6, 16, 3, 2, embed_dims // 2).permute(2, 0, 3, 1, 4)
    logits = (qkv[0] * m32.scale) @ qkv[1].transpose(-2, -1)
    assert logits.abs().max() > 4 * FP16_MAX  # the premise: float32 logits far beyond fp16
    assert logits.abs().max() < FP16_MAX / LOGIT_PRESCALE  # ... but inside our pre-scaled range
    assert logits.abs().max() < FP16_MAX / LOGIT_PRESCALE  # ... but inside our pre-scaled range
    assert qkv.abs().max() < FP16_MAX / 4  # q, k, v themselves fit fp16

    ref = m32(x, None)
    assert torch.equal(ref, plain_window_attention(m32, x))  # float32: ours is the plain formula, bit for bit

    m16 = copy.deepcopy(m32).half()
    plain = plain_window_attention(m16, x.half())
    assert not torch.isfinite(plain).all()  # plain fp16: inf logits -> NaN after softmax
    ours = m16(x.half(), None)
    assert ours.dtype == torch.float16 and torch.isfinite(ours).all()
    assert _rel(ours, ref) < 1e-2


@torch.no_grad()
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)], ids=str)
@pytest.mark.parametrize("embed_dims", [32, 64], ids=["head16", "head32"])
def test_window_attention_with_shift_mask_reduced_precision_close_to_float32(device, dtype, tol, embed_dims):
    """Ordinary magnitudes, shifted windows, batch 2: the fp32 bias/mask/softmax path equals float32
    closely (head32 on CUDA: the fused kernel)."""
    torch.manual_seed(1)
    block = SwinBlock(embed_dims=embed_dims, num_heads=2, hidden=128, window=4, shift=True).eval().to(device)
    with torch.no_grad():
        block.attn.w_msa.relative_position_bias_table.normal_()
    x = torch.randn(2, 10 * 12, embed_dims, device=device)
    attn32 = block.attn
    ref = attn32(x, (10, 12))
    attn16 = copy.deepcopy(attn32).to(dtype)
    out = attn16(x.to(dtype), (10, 12))
    assert out.dtype == dtype and _rel(out, ref) < tol


# --- the residual stream ----------------------------------------------------------------------

def _hot_blocks(seed=0):
    """Two Swin blocks each adding 2e4 to channel 0 twice (attention proj and FFN biases): the
    residual reaches ~8e4 > 65504 while every branch output stays within float16 - the growth
    of a few channels that deep Swin v1 stages are known for."""
    torch.manual_seed(seed)
    blocks = [SwinBlock(embed_dims=32, num_heads=2, hidden=128, window=4, shift=s).eval() for s in (False, True)]
    with torch.no_grad():
        for b in blocks:
            b.attn.w_msa.proj.bias[0] = 2e4
            b.ffn.layers[1].bias[0] = 2e4
    return [b.half().float() for b in blocks]


@torch.no_grad()
def test_swin_residual_stream_does_not_overflow_float16():
    blocks32 = _hot_blocks()
    hw = (8, 8)
    x = torch.randn(2, 64, 32).half().float()
    ref, plain32 = x, x
    for b in blocks32:
        ref, plain32 = b(ref, hw), plain_block(b, plain32, hw)
    assert torch.equal(ref, plain32)  # float32: fp32 LayerNorm/residual casts are no-ops
    assert ref[..., 0].min() > 1.2 * FP16_MAX  # the premise

    blocks16 = [copy.deepcopy(b).half() for b in blocks32]
    plain, ours = x.half(), x.half()
    for b in blocks16:
        plain, ours = plain_block(b, plain, hw), b(ours, hw)
    assert not torch.isfinite(plain).all()  # fp16 residual: inf, then NaN from the next LayerNorm
    assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
    assert _rel(ours[..., 0], ref[..., 0]) < 1e-3
    assert (ours[..., 1:] - ref[..., 1:]).abs().max() < 2e-2 * ref[..., 1:].abs().max()


def _hot_tiny_swin_state():
    """The golden tiny_swin weights with Swin-L-like hot channels in the last two stages."""
    state = load_file(str(TINY_SWIN_WEIGHTS))
    for stage in (2, 3):
        for blk in (0, 1):
            pre = f"backbone.stages.{stage}.blocks.{blk}."
            state[pre + "attn.w_msa.proj.bias"][:2] = 2e4
            state[pre + "ffn.layers.1.bias"][:2] = 2e4
    return state


@torch.no_grad()
def test_tiny_swin_with_hot_channels_float16_and_bfloat16(monkeypatch):
    """Whole model: fp16 and bf16 outputs finite, backbone close to float32; the plain fp16
    residual stream makes the detector output NaN, which the output check reports as fp16 overflow."""
    state = _hot_tiny_swin_state()
    x = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    m32 = build_model("tiny_swin", checkpoint=state, msda_impl="pytorch")
    feats32 = m32.backbone(x)
    assert max(float(f.abs().max()) for f in feats32) < 100  # the stage norms tame the hot channels
    for dtype, tol in ((torch.float16, 3e-3), (torch.bfloat16, 3e-2)):  # measured 1.0e-3, 9.4e-3
        m = copy.deepcopy(m32).to(dtype)
        feats = m.backbone(x.to(dtype))
        assert all(torch.isfinite(f).all() for f in feats)
        assert max(_rel(f, g) for f, g in zip(feats, feats32)) < tol, dtype
        # detector outputs: finite (no closeness bound: the random-weight head amplifies the neck's
        # fp16 rounding of these extreme features, as it would in the plain formulation)
        boxes, scores, labels = m(x.to(dtype))
        check_finite_outputs(boxes, scores, dtype)
        assert boxes.dtype == scores.dtype == torch.float32

    monkeypatch.setattr(SwinBlock, "forward", plain_block)
    m16 = copy.deepcopy(m32).half()
    assert not all(torch.isfinite(f).all() for f in m16.backbone(x.half()))
    boxes, scores, _ = m16(x.half())
    with pytest.raises(NonFiniteOutputError, match="float16 model overflowed.*--dtype bfloat16"):
        check_finite_outputs(boxes, scores, torch.float16)


@torch.no_grad()
def test_float16_swin_exports_and_matches_eager():
    """The fp32 islands are plain tensor ops: torch.export traces them, same numbers as eager."""
    m = build_model("tiny_swin", checkpoint=TINY_SWIN_WEIGHTS, msda_impl="pytorch").backbone.half()
    x = torch.randn(1, 3, 96, 128).half()
    program = torch.export.export(m, (x,), strict=False)
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten._local_scalar_dense.default" not in ops  # no .item() / host sync
    for got, want in zip(program.module()(x), m(x)):
        assert got.dtype == torch.float16 and torch.equal(got, want)
