"""One pruning step, whatever the backend: ratios -> target plan -> smaller model, invariants asserted."""
from __future__ import annotations

import torch
from torch import nn

from pruning.errors import UserError
from pruning.model import channel_plan
from pruning.plan import target_plan

BACKENDS = ("nni", "torch-pruning")


def prune(model: nn.Module, ratios: dict[str, float], example: torch.Tensor,
          backend: str = "nni", round_to: int = 1) -> nn.Module:
    """Remove ``floor(ratio * C)`` lowest-L1 output channels of each named layer (see ``target_plan``).

    ``example`` is one input batch on the model's device (its spatial size does not matter).
    The returned model has exactly the target widths and the same classifier; BatchNorm statistics and
    the surviving channels' weights are carried over unchanged.
    """
    before = channel_plan(model)
    target = target_plan(before, ratios, round_to)
    if backend == "nni":
        from pruning.nni_backend import prune_to_plan
    elif backend == "torch-pruning":
        from pruning.tp_backend import prune_to_plan
    else:
        raise UserError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    num_classes = model.fc.out_features
    model = prune_to_plan(model, target, example)
    after = channel_plan(model)
    assert after == target, f"{backend} produced {_diff(after, target)} instead of the target plan"
    assert model.fc.out_features == num_classes, "pruning must never touch the classifier"
    return model


def _diff(got: dict[str, int], want: dict[str, int]) -> str:
    bad = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    return ", ".join(f"{k}: {g} (want {w})" for k, (g, w) in list(bad.items())[:4])
