"""The Torch-Pruning backend: NNI's channels and outputs, lowest-L1 choice, --round-to, missing package."""
from __future__ import annotations

import copy
import sys

import pytest
import torch

from pruning.errors import UserError
from pruning.model import build_resnet50, channel_plan, prunable_layers
from pruning.plan import target_plan
from pruning.prune import prune

EXAMPLE = torch.zeros(1, 3, 32, 32)


@pytest.fixture(autouse=True)
def _one_thread():
    """NNI's speedup runs many tiny ops: one thread is as fast, and two thrash a shared 2-core machine."""
    torch.set_num_threads(1)


def random_resnet(seed: int = 0) -> torch.nn.Module:
    """ResNet50 with random BatchNorm statistics, so a wrongly carried-over channel changes the outputs."""
    torch.manual_seed(seed)
    model = build_resnet50(10, "none")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def test_nni_and_torch_pruning_give_the_same_channels_and_outputs():
    pytest.importorskip("nni")
    start = random_resnet()
    ratios = {name: 0.1 for name in prunable_layers(start)}
    models = {"nni": copy.deepcopy(start), "torch-pruning": copy.deepcopy(start)}
    for _ in range(2):
        models = {b: prune(m, ratios, EXAMPLE, b) for b, m in models.items()}
        assert channel_plan(models["nni"]) == channel_plan(models["torch-pruning"])
    nni_state, tp_state = models["nni"].state_dict(), models["torch-pruning"].state_dict()
    assert nni_state.keys() == tp_state.keys()
    assert all(torch.equal(nni_state[k], tp_state[k]) for k in nni_state), "the kept weights differ"
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(models["torch-pruning"].eval()(x), models["nni"].eval()(x), rtol=0, atol=1e-6)
    assert channel_plan(models["nni"])["layer1.0.conv1"] == 64 - 6 - 5  # floor rule: 64 -> 58 -> 53


def test_removes_the_lowest_l1_channels_and_keeps_their_bn_statistics():
    model = random_resnet().train()
    conv, bn = model.layer1[0].conv1, model.layer1[0].bn1
    order = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        conv.weight.copy_(torch.sign(conv.weight) * (order.float() + 1).view(-1, 1, 1, 1))  # L1 rank = order
    kept = sorted(order.argsort()[6:].tolist())  # all but the 6 smallest (10% of 64, floored)
    weight, mean = conv.weight.detach().clone(), bn.running_mean.clone()
    pruned = prune(model, {"layer1.0.conv1": 0.1}, EXAMPLE, "torch-pruning")
    assert pruned.training, "the caller's train mode must be restored"
    assert torch.equal(pruned.layer1[0].conv1.weight, weight[kept])
    assert torch.equal(pruned.layer1[0].bn1.running_mean, mean[kept])
    assert pruned.layer1[0].conv2.in_channels == 58
    assert channel_plan(pruned)["layer1.0.conv2"] == 64  # untouched layers keep their width


@pytest.mark.parametrize("round_to", [4, 8])
def test_round_to_keeps_channel_counts_divisible(round_to):
    model = random_resnet()
    ratios = {name: 0.1 for name in prunable_layers(model)}
    for _ in range(3):
        before = channel_plan(model)
        model = prune(model, ratios, EXAMPLE, "torch-pruning", round_to)
        plan = channel_plan(model)
        assert all(c % round_to == 0 for c in plan.values()), plan
        unrounded = target_plan(before, ratios)
        assert all(unrounded[k] <= plan[k] <= before[k] for k in plan)  # rounds up, never above the width
    assert plan != channel_plan(random_resnet()), "three 10% steps must remove channels even when rounded"


def test_missing_torch_pruning_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # makes `import torch_pruning` raise ImportError
    with pytest.raises(UserError, match="pip install"):
        prune(random_resnet(), {"layer1.0.conv1": 0.1}, EXAMPLE, "torch-pruning")
