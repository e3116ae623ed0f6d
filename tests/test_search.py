"""python -m search and python -m search.retrain on a tiny synthetic task (4 classes, 64 images, 32 px).

One study is searched once per module (3 trials, the teacher trained in it) and read by several tests;
tests that change a study work on a copy or on their own study, reusing its teacher.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import distill.engine
from conftest import TINY, tiny_argv
from distill.config import make_config
from distill.results import read_csv
from distill.trainer import NonFiniteLoss
from pruning.errors import UserError
from pruning.model import build_resnet50, channel_plan
from pruning.plan import target_plan, uniform_plans
from search.__main__ import carried, main, print_front
from search.config import SearchConfig
from search.retrain import main as retrain_main, select_trials
from search.space import PlanSize, baseline_plans, layer_ratios
from search.storage import load_study, open_storage

# Torch-Pruning gives NNI's channels ~10x faster (issue 5); NNI when it is not installed.
BACKEND = "torch-pruning" if importlib.util.find_spec("torch_pruning") else "nni"
SEARCH = {**TINY, "backend": BACKEND, "trial_epochs": 1, "trial_subset": 16, "keep_checkpoints": "none",
          "study_name": "tiny", "storage": "studies.db", "out": "runs"}
DENSE = channel_plan(build_resnet50(2))
ATTRS = {"params", "size_mb", "flops", "val_top1", "val_top5", "prune_wall_s",
         "train_wall_s", "eval_wall_s", "wall_s", "checkpoint"} | {f"ch/{layer}" for layer in DENSE}


@pytest.fixture(autouse=True)
def _few_threads():
    """Overrides conftest's 2 threads: on a 2-core box shared with other processes, two OpenMP threads
    spin against them (measured: a ResNet50 step at 32 px took 6-26 s with 2 threads, 1.4 s with 1)."""
    torch.set_num_threads(1)


def argv(**changes) -> list[str]:
    return tiny_argv(make_config(SearchConfig, {**SEARCH, **changes}))


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A 3-trial study, teacher trained in it, front checkpoints kept; paths relative to the returned dir."""
    root = tmp_path_factory.mktemp("search")
    torch.set_num_threads(1)  # module fixtures run before the function-scoped _few_threads
    with contextlib.chdir(root):
        main(argv(n_trials=3, keep_checkpoints="front"))
    return root


@pytest.fixture(scope="module")
def teacher(searched) -> str:
    return str(searched / "runs" / "tiny" / "teacher.pt")


def trials_of(root: Path, name: str = "tiny", storage: str = "studies.db") -> list[optuna.trial.FrozenTrial]:
    with contextlib.chdir(root):
        return load_study(storage, name).get_trials()


def test_study_has_two_named_objectives_and_records_every_trial(searched):
    with contextlib.chdir(searched):
        study = load_study("studies.db", "tiny")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["accuracy", "params"]
    assert study.user_attrs["teacher"] == "runs/tiny/teacher.pt" and study.user_attrs["config"]["n_trials"] == 3
    assert {"torch", "optuna"} <= set(study.user_attrs["versions"])
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        assert ATTRS <= set(t.user_attrs)
        assert not {"test_top1", "test_top5"} & set(t.user_attrs)  # scored on the held-out split; no test set
        assert t.values == [t.user_attrs["val_top1"], t.user_attrs["params"]]  # held-out accuracy, params
        assert {"temperature", "alpha"} <= set(t.params)


def test_the_baseline_plan_is_enqueued(searched):
    first = trials_of(searched)[0]
    (one_step,) = uniform_plans(DENSE, {name: 0.1 for name in DENSE}, 1)  # TINY: 1 step of 0.1
    assert target_plan(DENSE, layer_ratios(first.params, list(DENSE), "layer", 0.9)) == one_step
    assert {k: first.user_attrs[f"ch/{k}"] for k in DENSE} == one_step
    assert (first.params["temperature"], first.params["alpha"]) == (5.0, 0.7)


def test_sampled_per_layer_ratios_reach_the_model(searched):
    sampled = trials_of(searched)[1:]
    for t in sampled:
        ratios = layer_ratios(t.params, list(DENSE), "layer", 0.9)
        assert len(set(ratios.values())) > 1  # per-layer, not uniform
        assert {k: t.user_attrs[f"ch/{k}"] for k in DENSE} == target_plan(DENSE, ratios)


