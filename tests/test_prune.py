"""pruning.prune with the NNI backend: exact surviving weights, BN statistics and outputs."""
import copy

import pytest
import torch

from pruning.errors import UserError
from pruning.measure import count_params
from pruning.model import build_resnet50, channel_plan, prunable_layers
from pruning.plan import target_plan, uniform_ratios
from pruning.prune import prune

EXAMPLE = torch.zeros(1, 3, 32, 32)


def randomized_resnet(num_classes=10, seed=0):
    """ResNet50 with random (non-default) BN statistics, so carrying them over is really tested."""
    torch.manual_seed(seed)
    model = build_resnet50(num_classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def dense_and_pruned():
    dense = randomized_resnet()
    pruned = prune(copy.deepcopy(dense), uniform_ratios(prunable_layers(dense), 0.3), EXAMPLE)
    return dense, pruned


def kept_indices(dense_conv, pruned_conv):
    """The output channels NNI kept: the highest-L1 ones, in their original order."""
    norms = dense_conv.weight.detach().abs().sum(dim=(1, 2, 3))
    keep = norms.topk(pruned_conv.out_channels).indices.sort().values
    return keep


def test_surviving_weights_and_bn_statistics_are_exact(dense_and_pruned):
    dense, pruned = dense_and_pruned
    d, p = dict(dense.named_modules()), dict(pruned.named_modules())
    keep = {name: kept_indices(d[name], p[name]) for name in prunable_layers(dense)}
    for name in prunable_layers(dense):
        block, conv = name.rsplit(".", 1)
        bn = f"{block}.bn{conv[-1]}"
        for attr in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(p[bn], attr), getattr(d[bn], attr)[keep[name]]), (bn, attr)
    for block in {n.rsplit(".", 1)[0] for n in keep}:
        k1, k2 = keep[f"{block}.conv1"], keep[f"{block}.conv2"]
        assert torch.equal(p[f"{block}.conv1"].weight, d[f"{block}.conv1"].weight[k1])
        assert torch.equal(p[f"{block}.conv2"].weight, d[f"{block}.conv2"].weight[k2][:, k1])
        assert torch.equal(p[f"{block}.conv3"].weight, d[f"{block}.conv3"].weight[:, k2])


def test_pruned_output_equals_masked_dense_output(dense_and_pruned):
    dense, pruned = dense_and_pruned
    d, p = dict(dense.named_modules()), dict(pruned.named_modules())
    hooks = []
    for name in prunable_layers(dense):
        block, conv = name.rsplit(".", 1)
        mask = torch.zeros(d[name].out_channels)
        mask[kept_indices(d[name], p[name])] = 1
        # Zero the removed channels after BN: what the pruned network computes without them.
        hooks.append(d[f"{block}.bn{conv[-1]}"].register_forward_hook(
            lambda m, i, out, mask=mask: out * mask.view(1, -1, 1, 1)))
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected, got = dense(x), pruned(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_pruning_leaves_bn_buffers_and_outputs_of_the_next_step_intact():
    """NNI's speedup leaves modules in train mode; two steps in a row must not touch BN statistics."""
    model = randomized_resnet(seed=1)
    once = prune(model, uniform_ratios(prunable_layers(model), 0.1), EXAMPLE)
    snapshot = copy.deepcopy(once)
    twice = prune(once, {}, EXAMPLE)  # no-op step: must change nothing
    x = torch.randn(2, 3, 32, 32)
    for (name, a), (_, b) in zip(snapshot.state_dict().items(), twice.state_dict().items()):
        assert torch.equal(a, b), name
    third = prune(twice, uniform_ratios(prunable_layers(twice), 0.1), EXAMPLE)
    assert not third.training and not any(m.training for m in third.modules())
    stem_bn = ("bn1.running_mean", "layer1.0.bn3.running_var", "layer4.2.bn3.running_mean")
    for key in stem_bn:  # unpruned BNs: statistics identical after another prune+speedup
        assert torch.equal(third.state_dict()[key], snapshot.state_dict()[key]), key
    with torch.no_grad():
        assert torch.isfinite(third(x)).all()


def test_two_steps_give_the_measured_nni_param_counts():
    model = build_resnet50(100).eval()
    counts = []
    for _ in range(2):
        model = prune(model, uniform_ratios(prunable_layers(model), 0.1), EXAMPLE)
        counts.append(count_params(model))
    assert counts == [20_666_005, 18_090_982]


def test_per_layer_ratio_dict_is_honoured():
    model = build_resnet50(10).eval()
    before = channel_plan(model)
    ratios = {"layer1.0.conv1": 0.5, "layer3.4.conv2": 0.25, "layer4.2.conv1": 0.0}
    pruned = prune(model, ratios, EXAMPLE)
    after = channel_plan(pruned)
    assert after == target_plan(before, ratios)
    assert after["layer1.0.conv1"] == 32 and after["layer3.4.conv2"] == 192 and after["layer4.2.conv1"] == 512
    for size in (32, 64, 97):  # the pruned model still runs at any input size
        assert pruned(torch.zeros(1, 3, size, size)).shape == (1, 10)


@pytest.mark.parametrize("ratios, match", [({"layer1.0.conv3": 0.1}, "unknown layer"),
                                           ({"layer1.0.conv1": 1.0}, r"\[0, 1\)")])
def test_bad_plans_are_user_errors(ratios, match):
    with pytest.raises(UserError, match=match):
        prune(build_resnet50(10).eval(), ratios, EXAMPLE)
