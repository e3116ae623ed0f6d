"""search.worker: per-process sampler seeds, trials failed as stale under a live worker, retries of
enqueued plans, front checkpoints from one snapshot, reaping of local workers (issue 11, points 5 and 8).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import BaseStorage
from optuna.trial import TrialState, create_trial

import search.worker
from conftest import tiny_argv
from distill.config import make_config
from pruning.errors import UserError
from pruning.model import build_resnet50, channel_plan
from search.config import SearchConfig
from search.objective import trial_checkpoint
from search.optuna_private import enqueued_params
from search.space import suggest
from search.storage import HEARTBEAT_KEY, PROVENANCE, STALE_REASON, fail_stale_trials, open_storage
from search.worker import RETRY_ATTR, SEED_ATTR, keep_front_checkpoints, retry_enqueued_plan, run_trial
from test_reliability import SEARCH, ROOT, trials



def journal_study(tmp_path: Path) -> tuple[optuna.Study, BaseStorage, str]:
    url = str(tmp_path / "studies.db")
    storage = open_storage(url)
    return optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"]), storage, url


# --- a live worker whose trial is failed as stale ----------------------------------------------------------

class StaleAtTell(optuna.samplers.RandomSampler):
    """Runs ``fail`` once inside study.tell, after Optuna checked the trial is RUNNING, before its write."""

    def __init__(self, fail):
        super().__init__(seed=0)
        self.fail = fail

    def after_trial(self, study, trial, state, values):
        self.fail, fail = None, self.fail
        if fail:
            fail()


@pytest.mark.parametrize("when", ["before return", "before a write", "inside tell"])
def test_a_trial_failed_as_stale_under_a_live_worker_does_not_stop_it(tmp_path, capsys, when):
    """Another worker (grace period 0 s) sees the running trial's heartbeat as stale, FAILs it and queues
    the plan again; this worker's run_trial returns, drops its result with one line, and runs the retry."""
    study, storage, url = journal_study(tmp_path)
    other = optuna.load_study(study_name="s", storage=open_storage(url, grace_s=0))

    def stale_now():
        time.sleep(0.05)  # past the 0 s grace period since the last beat
        fail_stale_trials(other)

    if when == "inside tell":
        study.sampler = StaleAtTell(stale_now)
    # an enqueued plan failed as stale is queued by the stale retry only, with its origin (--warm-from)
    study.enqueue_trial({"x": 0.5}, user_attrs={"warm_from": "k2", "warm_trial": 3})

    def objective(trial):
        trial.suggest_float("x", 0.0, 1.0)
        if trial.number == 0 and when != "inside tell":
            stale_now()
            if when == "before a write":
                trial.set_user_attr("params", 1)  # raises: the trial is finished
        return 90.0, 1000.0

    first = run_trial(study, storage, objective, seed=7)
    retry_enqueued_plan(study, first)
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"] == STALE_REASON
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("trial 0: another worker failed it as stale") and "is dropped" in line
    assert ("(90.0, 1000.0)" in line) == (when != "before a write")
    [waiting] = [t for t in study.get_trials() if t.state == TrialState.WAITING]  # queued once
    second = run_trial(study, storage, objective, seed=7)  # the worker goes on, with the retry
    assert second.number == waiting.number and second.state == TrialState.COMPLETE
    assert second.params == first.params and second.system_attrs["failed_trial"] == 0
    assert {k: second.user_attrs.get(k) for k in PROVENANCE} == {"warm_from": "k2", "warm_trial": 3}
    assert second.user_attrs[SEED_ATTR] == 7 and second.system_attrs[HEARTBEAT_KEY]["pid"] == os.getpid()


