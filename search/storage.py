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
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from pruning.errors import UserError
from search.optuna_private import RETRY_SYSTEM_ATTRS, HeartbeatStorage, rdb_stale_trial_ids, trial_id_of

HEARTBEAT_S = 60     # Optuna's documented example interval
GRACE_S = 180        # three missed beats: a busy GIL or a slow filesystem is not a dead worker
MAX_RETRY = 2        # a plan whose workers keep dying (e.g. killed for memory) is not retried forever
HEARTBEAT_KEY = "heartbeat"
STALE_REASON = "its worker stopped (killed or lost) during the trial; the plan was queued again"
# Where a queued plan came from (``python -m search --warm-from``): a retry of it keeps them.
PROVENANCE = ("warm_from", "warm_trial")
SETTLE_S = 0.2      # a journal line another worker is appending is complete after this (fuzzers set 0)


def open_storage(url: str, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S) -> BaseStorage:
    """The storage ``--storage`` names: an RDB URL (``scheme://...``) or a journal file path."""
    if not url.isprintable():  # NUL, newlines, lone surrogates: no file or URL has them; one-line messages
        raise UserError(f"--storage {url!r} contains control characters; give a journal file path or an RDB URL")
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
    try:  # OSError here: e.g. a name too long, a parent that is a file, no permission
        if path.is_dir():
            raise UserError(f"--storage {url} is a directory; give a journal file path such as studies.db")
        if path.exists() and not path.is_file():
            raise UserError(f"--storage {url} is not a regular file; give a journal file path such as studies.db")
        if path.is_file() and path.stat().st_size:
            check_journal(path, url)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Absolute, so the storage keeps working if the process changes directory later.
        backend = JournalFileBackend(str(path.resolve()))
    except OSError as exc:
        raise UserError(f"--storage {url}: cannot open it as a journal file ({exc.strerror}); choose a readable, "
                        f"writable path") from None
    try:
        return HeartbeatJournalStorage(backend, heartbeat_s, grace_s, retry)
    # Optuna replays the whole journal here; a damaged line inside it fails with whatever the replay meets
    # (JSONDecodeError, ValueError("Invalid log format."), KeyError, AssertionError: issue 14's fuzzing).
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise UserError(f"--storage {url}: its journal cannot be replayed ({type(exc).__name__}: {first}); the file "
                        f"is damaged: restore it from a backup or give another path") from None


def check_journal(path: Path, url: str) -> None:
    """Refuse a file whose first or last line is not a complete journal record, before anything is appended:
    appending to someone else's file, or after a cut-off last line (which Optuna skips while the line is
    last, then fails on once it is not), would damage it."""
    with open(path, "rb") as f:
        head = f.readline(1 << 20)
    if head.startswith(b"SQLite format 3\x00"):
        raise UserError(f"--storage {url} is an SQLite database; pass it as --storage sqlite:///{url}")
    if not is_journal_line(head):
        raise UserError(f"--storage {url} is not an Optuna journal file; give another path or an RDB URL")
    size, tail = _tail(path)
    for _ in range(2):  # another worker may be appending a line just now: let it finish
        if tail.endswith(b"\n"):
            break
        time.sleep(SETTLE_S)
        size, tail = _tail(path)
    if not tail.endswith(b"\n"):
        cut = tail.rfind(b"\n") + 1
        fix = (f"keep the complete lines with `truncate -s {size - len(tail) + cut} {url}` and rerun"
               if cut or len(tail) == size else "restore it from a backup")  # else the line is longer than ``tail``
        raise UserError(f"--storage {url}: its last line is cut off (the file was truncated while a record was "
                        f"written); {fix}")
    last = tail[:-1].rsplit(b"\n", 1)[-1]
    if not is_journal_line(last):
        raise UserError(f"--storage {url}: its last line is not a journal record; the file is damaged: restore it "
                        f"from a backup or give another path")


def _tail(path: Path, size: int = 1 << 20) -> tuple[int, bytes]:
    """The file's size and its last ``size`` bytes."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        start = f.seek(max(0, end - size))
        return end, f.read(end - start)  # not past ``end``: a line appended meanwhile is not ours to judge


def is_journal_line(line: bytes) -> bool:
    """Whether ``line`` is one record of an Optuna journal (a JSON object with an op_code)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # bad JSON or undecodable bytes; nesting deeper than the parser goes
        return False
    return isinstance(record, dict) and "op_code" in record


def load_study(storage_url: str, study_name: str, flag: str = "--study-name") -> optuna.Study:
    """An existing study (for retraining and reports); a UserError, naming the ``flag`` that gave the name, lists
    the studies that do exist."""
    storage = open_storage(storage_url)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in storage.get_all_studies()]
        raise UserError(f"{flag} {study_name}: no such study in --storage {redact(storage_url)} (it holds: "
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
    results; but its ``PROVENANCE``) or its last heartbeat into the new trial."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        clean = copy.deepcopy(trial)
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in PROVENANCE}
        clean.system_attrs = {k: v for k, v in trial.system_attrs.items() if k in RETRY_SYSTEM_ATTRS}
        super().__call__(study, clean)


class ReasonedRDBStorage(HeartbeatStorage, RDBStorage):
    """``RDBStorage`` whose stale trials get a ``fail_reason``."""

    def stale_trial_ids(self, study_id: int) -> list[int]:
        return mark_stale(self, rdb_stale_trial_ids(self, study_id))


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
    """Whether process ``pid`` of this pid namespace still runs. A zombie is dead: it has exited and only
    waits for its parent to reap it (e.g. a killed worker while ``spawn_workers`` waits on another)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # it exited just now, or there is no procfs (macOS: kill(0) is all we know)
        return not Path("/proc/self/stat").exists()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] not in "ZX"  # "pid (comm) STATE ...": comm may hold spaces and ')'


class HeartbeatJournalStorage(HeartbeatStorage, JournalStorage):
    """A journal storage with Optuna's heartbeat protocol (which Optuna implements only for RDB)."""

    def __init__(self, backend: JournalFileBackend, heartbeat_s: int, grace_s: int,
                 stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None):
        super().__init__(backend)
        self._heartbeat_s, self._grace_s, self._stale_callback = heartbeat_s, grace_s, stale_callback

    def record_heartbeat(self, trial_id: int) -> None:
        beat = {"time": time.time(), "trial_id": trial_id, "pid": os.getpid(), "pid_space": pid_space()}
        with contextlib.suppress(UpdateFinishedTrialError):  # the trial was failed as stale meanwhile
            self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, beat)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_KEY)
            if not beat or beat.get("trial_id") != trial_id_of(trial):  # not beating yet: count from its start
                beat = {"time": trial.datetime_start.timestamp() if trial.datetime_start else now}
            gone = beat.get("pid_space") == pid_space() and not pid_alive(beat["pid"])
            if gone or now - beat["time"] > self._grace_s:
                stale.append(trial_id_of(trial))
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
