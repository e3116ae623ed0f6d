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
