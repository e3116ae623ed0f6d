"""The Pareto front of a set of points: one rule for the checkpoints a study keeps (``search.worker``) and
the front its report draws (``search.report``)."""
from __future__ import annotations

import numpy as np
from optuna.trial import FrozenTrial


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
