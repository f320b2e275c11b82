"""Presets named after mmdetection's official Co-DINO configs (projects/CO-DETR/configs/codino).

A :class:`Preset` holds the architecture (:class:`ModelConfig`), the test pipeline
(:class:`PipelineConfig`: what ``codetr.preprocess`` does) and the test_cfg post-processing
(:class:`PostprocessConfig`: what ``codetr.postprocess`` does). ``Preset.to_metadata()`` gives the
facts the exporter writes into model.json for the C++ runtime. ``Preset.replace(...)`` /
``dataclasses.replace`` derive reduced variants (tests use them for the golden configs).

Facts read from the configs:
* non-LSJ (``*_coco`` without ``lsj``, o365tococo): Resize(scale=(1333, 800) or (2048, 1280),
  keep_ratio=True); DetDataPreprocessor pads AFTER normalisation with 0; CoDETR(use_lsj=False)
  keeps the padding mask. mmdet's effective pad_size_divisor is 1: a batch is padded to its
  largest image only, a single image not at all. The presets say the same; a static engine
  (``codetr export --height/--width``) pads to its own size instead, an explicit deviation.
* LSJ: Resize(scale=(1024, 1024) r50 / (1280, 1280) swin, keep_ratio=True), then the pipeline's
  Pad(size=image_size, pad_val=114) on the uint8 image BEFORE normalisation; CoDETR(use_lsj=True)
  drops the padding mask (the whole padded input counts as valid).
* test_cfg[0] of the query head: max_per_img=300, nms=soft_nms(iou_threshold=0.8) with mmcv's
  soft_nms defaults (method 'linear', sigma 0.5, min_score 1e-3); no score_thr (0).
The 3x configs differ from their 1x twins only in schedule / drop-path (training only).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from codetr._native import runtime

# The COCO-80 class names in their standard order: the runtime core's table (one copy, C++), which
# also maps them to COCO category ids.
COCO_CLASSES: Tuple[str, ...] = tuple(runtime.coco80_classes())


@dataclass(frozen=True)
class ResNetConfig:
    type: str = "resnet"
    depth: int = 50
    base_channels: int = 64
    out_indices: Tuple[int, ...] = (0, 1, 2, 3)


@dataclass(frozen=True)
class SwinConfig:
    type: str = "swin"
    embed_dims: int = 192
    depths: Tuple[int, ...] = (2, 2, 18, 2)
    num_heads: Tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: int = 4
    patch_size: int = 4
    pretrain_img_size: int = 384  # only shapes the pretraining table interpolation; recorded for reference
    out_indices: Tuple[int, ...] = (0, 1, 2, 3)


@dataclass(frozen=True)
class ModelConfig:
    backbone: object = field(default_factory=ResNetConfig)
    embed_dims: int = 256
    num_levels: int = 5
    num_points: int = 4
    num_query: int = 900
    encoder_layers: int = 6
    encoder_heads: int = 8
    decoder_layers: int = 6
    decoder_self_heads: int = 8
    decoder_cross_heads: int = 8
    ffn_dim: int = 2048
    num_classes: int = 80
    pos_num_feats: int = 128
    pos_temperature: float = 20.0
    max_per_img: int = 300


@dataclass(frozen=True)
class PipelineConfig:
    resize_scale: Tuple[int, int] = (1333, 800)  # as mmdet writes it: (long, short) limits
    keep_ratio: bool = True
    pad_size_divisor: Optional[int] = 32
    pad_size: Optional[Tuple[int, int]] = None  # (H, W) fixed pad size (LSJ)
    pad_value: float = 0.0
    pad_stage: str = "after_normalize"  # or "before_normalize" (uint8 pad in the pipeline)
    mean: Tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: Tuple[float, float, float] = (58.395, 57.12, 57.375)
    bgr_to_rgb: bool = True
    mask: str = "padding"  # "padding": pass the padding mask; "none": LSJ, no mask

    def __post_init__(self):
        if (self.pad_size_divisor is None) == (self.pad_size is None):
            raise ValueError("exactly one of pad_size_divisor and pad_size must be set")
        if self.pad_stage not in ("after_normalize", "before_normalize"):
            raise ValueError(f"pad_stage must be 'after_normalize' or 'before_normalize', got {self.pad_stage!r}")
        if self.mask not in ("padding", "none"):
            raise ValueError(f"mask must be 'padding' or 'none', got {self.mask!r}")


@dataclass(frozen=True)
class PostprocessConfig:
    score_thr: float = 0.0
    nms_type: str = "soft_nms"  # "soft_nms", "nms" or "none"
    iou_threshold: float = 0.8
    soft_nms_method: str = "linear"  # mmcv soft_nms defaults
    sigma: float = 0.5
    min_score: float = 1e-3
    max_per_img: int = 300

    def __post_init__(self):
        if self.nms_type not in ("soft_nms", "nms", "none"):
            raise ValueError(f"nms_type must be 'soft_nms', 'nms' or 'none', got {self.nms_type!r}")
        if self.soft_nms_method not in ("linear", "gaussian", "naive"):
            raise ValueError(f"soft_nms_method must be 'linear', 'gaussian' or 'naive', got {self.soft_nms_method!r}")


@dataclass(frozen=True)
class Preset:
    name: str
    model: ModelConfig
    pipeline: PipelineConfig
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    classes: Tuple[str, ...] = COCO_CLASSES

    @property
    def use_lsj(self) -> bool:
        return self.pipeline.mask == "none"

    def replace(self, **changes) -> "Preset":
        return dataclasses.replace(self, **changes)

    def to_metadata(self) -> Dict:
        """Pre/post-processing facts in model.json's schema (``preprocess``/``postprocess``)."""
        p, q = self.pipeline, self.postprocess
        pad = {"size_divisor": p.pad_size_divisor} if p.pad_size is None else {"size": list(p.pad_size)}
        nms: Dict = {"type": q.nms_type}
        if q.nms_type != "none":
            nms["iou_threshold"] = q.iou_threshold
        if q.nms_type == "soft_nms":
            nms.update(method=q.soft_nms_method, sigma=q.sigma, min_score=q.min_score)
        return {
            "preset": self.name,
            "classes": list(self.classes),
            "num_classes": self.model.num_classes,
            "preprocess": {
                "bgr_to_rgb": p.bgr_to_rgb,
                "resize": {"scale": list(p.resize_scale), "keep_ratio": p.keep_ratio, "interpolation": "bilinear"},
                "pad": pad,
                "pad_value": p.pad_value,
                "pad_stage": p.pad_stage,
                "mean": list(p.mean),
                "std": list(p.std),
                "mask": p.mask,
            },
            "postprocess": {"score_thr": q.score_thr, "nms": nms, "max_per_img": q.max_per_img, "clip": False},
        }


