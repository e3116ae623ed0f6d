"""Every private Optuna API the search relies on, in one place.

Optuna may change these without notice; tests/test_optuna_private.py checks each one against the
installed Optuna and fails loudly, naming the API, when it does. Written against Optuna 5.0.
"""
from __future__ import annotations

import abc

import optuna
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial

# System attrs RetryHeartbeatStaleTrialCallback reads and writes on a retried trial (its public
# retried_trial_number/retry_history read them back): a clean retry must keep these and nothing else.
RETRY_SYSTEM_ATTRS = ("failed_trial", "retry_history")
# The system attr Study.enqueue_trial stores the enqueued params under (Trial suggests them from it).
FIXED_PARAMS_KEY = "fixed_params"


class HeartbeatStorage(BaseHeartbeat):
    """A storage taking part in Optuna's heartbeat protocol (``optuna.storages._heartbeat``, private).

    ``optuna.storages.fail_stale_trials`` accepts only ``BaseHeartbeat`` storages and asks them for
    their stale trials through the private ``_get_stale_trial_ids``; subclasses implement the public
    ``stale_trial_ids`` instead. Put it first among the bases, so that it routes the call for an
    ``RDBStorage`` too.
    """

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)

    @abc.abstractmethod
    def stale_trial_ids(self, study_id: int) -> list[int]:
        """IDs of the study's RUNNING trials whose worker stopped beating."""


def rdb_stale_trial_ids(storage: RDBStorage, study_id: int) -> list[int]:
    """``RDBStorage``'s own stale-trial query (heartbeats older than its grace period)."""
    return RDBStorage._get_stale_trial_ids(storage, study_id)


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's ID of a trial (storage methods take IDs; trials expose only their number)."""
    return trial._trial_id


def enqueued_params(trial: FrozenTrial) -> dict | None:
    """The params ``Study.enqueue_trial`` fixed for this trial, or None when it was sampled."""
    return trial.system_attrs.get(FIXED_PARAMS_KEY)
