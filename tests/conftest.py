"""Shared fixtures: a tiny run config (synthetic data, 32 px, a few images) every test can derive from."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from distill.config import RunConfig, make_config
from pruning.checkpoint import save_pruned
from pruning.model import build_resnet50

# Small enough for a 2-core CPU: 4 classes, 64 training images, one batch of 32 per step.
TINY = {"data": "synthetic", "synthetic_classes": 4, "synthetic_train": 64, "image_size": 32,
        "batch_size": 32, "weights": "none", "teacher_epochs": 1, "steps": 1, "epochs_per_step": 1,
        "final_epochs": 0, "device": "cpu", "progress": False}


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture
def tiny_cfg(tmp_path) -> RunConfig:
    return make_config(RunConfig, {**TINY, "out": str(tmp_path / "run")})


def untrained_teacher(path, num_classes: int = 4) -> str:
    """A random-weight teacher checkpoint that records it was never fine-tuned (``teacher_epochs`` 0), so
    the search's validation-split check accepts it: for tests of bookkeeping, not accuracy."""
    save_pruned(path, build_resnet50(num_classes), {"phase": "teacher", "trained_on": {"teacher_epochs": 0}})
    return str(path)


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory) -> str:
    """An untrained 4-class teacher (see ``untrained_teacher``)."""
    torch.manual_seed(0)
    return untrained_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def tiny_argv(cfg: RunConfig, **changes) -> list[str]:
    """The command line that asks for ``cfg`` (with ``changes``), to call an entry point's main()."""
    cfg = dataclasses.replace(cfg, **changes)
    argv = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif isinstance(value, tuple):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv
