"""Our module tree reproduces mmdetection's Co-DINO state_dict for every preset.

Reference: tests/fixtures/manifests/<preset>.json, {key: shape} of the official model built by
mmdetection 3.3.0 from each config (see the fixture's "source"/"versions"). Full-size models are
built on the 'meta' device (no weight memory)."""
import json
import os

import pytest

from codetr.checkpoint import DROPPED_KEY_PREFIXES, dropped_key
from codetr.models import build_model
from codetr.presets import PRESETS

MANIFEST_DIR = os.path.join(os.path.dirname(__file__), "fixtures", "manifests")


def _manifest(name):
    path = os.path.join(MANIFEST_DIR, f"{name}.json")
    assert os.path.isfile(path), f"missing manifest fixture {path}"
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_state_dict_matches_official(name):
    official = {k: list(v) for k, v in _manifest(name)["state_dict"].items()}
    ours = {k: list(v.shape) for k, v in build_model(name, device="meta").state_dict().items()}
    dropped = {k for k in official if dropped_key(k)}
    assert not dropped & set(ours), "a dropped key is a real model key"
    assert sorted(set(ours) | dropped) == sorted(official)
    assert {k: official[k] for k in ours} == ours


def test_every_dropped_prefix_is_used():
    keys = set().union(*(_manifest(n)["state_dict"] for n in PRESETS))
    for prefix in DROPPED_KEY_PREFIXES:
        assert any(k.startswith(prefix) for k in keys), f"drop-list entry {prefix!r} matches no official key"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_pipeline_facts_match_config(name):
    m = _manifest(name)
    preset = PRESETS[name]
    p, q = preset.pipeline, preset.postprocess
    assert preset.use_lsj == m["use_lsj"]
    assert preset.model.num_classes == m["num_classes"]
    dp = m["data_preprocessor"]
    assert list(p.mean) == dp["mean"] and list(p.std) == dp["std"] and p.bgr_to_rgb == dp["bgr_to_rgb"]
    resize = next(t for t in m["test_pipeline"] if t["type"] == "Resize")
    assert list(p.resize_scale) == resize["scale"] and p.keep_ratio == resize["keep_ratio"]
    pads = [t for t in m["test_pipeline"] if t["type"] == "Pad"]
    if pads:  # LSJ: fixed-size uint8 pad in the pipeline, before normalisation
        assert list(p.pad_size) == pads[0]["size"]
        assert [p.pad_value] * 3 == pads[0]["pad_val"]["img"]
        assert p.pad_stage == "before_normalize"
    else:  # DetDataPreprocessor pads the normalised batch with its pad_value
        assert p.pad_size is None and p.pad_stage == "after_normalize"
        assert p.pad_value == m["data_preprocessor_effective"]["pad_value"]
    cfg = m["test_cfg"]
    assert q.max_per_img == cfg["max_per_img"] == preset.model.max_per_img
    assert q.nms_type == cfg["nms"]["type"] and q.iou_threshold == cfg["nms"]["iou_threshold"]
    assert q.score_thr == cfg.get("score_thr", 0.0)
    arch = m["architecture"]
    assert preset.model.num_query == arch["num_query"]
    assert preset.model.pos_temperature == arch["positional_encoding"]["temperature"]
