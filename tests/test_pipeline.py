"""distill.pipeline: which teachers a retraining stage distils from (``--teachers PATH|previous``), and the
learning-rate schedule each stage trains with (``--lr-schedule``)."""
import dataclasses
from types import SimpleNamespace

import pytest
from torch import nn

import distill.pipeline as pipeline
import distill.trainer
from baselines import iterative
from conftest import tiny_argv
from distill.config import PREVIOUS
from pruning.checkpoint import load_pruned
from pruning.model import build_from_plan, build_resnet50, channel_plan
from pruning.plan import target_plan


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """The run's teacher, a model one 10% step narrower, and one as wide as the teacher."""
    teacher = build_resnet50(4)
    narrower = build_from_plan(4, target_plan(channel_plan(teacher), {n: 0.1 for n in channel_plan(teacher)}))
    return {"run": teacher, "previous": narrower, "as_wide": build_resnet50(4)}


def name_of(model: nn.Module, models: dict[str, nn.Module]) -> str:
    return next((name for name, m in models.items() if m is model), getattr(model, "path", "?"))


def loaded(path: str, num_classes: int) -> nn.Module:
    model = nn.Identity()  # an extra --teachers checkpoint; only its place in the list matters here
    model.path = path
    return model


@pytest.mark.parametrize("teachers, weights, previous, names, expected_weights", [
    ((PREVIOUS,), (), "previous", ["run", "previous"], None),
    ((PREVIOUS,), (2.0, 1.0), "previous", ["run", "previous"], [2.0, 1.0]),
    ((PREVIOUS,), (2.0, 1.0), None, ["run"], [2.0]),  # closing epochs: nothing was pruned, no previous
    ((PREVIOUS,), (2.0, 1.0), "as_wide", ["run"], [2.0]),  # first step: the previous model is the teacher
    (("a.pt", PREVIOUS, "b.pt"), (1.0, 2.0, 3.0, 4.0), None, ["run", "a.pt", "b.pt"], [1.0, 2.0, 4.0]),
    (("a.pt", PREVIOUS), (1.0, 2.0, 3.0), "previous", ["run", "a.pt", "previous"], [1.0, 2.0, 3.0]),
])
def test_stage_teachers_put_previous_in_its_place_with_its_weight(tiny_cfg, monkeypatch, models, teachers, weights,
                                                                 previous, names, expected_weights):
    monkeypatch.setattr(pipeline, "load_teacher", loaded)
    cfg = dataclasses.replace(tiny_cfg, teachers=teachers, teacher_weights=weights)
    sess = pipeline.Session(cfg, pipeline.make_runtime("cpu", False, False), SimpleNamespace(num_classes=4),
                            None, None, None)  # stage_teachers reads the config, device and class count
    got, got_weights = pipeline.stage_teachers(sess, cfg, models["run"], models.get(previous))
    assert [name_of(t, models) for t in got] == names and got_weights == expected_weights


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
    assert seen == [[plans[0]],            # step 1: the model before pruning is the teacher itself
                    [plans[0], plans[1]],  # step 2: the teacher, and step 1's model
                    [plans[0]]]            # closing epochs: no pruning, so no previous model


def test_lr_schedule_reaches_every_stage_of_a_run(tiny_cfg, monkeypatch):
    seen = []  # (schedule, updates) of each stage's scheduler: the teacher's, each prune step's, the closing one
    make_scheduler = distill.trainer.make_scheduler

    def spy(optimizer, schedule, start, updates):
        seen.append((schedule, updates))
        return make_scheduler(optimizer, schedule, start, updates)

    monkeypatch.setattr(distill.trainer, "make_scheduler", spy)
    iterative.main(tiny_argv(tiny_cfg, steps=2, final_epochs=1, backend="torch-pruning", lr_schedule="cosine"))
    assert seen == [("cosine", 2)] * 4  # 64 images in batches of 32: 2 updates per one-epoch stage
