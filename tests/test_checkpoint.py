"""pruning.checkpoint: plan + state_dict round trip, safe loading, clear errors."""
import os
import re

import pytest
import torch

from pruning.checkpoint import (DIGEST, atomic_save, content_digest, dense_plan, load_pruned, safe_load,
                                save_pruned)
from pruning.errors import UserError
from pruning.model import build_from_plan, build_resnet50, channel_plan, prunable_layers
from pruning.plan import uniform_ratios
from pruning.prune import prune


@pytest.fixture(scope="module")
def pruned():
    torch.manual_seed(0)
    model = build_resnet50(7).eval()
    return prune(model, uniform_ratios(prunable_layers(model), 0.2), torch.zeros(1, 3, 32, 32))


def test_round_trip_gives_identical_outputs(pruned, tmp_path):
    path = tmp_path / "m.pt"
    save_pruned(path, pruned, {"step": 3})
    raw = torch.load(path, weights_only=True)  # no pickled code needed
    assert raw["plan"] == channel_plan(pruned) and raw["meta"] == {"step": 3}
    loaded, meta = load_pruned(path)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    assert meta == {"step": 3} and channel_plan(loaded) == channel_plan(pruned)


def test_truncated_checkpoint_is_a_one_line_error(pruned, tmp_path):
    path = tmp_path / "m.pt"
    save_pruned(path, pruned)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated") as err:
        load_pruned(path)
    assert "\n" not in str(err.value)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"plan": {}, "num_classes": 2, "state_dict": {}, "x": Evil()}, path)
    with pytest.raises(UserError, match="refused by the safe loader"):
        safe_load(path)


def test_foreign_file_is_named(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(UserError, match="not a checkpoint of this toolkit"):
        load_pruned(path)
    with pytest.raises(UserError, match="does not exist"):
        load_pruned(tmp_path / "missing.pt")


def test_save_is_atomic_when_interrupted(pruned, tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save_pruned(path, pruned, {"v": 1})

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt  # a kill in the middle of writing

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_pruned(path, pruned, {"v": 2})
    monkeypatch.undo()
    assert load_pruned(path)[1] == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind


@pytest.fixture(scope="module")
def small():
    """The smallest real pruned model: every prunable conv at one channel (an 11.6 MB checkpoint)."""
    torch.manual_seed(0)
    return build_from_plan(7, {name: 1 for name in dense_plan()})


def flip_tensor_bit(path) -> None:
    """One bit flipped in the middle of the file, i.e. in tensor data: torch's zip reader checks no CRC."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))


def test_a_flipped_bit_is_refused_by_the_digest(small, tmp_path):
    path = tmp_path / "m.pt"
    save_pruned(path, small, {"step": 3})
    flip_tensor_bit(path)
    torch.load(path, weights_only=True)  # the damage is invisible to torch itself
    with pytest.raises(UserError, match="its digest does not match: the file is damaged; delete it and rerun"):
        load_pruned(path)


def test_the_digest_covers_every_entry_and_is_not_returned(small, tmp_path):
    path = tmp_path / "m.pt"
    save_pruned(path, small, {"step": 3}, optimizer={"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": []})
    raw = torch.load(path, weights_only=True)
    assert raw[DIGEST] == content_digest(raw) and DIGEST not in safe_load(path)
    raw["optimizer"]["state"][0]["exp_avg"][0] = 2.0  # an entry outside plan and weights, changed
    torch.save(raw, path)
    with pytest.raises(UserError, match="digest does not match"):
        safe_load(path)


def test_checkpoints_without_a_digest_still_load(small, tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"plan": channel_plan(small), "num_classes": 7, "state_dict": small.state_dict(), "meta": {"v": 0}},
               path)  # as save_pruned wrote them before issue 14
    model, meta = load_pruned(path)
    assert meta == {"v": 0} and torch.equal(model.fc.weight, small.fc.weight)


@pytest.mark.parametrize("change, message", [
    ({"plan": {"layer1.0.conv1": "51"}}, "its plan must map prunable layers"),
    ({"plan": {"layer1.0.conv1": 0}}, "its plan must map prunable layers"),
    ({"plan": {"layer1.0.conv1": 10 ** 9}}, "its plan must map prunable layers"),  # no giant model is built
    ({"num_classes": True}, "num_classes must be a positive int"),
    ({"num_classes": 8}, "weights do not match its plan (fc has 8 outputs in the plan, its weight is [7, 2048])"),
    ({"meta": [1]}, "its state_dict and meta must be dicts"),
    ({"state_dict": {"fc.weight": torch.zeros(7, 2048)}}, "weights do not match its plan (layer1.0.conv1 has"),
])
def test_a_checkpoint_with_junk_inside_is_named(change, message, small, tmp_path):
    path = tmp_path / "m.pt"
    save_pruned(path, small)
    atomic_save({**safe_load(path), **change}, path)  # a valid digest of the junk: the structure check decides
    with pytest.raises(UserError, match=re.escape(message)):
        load_pruned(path)


def test_a_tensor_of_another_shape_or_type_is_named(small, tmp_path):
    path = tmp_path / "m.pt"
    save_pruned(path, small)
    ckpt = safe_load(path)
    ckpt["state_dict"]["bn1.running_mean"] = torch.zeros(3)
    atomic_save(ckpt, path)
    with pytest.raises(UserError, match=re.escape("bn1.running_mean has shape [3], the model needs [64]")):
        load_pruned(path)
    ckpt["state_dict"]["bn1.running_mean"] = torch.zeros(64, dtype=torch.complex64)
    atomic_save(ckpt, path)
    with pytest.raises(UserError, match="bn1.running_mean is torch.complex64, the model needs torch.float32"):
        load_pruned(path)


def test_directories_and_garbage_are_named(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        load_pruned(tmp_path)
    (tmp_path / "g.pt").write_bytes(bytes(range(256)) * 4)  # the unpickler's IndexError/KeyError of issue 14
    with pytest.raises(UserError, match="is corrupt or truncated"):
        load_pruned(tmp_path / "g.pt")
