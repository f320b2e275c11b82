"""torch.export of a reduced Co-DINO: static shapes and dynamic H, W (multiples of 32), with a
padding mask, no graph breaks (torch.export fails on any), same outputs as eager."""
import torch
from torch.export import Dim, export

from codetr.models import build_model, min_dynamic_input_size


def _inputs(h, w, valid_h, valid_w):
    torch.manual_seed(0)
    x = torch.randn(1, 3, h, w)
    mask = torch.ones(1, h, w, dtype=torch.bool)
    mask[:, :valid_h, :valid_w] = False
    return x, mask


def _assert_same(a, b):
    for got, want in zip(a, b):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_export_static_pytorch_msda():
    model = build_model("tiny_r50", msda_impl="pytorch")
    x, mask = _inputs(64, 96, 64, 80)
    ep = export(model, (x, mask))
    _assert_same(ep.module()(x, mask), model(x, mask))


def test_export_dynamic_hw():
    # the deployed form: the custom op when built (kept as one node in the graph), else grid_sample
    impl = "op"
    model = build_model("tiny_r50", msda_impl=impl)
    x, mask = _inputs(128, 96, 128, 96)
    # min 3 * 32: at 32 px or 64 px the stride-64 level is 1 pixel wide and torch specialises size-1 dims
    low = min_dynamic_input_size("tiny_r50") // 32
    assert low == 3
    h, w = Dim("h", min=low, max=64), Dim("w", min=low, max=64)
    ep = export(model, (x, mask), dynamic_shapes={"images": {2: 32 * h, 3: 32 * w},
                                                  "masks": {1: 32 * h, 2: 32 * w}})
    if impl == "op":
        assert any("codetr.ms_deform_attn" in str(n.target) for n in ep.graph.nodes)
    for size, valid in [((96, 96), (80, 96)), ((128, 160), (128, 100))]:
        x2, m2 = _inputs(*size, *valid)
        _assert_same(ep.module()(x2, m2), model(x2, m2))


def test_export_dynamic_hw_swin_without_mask():
    """LSJ-style call (no mask) through Swin's window padding / shifted-window mask with symbolic
    sizes; >= 416 px keeps >= 2 attention windows per axis at stride 32 (see codino.py)."""
    model = build_model("tiny_swin", msda_impl="op")
    torch.manual_seed(0)
    x = torch.randn(1, 3, 416, 448)
    low = min_dynamic_input_size("tiny_swin") // 32
    assert low == 13
    h, w = Dim("h", min=low, max=64), Dim("w", min=low, max=64)
    ep = export(model, (x,), dynamic_shapes={"images": {2: 32 * h, 3: 32 * w}})
    # 480 x 768: no window padding along W at any stride (192, 96, 48, 24 px) nor along H at
    # strides 4 and 8 (120, 60 px); the example input is padded everywhere, so this checks that
    # nothing specialised on the presence of padding
    x2 = torch.randn(1, 3, 480, 768)
    _assert_same(ep.module()(x2), model(x2))
