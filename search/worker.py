"""Search workers: each runs trials until the study has ``--n-trials`` COMPLETE ones.

``--n-workers W`` spawns W processes on this machine (one per GPU when several are visible); workers on
other machines join the same study through its storage. Spawned workers import this module, not
``search.__main__`` (multiprocessing cannot re-import a package's ``__main__``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
import multiprocessing
import os
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from pruning.errors import UserError, run_cli
from search.config import SearchConfig
from search.objective import MAX_CONSECUTIVE_FAILS, Objective, trial_checkpoint
from search.storage import fail_stale_trials, open_storage

POLL_S = 5  # how often a worker with nothing to start checks whether the running trials finished


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


def work(cfg: SearchConfig, worker: int, teacher: Path) -> None:
    """One worker: start trials until the study has ``n_trials`` COMPLETE ones (counting those running)."""
    storage = open_storage(cfg.storage)
    existing = len(optuna.load_study(study_name=cfg.study_name, storage=storage).trials)
    # Seeded per worker and per resumption, so workers and reruns never replay each other's samples.
    seed = int(np.random.SeedSequence([cfg.seed, worker, existing]).generate_state(1)[0])
    study = optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=make_sampler(cfg, seed))
    objective = Objective(cfg, teacher)
    callbacks = [keep_front_checkpoints(cfg)] if cfg.keep_checkpoints == "front" else []
    while True:
        fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        complete, running = states.count(TrialState.COMPLETE), states.count(TrialState.RUNNING)
        if complete >= cfg.n_trials:
            return
        if complete + running >= cfg.n_trials:  # the rest is running elsewhere; start again if one fails
            time.sleep(POLL_S)
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks, gc_after_trial=True)
        if objective.failures >= MAX_CONSECUTIVE_FAILS:
            raise UserError(f"{objective.failures} trials in a row failed, the last with {objective.last_reason}; "
                            f"fix the cause and rerun the same command to resume")


def keep_front_checkpoints(cfg: SearchConfig) -> Callable[[optuna.Study, FrozenTrial], None]:
    """A callback deleting the checkpoints of finished trials that are not on the current Pareto front."""
    def callback(study: optuna.Study, _trial: FrozenTrial) -> None:
        front = {t.number for t in study.best_trials}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            if t.number not in front:
                trial_checkpoint(cfg, t.number).unlink(missing_ok=True)
    return callback


def worker_devices(cfg: SearchConfig) -> list[str]:
    """One device per worker: round-robin over the GPUs when several are visible, else the run's device."""
    gpus = torch.cuda.device_count() if cfg.device in ("auto", "cuda") else 0
    return [f"cuda:{i % gpus}" if gpus > 1 else cfg.device for i in range(cfg.n_workers)]


def spawn_workers(cfg: SearchConfig, teacher: Path) -> None:
    """Run ``cfg.n_workers`` worker processes and wait for them; a UserError names any that failed."""
    ctx = multiprocessing.get_context("spawn")  # fork would share CUDA/OpenMP state with the parent
    procs = [ctx.Process(target=worker_main, args=(dataclasses.replace(cfg, device=device), i, teacher),
                         name=f"search-worker-{i}") for i, device in enumerate(worker_devices(cfg))]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join()
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
