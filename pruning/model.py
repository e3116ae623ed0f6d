"""ResNet50 construction, the list of prunable layers, and rebuilding a model from a channel plan.

A *plan* maps each prunable conv (``layer3.2.conv1``) to its number of output channels. Only the
bottleneck-internal ``conv1``/``conv2`` are prunable: ``conv3``, ``downsample`` and the stem feed the
residual additions, so their widths must stay (the seed's "excluding the residual connections").
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from pruning.errors import UserError
from pruning.measure import macs_of, output_shapes

PRUNABLE_SUFFIXES = ("conv1", "conv2")


def build_resnet50(num_classes: int, weights: str = "none") -> nn.Module:
    """torchvision ResNet50 with its fc replaced by ``num_classes`` outputs.

    ``weights``: ``imagenet`` (``ResNet50_Weights.IMAGENET1K_V2``), ``none``, or a path to a
    torchvision ResNet50 state_dict (for machines without internet).
    """
    if weights not in ("imagenet", "none"):
        model = _resnet50_from_file(weights)
    else:
        model = torchvision.models.resnet50()
    if weights == "imagenet":
        w = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
        try:
            state = w.get_state_dict(progress=False)
        except Exception as exc:  # urllib errors vary by platform; the fix is the same
            raise UserError(
                f"cannot download ImageNet weights ({type(exc).__name__}: {exc}); "
                f"put {w.url.rsplit('/', 1)[-1]} in the torch hub cache, pass --weights PATH, or --weights none"
            ) from None
        model.load_state_dict(state)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _resnet50_from_file(weights: str) -> nn.Module:
    """``--weights PATH``: a torchvision ResNet50 state_dict (or a dict holding one under "state_dict")."""
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights {weights}: no such file; use imagenet, none or a ResNet50 state_dict path")
    from pruning.checkpoint import safe_load  # local import: checkpoint imports this module

    state = safe_load(path)
    state = state.get("state_dict", state)
    with torch.device("meta"):  # shapes only: the weights come from the file
        model = torchvision.models.resnet50()
    mismatch = state_dict_mismatch(model, state)
    if mismatch:
        raise UserError(f"--weights {weights} is not a torchvision ResNet50 state_dict ({mismatch})")
    return assign_weights(model, state)


def state_dict_mismatch(model: nn.Module, state) -> str | None:
    """Why ``state`` cannot be ``model``'s weights (None if it can): names, tensor types, shapes, dtypes.

    Checked before loading, against a model that may live on the meta device: ``load_state_dict`` meets
    a file's junk values with assorted exceptions and warnings rather than one message (issue 14).
    """
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict of tensors"
    expected = model.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [repr(name)[:60] for name in state if name not in expected]
    if missing or unexpected:
        return f"missing {missing[:2]}, unexpected {unexpected[:2]}"
    for name, want in expected.items():
        got = state[name]
        if not isinstance(got, torch.Tensor) or got.layout != torch.strided or got.is_meta or got.is_quantized:
            return f"{name} is a {type(got).__name__}, not a dense tensor"
        if got.shape != want.shape:
            return f"{name} has shape {list(got.shape)}, the model needs {list(want.shape)}"
        if got.dtype != want.dtype and not (got.is_floating_point() and want.is_floating_point()):
            return f"{name} is {got.dtype}, the model needs {want.dtype}"
    return None


def assign_weights(model: nn.Module, state: dict) -> nn.Module:
    """``model`` (typically built on the meta device) with the tensors of ``state`` as its parameters and
    buffers, cast to its dtypes: no random initialisation that the file's weights would overwrite.
    ``state`` must have passed ``state_dict_mismatch``."""
    expected = model.state_dict()
    model.load_state_dict({name: state[name].to(want.dtype) for name, want in expected.items()}, assign=True)
    return model


def prunable_layers(model: nn.Module) -> list[str]:
    """Names of the convs whose output channels may be removed (bottleneck conv1/conv2)."""
    names = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if isinstance(module, nn.Conv2d) and parts[0].startswith("layer") and parts[-1] in PRUNABLE_SUFFIXES:
            names.append(name)
    return names


def channel_plan(model: nn.Module) -> dict[str, int]:
    """The current output-channel count of every prunable conv."""
    modules = dict(model.named_modules())
    return {name: modules[name].out_channels for name in prunable_layers(model)}


def num_classes_of(model: nn.Module) -> int:
    return model.fc.out_features


def build_from_plan(num_classes: int, plan: dict[str, int]) -> nn.Module:
    """A randomly initialised ResNet50 whose prunable convs have the widths in ``plan``.

    This is how pruned checkpoints are loaded without pickled code: rebuild, then load_state_dict.
    """
    model = build_resnet50(num_classes, "none")
    check_plan_layers(model, plan)
    for block_name, block in _bottlenecks(model):
        c1 = plan.get(f"{block_name}.conv1", block.conv1.out_channels)
        c2 = plan.get(f"{block_name}.conv2", block.conv2.out_channels)
        conv2 = block.conv2
        block.conv1 = nn.Conv2d(block.conv1.in_channels, c1, 1, bias=False)
        block.bn1 = nn.BatchNorm2d(c1)
        block.conv2 = nn.Conv2d(c1, c2, 3, stride=conv2.stride, padding=1, groups=1, bias=False)
        block.bn2 = nn.BatchNorm2d(c2)
        block.conv3 = nn.Conv2d(c2, block.conv3.out_channels, 1, bias=False)
    return model


def plan_params(model: nn.Module) -> Callable[[dict[str, int]], int]:
    """A function giving the parameter count of ``model`` rebuilt to a plan (``build_from_plan``), without
    building it: a budget search tries dozens of scales per plan (``search.space.fit_ratios``).

    A block's conv1 (c1 outputs), bn1, conv2 (c1 -> c2) and bn2, and the c2 inputs of conv3, are the only
    parameters a plan changes: ``in * c1 * k1 + 2 * c1 + c1 * c2 * k2 + 2 * c2 + c2 * out * k3`` (no biases).
    """
    def coefficients(name: str, block: nn.Module, k1: int, k2: int, k3: int) -> tuple[int, int, int]:
        return block.conv1.in_channels * k1 + 2, k2, 2 + block.conv3.out_channels * k3

    return _plan_count(model, sum(p.numel() for p in model.parameters()), coefficients)


def plan_flops(model: nn.Module, image_size: int) -> Callable[[dict[str, int]], int]:
    """A function giving ``pruning.measure.count_flops`` of ``model`` rebuilt to a plan, without building it (a
    MACs budget fits plans as ``plan_params`` does). Per output pixel of each conv (P1, P2, P3 at
    ``image_size``), a block's MACs that a plan changes are ``P1 * in * k1 * c1 + P2 * k2 * c1 * c2 + P3 * out *
    k3 * c2`` (BatchNorm counts none): where the feature maps are large a channel costs more.
    """
    shapes = output_shapes(model, image_size)
    pixels = {name: shape[-2] * shape[-1] for name, _, shape in shapes}

    def coefficients(name: str, block: nn.Module, k1: int, k2: int, k3: int) -> tuple[int, int, int]:
        p1, p2, p3 = (pixels[f"{name}.conv{i}"] for i in (1, 2, 3))
        return p1 * block.conv1.in_channels * k1, p2 * k2, p3 * block.conv3.out_channels * k3

    return _plan_count(model, macs_of(shapes), coefficients)


def _plan_count(model: nn.Module, total: int, coefficients) -> Callable[[dict[str, int]], int]:
    """A count that is ``total`` for ``model``'s own widths and, per bottleneck, changes with a plan's c1 and c2
    as ``a * c1 + b * c1 * c2 + c * c2``, the block's ``coefficients(name, block, k1, k2, k3)``."""
    terms = []
    fixed = total
    for name, block in _bottlenecks(model):
        k1, k2, k3 = (math.prod(conv.kernel_size) for conv in (block.conv1, block.conv2, block.conv3))
        if block.conv2.groups != 1 or any(c.bias is not None for c in (block.conv1, block.conv2, block.conv3)):
            raise ValueError(f"plan counts: {name} is not a torchvision Bottleneck (grouped conv2 or conv biases)")
        coef = coefficients(name, block, k1, k2, k3)

        def block_count(c1: int, c2: int, coef=coef) -> int:
            return coef[0] * c1 + coef[1] * c1 * c2 + coef[2] * c2

        fixed -= block_count(block.conv1.out_channels, block.conv2.out_channels)
        terms.append((f"{name}.conv1", f"{name}.conv2", block.conv1.out_channels, block.conv2.out_channels,
                      block_count))

    def count(plan: dict[str, int]) -> int:
        return fixed + sum(f(plan.get(a, c1), plan.get(b, c2)) for a, b, c1, c2, f in terms)
    return count


