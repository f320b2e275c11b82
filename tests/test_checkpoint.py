"""Checkpoint loading: mmdet .pth layout, bare state_dict, safetensors; strictness and errors;
weights-only reading with the inert fallback for pickled training objects."""
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from codetr.checkpoint import CheckpointError, DROPPED_KEY_PREFIXES, read_checkpoint
from codetr.models import build_model
from codetr.presets import COCO_CLASSES

CLASSES = [f"thing{i}" for i in range(80)]
_SIDE_EFFECTS = []


def _record_side_effect(*args):
    _SIDE_EFFECTS.append(args)
    return args


class _PickledTrainingState:
    """Stands in for mmengine objects in a checkpoint: unpickling it would call a function."""

    def __reduce__(self):
        return (_record_side_effect, ("unpickled",))


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    model = build_model("tiny_r50", msda_impl="pytorch")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    # an mmdet-layout state_dict: our keys plus the auxiliary / training-only ones
    state = dict(model.state_dict())
    state["rpn_head.rpn_conv.weight"] = torch.zeros(64, 64, 3, 3)
    state["query_head.dn_generator.label_embedding.weight"] = torch.zeros(80, 64)
    state["query_head.downsample.0.weight"] = torch.zeros(64, 64, 3, 3)
    x = torch.randn(1, 3, 64, 64)
    return model, state, x, model(x)


def _assert_same_outputs(model, x, expected):
    for got, want in zip(model(x), expected):
        assert torch.equal(got, want)


def test_mmdet_pth_layout(tmp_path, source):
    model, state, x, expected = source
    path = tmp_path / "mmdet.pth"
    torch.save({"state_dict": state, "meta": {"dataset_meta": {"classes": tuple(CLASSES)}, "epoch": 12}}, path)
    loaded = build_model("tiny_r50", checkpoint=str(path), msda_impl="pytorch")
    assert loaded.classes == CLASSES
    _assert_same_outputs(loaded, x, expected)


def test_bare_state_dict_and_safetensors(tmp_path, source):
    model, state, x, expected = source
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    loaded = build_model("tiny_r50", checkpoint=str(bare), msda_impl="pytorch")
    assert loaded.classes == list(COCO_CLASSES)
    _assert_same_outputs(loaded, x, expected)

    st = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st), metadata={"classes": json.dumps(CLASSES)})
    loaded = build_model("tiny_r50", checkpoint=str(st), msda_impl="pytorch")
    assert loaded.classes == CLASSES
    _assert_same_outputs(loaded, x, expected)


def test_pickled_training_objects_are_not_executed(tmp_path, source):
    model, state, x, expected = source
    path = tmp_path / "with_objects.pth"
    torch.save({"state_dict": state, "message_hub": _PickledTrainingState(),
                "meta": {"dataset_meta": {"classes": CLASSES}}}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what the first attempt sees
    _SIDE_EFFECTS.clear()
    state_read, classes = read_checkpoint(str(path))
    assert _SIDE_EFFECTS == [], "checkpoint loading executed pickled code"
    assert classes == CLASSES
    loaded = build_model("tiny_r50", checkpoint=str(path), msda_impl="pytorch")
    _assert_same_outputs(loaded, x, expected)


def test_wrong_checkpoint_lists_every_problem(tmp_path, source):
    model, state, x, expected = source
    bad = dict(state)
    del bad["query_head.transformer.query_embed.weight"]
    bad["query_head.transformer.not_a_param"] = torch.zeros(3)
    bad["neck.convs.0.conv.weight"] = torch.zeros(64, 32, 1, 1)
    with pytest.raises(CheckpointError) as err:
        build_model("tiny_r50", checkpoint=bad)
    msg = str(err.value)
    assert "missing keys (1): query_head.transformer.query_embed.weight" in msg
    assert "unexpected keys (1): query_head.transformer.not_a_param" in msg
    assert "neck.convs.0.conv.weight: checkpoint (64, 32, 1, 1) vs model (64, 64, 1, 1)" in msg
    # a checkpoint of another architecture
    with pytest.raises(CheckpointError, match="missing keys"):
        build_model("tiny_swin", checkpoint=state)


def test_computed_buffers_may_be_absent(source):
    model, state, x, expected = source
    without = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    loaded = build_model("tiny_r50", checkpoint=without, msda_impl="pytorch")
    _assert_same_outputs(loaded, x, expected)


def test_missing_file_and_bad_content(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model("tiny_r50", checkpoint=str(tmp_path / "nope.pth"))
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="expected a dict"):
        build_model("tiny_r50", checkpoint=str(path))


def test_drop_list_is_explicit():
    assert "rpn_head." in DROPPED_KEY_PREFIXES and "query_head.dn_generator." in DROPPED_KEY_PREFIXES
    assert not any(p.startswith(("backbone", "neck", "query_head.transformer.encoder",
                                 "query_head.transformer.decoder", "query_head.cls", "query_head.reg"))
                   for p in DROPPED_KEY_PREFIXES)