def test_only_the_front_keeps_checkpoints(searched):
    with contextlib.chdir(searched):
        study = load_study("studies.db", "tiny")
        front = {t.number for t in study.best_trials}
        kept = {int(p.stem.split("_")[1]) for p in Path("runs/tiny/trials").glob("trial_*.pt")}
    assert front and kept == front


def test_rerun_tops_up_to_n_trials_without_redoing_any(searched, tmp_path):
    shutil.copytree(searched, tmp_path, dirs_exist_ok=True)  # relative paths: the copy is the same study
    before = trials_of(tmp_path)
    teacher_mtime = (tmp_path / "runs/tiny/teacher.pt").stat().st_mtime_ns
    with contextlib.chdir(tmp_path):
        main(argv(n_trials=4, keep_checkpoints="front"))
    after = trials_of(tmp_path)
    assert [t.state for t in after] == [TrialState.COMPLETE] * 4
    assert [(t.values, t.datetime_complete) for t in after[:3]] == [(t.values, t.datetime_complete) for t in before]
    assert (tmp_path / "runs/tiny/teacher.pt").stat().st_mtime_ns == teacher_mtime  # trained once, not again


def test_a_failing_trial_is_fail_with_its_reason_and_the_next_completes(tmp_path, teacher, monkeypatch):
    real, calls = distill.engine.prune_step, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise NonFiniteLoss("trial_0_step_001: the training loss became nan")
        return real(*args, **kwargs)

    monkeypatch.setattr(distill.engine, "prune_step", flaky)
    monkeypatch.chdir(tmp_path)
    main(argv(n_trials=1, teacher=teacher))
    trials = trials_of(tmp_path)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs["fail_reason"].startswith("NonFiniteLoss: trial_0_step_001")
    assert trials[1].user_attrs["checkpoint"] == "" and not (tmp_path / "runs/tiny/trials").exists()  # none kept


def test_config_change_is_refused_on_resume(searched, capsys):
    with contextlib.chdir(searched), pytest.raises(SystemExit):
        main(argv(n_trials=3, keep_checkpoints="front", trial_epochs=2))
    assert "trial_epochs: 1 -> 2" in capsys.readouterr().err


@pytest.mark.parametrize("gpus, device, expected", [(2, "auto", ["cuda:0", "cuda:1", "cuda:0"]),
                                                   (0, "auto", ["auto"] * 3), (1, "cuda", ["cuda"] * 3),
                                                   (2, "cpu", ["cpu"] * 3)])
def test_workers_get_one_gpu_each_when_several_are_visible(monkeypatch, gpus, device, expected):
    from search.worker import worker_devices

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert worker_devices(make_config(SearchConfig, {"n_workers": 3, "device": device})) == expected


def check_workers(root: Path, storage: str, name: str, n_trials: int, err: str) -> None:
    trials = trials_of(root, name, storage)
    states = [t.state for t in trials]
    assert "Traceback" not in err and not re.search(r"\block", err, re.I)  # no lock errors
    assert TrialState.RUNNING not in states and TrialState.FAIL not in states
    # Two workers may both start the last trial in the same instant; never more than that.
    assert n_trials <= states.count(TrialState.COMPLETE) <= n_trials + 1


def test_two_workers_share_one_journal_file_and_one_teacher_cache(tmp_path, teacher, capfd):
    fresh = str(shutil.copy(teacher, tmp_path / "teacher.pt"))  # no cache beside it yet
    with contextlib.chdir(tmp_path):
        main(argv(n_trials=3, n_workers=2, teacher=fresh))
    out, err = capfd.readouterr()
    check_workers(tmp_path, "studies.db", "tiny", 3, err)
    assert out.count("teacher cache: ") == 1  # built by one worker before any trial, loaded by the other
    assert len(list(tmp_path.glob("teacher_cache_*.pt"))) == 1


@pytest.mark.skipif(not os.environ.get("TEST_POSTGRES_URL"),
                    reason="TEST_POSTGRES_URL is not set (.ci/run starts PostgreSQL and sets it)")
def test_two_workers_share_one_postgresql_study(tmp_path, teacher, capfd):
    url, name = os.environ["TEST_POSTGRES_URL"], f"tiny-{uuid.uuid4().hex[:8]}"
    try:
        with contextlib.chdir(tmp_path):
            main(argv(n_trials=2, n_workers=2, teacher=teacher, storage=url, study_name=name))
        check_workers(tmp_path, url, name, 2, capfd.readouterr().err)
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=url)