def test_a_failed_enqueued_plan_is_retried_once(tmp_path, capsys):
    study, storage, _ = journal_study(tmp_path)
    study.enqueue_trial({"x": 0.5}, user_attrs={"warm_from": "k2", "warm_trial": 3})

    def failing(trial):
        trial.suggest_float("x", 0.0, 1.0)
        raise RuntimeError("the loss became nan")

    for _ in range(3):  # the plan, its one retry, then a sampled plan (never retried)
        retry_enqueued_plan(study, run_trial(study, storage, failing, seed=1))
    ts = study.get_trials()
    assert [t.state for t in ts] == [TrialState.FAIL] * 3 and capsys.readouterr().out == ""
    assert [enqueued_params(t) for t in ts[:2]] == [{"x": 0.5}] * 2 and enqueued_params(ts[2]) is None
    assert [t.user_attrs.get(RETRY_ATTR) for t in ts] == [None, 0, None]
    assert [t.user_attrs.get("warm_from") for t in ts] == ["k2", "k2", None]  # the retry keeps its origin


# --- checkpoints of the front --------------------------------------------------------------------------

def add_trial(study: optuna.Study, cfg: SearchConfig, values: list[float] | None, over_budget: float = -1.0) -> int:
    """A finished trial (FAIL when ``values`` is None) with a checkpoint; ``over_budget`` <= 0 is feasible."""
    state = TrialState.COMPLETE if values else TrialState.FAIL
    study.add_trial(create_trial(state=state, values=values, constraints={"params": over_budget} if values else None))
    number = len(study.trials) - 1
    path = trial_checkpoint(cfg, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"checkpoint")
    return number


def kept(cfg: SearchConfig) -> set[int]:
    return {int(p.stem.split("_")[1]) for p in (cfg.study_dir / "trials").glob("trial_*.pt")}


def front_study(tmp_path: Path) -> tuple[optuna.Study, SearchConfig]:
    """Two infeasible trials, a FAIL one, then four feasible ones: the front is trials 3, 5 (a tie) and 6."""
    cfg = make_config(SearchConfig, {"out": str(tmp_path), "study_name": "s"})
    study = optuna.create_study(directions=["maximize", "minimize"])
    add_trial(study, cfg, [80.0, 100.0], over_budget=5.0)
    add_trial(study, cfg, [70.0, 50.0], over_budget=1.0)
    add_trial(study, cfg, None)
    return study, cfg


def test_front_checkpoints_follow_the_constrained_front(tmp_path):
    study, cfg = front_study(tmp_path)
    keep_front_checkpoints(cfg, study)
    assert kept(cfg) == {0, 1}  # nothing feasible yet: no COMPLETE checkpoint deleted; FAIL ones go
    for values in ([60.0, 40.0], [50.0, 45.0], [60.0, 40.0], [65.0, 48.0]):
        add_trial(study, cfg, values)
    keep_front_checkpoints(cfg, study)
    assert kept(cfg) == {3, 5, 6} == {t.number for t in study.best_trials}  # Optuna's constrained front


@pytest.mark.parametrize("after_read", [1, 2, 3])
def test_a_trial_completing_during_the_cleanup_keeps_its_checkpoint(tmp_path, monkeypatch, after_read):
    """Another worker completes a trial on the front right after the cleanup's n-th read of the trials."""
    study, cfg = front_study(tmp_path)
    for values in ([60.0, 40.0], [50.0, 45.0]):
        add_trial(study, cfg, values)
    real, reads = study.get_trials, []

    def read_then_maybe_complete(*args, **kwargs):
        trials = real(*args, **kwargs)
        reads.append(1)
        if len(reads) == after_read:
            add_trial(study, cfg, [99.0, 10.0])  # dominates every other trial
        return trials

    monkeypatch.setattr(study, "get_trials", read_then_maybe_complete)
    keep_front_checkpoints(cfg, study)
    assert 5 in kept(cfg) or len(study.trials) == 5  # kept, or never completed (fewer reads than n)
    assert {0, 1, 2, 4} & kept(cfg) == set()


# --- local workers -----------------------------------------------------------------------------------------

def exit_or_wait_for_reaping(cfg: SearchConfig, worker: int, scratch: Path) -> None:
    """A spawned fake worker: worker 1 exits at once (exit code 3); worker 0 succeeds once worker 1 has been
    reaped by the parent (its /proc entry gone), and fails if it is still there (a zombie) after 60 s."""
    pid_file = scratch / "worker1.pid"
    if worker == 1:
        (scratch / "tmp.pid").write_text(str(os.getpid()))
        os.replace(scratch / "tmp.pid", pid_file)
        sys.exit(3)
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc = Path(f"/proc/{pid_file.read_text()}")
    while proc.exists() and time.time() < deadline:
        time.sleep(0.05)
    sys.exit(1 if proc.exists() else 0)


