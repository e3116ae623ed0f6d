"""Stage outputs for feature distillation (issue 7), without touching the torchvision model code.

``capture`` installs forward hooks on the named submodules (ResNet stages ``layer1``..``layer4``) for
the duration of one forward and removes them after, so no hook outlives it: the model can still be
deep-copied, pruned, traced and saved as before. ``make_adapters`` builds the FitNets regressors that
map each student stage's width to the teacher's.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from pruning.model import to_memory_format

STAGES = ("layer1", "layer2", "layer3", "layer4")


@contextlib.contextmanager
def capture(model: nn.Module, stages: Sequence[str] = STAGES) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict that the forwards run inside the block fill with ``{stage: output}``."""
    if not stages:  # logit-only KD: nothing to hook, and no module walk on every batch
        yield {}
        return
    modules = _stage_modules(model, stages)
    feats: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module, inputs, output):
            feats[name] = output
        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in stages]
    try:
        yield feats
    finally:
        for handle in handles:
            handle.remove()


def stage_widths(model: nn.Module, stages: Sequence[str] = STAGES) -> dict[str, int]:
    """Output channels of each stage: the width of its last BatchNorm (a ResNet block's output norm)."""
    widths = {}
    for name, module in _stage_modules(model, stages).items():
        norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
        if not norms:
            raise ValueError(f"stage {name!r} has no BatchNorm2d to read its output width from")
        widths[name] = norms[-1].num_features
    return widths


def make_adapters(student: nn.Module, teacher: nn.Module, stages: Sequence[str] = STAGES) -> nn.ModuleDict:
    """One learned 1x1 conv per stage from the student's width to the teacher's (FitNets' regressor).

    Where the widths are equal (always after this toolkit's pruning, which keeps conv3/downsample)
    the conv starts as the identity, so the hint initially compares the student's own features.
    """
    s_widths, t_widths = stage_widths(student, stages), stage_widths(teacher, stages)
    adapters = nn.ModuleDict()
    for name in stages:
        conv = nn.Conv2d(s_widths[name], t_widths[name], kernel_size=1)
        if s_widths[name] == t_widths[name]:
            with torch.no_grad():
                conv.weight.copy_(torch.eye(s_widths[name])[:, :, None, None])
                conv.bias.zero_()
        adapters[name] = conv
    return to_memory_format(adapters, next(student.parameters()).device)


def _stage_modules(model: nn.Module, stages: Sequence[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    missing = [name for name in stages if name not in modules]
    if missing:
        raise ValueError(f"model has no submodule(s) {missing}; feature distillation needs stages {list(stages)}")
    return {name: modules[name] for name in stages}