def test_retrain_writes_the_baselines_columns_and_resumes(searched):
    with contextlib.chdir(searched):
        rows = retrain_main(["--study-name", "tiny", "--trials", "0", "--final-epochs", "1"])
        log = searched / "runs/tiny/retrain/pruning_logs.csv"
        assert read_csv(log) == rows and retrain_main(["--study-name", "tiny", "--trials", "0",
                                                       "--final-epochs", "1"]) == rows  # resumed: nothing redone
        trial = load_study("studies.db", "tiny").trials[0]
    assert [(r["trial"], r["step"], r["phase"]) for r in rows] == [(0, 1, "prune"), (0, 2, "final")]
    header = log.read_text().splitlines()[0].split(",")
    assert header[:3] == ["trial", "step", "phase"]
    assert {"params", "size_mb", "flops", "val_top1", "test_top1", "epochs", "train_wall_s"} <= set(header)
    assert all(f"ch/{layer}" in header for layer in DENSE)
    assert rows[-1]["params"] == trial.user_attrs["params"]  # the trial's plan, rebuilt with the full budget
    recorded = json.loads((searched / "runs/tiny/retrain/config.json").read_text())["config"]
    # The baseline's protocol, not the screening one: the whole training set, no held-out split, no cache.
    assert (recorded["val_fraction"], recorded["teacher_cache"], recorded["train_subset"]) == (0.0, 0, 0)
    assert rows[-1]["val_top1"] == rows[-1]["test_top1"]  # validated on the test set, as the baseline does


def test_retraining_another_trial_keeps_the_earlier_ones(searched, tmp_path):
    root = shutil.copytree(searched, tmp_path / "copy")
    shutil.rmtree(root / "runs/tiny/retrain", ignore_errors=True)  # another test's retrain, other flags
    with contextlib.chdir(root):
        retrain_main(["--study-name", "tiny", "--trials", "0", "--final-epochs", "0"])
        rows = retrain_main(["--study-name", "tiny", "--trials", "1", "--final-epochs", "0"])
    assert sorted({r["trial"] for r in rows}) == [0, 1]
    assert read_csv(root / "runs/tiny/retrain/pruning_logs.csv") == rows


def add_trials(study, *rows) -> None:
    """``(values, user_attrs, state, constraints)`` rows as trials of ``study``."""
    for values, attrs, state, constraints in rows:
        study.add_trial(optuna.trial.create_trial(values=values, state=state, user_attrs=attrs,
                                                  constraints=constraints))


def test_lowest_loss_selects_the_feasible_complete_trial_of_lowest_held_out_loss():
    study = optuna.create_study(directions=["maximize", "minimize"])
    done, ok = TrialState.COMPLETE, {"params": 0.0}
    add_trials(study, ([60.0, 10], {"val_loss": 0.9, "params": 10}, done, ok),
               ([70.0, 10], {"val_loss": 0.7, "params": 10}, done, ok),
               ([65.0, 10], {"val_loss": 0.5, "params": 10}, done, ok),
               (None, {"val_loss": 0.1}, TrialState.FAIL, None),
               ([55.0, 20], {"val_loss": 0.2, "params": 20}, done, {"params": 5.0}),  # over the budget
               ([50.0, 9], {"val_loss": float("nan"), "params": 9}, done, ok),
               ([64.0, 9], {"val_loss": 0.5, "params": 9}, done, ok),  # ties trial 2: the smaller plan
               ([66.0, 10], {}, done, ok))  # screened before val_loss was recorded
    assert [t.number for t in select_trials(study, ("lowest-loss",))] == [6]  # not 3 (FAIL), 4 (infeasible), 5
    assert [t.number for t in select_trials(study, ("lowest-loss", "front", "0"))] == [0, 1, 6]
    old = optuna.create_study(study_name="old", directions=["maximize", "minimize"])
    add_trials(old, ([66.0, 10], {}, done, ok))
    with pytest.raises(UserError, match="no COMPLETE trial of study 'old' recorded a finite held-out loss"):
        select_trials(old, ("lowest-loss",))


