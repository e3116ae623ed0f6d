"""The search space as named Optuna params, and the arithmetic from params to per-layer channel plans.

Param names: ``ratio/<layer>`` (``--space layer``, e.g. ``ratio/layer3.2.conv1``), ``ratio/<stage>``
(``ratio/layer3``) or ``ratio/<block>`` (``ratio/layer3.2``); ``temperature``, ``alpha``; with
``--search-kd`` also ``kd``, ``beta`` and ``dkd_beta``. A ratio is the fraction of the *dense* channels a trial removes.
With ``--mean-ratio`` the ratios come from ``mean_ratio`` (their mean over the layers before the cap) and
``share/<group>`` (each group's weight in [0, 1]): a layer's ratio is ``mean_ratio x share / mean share``, at
most ``--max-ratio``; capped layers do not pass their excess on, so the plan's mean can be lower. With
``--target-params N`` the shares alone are params: each plan is scaled to the largest one of at most N params
(``fit_ratios``), so every trial spends its screen at the budget.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import optuna
from torch import nn

from distill.config import RunConfig
from distill.pipeline import load_ratios
from pruning.errors import UserError
from pruning.model import channel_plan, plan_params
from pruning.plan import exact_ratios, target_plan, uniform_plans

# KD temperatures used in practice span ~1 (hard labels) to ~20 (Hinton et al. 2015 use up to 20).
TEMPERATURE = (1.0, 20.0)
# beta weights the attention/hint term: Zagoruyko & Komodakis use 1e3 for attention, hints want far less.
BETA = (1.0, 1e4)
# dkd_beta weights NCKD: Zhao et al. (CVPR 2022) use 0.5 on ImageNet and 1-8 on CIFAR-100 (8 for their
# ablations; mdistiller's configs also 2 and 6). dkd_alpha stays at its configured value (the paper's 1):
# alpha already sets CE against the whole DKD term, so alpha and dkd_beta span every CE:TCKD:NCKD ratio.
DKD_BETA = (0.5, 16.0)
MEAN = "mean_ratio"  # --mean-ratio: the mean of the layers' ratios (before the cap), one param
# Shares below this count as 0: a layer that a scale of a million would not prune fully stays dense, and
# --target-params' bisection keeps a finite range (a share of 1e-300 would make it infinite).
SHARE_FLOOR = 1e-6
KD_CHOICES = next(f for f in dataclasses.fields(RunConfig) if f.name == "kd").metadata["choices"]


def group_of(layer: str, space: str) -> str:
    """The param a layer's ratio comes from: the layer itself, its stage (``layer3``) or block (``layer3.2``)."""
    if space == "layer":
        return layer
    stage, block = layer.split(".")[:2]
    return stage if space == "stage" else f"{stage}.{block}"


def ratio_params(layers: list[str], space: str, prefix: str = "ratio") -> list[str]:
    """Names of the per-group params of ``space`` (``ratio/<group>``, or ``share/<group>``), in layer order."""
    return list(dict.fromkeys(f"{prefix}/{group_of(layer, space)}" for layer in layers))


def suggest(trial: optuna.Trial, cfg, layers: list[str], size: PlanSize | None = None
            ) -> tuple[dict[str, float], dict]:
    """Sample a trial: per-layer ratios, and the config fields it changes (temperature, alpha[, kd, beta,
    dkd_beta]). ``size`` (the teacher's widths and parameter count) is needed with --target-params."""
    if cfg.target_params:
        if size is None:
            raise TypeError("suggest: --target-params needs the teacher's PlanSize")
        ratios = fit_ratios(suggest_shares(trial, layers, cfg.space), layers, cfg, size)
    else:
        if cfg.mean_ratio:
            values = {MEAN: trial.suggest_float(MEAN, 0.0, cfg.max_ratio), **suggest_shares(trial, layers, cfg.space)}
        else:
            values = {name: trial.suggest_float(name, 0.0, cfg.max_ratio) for name in ratio_params(layers, cfg.space)}
        ratios = layer_ratios(values, layers, cfg.space, cfg.max_ratio)
    if not cfg.trial_epochs:  # screens without KD epochs (BN recalibration) cannot score KD settings
        return ratios, {}
    changes = {"temperature": trial.suggest_float("temperature", *TEMPERATURE, log=True),
               "alpha": trial.suggest_float("alpha", 0.0, 1.0)}
    if cfg.search_kd:
        changes["kd"] = trial.suggest_categorical("kd", KD_CHOICES)
        changes["beta"] = trial.suggest_float("beta", *BETA, log=True)
        changes["dkd_beta"] = trial.suggest_float("dkd_beta", *DKD_BETA, log=True)
    return ratios, changes


def suggest_shares(trial: optuna.Trial, layers: list[str], space: str) -> dict[str, float]:
    return {name: trial.suggest_float(name, 0.0, 1.0) for name in ratio_params(layers, space, "share")}


def layer_ratios(params: dict, layers: list[str], space: str, max_ratio: float) -> dict[str, float]:
    """Per-layer ratios from a trial's params (``trial.params`` works too: other keys are ignored)."""
    if MEAN not in params:
        return {layer: params[f"ratio/{group_of(layer, space)}"] for layer in layers}
    shares = layer_shares(params, layers, space)
    mean_share = sum(shares.values()) / len(shares)
    return {layer: min(max_ratio, params[MEAN] * share / mean_share) for layer, share in shares.items()}


def layer_shares(params: dict, layers: list[str], space: str) -> dict[str, float]:
    """Each layer's share (its group's ``share/<group>`` param; below SHARE_FLOOR, 0); all 1 when every share is
    0: no layer is preferred."""
    shares = {layer: params[f"share/{group_of(layer, space)}"] for layer in layers}
    shares = {layer: share if share >= SHARE_FLOOR else 0.0 for layer, share in shares.items()}
    return shares if any(shares.values()) else dict.fromkeys(layers, 1.0)