def _non_lsj(scale: Tuple[int, int]) -> PipelineConfig:
    return PipelineConfig(resize_scale=scale, pad_size_divisor=1, pad_value=0.0,
                          pad_stage="after_normalize", mask="padding")


def _lsj(size: int) -> PipelineConfig:
    return PipelineConfig(resize_scale=(size, size), pad_size_divisor=None, pad_size=(size, size),
                          pad_value=114.0, pad_stage="before_normalize", mask="none")


_R50 = ModelConfig(backbone=ResNetConfig())
_SWIN_L = ModelConfig(backbone=SwinConfig())

PRESETS: Dict[str, Preset] = {}
for _name, _model, _pipe in [
    ("co_dino_5scale_r50_8xb2_1x_coco", _R50, _non_lsj((1333, 800))),
    ("co_dino_5scale_r50_lsj_8xb2_1x_coco", _R50, _lsj(1024)),
    ("co_dino_5scale_r50_lsj_8xb2_3x_coco", _R50, _lsj(1024)),
    ("co_dino_5scale_swin_l_16xb1_1x_coco", _SWIN_L, _non_lsj((1333, 800))),
    ("co_dino_5scale_swin_l_16xb1_3x_coco", _SWIN_L, _non_lsj((1333, 800))),
    ("co_dino_5scale_swin_l_lsj_16xb1_1x_coco", _SWIN_L, _lsj(1280)),
    ("co_dino_5scale_swin_l_lsj_16xb1_3x_coco", _SWIN_L, _lsj(1280)),
    ("co_dino_5scale_swin_l_16xb1_16e_o365tococo", _SWIN_L, _non_lsj((2048, 1280))),
]:
    PRESETS[_name] = Preset(name=_name, model=_model, pipeline=_pipe)




# The two reduced configs of the golden parity fixtures (tests/fixtures/golden): the official
# configs with only these sizes changed; same code path.
_TINY_HEAD = dict(embed_dims=64, num_query=50, pos_num_feats=32, encoder_layers=2, encoder_heads=4,
                  decoder_layers=2, decoder_self_heads=4, decoder_cross_heads=4, ffn_dim=128)
REDUCED_PRESETS: Dict[str, Preset] = {
    "tiny_r50": PRESETS["co_dino_5scale_r50_8xb2_1x_coco"].replace(
        name="tiny_r50", model=ModelConfig(backbone=ResNetConfig(base_channels=16), **_TINY_HEAD)),
    "tiny_swin": PRESETS["co_dino_5scale_swin_l_lsj_16xb1_1x_coco"].replace(
        name="tiny_swin", model=ModelConfig(
            backbone=SwinConfig(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)), **_TINY_HEAD)),
}


def get_preset(preset: "str | Preset") -> Preset:
    """A preset by name (official or reduced), or the given :class:`Preset` unchanged."""
    if isinstance(preset, Preset):
        return preset
    if preset in PRESETS:
        return PRESETS[preset]
    if preset in REDUCED_PRESETS:
        return REDUCED_PRESETS[preset]
    raise KeyError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)} "
                   f"(reduced: {', '.join(REDUCED_PRESETS)})")
