"""Where studies live: a journal file (default) or an RDB URL, both with heartbeats, and a file lock.

Optuna gives RDB storages heartbeats: a worker that dies mid-trial stops beating, and the next worker
to start a trial marks its trial FAIL and re-queues its params (``RetryHeartbeatStaleTrialCallback``).
Optuna's journal storage has no heartbeat, so ``HeartbeatJournalStorage`` adds the same mechanism
(a trial system attr ``heartbeat`` rewritten every ``HEARTBEAT_S``); on one machine it also notices at
once that a trial's worker process is gone. Either way the stale trial gets a ``fail_reason``.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from pruning.errors import UserError

HEARTBEAT_S = 60     # Optuna's documented example interval
GRACE_S = 180        # three missed beats: a busy GIL or a slow filesystem is not a dead worker
MAX_RETRY = 2        # a plan whose workers keep dying (e.g. killed for memory) is not retried forever
HEARTBEAT_KEY = "heartbeat"
STALE_REASON = "its worker stopped (killed or lost) during the trial; the plan was queued again"


def open_storage(url: str, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S) -> BaseStorage:
    """The storage ``--storage`` names: an RDB URL (``scheme://...``) or a journal file path."""
    with warnings.catch_warnings():
        # Optuna marks its heartbeat API "experimental" (since 2.8); it is what keeps no trial stuck in RUNNING.
        warnings.simplefilter("ignore", ExperimentalWarning)
        retry = RetryCleanly(max_retry=MAX_RETRY)
        if "://" in url:
            try:
                return ReasonedRDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=grace_s,
                                          heartbeat_stale_trial_callback=retry)
            except Exception as exc:  # sqlalchemy/driver errors vary by backend; the fix is the same
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise UserError(f"--storage {redact(url)}: cannot open it ({first}); check the URL and that the "
                                f"server is running (postgresql:// needs `pip install -e .[postgres]`)") from None
    path = Path(url)
    if path.is_dir():
        raise UserError(f"--storage {url} is a directory; give a journal file path such as studies.db")
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            head = f.readline(1 << 20)
        if head.startswith(b"SQLite format 3\x00"):
            raise UserError(f"--storage {url} is an SQLite database; pass it as --storage sqlite:///{url}")
        if not is_journal_line(head):  # appending journal lines would damage someone's file
            raise UserError(f"--storage {url} is not an Optuna journal file; give another path or an RDB URL")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Absolute, so the storage keeps working if the process changes directory later.
        return HeartbeatJournalStorage(JournalFileBackend(str(path.resolve())), heartbeat_s, grace_s, retry)
    except OSError as exc:
        raise UserError(f"--storage {url}: cannot open it as a journal file ({exc.strerror}); choose a writable "
                        f"path") from None


def is_journal_line(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "op_code" in record


def load_study(storage_url: str, study_name: str) -> optuna.Study:
    """An existing study (for retraining and reports); a UserError lists the studies that do exist."""
    storage = open_storage(storage_url)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in storage.get_all_studies()]
        raise UserError(f"--study-name {study_name}: no such study in --storage {redact(storage_url)} (it holds: "
                        f"{', '.join(names) or 'no study'}); run `python -m search --study-name {study_name}` "
                        f"first") from None


def redact(url: str) -> str:
    """A storage URL without its password, for messages."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock between processes (also across machines on filesystems with working flock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mark_stale(storage: BaseStorage, trial_ids: list[int]) -> list[int]:
    """Give each stale trial its ``fail_reason`` before Optuna fails it; drop those already finished."""
    marked = []
    for trial_id in trial_ids:
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", STALE_REASON)
        except UpdateFinishedTrialError:  # it finished meanwhile, or another worker failed it first
            continue
        marked.append(trial_id)
    return marked


class RetryCleanly(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial, without copying its user attrs (``fail_reason``, partial
    results) or its last heartbeat into the new trial."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        clean = copy.deepcopy(trial)
        clean.user_attrs = {}
        clean.system_attrs = {k: v for k, v in trial.system_attrs.items() if k in ("failed_trial", "retry_history")}
        super().__call__(study, clean)


class ReasonedRDBStorage(RDBStorage):
    """``RDBStorage`` whose stale trials get a ``fail_reason``."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return mark_stale(self, super()._get_stale_trial_ids(study_id))


_PID_SPACE = None


def pid_space() -> str:
    """Names the process-id namespace of this process: pids are comparable only within one."""
    global _PID_SPACE
    if _PID_SPACE is None:
        try:
            ns = os.readlink("/proc/self/ns/pid") + Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            ns = ""
        _PID_SPACE = f"{socket.gethostname()}|{ns}"
    return _PID_SPACE


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal storage with Optuna's heartbeat protocol (which Optuna implements only for RDB)."""

    def __init__(self, backend: JournalFileBackend, heartbeat_s: int, grace_s: int,
                 stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None):
        super().__init__(backend)
        self._heartbeat_s, self._grace_s, self._stale_callback = heartbeat_s, grace_s, stale_callback

    def record_heartbeat(self, trial_id: int) -> None:
        beat = {"time": time.time(), "trial_id": trial_id, "pid": os.getpid(), "pid_space": pid_space()}
        with contextlib.suppress(UpdateFinishedTrialError):  # the trial was failed as stale meanwhile
            self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, beat)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_KEY)
            if not beat or beat.get("trial_id") != trial._trial_id:  # not beating yet: count from its start
                beat = {"time": trial.datetime_start.timestamp() if trial.datetime_start else now}
            gone = beat.get("pid_space") == pid_space() and not pid_alive(beat["pid"])
            if gone or now - beat["time"] > self._grace_s:
                stale.append(trial._trial_id)
        return mark_stale(self, stale)

    def get_heartbeat_interval(self) -> int:
        return self._heartbeat_s

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._stale_callback


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's stale-trial sweep (experimental, hence the silenced warning), for workers that wait."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
