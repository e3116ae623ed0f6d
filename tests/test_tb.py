"""distill.tb (issue 4 item 5): what `tensorboard --logdir runs` shows for a tiny baseline run."""
from __future__ import annotations

import importlib.util

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from baselines import iterative
from conftest import tiny_argv
from distill.results import read_csv

BACKEND = "torch-pruning" if importlib.util.find_spec("torch_pruning") else "nni"


def test_tensorboard_has_training_curves_and_accuracy_vs_params_per_step(tiny_cfg, tmp_path):
    iterative.main(tiny_argv(tiny_cfg, synthetic_train=32, backend=BACKEND))
    rows = read_csv(tmp_path / "run" / "pruning_logs.csv")
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    # Per-epoch curves of each stage (loss and training accuracy), tags as the CSV columns.
    assert {"teacher/train_loss", "teacher/train_top1", "step_001/train_loss", "step_001/train_kd"} <= tags
    assert [e.step for e in events.Scalars("step_001/train_loss")] == [1]
    # Per-step results, and accuracy against the parameter count (the run's accuracy-vs-size curve).
    for tag in ("params", "val_top1", "flops", "size_mb"):
        assert [(e.step, e.value) for e in events.Scalars(tag)] == [
            (r["step"], pytest.approx(r[tag], rel=1e-6)) for r in rows]
    assert [(e.step, e.value) for e in events.Scalars("val_top1_vs_params")] == [
        (r["params"], pytest.approx(r["val_top1"], rel=1e-6)) for r in rows]
    assert len(rows) == 2 and rows[1]["params"] < rows[0]["params"]
