"""Backbones against independent implementations (torchvision), plus the neck's level rule.

* ResNet-50 'pytorch' style == torchvision resnet50 (v1.5: stride on the 3x3 conv): same weights
  (same key names) -> same stage outputs.
* Swin == torchvision's SwinTransformer (v1) at reduced depth/width, weights converted:
  torchvision's PatchMerging concatenates the 2x2 neighbours as [(0,0), (1,0), (0,1), (1,1)]
  blocks of C channels, mmdet's nn.Unfold order is channel-major (c, ky, kx). Feature maps are
  not multiples of the window (12) so the pad/crop path runs; torchvision builds its own
  relative-position index, so ours is checked too. torchvision has no per-stage norms: its stage
  outputs go through our norm{i} modules for the comparison.
"""
import pytest
import torch
import torchvision
from torchvision.models.swin_transformer import SwinTransformer as TVSwin

from codetr.models.channel_mapper import ChannelMapper
from codetr.models.resnet import ResNet, max_pool_3x3_s2
from codetr.models.swin import SwinTransformer


def _randomise_bn(model, gen):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@torch.no_grad()
def test_resnet50_matches_torchvision():
    gen = torch.Generator().manual_seed(0)
    ref = torchvision.models.resnet50().eval()
    _randomise_bn(ref, gen)
    ours = ResNet(depth=50).eval()
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 96, 64, generator=gen)
    outs = ours(x)
    y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
    for i, layer in enumerate([ref.layer1, ref.layer2, ref.layer3, ref.layer4]):
        y = layer(y)
        torch.testing.assert_close(outs[i], y, rtol=1e-5, atol=1e-5)
    assert [o.shape[1] for o in outs] == [256, 512, 1024, 2048] == ours.out_channels


def _tv_to_ours(tv_state, embed, depths):
    out = {"patch_embed.projection.weight": tv_state["features.0.0.weight"],
           "patch_embed.projection.bias": tv_state["features.0.0.bias"],
           "patch_embed.norm.weight": tv_state["features.0.2.weight"],
           "patch_embed.norm.bias": tv_state["features.0.2.bias"]}
    names = {"norm1": "norm1", "norm2": "norm2", "attn.qkv": "attn.w_msa.qkv", "attn.proj": "attn.w_msa.proj",
             "mlp.0": "ffn.layers.0.0", "mlp.3": "ffn.layers.1"}
    for i, depth in enumerate(depths):
        for j in range(depth):
            src, dst = f"features.{2 * i + 1}.{j}.", f"stages.{i}.blocks.{j}."
            for a, b in names.items():
                for p in ("weight", "bias"):
                    out[f"{dst}{b}.{p}"] = tv_state[f"{src}{a}.{p}"]
            out[f"{dst}attn.w_msa.relative_position_bias_table"] = tv_state[f"{src}attn.relative_position_bias_table"]
        if i < len(depths) - 1:
            C = embed * 2 ** i
            # ours channel c*4 + ky*2 + kx  <-  torchvision block b(ky,kx)*C + c
            block = {(0, 0): 0, (1, 0): 1, (0, 1): 2, (1, 1): 3}
            perm = torch.tensor([block[(ky, kx)] * C + c for c in range(C) for ky in (0, 1) for kx in (0, 1)])
            src = f"features.{2 * i + 2}."
            out[f"stages.{i}.downsample.reduction.weight"] = tv_state[f"{src}reduction.weight"][:, perm]
            out[f"stages.{i}.downsample.norm.weight"] = tv_state[f"{src}norm.weight"][perm]
            out[f"stages.{i}.downsample.norm.bias"] = tv_state[f"{src}norm.bias"][perm]
    return out


@pytest.mark.parametrize("height, width", [(1, 1), (2, 3), (7, 8), (9, 10), (33, 64), (100, 201)])
def test_stem_max_pool_equals_max_pool2d_at_every_parity(height, width):
    x = torch.randn(2, 5, height, width, dtype=torch.float64)
    assert torch.equal(max_pool_3x3_s2(x), torch.nn.functional.max_pool2d(x, 3, stride=2, padding=1))


@torch.no_grad()
def test_swin_matches_torchvision():
    torch.manual_seed(0)
    embed, depths, heads, window = 16, (2, 2, 2, 2), (1, 2, 2, 4), 12
    ref = TVSwin(patch_size=[4, 4], embed_dim=embed, depths=list(depths), num_heads=list(heads),
                 window_size=[window, window], stochastic_depth_prob=0.0).eval()
    for name, p in ref.named_parameters():  # non-trivial biases / tables
        if "relative_position_bias_table" in name or name.endswith("bias"):
            p.normal_(0, 0.2)
    ours = SwinTransformer(embed_dims=embed, depths=depths, num_heads=heads, window_size=window).eval()
    for name, p in ours.named_parameters():
        if name.startswith("norm"):
            p.normal_(0, 0.5)
    state = _tv_to_ours(ref.state_dict(), embed, depths)
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert unexpected == [] and all(k.startswith("norm") or k.endswith("relative_position_index") for k in missing)
    for i in range(len(depths)):
        tv_index = ref.features[2 * i + 1][0].attn.relative_position_index.view(window ** 2, window ** 2)
        assert torch.equal(ours.stages[i].blocks[0].attn.w_msa.relative_position_index, tv_index)

    # 448 x 424 -> stage sizes 112x106, 56x53, 28x27, 14x14: none a multiple of 12 (window
    # padding), odd widths before a merge (merge padding), all larger than the window
    # (torchvision drops the shift when the window covers the map; mmdet does not)
    x = torch.randn(1, 3, 448, 424)
    outs = ours(x)
    y = ref.features[0](x)
    for i in range(len(depths)):
        y = ref.features[2 * i + 1](y)
        expect = getattr(ours, f"norm{i}")(y).permute(0, 3, 1, 2)
        torch.testing.assert_close(outs[i], expect, rtol=1e-4, atol=1e-4)
        if i < len(depths) - 1:
            y = ref.features[2 * i + 2](y)


@torch.no_grad()
def test_swin_pads_the_image_to_the_patch_size():
    """mmdet's PatchEmbed pads bottom/right with zeros to a multiple of the patch size."""
    torch.manual_seed(0)
    ours = SwinTransformer(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7).eval()
    x = torch.randn(1, 3, 98, 130)
    padded = torch.nn.functional.pad(x, (0, 2, 0, 2))
    for got, want in zip(ours(x), ours(padded)):
        assert torch.equal(got, want)
    assert [o.shape[-2:] for o in ours(x)] == [(25, 33), (13, 17), (7, 9), (4, 5)]


@torch.no_grad()
def test_channel_mapper_extra_level_comes_from_last_backbone_feature():
    torch.manual_seed(0)
    neck = ChannelMapper([8, 16], out_channels=32, num_outs=4).eval()
    feats = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8)]
    outs = neck(feats)
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]
    conv, gn = neck.extra_convs[0].conv, neck.extra_convs[0].gn
    expect = torch.nn.functional.group_norm(
        torch.nn.functional.conv2d(feats[1], conv.weight, stride=2, padding=1), 32, gn.weight, gn.bias)
    torch.testing.assert_close(outs[2], expect)
    torch.testing.assert_close(outs[3], neck.extra_convs[1](outs[2]))
