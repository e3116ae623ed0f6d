"""The search space as named Optuna params, and the arithmetic from params to per-layer channel plans.

Param names: ``ratio/<layer>`` (``--space layer``, e.g. ``ratio/layer3.2.conv1``), ``ratio/<stage>``
(``ratio/layer3``) or ``ratio/<block>`` (``ratio/layer3.2``); ``temperature``, ``alpha``; with
``--search-kd`` also ``kd`` and ``beta``. A ratio is the fraction of the *dense* channels a trial removes.
"""
from __future__ import annotations

import dataclasses
import math

import optuna

from distill.config import RunConfig
from pruning.plan import target_plan

# KD temperatures used in practice span ~1 (hard labels) to ~20 (Hinton et al. 2015 use up to 20).
TEMPERATURE = (1.0, 20.0)
# beta weights the attention/hint term: Zagoruyko & Komodakis use 1e3 for attention, hints want far less.
BETA = (1.0, 1e4)
KD_CHOICES = next(f for f in dataclasses.fields(RunConfig) if f.name == "kd").metadata["choices"]


def group_of(layer: str, space: str) -> str:
    """The param a layer's ratio comes from: the layer itself, its stage (``layer3``) or block (``layer3.2``)."""
    if space == "layer":
        return layer
    stage, block = layer.split(".")[:2]
    return stage if space == "stage" else f"{stage}.{block}"


def ratio_params(layers: list[str], space: str) -> list[str]:
    """Names of the ratio params of ``space``, in layer order."""
    return list(dict.fromkeys(f"ratio/{group_of(layer, space)}" for layer in layers))


def suggest(trial: optuna.Trial, cfg, layers: list[str]) -> tuple[dict[str, float], dict]:
    """Sample a trial: per-layer ratios, and the config fields it changes (temperature, alpha[, kd, beta])."""
    values = {name: trial.suggest_float(name, 0.0, cfg.max_ratio) for name in ratio_params(layers, cfg.space)}
    changes = {"temperature": trial.suggest_float("temperature", *TEMPERATURE, log=True),
               "alpha": trial.suggest_float("alpha", 0.0, 1.0)}
    if cfg.search_kd:
        changes["kd"] = trial.suggest_categorical("kd", KD_CHOICES)
        changes["beta"] = trial.suggest_float("beta", *BETA, log=True)
    return layer_ratios(values, layers, cfg.space), changes


def layer_ratios(params: dict, layers: list[str], space: str) -> dict[str, float]:
    """Per-layer ratios from a trial's params (``trial.params`` works too: other keys are ignored)."""
    return {layer: params[f"ratio/{group_of(layer, space)}"] for layer in layers}


def config_changes(params: dict) -> dict:
    """The RunConfig fields a trial's params set (for ``dataclasses.replace``)."""
    return {k: params[k] for k in ("temperature", "alpha", "kd", "beta") if k in params}


def baseline_plans(cfg, layers: list[str]) -> list[dict]:
    """Params of the baseline's uniform plans: ``--ratio`` applied ``k`` times, for k = steps/4, steps/2, steps.

    A uniform ratio ``1 - (1 - ratio)**k`` removes what ``k`` baseline steps remove (up to rounding),
    with the baseline's temperature and alpha, so the front competes with it at equal budget.
    """
    plans = []
    for k in sorted({max(1, cfg.steps // 4), max(1, cfg.steps // 2), max(1, cfg.steps)}):
        ratio = 1.0 - (1.0 - cfg.ratio) ** k
        if 0.0 < ratio <= cfg.max_ratio:
            params = {name: ratio for name in ratio_params(layers, cfg.space)}
            params.update({"temperature": cfg.temperature, "alpha": cfg.alpha})
            if cfg.search_kd:
                params.update({"kd": cfg.kd, "beta": cfg.beta})
            plans.append(params)
    return plans


def substep_ratios(current: dict[str, int], target: dict[str, int], step: int, steps: int,
                   ratios: dict[str, float], round_to: int) -> dict[str, float]:
    """Ratios of sub-step ``step`` (1-based) of ``steps`` that lead from ``current`` widths to ``target``.

    Each earlier sub-step removes ``1 - (1 - r)**(1/steps)`` of the current channels, so the work is
    spread evenly; the last one removes exactly what is left, so the final widths are ``target``
    whatever the floor/round_to rounding did on the way. Widths never drop below the target early:
    each sub-step's floor removes at most the exact fraction.
    """
    if step < steps:
        sub = {name: 1.0 - (1.0 - r) ** (1.0 / steps) for name, r in ratios.items()}
        plan = target_plan(current, sub, round_to)
        # Float error in r * C could floor one channel too many; never let a layer pass its target.
        return {name: r if plan[name] >= target[name] else _exact(current[name], target[name])
                for name, r in sub.items()}
    last = {name: _exact(current[name], target[name]) for name in target}
    assert target_plan(current, last, round_to) == target, "sub-step arithmetic missed the target plan"
    return last


def _exact(channels: int, keep: int) -> float:
    """The ratio whose floor rule (``pruning.plan.target_plan``) removes exactly ``channels - keep``."""
    if keep > channels:
        raise AssertionError(f"a sub-step went below its target width ({channels} < {keep})")
    # +0.5 keeps floor(ratio * channels) == channels - keep free of float error.
    return 0.0 if keep == channels else (channels - keep + 0.5) / channels

