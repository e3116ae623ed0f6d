"""Size of a model: parameters, serialized megabytes, FLOPs at an input size, latency."""
from __future__ import annotations

import io
import math
import statistics
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
    return macs_of(output_shapes(model, image_size))


def macs_of(shapes: list[tuple[str, nn.Module, torch.Size]]) -> int:
    """``count_flops`` of the calls ``output_shapes`` recorded: per output element, a conv's kernel x its input
    channels per group, a linear layer's inputs."""
    total = 0
    for _, module, shape in shapes:
        per_output = (module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
                      if isinstance(module, nn.Conv2d) else module.in_features)
        total += math.prod(shape) * per_output
    return total


def output_shapes(model: nn.Module, image_size: int) -> list[tuple[str, nn.Module, torch.Size]]:
    """Name, module and output shape of each call of a conv or linear layer in one forward pass of a zero
    ``image_size`` image (eval mode, no gradients; the model's mode is restored)."""
    shapes: list[tuple[str, nn.Module, torch.Size]] = []
    hooks = [module.register_forward_hook(lambda m, _inputs, out, name=name: shapes.append((name, m, out.shape)))
             for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return shapes


def model_stats(model: nn.Module, image_size: int) -> dict[str, float]:
    """params, size_mb and flops: the size columns of every results row."""
    return {"params": count_params(model), "size_mb": round(size_mb(model), 3),
            "flops": count_flops(model, image_size)}


@torch.no_grad()
def forward_times_ms(model: nn.Module | Callable[[torch.Tensor], object], batch: torch.Tensor, n: int,
                     clock=time.perf_counter) -> list[float]:
    """Milliseconds of each of ``n`` forward passes on ``batch``, synchronised on CUDA (kernels run
    asynchronously: without a sync the clock would time their launch, not their work)."""
    times = []
    for _ in range(n):
        if batch.is_cuda:
            torch.cuda.synchronize(batch.device)
        start = clock()
        model(batch)
        if batch.is_cuda:
            torch.cuda.synchronize(batch.device)
        times.append((clock() - start) * 1e3)
    return times


def latency_ms(model: nn.Module | Callable[[torch.Tensor], object], batch: torch.Tensor, warmup: int = 3,
               repeats: int = 10, clock=time.perf_counter) -> float:
    """Median milliseconds of one forward pass on ``batch`` over a fixed number of repeats (benchmarks).

    ``model`` may also be any function of the batch (an exported model, pruning.export.load_exported).
    ``clock=time.process_time`` counts CPU time instead of wall time (CPU runs on a shared machine).
    """
    if isinstance(model, nn.Module):
        model.eval()
    forward_times_ms(model, batch, warmup, clock)
    return statistics.median(forward_times_ms(model, batch, repeats, clock))


def measure_latency(model: nn.Module | Callable[[torch.Tensor], object], batch: torch.Tensor, warmup: int = 5,
                    min_repeats: int = 10, max_repeats: int = 200, budget_s: float = 10.0, rel_tol: float = 0.02,
                    clock=time.perf_counter) -> dict[str, float | int]:
    """Latency of one forward pass on ``batch`` as a stable median, with its spread (the search's
    ``latency`` objective).

    Rule: ``warmup`` untimed passes (lazy initialisation, cuDNN autotuning, caches), at least
    ``min_repeats`` timed ones, then one more at a time until the median is stable: its ~95% confidence
    interval, median +- 1.57 IQR / sqrt(n) (the box plot's notch, McGill, Tukey & Larsen 1978), lies
    within +- ``rel_tol`` of it. ``max_repeats`` passes, or timed passes adding up to ``budget_s``, stop
    it anyway (a noisy device, a slow model: the median of what was timed). Returns ``latency_ms``
    (median), ``latency_iqr_ms`` (interquartile range: the spread, large when other work shares the
    device) and ``latency_repeats`` (timed passes).
    """
    if isinstance(model, nn.Module):
        model.eval()
    forward_times_ms(model, batch, warmup, clock)
    times = forward_times_ms(model, batch, max(2, min_repeats), clock)
    while len(times) < max_repeats and sum(times) < budget_s * 1e3:
        median, iqr = median_iqr(times)
        if 1.57 * iqr / math.sqrt(len(times)) <= rel_tol * median:
            break
        times += forward_times_ms(model, batch, 1, clock)
    median, iqr = median_iqr(times)
    return {"latency_ms": round(median, 4), "latency_iqr_ms": round(iqr, 4), "latency_repeats": len(times)}


def median_iqr(values: list[float]) -> tuple[float, float]:
    """The median and the interquartile range (quartiles interpolated within the values)."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return median, q3 - q1
