"""search.storage: heartbeats and stale trials on journal files and RDB, storage errors (no training)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pruning.errors import UserError
from search.storage import (HEARTBEAT_KEY, STALE_REASON, fail_stale_trials, load_study, open_storage, pid_alive,
                            pid_space, redact)


# The tests create RUNNING trials with study.ask(), which Optuna's heartbeat expects from optimize() only.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


def new_study(url: str, **storage_kwargs) -> optuna.Study:
    return optuna.create_study(study_name="s", storage=open_storage(url, **storage_kwargs),
                               directions=["maximize", "minimize"])


def running_trial(study: optuna.Study) -> int:
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("params", 123)  # a partial result the retry must not inherit
    return trial._trial_id


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def zombie():
    """A child process that exited and that this process has not reaped (waited on) yet."""
    proc = subprocess.Popen(["sleep", "60"])
    proc.kill()
    stat = Path(f"/proc/{proc.pid}/stat")
    deadline = time.time() + 10
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z" and time.time() < deadline:
        time.sleep(0.01)
    yield proc.pid
    proc.wait()


def test_pid_alive_sees_zombies_as_dead(zombie):
    os.kill(zombie, 0)  # a signal still reaches it: this alone made a killed local worker look alive
    assert not pid_alive(zombie)
    assert pid_alive(os.getpid()) and not pid_alive(dead_pid())


def assert_failed_and_requeued(study: optuna.Study, trial_id: int) -> None:
    trials = study.get_trials()
    failed = next(t for t in trials if t._trial_id == trial_id)
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == STALE_REASON
    retry = [t for t in trials if t.state == TrialState.WAITING]
    assert len(retry) == 1 and retry[0].params == failed.params
    assert "fail_reason" not in retry[0].user_attrs and "params" not in retry[0].user_attrs
    assert HEARTBEAT_KEY not in retry[0].system_attrs and retry[0].system_attrs["failed_trial"] == failed.number


@pytest.mark.parametrize("pid, age_s, stale", [("dead", 0, True),     # same machine, process gone: at once
                                               ("zombie", 0, True),   # exited, not reaped yet: at once too
                                               ("alive", 1000, True),  # no beat for longer than the grace
                                               ("alive", 0, False)])   # beating: left alone
def test_journal_stale_trials_fail_with_a_reason_and_are_retried(tmp_path, request, pid, age_s, stale):
    study = new_study(str(tmp_path / "studies.db"))
    trial_id = running_trial(study)
    pids = {"dead": dead_pid, "zombie": lambda: request.getfixturevalue("zombie"), "alive": os.getpid}
    beat = {"time": time.time() - age_s, "trial_id": trial_id, "pid": pids[pid](), "pid_space": pid_space()}
    study._storage.set_trial_system_attr(trial_id, HEARTBEAT_KEY, beat)
    fail_stale_trials(study)
    if stale:
        assert_failed_and_requeued(study, trial_id)
    else:
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]


WORKER = """
import sys, time, optuna
from search.storage import open_storage
study = optuna.load_study(study_name="s", storage=open_storage(sys.argv[1], heartbeat_s=1))
def objective(trial):
    trial.suggest_float("x", 0.0, 1.0)
    print("started", flush=True)
    time.sleep(600)
study.optimize(objective, n_trials=1)
"""


def test_a_killed_worker_leaves_no_running_trial(tmp_path):
    """A real worker process beats through Optuna's heartbeat thread, is SIGKILLed, and its trial is failed."""
    url = str(tmp_path / "studies.db")
    study = new_study(url)
    proc = subprocess.Popen([sys.executable, "-c", WORKER, url], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        deadline = time.time() + 30
        while not study.get_trials()[0].system_attrs.get(HEARTBEAT_KEY) and time.time() < deadline:
            time.sleep(0.2)
        assert study.get_trials()[0].system_attrs[HEARTBEAT_KEY]["pid"] == proc.pid
    finally:
        proc.kill()
        proc.wait()
    fail_stale_trials(study)
    assert_failed_and_requeued(study, study.get_trials()[0]._trial_id)


def test_rdb_stale_trials_get_a_reason_too(tmp_path):
    study = new_study(f"sqlite:///{tmp_path / 'studies.sqlite'}", heartbeat_s=1, grace_s=1)
    trial_id = running_trial(study)
    study._storage.record_heartbeat(trial_id)
    time.sleep(2.5)
    fail_stale_trials(study)
    assert_failed_and_requeued(study, trial_id)


def test_storage_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"postgresql://me:\*\*\*@127.0.0.1:9/db: cannot open") as exc:
        open_storage("postgresql://me:secret@127.0.0.1:9/db")
    assert "secret" not in str(exc.value)
    sqlite = tmp_path / "x.db"
    optuna.create_study(storage=f"sqlite:///{sqlite}")
    with pytest.raises(UserError, match="sqlite:///"):
        open_storage(str(sqlite))
    with pytest.raises(UserError, match="directory"):
        open_storage(str(tmp_path))
    (tmp_path / "notes.txt").write_text("not a journal\n")
    with pytest.raises(UserError, match="not an Optuna journal"):
        open_storage(str(tmp_path / "notes.txt"))


def test_unknown_study_names_the_existing_ones(tmp_path):
    new_study(str(tmp_path / "studies.db"))
    with pytest.raises(UserError, match=r"no such study .*\(it holds: s\)"):
        load_study(str(tmp_path / "studies.db"), "other")


def test_redact_hides_only_the_password():
    assert redact("postgresql://u:p%40ss@host:5432/db") == "postgresql://u:***@host:5432/db"
    assert redact("sqlite:///x.db") == "sqlite:///x.db"
