"""Search workers: each runs trials until the study has ``--n-trials`` COMPLETE ones.

``--n-workers W`` spawns W processes on this machine (one per GPU when several are visible); workers on
other machines join the same study through its storage. Spawned workers import this module, not
``search.__main__`` (multiprocessing cannot re-import a package's ``__main__``).

Each worker process seeds its sampler once (``sampler_seed``): from ``--sampler-seed``, its index and the plans
drawn before it started when that is given (a one-worker study replays), else from its host, pid and clock. It
records that seed on every trial it runs (user attr ``sampler_seed``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import multiprocessing
import multiprocessing.connection
import os
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from pruning.errors import UserError, run_cli
from search.config import SearchConfig
from search.front import is_feasible, non_dominated
from search.objective import MAX_CONSECUTIVE_FAILS, Objective, trial_checkpoint
from search.optuna_private import enqueued_params, trial_id_of
from search.storage import PROVENANCE, STALE_REASON, fail_stale_trials, open_storage

POLL_S = 5  # how often a worker with nothing to start checks whether the running trials finished
SEED_ATTR = "sampler_seed"  # user attr: the seed of the sampler of the worker that ran the trial
RETRY_ATTR = "retry_of"     # user attr of a failed enqueued plan's second (last) attempt: the first one's number


def make_sampler(cfg: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The ``--sampler`` (the default's justification is beside the field in search/config.py)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        if cfg.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        if cfg.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        if cfg.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)


def sampler_seed(cfg: SearchConfig, worker: int, study: optuna.Study) -> int:
    """The seed of a worker's sampler. With ``--sampler-seed``, from it, the worker index and the plans ``study``
    drew before (not its queued ones): a resumed study draws new plans, and a study that queues one plan more
    draws the same ones. Else one no other worker draws: ``--seed``, the worker index and the study's size
    alone are the same for workers started together on several machines, which then proposed identical plans
    (issue 11); the host, pid and clock tell them apart."""
    drawn = sum(enqueued_params(t) is None for t in study.get_trials(deepcopy=False))
    if cfg.sampler_seed >= 0:
        entropy = [cfg.sampler_seed, worker, drawn]
    else:
        host = zlib.crc32(socket.gethostname().encode())
        entropy = [cfg.seed, worker, drawn, host, os.getpid(), time.time_ns()]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def work(cfg: SearchConfig, worker: int, teacher: Path) -> None:
    """One worker: start trials until the study has ``n_trials`` COMPLETE ones (counting those running)."""
    storage = open_storage(cfg.storage)
    study = optuna.load_study(study_name=cfg.study_name, storage=storage)
    seed = sampler_seed(cfg, worker, study)
    study.sampler = make_sampler(cfg, seed)
    objective = Objective(cfg, teacher)
    while True:
        fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        complete, running = states.count(TrialState.COMPLETE), states.count(TrialState.RUNNING)
        if complete >= cfg.n_trials:
            return
        if complete + running >= cfg.n_trials:  # the rest is running elsewhere; start again if one fails
            time.sleep(POLL_S)
            continue
        trial = run_trial(study, storage, objective, seed)
        retry_enqueued_plan(study, trial)
        gc.collect()  # as study.optimize(gc_after_trial=True): frees the trial's models before the next
        if cfg.keep_checkpoints == "front":
            keep_front_checkpoints(cfg, study)
        if objective.failures >= MAX_CONSECUTIVE_FAILS:
            raise UserError(f"{objective.failures} trials in a row failed, the last with {objective.last_reason}; "
                            f"fix the cause and rerun the same command to resume")


def run_trial(study: optuna.Study, storage: BaseStorage, objective: Callable[[optuna.Trial], Sequence[float]],
              seed: int) -> FrozenTrial:
    """Ask, run ``objective`` with a heartbeat, tell: ``study.optimize`` for one trial, except that a trial
    failed meanwhile as stale does not stop this worker.

    That happens to a live worker whose heartbeat stalled past the grace period (a long GIL hold, a slow
    shared filesystem, a suspended machine): another worker FAILs its trial and queues the plan again.
    Optuna refuses any write to a finished trial, so this run's result cannot be kept on it: it is
    dropped with one line, and the worker goes on. An objective that raises gives a FAIL trial (the
    objective records its ``fail_reason``).
    """
    with warnings.catch_warnings():  # Optuna warns that heartbeats are for optimize(); beating() is one
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used", UserWarning)
        trial = study.ask()
    values = None
    try:
        with beating(storage, trial_id_of(trial)):
            trial.set_user_attr(SEED_ATTR, seed)
            values = objective(trial)
    except Exception:  # the objective printed and recorded why; the study goes on
        pass
    finally:  # also on KeyboardInterrupt, so that the trial does not stay RUNNING until it goes stale
        state = TrialState.FAIL if values is None else None  # None: Optuna checks the values (NaN -> FAIL)
        try:
            frozen = study.tell(trial, values, state, skip_if_finished=True)
        except UpdateFinishedTrialError:  # failed as stale between Optuna's check and its write
            frozen = study.get_trials(deepcopy=False)[trial.number]
    if frozen.user_attrs.get("fail_reason") == STALE_REASON:
        shown = "" if values is None else f" {tuple(values)}"
        print(f"trial {trial.number}: another worker failed it as stale while this one ran it (its heartbeat "
              f"stalled past the grace period) and queued the plan again; this run's result{shown} is dropped",
              flush=True)
    return frozen


@contextlib.contextmanager
def beating(storage: BaseStorage, trial_id: int) -> Iterator[None]:
    """The trial's heartbeat while the block runs, as ``study.optimize`` keeps it: a beat at once, then
    one per heartbeat interval (every storage ``search.storage.open_storage`` opens has heartbeats)."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(storage.get_heartbeat_interval()):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def retry_enqueued_plan(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed enqueued plan (the baseline's plans, search/__main__.py) once more, marked with
    ``retry_of``: one NaN loss or OOM must not take the baseline out of the study, and a plan that fails
    twice is not retried forever (``PROVENANCE``, a ``--warm-from`` plan's origin, is kept). Stale trials are not
    retried here: ``search.storage`` queues them."""
    params = enqueued_params(trial)
    if (trial.state == TrialState.FAIL and params is not None and RETRY_ATTR not in trial.user_attrs
            and trial.user_attrs.get("fail_reason") != STALE_REASON):
        kept = {k: v for k, v in trial.user_attrs.items() if k in PROVENANCE}
        study.enqueue_trial(params, user_attrs={**kept, RETRY_ATTR: trial.number})


def pareto_front(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> list[FrozenTrial]:
    """The trials no other one dominates (at least as good in every objective, better in one): Optuna's
    front, computed on the list given instead of on a fresh read of the study."""
    if not trials:
        return []
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions])
    loss = np.array([t.values for t in trials]) * signs  # every objective minimised
    return [t for t, kept in zip(trials, non_dominated(loss)) if kept]


def keep_front_checkpoints(cfg: SearchConfig, study: optuna.Study) -> None:
    """Delete the checkpoints of finished trials off the Pareto front, judged on one snapshot of the trials.

    The front is that of the feasible COMPLETE trials (Optuna's rule: every constraint <= 0). A trial
    dominated (or infeasible beside a feasible one) in a snapshot stays so as trials complete, so a
    checkpoint on the front is never deleted, whatever other workers finish meanwhile. While no trial is
    feasible, no COMPLETE trial's checkpoint is deleted. FAIL trials' checkpoints (a run that finished
    after its trial went stale) always go.
    """
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    feasible = [t for t in complete if is_feasible(t)]
    keep = pareto_front(feasible, study.directions) if feasible else complete
    kept = {t.number for t in keep}
    for t in trials:
        if t.number not in kept:
            trial_checkpoint(cfg, t.number).unlink(missing_ok=True)


def worker_devices(cfg: SearchConfig) -> list[str]:
    """One device per worker: round-robin over the GPUs when several are visible, else the run's device."""
    gpus = torch.cuda.device_count() if cfg.device in ("auto", "cuda") else 0
    return [f"cuda:{i % gpus}" if gpus > 1 else cfg.device for i in range(cfg.n_workers)]


def spawn_workers(cfg: SearchConfig, teacher: Path) -> None:
    """Run ``cfg.n_workers`` worker processes and wait for them; a UserError names any that failed.

    Each worker is reaped as soon as it exits, whatever the order: an exited, unreaped worker is a zombie,
    which looks alive to a signal (``search.storage.pid_alive`` also checks for zombies).
    """
    ctx = multiprocessing.get_context("spawn")  # fork would share CUDA/OpenMP state with the parent
    procs = [ctx.Process(target=worker_main, args=(dataclasses.replace(cfg, device=device), i, teacher),
                         name=f"search-worker-{i}") for i, device in enumerate(worker_devices(cfg))]
    for proc in procs:
        proc.start()
    try:
        while alive := [p for p in procs if p.is_alive()]:  # is_alive() reaps the workers that exited
            multiprocessing.connection.wait([p.sentinel for p in alive])
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join()
    failed = [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode != 0]
    if failed:
        raise UserError(f"{', '.join(failed)} stopped early (see its error above); rerun the same command to resume")


def worker_main(cfg: SearchConfig, worker: int, teacher: Path) -> None:
    """Entry point of a spawned worker process."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not cfg.device.startswith("cuda"):  # share the CPU cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.n_workers))
    run_cli(lambda: work(cfg, worker, teacher), ["--debug"] if cfg.debug else [])
