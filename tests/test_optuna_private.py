"""search.optuna_private: each private Optuna API the search uses still behaves as the code assumes.

A failure here means the installed Optuna changed that API: fix search/optuna_private.py (and only it).
"""
from __future__ import annotations

import time

import optuna
import pytest
from optuna.storages import InMemoryStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

from search.optuna_private import (FIXED_PARAMS_KEY, RETRY_SYSTEM_ATTRS, HeartbeatStorage, enqueued_params,
                                   rdb_stale_trial_ids, trial_id_of)

# The tests create RUNNING trials with study.ask(), which Optuna's heartbeat expects from optimize() only.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning",
                                        "ignore::optuna.exceptions.ExperimentalWarning")


class AllStale(HeartbeatStorage, InMemoryStorage):
    """Every RUNNING trial is stale; the stale-trial callback records what it is given."""

    def __init__(self):
        super().__init__()
        self.called_back = []

    def stale_trial_ids(self, study_id: int) -> list[int]:
        return [trial_id_of(t) for t in self.get_all_trials(study_id, states=(TrialState.RUNNING,))]

    def record_heartbeat(self, trial_id: int) -> None:
        pass

    def get_heartbeat_interval(self) -> int:
        return 60

    def get_heartbeat_stale_trial_callback(self):
        return lambda study, trial: self.called_back.append(trial.number)


def test_base_heartbeat_protocol_is_the_one_heartbeat_storage_implements():
    """optuna.storages._heartbeat.BaseHeartbeat: these four abstract methods, and fail_stale_trials
    calls _get_stale_trial_ids (routed to stale_trial_ids), FAILs those trials and calls the callback."""
    assert BaseHeartbeat.__abstractmethods__ == {"record_heartbeat", "_get_stale_trial_ids", "get_heartbeat_interval",
                                                 "get_heartbeat_stale_trial_callback"}
    storage = AllStale()
    study = optuna.create_study(storage=storage)
    study.ask()
    optuna.storages.fail_stale_trials(study)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL] and storage.called_back == [0]


def test_rdb_storage_has_a_stale_trial_query_and_the_heartbeat_base(tmp_path):
    """RDBStorage is a BaseHeartbeat and RDBStorage._get_stale_trial_ids(study_id) lists old heartbeats."""
    assert issubclass(RDBStorage, BaseHeartbeat)
    storage = RDBStorage(f"sqlite:///{tmp_path / 'x.sqlite'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    study_id = storage.get_study_id_from_name("s")
    storage.record_heartbeat(trial_id_of(trial))
    assert rdb_stale_trial_ids(storage, study_id) == []
    time.sleep(2.2)
    assert rdb_stale_trial_ids(storage, study_id) == [trial_id_of(trial)]


def test_trial_id_of_is_the_storage_id_of_live_and_frozen_trials():
    storage = InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")
    study.ask()
    trial = study.ask()
    expected = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("s"), 1)
    assert trial_id_of(trial) == expected == trial_id_of(study.get_trials()[1])


def test_enqueued_trials_carry_their_fixed_params():
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.25})
    waiting = study.get_trials()[0]
    assert waiting.system_attrs[FIXED_PARAMS_KEY] == {"x": 0.25} == enqueued_params(waiting)
    trial = study.ask()
    assert trial.suggest_float("x", 0.0, 1.0) == 0.25  # Trial suggests the enqueued value from that attr
    study.tell(trial, 1.0)
    sampled = study.ask()
    sampled.suggest_float("x", 0.0, 1.0)
    study.tell(sampled, 1.0)
    assert [enqueued_params(t) for t in study.get_trials()] == [{"x": 0.25}, None]


def test_retry_callback_system_attrs_are_the_ones_kept():
    """RetryHeartbeatStaleTrialCallback reads and writes exactly RETRY_SYSTEM_ATTRS on the retried trial."""
    study = optuna.create_study()
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    study.tell(trial, state=TrialState.FAIL)
    RetryHeartbeatStaleTrialCallback(max_retry=2)(study, study.get_trials()[0])
    retry = study.get_trials()[1]
    assert retry.state == TrialState.WAITING and set(retry.system_attrs) == set(RETRY_SYSTEM_ATTRS)
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0
    assert RetryHeartbeatStaleTrialCallback.retry_history(retry) == [0]
