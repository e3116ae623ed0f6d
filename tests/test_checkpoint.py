"""pruning.checkpoint: plan + state_dict round trip, safe loading, clear errors."""
import os
import pickle

import pytest
import torch

from pruning.checkpoint import load_pruned, safe_load, save_pruned
from pruning.errors import UserError
from pruning.model import build_resnet50, channel_plan, prunable_layers
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
