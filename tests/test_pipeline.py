"""distill.pipeline: which teachers a retraining stage distils from (``--teachers PATH|previous``)."""
import dataclasses
from types import SimpleNamespace

import pytest
from torch import nn

import distill.pipeline as pipeline
from baselines import iterative
from conftest import tiny_argv
from distill.config import PREVIOUS
from pruning.checkpoint import load_pruned
from pruning.model import channel_plan


def marked(name: str) -> nn.Module:
    model = nn.Identity()
    model.name = name
    return model


@pytest.mark.parametrize("teachers, weights, previous, names, expected_weights", [
    ((PREVIOUS,), (), True, ["run", "previous"], None),
    ((PREVIOUS,), (2.0, 1.0), True, ["run", "previous"], [2.0, 1.0]),
    ((PREVIOUS,), (2.0, 1.0), False, ["run"], [2.0]),  # closing epochs: nothing was pruned, no previous
    (("a.pt", PREVIOUS, "b.pt"), (1.0, 2.0, 3.0, 4.0), False, ["run", "a.pt", "b.pt"], [1.0, 2.0, 4.0]),
    (("a.pt", PREVIOUS), (1.0, 2.0, 3.0), True, ["run", "a.pt", "previous"], [1.0, 2.0, 3.0]),
])
def test_stage_teachers_put_previous_in_its_place_with_its_weight(tiny_cfg, monkeypatch, teachers, weights, previous,
                                                                 names, expected_weights):
    monkeypatch.setattr(pipeline, "load_teacher", lambda path, n: marked(path))
    cfg = dataclasses.replace(tiny_cfg, teachers=teachers, teacher_weights=weights)
    sess = pipeline.Session(cfg, pipeline.make_runtime("cpu", False, False), SimpleNamespace(num_classes=4),
                            None, None, None)  # stage_teachers reads the config, device and class count
    got, got_weights = pipeline.stage_teachers(sess, marked("run"), marked("previous") if previous else None)
    assert [t.name for t in got] == names and got_weights == expected_weights


def test_baseline_distils_from_the_model_before_each_pruning_step(tiny_cfg, tmp_path, monkeypatch):
    seen = []  # channel plans of the teachers of each KD stage (the teacher's own stage has none)

    class Spy(pipeline.Distiller):
        def __init__(self, student, teacher, *args, **kwargs):
            if teacher is not None:
                seen.append([channel_plan(t) for t in teacher])
            super().__init__(student, teacher, *args, **kwargs)

    monkeypatch.setattr(pipeline, "Distiller", Spy)
    argv = tiny_argv(tiny_cfg, steps=2, final_epochs=1, teacher_epochs=0, backend="torch-pruning")
    iterative.main(argv + ["--teachers", PREVIOUS])
    plans = [channel_plan(load_pruned(tmp_path / "run" / "check_points" / f"step_{s:03d}.pt")[0]) for s in range(3)]
    assert seen == [[plans[0], plans[0]],  # step 1: the teacher, and the model before pruning (the teacher)
                    [plans[0], plans[1]],  # step 2: the teacher, and step 1's model
                    [plans[0]]]            # closing epochs: no pruning, so no previous model