@dataclasses.dataclass(frozen=True)
class PlanSize:
    """The teacher's widths and a plan's parameter count (``pruning.model.plan_params`` of the teacher)."""
    dense: dict[str, int]
    count: Callable[[dict[str, int]], int]

    @classmethod
    def of(cls, model: nn.Module) -> PlanSize:
        return cls(channel_plan(model), plan_params(model))


def check_target(cfg, size: PlanSize) -> None:
    """--target-params below the smallest plan the space holds (every layer at --max-ratio) fails every trial:
    refused before the first."""
    smallest = size.count(target_plan(size.dense, dict.fromkeys(size.dense, cfg.max_ratio), cfg.round_to))
    if cfg.target_params < smallest:
        raise UserError(f"--target-params {cfg.target_params:,}: the smallest plan, every layer at --max-ratio "
                        f"{cfg.max_ratio}, has {smallest:,} params; raise --max-ratio or the target")


def fit_ratios(params: dict, layers: list[str], cfg, size: PlanSize) -> dict[str, float]:
    """--target-params: the largest plan of at most ``cfg.target_params`` params in the direction of the
    trial's ``share/<group>`` params: layer ratios ``scale x share`` (at most --max-ratio), the scale found by
    bisection. A capped layer stops while the others go on, so the plan reaches any budget its uncapped layers
    can; with shares equal to a plan's own ratios (``baseline_plans``) and its size as target, it is that plan.
    """
    shares = layer_shares(params, layers, cfg.space)

    def ratios(scale: float) -> dict[str, float]:
        return {layer: min(cfg.max_ratio, scale * share) for layer, share in shares.items()}

    def params_at(scale: float) -> int:
        return size.count(target_plan(size.dense, ratios(scale), cfg.round_to))

    low, high = 0.0, cfg.max_ratio / min(s for s in shares.values() if s > 0)  # high: every shared layer capped
    if params_at(high) > cfg.target_params:
        raise UserError(f"--target-params {cfg.target_params:,}: this trial's shares keep at least "
                        f"{params_at(high):,} params at --max-ratio {cfg.max_ratio} (layers of share 0 are not "
                        f"pruned)")
    if params_at(low) <= cfg.target_params:
        return ratios(low)
    for _ in range(60):  # params_at only falls as the scale grows: keep ``high`` feasible
        middle = (low + high) / 2
        low, high = (low, middle) if params_at(middle) <= cfg.target_params else (middle, high)
    return ratios(high)


def config_changes(params: dict) -> dict:
    """The RunConfig fields a trial's params set (for ``dataclasses.replace``)."""
    return {k: params[k] for k in ("temperature", "alpha", "kd", "beta", "dkd_beta") if k in params}


def budget_steps(steps: int) -> list[int]:
    """The baseline steps whose models stand for the budgets: about a quarter, half and all of ``steps``."""
    return sorted({max(1, steps // 4), max(1, steps // 2), steps}) if steps else []


def baseline_plans(cfg, dense: dict[str, int], size: PlanSize | None = None) -> list[dict]:
    """Params of the baseline's plans after k = steps/4, steps/2 and steps of its iterated steps.

    Each ratio param is the one whose one-shot floor rule gives exactly the widths of ``k`` baseline steps
    of ``--ratio`` (or the ``--ratios`` file's per-layer ratios) (``pruning.plan.uniform_plans``: floor
    applied at every step, not ``1 - (1 - r)^k``), with the baseline's temperature and alpha: the front
    meets the baseline at exactly its widths (issue 11). In ``stage``/``block`` spaces one ratio serves
    every layer of the group (the layers of a stage have the same dense width); a plan whose layers of
    one group differ is outside the space and left out, as is one beyond ``--max-ratio``. With
    --target-params (``size`` needed) only the plan nearest the target in params, as shares: scaled to the
    target, it keeps its proportions, and at its own size it is exactly the baseline's plan.
    """
    plans = uniform_plans(dense, load_ratios(cfg.ratios, list(dense), cfg.ratio), cfg.steps, cfg.round_to)
    steps = budget_steps(cfg.steps)
    if cfg.target_params:
        if size is None:
            raise TypeError("baseline_plans: --target-params needs the teacher's PlanSize")
        steps = [min(steps, key=lambda k: abs(size.count(plans[k - 1]) - cfg.target_params))] if steps else []
    prefix = "share" if cfg.mean_ratio or cfg.target_params else "ratio"
    chosen = []
    for k in steps:
        ratios = exact_ratios(dense, plans[k - 1])
        groups = {}
        for layer, ratio in ratios.items():
            groups.setdefault(group_of(layer, cfg.space), ratio)
        if any(groups[group_of(layer, cfg.space)] != ratio for layer, ratio in ratios.items()):
            continue  # a --ratios file that differs within a stage (block) is outside a stage (block) space
        params = {f"{prefix}/{group}": ratio for group, ratio in groups.items()}
        if 0.0 < max(ratios.values()) <= cfg.max_ratio:
            if cfg.mean_ratio:  # shares equal to the ratios, scaled by their own mean: the ratios themselves
                params[MEAN] = sum(ratios.values()) / len(ratios)
            params.update({"temperature": cfg.temperature, "alpha": cfg.alpha})
            if cfg.search_kd:
                params.update({"kd": cfg.kd, "beta": cfg.beta, "dkd_beta": cfg.dkd_beta})
            chosen.append(params)
    return chosen
