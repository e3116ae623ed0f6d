"""Channel plans: from per-layer pruning ratios to the channel counts the next model must have.

Backends receive a *target plan* and must produce exactly it (asserted), so NNI and Torch-Pruning
agree by construction and the rounding rule lives here, once.
"""
from __future__ import annotations

import math

from pruning.errors import UserError


def check_ratio(name: str, ratio: float) -> None:
    if not (isinstance(ratio, (int, float)) and 0.0 <= ratio < 1.0 and math.isfinite(ratio)):
        raise UserError(f"{name}={ratio!r}: a pruning ratio must be in [0, 1) (0.1 removes 10% of the channels)")


def uniform_ratios(layers: list[str], ratio: float) -> dict[str, float]:
    check_ratio("ratio", ratio)
    return {name: ratio for name in layers}


def target_plan(current: dict[str, int], ratios: dict[str, float], round_to: int = 1) -> dict[str, int]:
    """Channel counts after removing ``floor(ratio * C)`` of the ``C`` current channels of each layer.

    ``floor`` is NNI 3.0's rule (64 channels at 10% -> 58), which reproduces the seed's parameter
    trajectory. ``round_to`` > 1 then rounds the kept count *up* to a multiple of it (odd widths waste
    tensor cores), never above the current width. Layers absent from ``ratios`` keep their width.
    """
    unknown = sorted(set(ratios) - set(current))
    if unknown:
        example = next(iter(current), "layer1.0.conv1")
        raise UserError(f"unknown layer name(s) {unknown[:3]} in the ratios: prunable layers look like '{example}'")
    if round_to < 1:
        raise UserError(f"round_to={round_to}: must be >= 1")
    plan = dict(current)
    for name, ratio in ratios.items():
        check_ratio(name, ratio)
        channels = current[name]
        keep = channels - math.floor(ratio * channels)
        if round_to > 1:
            keep = min(channels, math.ceil(keep / round_to) * round_to)
        if keep < 1:
            raise UserError(f"{name}: the plan removes every channel; lower its ratio")
        plan[name] = keep
    return plan


def plan_ratios(dense: dict[str, int], plan: dict[str, int]) -> dict[str, float]:
    """Fraction of each layer's dense channels removed by ``plan`` (for reports)."""
    return {name: 1.0 - plan[name] / dense[name] for name in plan}


def exact_ratios(current: dict[str, int], target: dict[str, int]) -> dict[str, float]:
    """The ratios whose floor rule (``target_plan``) takes ``current`` widths exactly to ``target``."""
    ratios = {}
    for name, keep in target.items():
        channels = current[name]
        if keep > channels:
            raise AssertionError(f"{name}: cannot widen {channels} channels to {keep}")
        # +0.5 keeps floor(ratio * channels) == channels - keep free of float error.
        ratios[name] = 0.0 if keep == channels else (channels - keep + 0.5) / channels
    return ratios


def uniform_plans(dense: dict[str, int], ratios: dict[str, float], steps: int, round_to: int = 1
                  ) -> list[dict[str, int]]:
    """The widths after each of ``steps`` iterated pruning steps of ``ratios`` (the baseline's schedule):
    the floor rule applied to the widths the step before left, not ``1 - (1 - r)^k`` of the dense ones."""
    plans, widths = [], dense
    for _ in range(steps):
        widths = target_plan(widths, ratios, round_to)
        plans.append(widths)
    return plans


def substep_plans(dense: dict[str, int], target: dict[str, int], steps: int, round_to: int = 1
                  ) -> list[dict[str, int]]:
    """Widths after each of ``steps`` sub-steps that lead from ``dense`` to ``target``.

    Each sub-step but the last removes ``1 - (1 - r)^(1/steps)`` of the current channels (``r`` the
    layer's overall ratio), so the work is spread evenly; the last lands exactly on ``target`` whatever
    the rounding did on the way. No layer drops below its target early.
    """
    overall = {name: 1.0 - target[name] / dense[name] for name in target}
    sub = {name: 1.0 - (1.0 - r) ** (1.0 / steps) for name, r in overall.items()}
    plans, widths = [], dense
    for _ in range(steps - 1):
        widths = {name: max(keep, target[name]) for name, keep in target_plan(widths, sub, round_to).items()}
        plans.append(widths)
    plans.append(dict(target))
    assert target_plan(widths, exact_ratios(widths, target), round_to) == target, "sub-steps missed the target"
    return plans
