"""pruning.plan: the floor rule, round_to, and the seed's parameter trajectory (no training needed)."""
import pytest
import torch

from pruning.errors import UserError
from pruning.measure import count_flops, count_params
from pruning.model import build_from_plan, build_resnet50, channel_plan, plan_flops, plan_params, prunable_layers
from pruning.plan import target_plan, uniform_ratios

# NNI 3.0's rounding reproduces the seed's table within 3.5% at every published step.
SEED_TRAJECTORY = {1: 20_639_037, 2: 18_051_107, 5: 12_485_140, 7: 10_078_784, 10: 7_663_862,
                   13: 6_146_234, 16: 5_154_387, 20: 4_336_346}


@pytest.fixture(scope="module")
def dense_plan():
    return channel_plan(build_resnet50(100))


def test_floor_rule_removes_floor_of_ratio_times_channels(dense_plan):
    plan = target_plan(dense_plan, {"layer1.0.conv1": 0.1, "layer4.2.conv2": 0.5})
    assert plan["layer1.0.conv1"] == 58            # 64 - floor(6.4)
    assert plan["layer4.2.conv2"] == 256           # 512 - 256
    assert plan["layer2.0.conv1"] == dense_plan["layer2.0.conv1"]  # absent from ratios: untouched


def test_uniform_trajectory_matches_seed_table(dense_plan):
    plan, params = dict(dense_plan), {}
    for step in range(1, 21):
        plan = target_plan(plan, uniform_ratios(list(plan), 0.1))
        params[step] = count_params(build_from_plan(100, plan))
    assert count_params(build_from_plan(100, dense_plan)) == 23_712_932
    assert params[1] == 20_666_005 and params[2] == 18_090_982 and params[20] == 4_468_618
    for step, seed in SEED_TRAJECTORY.items():
        assert abs(params[step] - seed) / seed < 0.035, (step, params[step], seed)
    assert all(params[s] < params[s - 1] for s in range(2, 21))


@pytest.mark.parametrize("round_to", [4, 8, 16])
def test_round_to_keeps_multiples(dense_plan, round_to):
    plan = target_plan(dense_plan, uniform_ratios(list(dense_plan), 0.37), round_to=round_to)
    assert all(c % round_to == 0 for c in plan.values())
    assert all(plan[k] <= dense_plan[k] for k in plan)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_ratio_is_a_user_error(dense_plan, ratio):
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        target_plan(dense_plan, {"layer1.0.conv1": ratio})


def test_unknown_layer_is_named(dense_plan):
    with pytest.raises(UserError, match="layer9.0.conv1"):
        target_plan(dense_plan, {"layer9.0.conv1": 0.1})


def test_prunable_layers_are_bottleneck_conv1_conv2_only():
    names = prunable_layers(build_resnet50(10))
    assert len(names) == 32
    assert all(n.split(".")[-1] in ("conv1", "conv2") and n.startswith("layer") for n in names)
    assert not any("downsample" in n or "conv3" in n for n in names)


def test_plan_params_counts_a_plan_exactly_without_building_it():
    dense = build_resnet50(7)
    count = plan_params(dense)
    assert count(channel_plan(dense)) == count_params(dense)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # random widths per layer, and a plan naming only some layers (the rest stay dense)
        plan = {name: int(torch.randint(1, c + 1, (), generator=gen)) for name, c in channel_plan(dense).items()}
        assert count(plan) == count_params(build_from_plan(7, plan))
    partial = {"layer4.2.conv2": 5}
    assert count(partial) == count_params(build_from_plan(7, partial)) < count_params(dense)


def test_plan_flops_counts_a_plans_macs_exactly_without_building_it():
    dense = build_resnet50(7)
    for image_size in (32, 40):  # the stride-2 stages' maps: 40 px is not a power of two
        count = plan_flops(dense, image_size)
        assert count(channel_plan(dense)) == count_flops(dense, image_size)
        gen = torch.Generator().manual_seed(image_size)
        plan = {name: int(torch.randint(1, c + 1, (), generator=gen)) for name, c in channel_plan(dense).items()}
        assert count(plan) == count_flops(build_from_plan(7, plan), image_size)
    # a channel costs more where the feature maps are large: layer1 (8 x 8 at 32 px) against layer4 (1 x 1)
    count = plan_flops(dense, 32)
    full = count(channel_plan(dense))
    assert full - count({"layer1.0.conv1": 63}) > full - count({"layer4.0.conv1": 511})