@pytest.mark.slow
def test_local_workers_are_reaped_as_they_exit(tmp_path, monkeypatch):
    monkeypatch.setattr(search.worker, "worker_main", exit_or_wait_for_reaping)
    cfg = make_config(SearchConfig, {"n_workers": 2, "device": "cpu", "out": str(tmp_path)})
    with pytest.raises(Exception, match=r"^search-worker-1 \(exit code 3\) stopped early"):
        search.worker.spawn_workers(cfg, tmp_path)


def test_a_sampler_seed_replays_the_draws_with_a_plan_more_queued():
    """--sampler-seed: a study that queues one plan more draws the same plans, the queued one in the last draw's
    place (search_vs_baseline's paired --carry-picks arms); another worker or a resumed study draws others."""
    cfg = make_config(SearchConfig, {"sampler_seed": 5, "space": "stage", "trial_epochs": 0})
    layers = list(channel_plan(build_resnet50(2)))
    queued = [{f"ratio/layer{i}": 0.3 for i in range(1, 5)}, {f"ratio/layer{i}": 0.1 * i for i in range(1, 5)}]

    def study_with(n_queued: int) -> optuna.Study:
        study = optuna.create_study(directions=["maximize", "minimize"])
        for params in queued[:n_queued]:
            study.enqueue_trial(params)
        return study

    def plans(study: optuna.Study, worker: int = 0) -> list[dict]:
        study.sampler = search.worker.make_sampler(cfg, search.worker.sampler_seed(cfg, worker, study))
        for _ in range(4):
            trial = study.ask()
            suggest(trial, cfg, layers)
            study.tell(trial, [50.0, 1.0])
        return [t.params for t in study.trials]

    one, two = plans(study_with(1)), plans(study_with(2))
    assert one[0] == two[0] == queued[0] and two[1] == queued[1]
    assert two[2:] == one[1:3] and len({tuple(p.values()) for p in one}) == 4
    assert plans(study_with(1), worker=1)[1:] != one[1:]  # workers on one machine draw apart
    resumed = study_with(1)
    first = plans(resumed)
    assert first == one and plans(resumed)[4:7] != one[1:4]  # a resumed study does not redraw its first plans
    fresh = make_config(SearchConfig, {"space": "stage"})  # -1: every worker its own seed, never replayed
    assert search.worker.sampler_seed(fresh, 0, study_with(0)) != search.worker.sampler_seed(fresh, 0, study_with(0))
    with pytest.raises(UserError, match="--sampler-seed -2: give a seed >= 0"):
        make_config(SearchConfig, {"sampler_seed": -2})


@pytest.mark.slow
def test_two_search_processes_sample_different_plans(tmp_path, teacher_file):
    """Two `python -m search` processes started together on one journal file and one teacher (the same flags,
    so the same --seed and worker index) propose different first plans, each with its own recorded seed.

    --ratio 0.5 above --max-ratio 0.4 leaves no baseline plan to enqueue: every trial is sampled. The first
    process to build the teacher's logit cache holds the study's lock while the other waits for it, so
    both start their first trial together."""
    teacher = shutil.copy(teacher_file, tmp_path / "teacher.pt")  # no logit cache beside it yet
    flags = {**SEARCH, "n_trials": 2, "teacher": str(teacher), "ratio": 0.5, "max_ratio": 0.4}
    argv = tiny_argv(make_config(SearchConfig, flags))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "search", *argv], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-3000:] for _, err in outputs]
    ts = trials(tmp_path)
    assert all(enqueued_params(t) is None for t in ts)
    first = {}
    for t in ts:
        first.setdefault(t.system_attrs[HEARTBEAT_KEY]["pid"], t)
    assert sorted(first) == sorted(proc.pid for proc in procs), "each process must have run a trial"
    a, b = first.values()
    assert a.user_attrs[SEED_ATTR] != b.user_attrs[SEED_ATTR] and a.params != b.params
