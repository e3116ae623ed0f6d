"""The search space as named Optuna params, and the arithmetic from params to per-layer channel plans.

Param names: ``ratio/<layer>`` (``--space layer``, e.g. ``ratio/layer3.2.conv1``), ``ratio/<stage>``
(``ratio/layer3``) or ``ratio/<block>`` (``ratio/layer3.2``); ``temperature``, ``alpha``; with
``--search-kd`` also ``kd``, ``beta`` and ``dkd_beta``. A ratio is the fraction of the *dense* channels a trial removes.
"""
from __future__ import annotations

import dataclasses

import optuna

from distill.config import RunConfig
from pruning.plan import exact_ratios, uniform_plans

# KD temperatures used in practice span ~1 (hard labels) to ~20 (Hinton et al. 2015 use up to 20).
TEMPERATURE = (1.0, 20.0)
# beta weights the attention/hint term: Zagoruyko & Komodakis use 1e3 for attention, hints want far less.
BETA = (1.0, 1e4)
# dkd_beta weights NCKD: Zhao et al. (CVPR 2022) use 0.5 on ImageNet and 1-8 on CIFAR-100 (8 for their
# ablations; mdistiller's configs also 2 and 6). dkd_alpha stays at its configured value (the paper's 1):
# alpha already sets CE against the whole DKD term, so alpha and dkd_beta span every CE:TCKD:NCKD ratio.
DKD_BETA = (0.5, 16.0)
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
    """Sample a trial: per-layer ratios, and the config fields it changes (temperature, alpha[, kd, beta, dkd_beta])."""
    values = {name: trial.suggest_float(name, 0.0, cfg.max_ratio) for name in ratio_params(layers, cfg.space)}
    if not cfg.trial_epochs:  # screens without KD epochs (BN recalibration) cannot score KD settings
        return layer_ratios(values, layers, cfg.space), {}
    changes = {"temperature": trial.suggest_float("temperature", *TEMPERATURE, log=True),
               "alpha": trial.suggest_float("alpha", 0.0, 1.0)}
    if cfg.search_kd:
        changes["kd"] = trial.suggest_categorical("kd", KD_CHOICES)
        changes["beta"] = trial.suggest_float("beta", *BETA, log=True)
        changes["dkd_beta"] = trial.suggest_float("dkd_beta", *DKD_BETA, log=True)
    return layer_ratios(values, layers, cfg.space), changes


def layer_ratios(params: dict, layers: list[str], space: str) -> dict[str, float]:
    """Per-layer ratios from a trial's params (``trial.params`` works too: other keys are ignored)."""
    return {layer: params[f"ratio/{group_of(layer, space)}"] for layer in layers}


def config_changes(params: dict) -> dict:
    """The RunConfig fields a trial's params set (for ``dataclasses.replace``)."""
    return {k: params[k] for k in ("temperature", "alpha", "kd", "beta", "dkd_beta") if k in params}


def budget_steps(steps: int) -> list[int]:
    """The baseline steps whose models stand for the budgets: about a quarter, half and all of ``steps``."""
    return sorted({max(1, steps // 4), max(1, steps // 2), steps}) if steps else []


def baseline_plans(cfg, dense: dict[str, int]) -> list[dict]:
    """Params of the baseline's plans after k = steps/4, steps/2 and steps of its iterated steps.

    Each ratio param is the one whose one-shot floor rule gives exactly the widths of ``k`` baseline steps
    (``pruning.plan.uniform_plans``: floor applied at every step, not ``1 - (1 - r)^k``), with the
    baseline's temperature and alpha: the front meets the baseline at exactly its widths (issue 11).
    In ``stage``/``block`` spaces one ratio serves every layer of the group, which works because the
    layers of a stage have the same dense width (asserted).
    """
    plans = uniform_plans(dense, {name: cfg.ratio for name in dense}, cfg.steps, cfg.round_to)
    chosen = []
    for k in budget_steps(cfg.steps):
        ratios = exact_ratios(dense, plans[k - 1])
        params = {}
        for layer, ratio in ratios.items():
            name = f"ratio/{group_of(layer, cfg.space)}"
            assert params.get(name, ratio) == ratio, f"{name}: layers of one group need one ratio"
            params[name] = ratio
        if 0.0 < max(params.values()) <= cfg.max_ratio:
            params.update({"temperature": cfg.temperature, "alpha": cfg.alpha})
            if cfg.search_kd:
                params.update({"kd": cfg.kd, "beta": cfg.beta, "dkd_beta": cfg.dkd_beta})
            chosen.append(params)
    return chosen