def check_plan_layers(model: nn.Module, layers) -> None:
    """Raise a UserError naming any layer that is not prunable in ``model``."""
    known = set(prunable_layers(model))
    unknown = sorted(set(layers) - known)
    if unknown:
        example = next(iter(sorted(known)))
        raise UserError(f"unknown layer name(s) {unknown[:3]}: prunable layers look like '{example}' "
                        f"(bottleneck conv1/conv2 only; list them with pruning.model.prunable_layers)")


def _bottlenecks(model: nn.Module):
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for idx, block in enumerate(getattr(model, stage)):
            yield f"{stage}.{idx}", block


# Dense ResNet50, batch 64, channels_last speedup over contiguous on a 2-core CPU shared with other jobs
# (benchmarks/latency.py --devices cpu --steps 0 --batches 64 --threads 1 --clock cpu, 2026-11-26):
# 0.72x at 32 px, 1.05x at 64, 1.76x at 96, 1.14x at 128, 1.69x at 224 (wall time, 2 threads: 0.56x at
# 32 px, 1.27x at 224). Contiguous wins below 64 px, channels_last above.
CPU_CHANNELS_LAST_FROM_PX = 64


def to_memory_format(model: nn.Module, device: torch.device, image_size: int | None = None) -> nn.Module:
    """The faster memory format for ``device``: channels_last on CUDA (tensor cores); on the CPU
    channels_last from CPU_CHANNELS_LAST_FROM_PX up and contiguous below (or when the size is unknown)."""
    on_cpu_large = image_size is not None and image_size >= CPU_CHANNELS_LAST_FROM_PX
    fmt = torch.channels_last if device.type == "cuda" or on_cpu_large else torch.contiguous_format
    return model.to(device=device, memory_format=fmt)
