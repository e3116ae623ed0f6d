"""The only module that imports NNI: L1NormPruner masks + ModelSpeedup, to a given target plan.

Work-arounds for NNI 3.0 on torch 2.x, both measured:
- ``ModelSpeedup(model, x, masks)`` crashes in NNI's own ``concrete_trace``
  (``'NoneType' object has no attribute 'startswith'``); a ``torch.fx.symbolic_trace`` graph works.
- ``speedup_model()`` leaves replaced submodules in train mode and runs random inputs through them,
  so the next step would overwrite every BatchNorm's running statistics. The model is kept in eval
  mode around prune+speedup, and the caller's train/eval mode is restored afterwards.
"""
from __future__ import annotations

import contextlib
import io
import logging

import torch
from torch import nn

from pruning.model import channel_plan

_NNI_LOGGERS = ("nni", "nni.compression", "Shape Dependency", "FixMaskConflict", "nni.compression.speedup")


@contextlib.contextmanager
def _quiet():
    """NNI prints a line per replaced module to stdout and its loggers; keep the user's console clean."""
    saved = {name: logging.getLogger(name).level for name in _NNI_LOGGERS}
    for name in _NNI_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def prune_to_plan(model: nn.Module, target: dict[str, int], example: torch.Tensor) -> nn.Module:
    """Remove the lowest-L1 output channels of each layer in ``target`` until it has that many.

    Returns the physically smaller model (no masks or wrappers left in it).
    """
    current = channel_plan(model)
    config = []
    for name, keep in target.items():
        removed = current[name] - keep
        if removed > 0:
            # NNI removes int(ratio * C) channels: +0.5 makes that exactly `removed`, free of float error.
            config.append({"op_names": [name], "sparse_ratio": (removed + 0.5) / current[name]})
    if not config:
        return model
    was_training = model.training
    model.eval()
    with _quiet():
        import nni  # noqa: F401  (imported late: its import prints and sets up logging)
        from nni.compression.pruning import L1NormPruner
        from nni.compression.speedup import ModelSpeedup

        pruner = L1NormPruner(model, config)
        _, masks = pruner.compress()
        pruner.unwrap_model()
        graph = torch.fx.symbolic_trace(model)
        model = ModelSpeedup(model, example, masks, graph_module=graph).speedup_model()
    model.train(was_training)
    return model