@pytest.mark.parametrize("target_params, suggested", [(0, "--trials front"), (10_000_000, "--trials lowest-loss")])
def test_the_search_suggests_the_retrain_its_study_calls_for(target_params, suggested, capsys):
    cfg = make_config(SearchConfig, {"target_params": target_params, "trial_epochs": 0, "bn_calib_batches": 1})
    study = optuna.create_study(directions=["maximize", "minimize"])
    add_trials(study, ([60.0, 10], {"val_loss": 0.9}, TrialState.COMPLETE, None))
    print_front(cfg, study)
    assert capsys.readouterr().out.rstrip().endswith(suggested)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_lists_the_study(searched):
    exe = shutil.which("optuna-dashboard") or pytest.skip("optuna-dashboard is not installed")
    port = free_port()
    proc = subprocess.Popen([exe, "studies.db", "--host", "127.0.0.1", "--port", str(port)], cwd=searched,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, studies = time.time() + 60, None
        while studies is None and time.time() < deadline:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
            time.sleep(0.5)
        [study] = studies
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=10) as r:
            detail = json.load(r)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert study["study_name"] == "tiny" and study["directions"] == ["maximize", "minimize"]
    assert detail["objective_names"] == ["accuracy", "params"] and len(detail["trials"]) == 3
    assert {"val_top1", "params", "ch/layer1.0.conv1"} <= {a["key"] for a in detail["union_user_attrs"]}


def test_a_study_screened_with_shares_is_not_continued_with_tilts(tmp_path, teacher_file, capsys):
    """--target-params sampled share/<group> before 2026-12-01: a GP over a mix of both would fit neither."""
    storage = str(tmp_path / "studies.db")
    study = optuna.create_study(study_name="old", storage=open_storage(storage), directions=["maximize", "minimize"])
    share = {"share/layer1": optuna.distributions.FloatDistribution(0, 1)}
    study.add_trial(optuna.trial.create_trial(values=[50.0, 1e7], params={"share/layer1": 0.5}, distributions=share))
    with contextlib.chdir(tmp_path), pytest.raises(SystemExit) as exc:
        main(argv(study_name="old", storage=storage, teacher=teacher_file, target_params=10_000_000, space="stage",
                  trial_epochs=0, bn_calib_batches=1))
    assert exc.value.code == 2 and "was screened with shares (share/<group>)" in capsys.readouterr().err
    assert len(load_study(storage, "old").trials) == 1  # nothing added


def add_tilt_trials(study, *rows) -> None:
    """COMPLETE trials of a --target-params --space stage study: (tilts of layer1..4, val_loss) each."""
    tilt = optuna.distributions.FloatDistribution(-3.0, 3.0)
    for tilts, val_loss in rows:
        params = {f"tilt/layer{i}": value for i, value in enumerate(tilts, 1)}
        study.add_trial(optuna.trial.create_trial(values=[50.0, 1e7], params=params, user_attrs={"val_loss": val_loss},
                                                  distributions=dict.fromkeys(params, tilt)))


def test_warm_from_queues_the_earlier_studys_pick_fitted_to_this_budget(tmp_path, teacher_file):
    """Issue 12: the k = 2 study's pick, fitted to the k = 4 budget, won where the k = 4 study's draws lost."""
    storage = str(tmp_path / "studies.db")
    k2 = optuna.create_study(study_name="k2", storage=open_storage(storage), directions=["maximize", "minimize"])
    add_tilt_trials(k2, ([0.0, 0.0, 0.0, 0.0], 1.9), ([-1.5, 0.5, 0.2, 0.8], 1.2), ([2.0, -1.0, 0.0, -1.0], 1.6))
    target = 15_000_000
    with contextlib.chdir(tmp_path):
        main(argv(study_name="k4", storage=storage, teacher=teacher_file, target_params=target, space="stage",
                  trial_epochs=0, bn_calib_batches=1, n_trials=2, warm_from="k2"))
    trials = load_study(storage, "k4").trials
    warm = [t for t in trials if "warm_from" in t.user_attrs]
    assert len(warm) == 1 and warm[0].number == 1  # right after the baseline's own plan (trial 0)
    assert warm[0].params == {"tilt/layer1": -1.5, "tilt/layer2": 0.5, "tilt/layer3": 0.2, "tilt/layer4": 0.8}
    assert warm[0].user_attrs["warm_from"] == "k2" and warm[0].user_attrs["warm_trial"] == 1
    assert target * 0.95 < warm[0].user_attrs["params"] <= target  # the shape, fitted to this study's budget


