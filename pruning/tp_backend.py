"""The only module that imports Torch-Pruning: DepGraph channel removal, to a given target plan.

It chooses exactly the channels NNI's ``L1NormPruner`` chooses (same metric, computed the same way:
``weight.reshape(C, -1).norm(p=1, dim=-1)``, then ``topk(removed, largest=False)``), so both backends
yield the same model (proved in tests/test_tp_backend.py), and it is about 10x faster than NNI's mask
+ ``ModelSpeedup`` (benchmarks/prune_step.py). All channel choices are made on the input model before
any layer is cut, as NNI computes all masks before its speedup.
"""
from __future__ import annotations

import torch
from torch import nn

from pruning.errors import UserError
from pruning.model import channel_plan


def lowest_l1_channels(conv: nn.Conv2d, removed: int) -> list[int]:
    """Indices of the ``removed`` output channels with the smallest L1 norm (NNI's metric and tie order)."""
    weight = conv.weight.detach()
    metric = weight.reshape(weight.shape[0], -1).norm(p=1, dim=-1)
    return sorted(metric.topk(removed, largest=False).indices.tolist())


def prune_to_plan(model: nn.Module, target: dict[str, int], example: torch.Tensor) -> nn.Module:
    """Remove the lowest-L1 output channels of each layer in ``target`` until it has that many.

    Prunes ``model`` in place (its coupled BatchNorm and the next conv's input channels follow) and
    returns it. The caller's train/eval mode is kept; BatchNorm statistics are not touched.
    """
    try:
        import torch_pruning as tp
    except ImportError:
        raise UserError("--backend torch-pruning needs the torch-pruning package: pip install -e '.[fast]' "
                        "(or use --backend nni)") from None
    current = channel_plan(model)
    modules = dict(model.named_modules())
    cuts = {name: lowest_l1_channels(modules[name], current[name] - keep)
            for name, keep in target.items() if current[name] > keep}
    if not cuts:
        return model
    was_training = model.training
    model.eval()  # the tracing forward must not update BatchNorm running statistics
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    for name, idxs in cuts.items():
        group = graph.get_pruning_group(modules[name], tp.prune_conv_out_channels, idxs=idxs)
        group.prune()
    model.train(was_training)
    return model
