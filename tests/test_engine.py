"""distill.engine: schedules as data, the one resume rule, and trials that never change shared state."""
from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch

import distill.engine
import distill.pipeline
from conftest import TINY
from distill.config import RunConfig, make_config
from distill.engine import RunStore, Step, matching_steps, plan_schedule, run_schedule, uniform_schedule
from distill.pipeline import check_teacher_data, open_session, provenance
from distill.results import write_csv
from distill.trainer import recalibrate_bn
from pruning.checkpoint import load_checkpoint, save_pruned
from pruning.errors import UserError
from pruning.model import build_resnet50, channel_plan
from pruning.plan import target_plan, uniform_plans
from search.config import SearchConfig
from search.objective import Objective

DENSE = channel_plan(build_resnet50(2))


def test_uniform_schedule_is_the_baseline_widths_then_the_closing_step():
    ratios = {name: 0.1 for name in DENSE}
    schedule = uniform_schedule(DENSE, ratios, 3, epochs_per_step=2, final_epochs=5)
    assert [s.widths for s in schedule[:3]] == uniform_plans(DENSE, ratios, 3)
    assert schedule[-1] == Step(4, "final", None, 5)
    assert [s.epochs for s in schedule] == [2, 2, 2, 5] and schedule[0].widths["layer1.0.conv1"] == 58


def test_plan_schedule_ends_at_the_plan_and_matching_steps_finds_the_baseline_step():
    ratios = {name: 0.1 for name in DENSE}
    for k, widths in enumerate(uniform_plans(DENSE, ratios, 8), 1):
        assert matching_steps(DENSE, widths, ratios) == k
        schedule = plan_schedule(DENSE, widths, k, epochs_per_step=1)
        assert len(schedule) == k and schedule[-1].widths == widths and schedule[-1].phase == "prune"


def test_a_step_counts_as_done_only_with_its_row_and_its_checkpoint(tmp_path):
    store = RunStore(tmp_path)
    save_pruned(store.checkpoint(0), build_resnet50(4))
    write_csv(store.log, [{"step": 0, "phase": "teacher"}, {"step": 1, "phase": "prune"}])
    assert [r["step"] for r in store.rows()] == [0]  # step 1's checkpoint is missing: it is redone


@pytest.fixture
def search_cfg(tmp_path) -> SearchConfig:
    return make_config(SearchConfig, {**TINY, "backend": "torch-pruning", "trial_epochs": 1, "trial_subset": 32,
                                      "teacher_cache": 4, "out": str(tmp_path / "runs"), "storage": str(tmp_path / "s.db")})


def trained(**changes) -> RunConfig:
    """The config a teacher was trained with (the baseline's, with TINY's data)."""
    return make_config(RunConfig, {**TINY, "teacher_epochs": 1, **changes})


def recorded_teacher(path, cfg, trained_cfg) -> str:
    """A (random-weight) teacher checkpoint that records training on ``trained_cfg``'s training split."""
    recipe, index = provenance(trained_cfg, open_session(trained_cfg).data)
    save_pruned(path, build_resnet50(cfg.synthetic_classes), {"trained_on": recipe}, train_index=index)
    return str(path)


def test_a_teacher_that_saw_the_validation_split_is_refused_unless_forced(search_cfg, tmp_path):
    data = open_session(search_cfg).data
    seen_all = recorded_teacher(tmp_path / "all.pt", search_cfg, trained(val_fraction=0.0))
    with pytest.raises(UserError, match=r"trained on \d+ of the \d+ held-out validation images.*--val-fraction 0.1"):
        check_teacher_data(seen_all, search_cfg, data)
    assert check_teacher_data(seen_all, dataclasses.replace(search_cfg, force=True), data) == len(data.val_index)
    held_out = recorded_teacher(tmp_path / "held.pt", search_cfg, trained(val_fraction=0.1))  # same --val-fraction and --seed
    assert check_teacher_data(held_out, search_cfg, data) == 0
    other_seed = recorded_teacher(tmp_path / "seed.pt", search_cfg, trained(val_fraction=0.1, seed=1))
    with pytest.raises(UserError, match="held-out validation"):  # another seed's split overlaps this one's
        check_teacher_data(other_seed, search_cfg, data)
    other_data = recorded_teacher(tmp_path / "other.pt", search_cfg,
                                  trained(val_fraction=0.0, synthetic_train=96))
    assert check_teacher_data(other_data, search_cfg, data) == 0  # trained on other images altogether
    save_pruned(tmp_path / "bare.pt", build_resnet50(4))
    with pytest.raises(UserError, match="does not record which images"):
        check_teacher_data(str(tmp_path / "bare.pt"), search_cfg, data)


