"""Size of a model: parameters, serialized megabytes, FLOPs at an input size, latency."""
from __future__ import annotations

import io
import time
from typing import Callable

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_mb(model: nn.Module) -> float:
    """Megabytes (1e6 bytes) of the saved state_dict: what a checkpoint of the weights costs on disk."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes / 1e6


@torch.no_grad()
def count_flops(model: nn.Module, image_size: int) -> int:
    """Multiply-accumulates of one forward pass of a 3 x image_size x image_size image.

    Counts convs and linear layers (the convention of torchvision's "GFLOPS": ResNet50 at 224 px is
    about 4.1e9), measured with forward hooks on one zero image on the model's device.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, inputs, output):
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += output.numel() * kernel

    def linear_hook(module: nn.Linear, inputs, output):
        nonlocal total
        total += output.numel() * module.in_features

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(linear_hook))
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return total


def model_stats(model: nn.Module, image_size: int) -> dict[str, float]:
    """params, size_mb and flops: the size columns of every results row."""
    return {"params": count_params(model), "size_mb": round(size_mb(model), 3),
            "flops": count_flops(model, image_size)}


@torch.no_grad()
def latency_ms(model: nn.Module | Callable[[torch.Tensor], object], batch: torch.Tensor, warmup: int = 3,
               repeats: int = 10, clock=time.perf_counter) -> float:
    """Median milliseconds of one forward pass on ``batch`` (synchronised on CUDA).

    ``model`` may also be any function of the batch (an exported model, pruning.export.load_exported).
    ``clock=time.process_time`` counts CPU time instead of wall time (CPU runs on a shared machine).
    """
    if isinstance(model, nn.Module):
        model.eval()
    times = []
    for i in range(warmup + repeats):
        if batch.is_cuda:
            torch.cuda.synchronize()
        start = clock()
        model(batch)
        if batch.is_cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((clock() - start) * 1e3)
    return sorted(times)[len(times) // 2]
