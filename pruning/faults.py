"""Fault injection for the kill-anywhere tests (issue 6): a process SIGKILLs itself at a named point.

    LRN50_FAULT=epoch_end python baselines/iterative.py ...      # killed after the first KD epoch
    LRN50_FAULT=csv_replace:2 python baselines/iterative.py ...  # killed the 2nd time a CSV is about to replace the old

``LRN50_FAULT=<name>[:<count>]`` kills the process the ``count``-th time (default: the first) it reaches
``fault_point(name)``. Hits are counted per process (spawned search workers count their own). Unset,
``fault_point`` costs one environment lookup. Points:

    teacher_epoch_end   after a teacher fine-tuning epoch and its partial checkpoint (distill.pipeline.retrain)
    epoch_end           the same after a KD retraining epoch, i.e. between epochs of a step or trial
    prune_step          inside a pruning step: the model is pruned, nothing is saved (distill.pipeline.prune_step)
    checkpoint_replace  a checkpoint's temp file is written, ``os.replace`` not yet done (atomic_save)
    <suffix>_replace    the same for text files: csv_replace, json_replace (distill.results.atomic_write_text)

SIGKILL, not an exception: no ``finally``, no ``except BaseException`` cleanup and no atexit handler runs,
exactly as when a scheduler preempts a job or the kernel's OOM killer picks it.
"""
from __future__ import annotations

import os
import signal

ENV = "LRN50_FAULT"
_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL this process if ``LRN50_FAULT`` names ``name`` and this is its ``count``-th hit."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted, _, count = spec.partition(":")
    if wanted != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