def test_warm_from_carries_kd_settings_only_to_a_study_that_samples_them():
    source = optuna.create_study(study_name="k2", directions=["maximize", "minimize"])
    tilts = {f"tilt/layer{i}": 0.5 * i for i in range(1, 5)}
    kd = {"temperature": 3.0, "alpha": 0.4}
    dist = {**dict.fromkeys(tilts, optuna.distributions.FloatDistribution(-3.0, 3.0)),
            "temperature": optuna.distributions.FloatDistribution(1.0, 20.0, log=True),
            "alpha": optuna.distributions.FloatDistribution(0.0, 1.0)}
    source.add_trial(optuna.trial.create_trial(values=[50.0, 1e7], params={**tilts, **kd}, distributions=dist,
                                               user_attrs={"val_loss": 1.0}))
    fitted = {"target_params": 10_000_000, "space": "stage", "warm_from": "k2"}
    tuned = make_config(SearchConfig, {**fitted, "trial_epochs": 1})
    screens = make_config(SearchConfig, {**fitted, "trial_epochs": 0, "bn_calib_batches": 1})
    assert carried(tuned, source, list(DENSE)) == ({**tilts, **kd}, 0)
    assert carried(screens, source, list(DENSE)) == (tilts, 0)  # recalibration screens sample no KD settings


def test_warm_from_refuses_ratios_beyond_this_studys_max_ratio():
    source = optuna.create_study(study_name="wide", directions=["maximize", "minimize"])
    ratios = {f"ratio/layer{i}": 0.8 for i in range(1, 5)}
    source.add_trial(optuna.trial.create_trial(
        values=[50.0, 1e7], params=ratios, user_attrs={"val_loss": 1.0},
        distributions=dict.fromkeys(ratios, optuna.distributions.FloatDistribution(0.0, 0.9))))
    cfg = make_config(SearchConfig, {"space": "stage", "max_ratio": 0.5, "warm_from": "wide"})
    with pytest.raises(UserError, match="ratio/layer1 0.8, beyond this study's --max-ratio 0.5; raise --max-ratio"):
        carried(cfg, source, list(DENSE))
    assert carried(dataclasses.replace(cfg, max_ratio=0.9), source, list(DENSE))[0] == ratios


def test_warm_from_does_not_screen_the_baseline_plan_twice(tmp_path, teacher_file, capsys):
    """A pick whose shape is the baseline's own plan here (trial 0) is not screened again."""
    storage = str(tmp_path / "studies.db")
    flags = {"target_params": 15_000_000, "space": "stage", "trial_epochs": 0, "bn_calib_batches": 1}
    [own] = baseline_plans(make_config(SearchConfig, {**SEARCH, **flags}), DENSE, PlanSize.of(build_resnet50(4), 32))
    k2 = optuna.create_study(study_name="k2", storage=open_storage(storage), directions=["maximize", "minimize"])
    add_tilt_trials(k2, ([own[f"tilt/layer{i}"] for i in range(1, 5)], 1.0), ([1.0, 0.0, 0.0, -1.0], 1.5))
    with contextlib.chdir(tmp_path):
        main(argv(study_name="k4", storage=storage, teacher=teacher_file, n_trials=1, warm_from="k2", **flags))
    assert "--warm-from k2: its pick (trial 0) has the widths of the baseline's plan" in capsys.readouterr().out
    assert [t.user_attrs.get("warm_from") for t in load_study(storage, "k4").trials] == [None]


@pytest.mark.parametrize("warm_from, error", [
    ("k4", "a study cannot start from its own pick"),
    ("none", "--warm-from none: no such study"),
    ("shares", "--warm-from shares: its pick (trial 0) has params share/layer1, this study samples tilt/layer1"),
    ("unscored", "--warm-from unscored: no COMPLETE trial of study 'unscored' recorded a finite held-out loss")])
def test_warm_from_refuses_a_study_it_cannot_start_from(tmp_path, teacher_file, capsys, warm_from, error):
    storage = str(tmp_path / "studies.db")
    shares = optuna.create_study(study_name="shares", storage=open_storage(storage),
                                 directions=["maximize", "minimize"])
    share = {"share/layer1": optuna.distributions.FloatDistribution(0, 1)}
    shares.add_trial(optuna.trial.create_trial(values=[50.0, 1e7], params={"share/layer1": 0.5}, distributions=share,
                                               user_attrs={"val_loss": 1.0}))
    add_tilt_trials(optuna.create_study(study_name="unscored", storage=open_storage(storage),
                                        directions=["maximize", "minimize"]), ([0.0] * 4, float("nan")))
    with contextlib.chdir(tmp_path), pytest.raises(SystemExit) as exc:
        main([*argv(study_name="k4", storage=storage, teacher=teacher_file, target_params=15_000_000, space="stage",
                    trial_epochs=0, bn_calib_batches=1), "--warm-from", warm_from])
    assert exc.value.code == 2 and error in capsys.readouterr().err
    assert "k4" not in {s.study_name for s in open_storage(storage).get_all_studies()}  # nothing left behind
    assert not (tmp_path / "runs" / "k4").exists()
