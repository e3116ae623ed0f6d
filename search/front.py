"""The Pareto front of a set of points: one rule for the checkpoints a study keeps (``search.worker``) and
the front its report draws (``search.report``); and a budget study's pick (``lowest_loss``: what
``search.retrain --trials lowest-loss`` retrains and ``python -m search --warm-from`` carries)."""
from __future__ import annotations

import math

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from pruning.errors import UserError


def non_dominated(loss: np.ndarray) -> np.ndarray:
    """Mask of the rows of ``loss`` (points x objectives, every objective minimised) that no other row
    dominates: no worse in every objective and better in one. Equal points all stay."""
    no_worse = (loss[:, None, :] <= loss[None, :, :]).all(-1)  # [i, j]: i is no worse than j anywhere
    better = (loss[:, None, :] < loss[None, :, :]).any(-1)
    return ~(no_worse & better).any(0)


def is_feasible(trial: FrozenTrial) -> bool:
    """Optuna's rule: every constraint <= 0 (a trial without constraints is feasible)."""
    return all(v <= 0 for v in trial.constraints.values())


def feasible(complete: list[FrozenTrial]) -> list[FrozenTrial]:
    """The COMPLETE trials a front or a pick is taken from: the feasible ones, or all of them while none is."""
    return [t for t in complete if is_feasible(t)] or complete


def lowest_loss(study, flag: str, fix: str) -> FrozenTrial:
    """A budget's pick: the feasible COMPLETE trial of lowest finite held-out loss; ties: the smaller, then the
    earlier plan (``benchmarks/search_vs_baseline.py``'s pick by ``val_loss``). ``flag`` (the option that asked)
    and ``fix`` make the error when no trial has a loss."""
    scored = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if math.isfinite(t.user_attrs.get("val_loss", math.nan))]
    if not scored:
        raise UserError(f"{flag}: no COMPLETE trial of study {study.study_name!r} recorded a finite held-out loss "
                        f"(val_loss); {fix}")
    return min(feasible(scored), key=lambda t: (t.user_attrs["val_loss"], t.user_attrs.get("params", 0), t.number))