def test_trials_run_with_their_own_config_and_leave_the_shared_session_as_it_was(search_cfg, tmp_path,
                                                                                monkeypatch):
    teacher = recorded_teacher(tmp_path / "teacher.pt", search_cfg, search_cfg)
    objective = Objective(search_cfg, teacher)
    session_cfg, loader_views = objective.sess.cfg, objective.sess.train_loader.recorded_views
    seen = []

    class Spy(distill.pipeline.Distiller):
        def __init__(self, student, teacher, temperature, alpha, *args, **kwargs):
            seen.append((temperature, alpha))
            super().__init__(student, teacher, temperature, alpha, *args, **kwargs)

    monkeypatch.setattr(distill.pipeline, "Distiller", Spy)
    study = optuna.create_study(directions=["maximize", "minimize"])
    plans = [{"temperature": 2.0, "alpha": 0.25}, {"temperature": 9.0, "alpha": 0.75}]
    for params in plans:
        study.enqueue_trial({**{f"ratio/{n}": 0.5 for n in DENSE}, **params})
    study.optimize(objective, n_trials=2)
    assert seen == [(2.0, 0.25), (9.0, 0.75)]
    assert objective.sess.cfg is session_cfg and objective.cfg == dataclasses.replace(search_cfg, teacher=teacher)
    assert objective.sess.train_loader.recorded_views is loader_views is None
    widths = target_plan(DENSE, {n: 0.5 for n in DENSE})
    assert all(t.user_attrs["params"] < 23_000_000 and t.user_attrs["ch/layer1.0.conv1"] == widths["layer1.0.conv1"]
               for t in study.trials)


def test_bn_recalibration_sets_the_statistics_to_the_training_batches_mean(tiny_cfg):
    """EagleEye's adaptive BN: after pruning, BatchNorm statistics are re-estimated on M training batches
    (forward only); bn1's running mean is then exactly the mean of conv1's outputs over those batches."""
    sess = open_session(tiny_cfg)
    model = build_resnet50(4)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    recalibrate_bn(model, sess.train_loader, 2, sess.rt, epoch_seed=7)
    sess.train_loader.set_epoch(7)
    outputs = torch.cat([model.conv1(batch.x) for batch, _ in zip(sess.train_loader, range(2))])
    torch.testing.assert_close(model.bn1.running_mean, outputs.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not model.training and model.bn1.momentum == 0.1  # restored for training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())  # no weight moved


def test_closing_epochs_right_after_the_teacher_never_train_the_teacher_itself(tiny_cfg):
    """--steps 0 --final-epochs N: the one step's student starts as the teacher; it must be a copy."""
    sess = open_session(tiny_cfg)
    teacher = build_resnet50(4)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    model, rows = run_schedule(sess, tiny_cfg, teacher, [Step(1, "final", None, 1)], None)
    assert model is not teacher and rows[0]["epochs"] == 1
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


def test_a_step_killed_mid_training_resumes_without_pruning_again(tiny_cfg, tmp_path, monkeypatch):
    """The partial checkpoint holds the pruned student and its pruning's seconds: pruning the previous model
    again is thrown away; the checkpoint is read once."""
    sess = open_session(tiny_cfg)
    teacher = build_resnet50(4)
    schedule = uniform_schedule(channel_plan(teacher), {n: 0.5 for n in channel_plan(teacher)}, 1, 2, 0)
    store = RunStore(tmp_path)
    pruned = []
    monkeypatch.setattr(distill.engine, "prune_step", lambda *a: pruned.append(1) or distill.pipeline.prune_step(*a))
    store.partial.parent.mkdir(parents=True)
    student, _ = distill.pipeline.prune_step(teacher, {n: 0.5 for n in channel_plan(teacher)}, "torch-pruning", 1, 32)
    history = [{"train_loss": 1.0, "wall_s": 0.5, "images": 64}]
    save_pruned(store.partial, student, {"stage": "step_001", "epoch": 1, "history": history, "prune_wall_s": 0.25},
                optimizer=torch.optim.Adam(student.parameters()).state_dict())
    reads = []
    monkeypatch.setattr(distill.pipeline, "load_checkpoint",
                        lambda path: reads.append(path) or load_checkpoint(path))
    model, rows = run_schedule(sess, tiny_cfg, teacher, schedule, store)
    assert pruned == [] and rows[-1]["prune_wall_s"] == 0.25 and rows[-1]["epochs"] == 2
    assert reads == [store.partial]
    assert channel_plan(model) == schedule[0].widths
    store.partial.unlink(missing_ok=True)
    run_schedule(sess, tiny_cfg, teacher, schedule, RunStore(tmp_path / "fresh"))
    assert pruned == [1]  # without a partial checkpoint the step prunes
