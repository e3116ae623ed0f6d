"""The search space as named Optuna params, and the arithmetic from params to per-layer channel plans.

Param names: ``ratio/<layer>`` (``--space layer``, e.g. ``ratio/layer3.2.conv1``), ``ratio/<stage>``
(``ratio/layer3``) or ``ratio/<block>`` (``ratio/layer3.2``); ``temperature``, ``alpha``; with
``--search-kd`` also ``kd``, ``beta`` and ``dkd_beta``. A ratio is the fraction of the *dense* channels a trial removes.
With ``--mean-ratio`` the ratios come from ``mean_ratio`` (their mean over the layers before the cap) and
``share/<group>`` (each group's weight in [0, 1]): a layer's ratio is ``mean_ratio x share / mean share``, at
most ``--max-ratio``; capped layers do not pass their excess on, so the plan's mean can be lower. With
``--target-params N`` each group's ``tilt/<group>`` in [-3, 3] is the only param: a layer's ratio is
``max_ratio x sigmoid(offset + tilt)``, the one offset found so that the plan is the largest of at most N
params (``fit_ratios``): every trial spends its screen at the budget, and its tilts set the plan's shape there.
``--target-flops M`` fits the same way to at most M MACs per image, alone or beside N (then the largest plan
within both).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import optuna
from torch import nn

from distill.config import RunConfig
from distill.pipeline import load_ratios
from pruning.errors import UserError
from pruning.model import channel_plan, plan_flops, plan_params
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
# --mean-ratio: shares below this count as 0 (a layer that a scale of a million would not prune fully stays
# dense).
SHARE_FLOOR = 1e-6
# --target-params: a group's tilt is its ratio's log-odds (of --max-ratio) relative to the plan's offset. Shares
# (ratio = scale x share, capped) were used first; at 25 % of the params the scale capped every group but the
# least-shared one, so 5 of 12 random screens of one study were the same plan (issue 12). Log-odds never cap:
# plans of different tilts differ at every budget. +-3 spans the stage plans that won there, which kept 3.5x
# the uniform plan's layer1 channels while pruning the rest further (a log-odds difference of ~3.5).
TILT = (-3.0, 3.0)
# The offset's bisection range: at -40 a ratio is below 1e-16, which removes no channel (the teacher's widths);
# at +40, sigmoid(37) is 1.0 in float64: every layer at exactly --max-ratio (``check_target``'s smallest plan).
OFFSET = 40.0
KD_CHOICES = next(f for f in dataclasses.fields(RunConfig) if f.name == "kd").metadata["choices"]


def group_of(layer: str, space: str) -> str:
    """The param a layer's ratio comes from: the layer itself, its stage (``layer3``) or block (``layer3.2``)."""
    if space == "layer":
        return layer
    stage, block = layer.split(".")[:2]
    return stage if space == "stage" else f"{stage}.{block}"


def ratio_params(layers: list[str], space: str, prefix: str = "ratio") -> list[str]:
    """Names of the per-group params of ``space`` (``ratio/<group>``, ``share/<group>`` or ``tilt/<group>``), in
    layer order."""
    return list(dict.fromkeys(f"{prefix}/{group_of(layer, space)}" for layer in layers))


def plan_param_names(cfg, layers: list[str]) -> list[str]:
    """The names of the params ``suggest`` samples for a plan's widths under ``cfg`` (not its KD settings)."""
    if cfg.fitted:
        return ratio_params(layers, cfg.space, "tilt")
    if cfg.mean_ratio:
        return [MEAN, *ratio_params(layers, cfg.space, "share")]
    return ratio_params(layers, cfg.space)


def kd_param_names(cfg) -> list[str]:
    """The names of the KD settings ``suggest`` samples under ``cfg``."""
    # Screens without KD epochs (BN recalibration) cannot score KD settings; --no-tune-kd keeps the run's.
    if not cfg.trial_epochs or not cfg.tune_kd:
        return []
    return ["temperature", "alpha", *(["kd", "beta", "dkd_beta"] if cfg.search_kd else [])]


def suggest(trial: optuna.Trial, cfg, layers: list[str], size: PlanSize | None = None
            ) -> tuple[dict[str, float], dict]:
    """Sample a trial: per-layer ratios, and the config fields it changes (temperature, alpha[, kd, beta,
    dkd_beta]). ``size`` (the teacher's widths, parameter and MAC counts) is needed with --target-params or
    --target-flops."""
    names = plan_param_names(cfg, layers)  # with --mean-ratio, mean_ratio first: the order a seeded sampler replays
    if cfg.fitted:
        if size is None:
            raise TypeError("suggest: --target-params/--target-flops needs the teacher's PlanSize")
        ratios = fit_ratios({name: trial.suggest_float(name, *TILT) for name in names}, layers, cfg, size)
    else:
        values = {name: trial.suggest_float(name, 0.0, 1.0 if name.startswith("share/") else cfg.max_ratio)
                  for name in names}
        ratios = layer_ratios(values, layers, cfg.space, cfg.max_ratio)
    if not kd_param_names(cfg):
        return ratios, {}
    changes = {"temperature": trial.suggest_float("temperature", *TEMPERATURE, log=True),
               "alpha": trial.suggest_float("alpha", 0.0, 1.0)}
    if cfg.search_kd:
        changes["kd"] = trial.suggest_categorical("kd", KD_CHOICES)
        changes["beta"] = trial.suggest_float("beta", *BETA, log=True)
        changes["dkd_beta"] = trial.suggest_float("dkd_beta", *DKD_BETA, log=True)
    return ratios, changes


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
    """The teacher's widths and a plan's parameter count and MACs per image (``pruning.model.plan_params`` and
    ``plan_flops`` of the teacher)."""
    dense: dict[str, int]
    count: Callable[[dict[str, int]], int]
    flops: Callable[[dict[str, int]], int]

    @classmethod
    def of(cls, model: nn.Module, image_size: int) -> PlanSize:
        return cls(channel_plan(model), plan_params(model), plan_flops(model, image_size))

    def targets(self, cfg) -> list[tuple[str, int, Callable[[dict[str, int]], int]]]:
        """The budgets a plan is fitted to: (flag, target, its count) of --target-params and --target-flops set."""
        return [(flag, target, count) for flag, target, count in (("--target-params", cfg.target_params, self.count),
                                                                  ("--target-flops", cfg.target_flops, self.flops))
                if target]


UNITS = {"--target-params": "params", "--target-flops": "MACs"}


def check_target(cfg, size: PlanSize) -> None:
    """A --target-params or --target-flops below the smallest plan the space holds (every layer at --max-ratio)
    fails every trial: refused before the first."""
    smallest = target_plan(size.dense, dict.fromkeys(size.dense, cfg.max_ratio), cfg.round_to)
    for flag, target, count in size.targets(cfg):
        if target < count(smallest):
            raise UserError(f"{flag} {target:,}: the smallest plan, every layer at --max-ratio {cfg.max_ratio}, has "
                            f"{count(smallest):,} {UNITS[flag]}; raise --max-ratio or the target")


def plan_widths(params: dict, cfg, dense: dict[str, int], size: PlanSize | None = None) -> dict[str, int]:
    """The widths a trial of these params screens (``suggest``'s rule from params: fitted with ``size`` under
    --target-params/--target-flops, else per-group ratios); other keys are ignored."""
    layers = list(dense)
    if cfg.fitted:
        return target_plan(size.dense, fit_ratios(params, layers, cfg, size), cfg.round_to)
    return target_plan(dense, layer_ratios(params, layers, cfg.space, cfg.max_ratio), cfg.round_to)


def fit_ratios(params: dict, layers: list[str], cfg, size: PlanSize) -> dict[str, float]:
    """--target-params (and/or --target-flops): the largest plan within those budgets of the trial's shape, its
    ``tilt/<group>`` params: layer ratios ``max_ratio x sigmoid(offset + tilt)``, the offset found by bisection.
    Equal tilts give one ratio for all layers; tilts set to ``tilt_of`` a plan's ratios, with its size as
    target, give that plan (``baseline_plans``)."""
    tilts = {layer: params[f"tilt/{group_of(layer, cfg.space)}"] for layer in layers}
    targets = size.targets(cfg)

    def ratios(offset: float) -> dict[str, float]:
        return {layer: cfg.max_ratio / (1.0 + math.exp(-(offset + tilt))) for layer, tilt in tilts.items()}

    def fits(offset: float) -> bool:
        plan = target_plan(size.dense, ratios(offset), cfg.round_to)
        return all(count(plan) <= target for _, target, count in targets)

    check_target(cfg, size)  # the upper end, every layer at --max-ratio, fits: the bisection's invariant
    low, high = -OFFSET, OFFSET
    if fits(low):
        return ratios(low)
    for _ in range(60):  # params and MACs only fall as the offset grows: keep ``high`` feasible
        middle = (low + high) / 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return ratios(high)


def tilt_of(ratio: float, max_ratio: float) -> float:
    """The tilt whose layer ratio is ``ratio`` at offset 0 (the inverse of ``fit_ratios``' sigmoid)."""
    return math.log(ratio / (max_ratio - ratio))


def as_tilts(ratios: dict[str, float], plan: dict[str, int], cfg, size: PlanSize) -> dict[str, float] | None:
    """A plan's per-group ``ratios`` as ``tilt/<group>`` params: their log-odds, centred (the offset is fitted;
    only differences are the shape). None unless they lie within TILT and, fitted to the plan's own size, give
    exactly its widths (a layer kept whole, ratio 0, is a tilt of -inf: outside the space)."""
    if not all(0.0 < ratio < cfg.max_ratio for ratio in ratios.values()):
        return None
    tilts = {group: tilt_of(ratio, cfg.max_ratio) for group, ratio in ratios.items()}
    centre = sum(tilts.values()) / len(tilts)
    params = {f"tilt/{group}": tilt - centre for group, tilt in tilts.items()}
    if not all(TILT[0] <= tilt <= TILT[1] for tilt in params.values()):
        return None
    own = dataclasses.replace(cfg, target_params=cfg.target_params and size.count(plan),
                              target_flops=cfg.target_flops and size.flops(plan))
    fitted = target_plan(size.dense, fit_ratios(params, list(size.dense), own, size), cfg.round_to)
    return params if fitted == plan else None


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
    --target-params (``size`` needed) only the plan nearest the target in params (with --target-flops alone, in
    MACs), as tilts (``as_tilts``):
    fitted to the target it keeps its shape, and at its own size it is exactly the baseline's plan; one that
    the tilts cannot give exactly is left out.
    """
    plans = uniform_plans(dense, load_ratios(cfg.ratios, list(dense), cfg.ratio), cfg.steps, cfg.round_to)
    steps = budget_steps(cfg.steps)
    if cfg.fitted:
        if size is None:
            raise TypeError("baseline_plans: --target-params/--target-flops needs the teacher's PlanSize")
        _, target, count = size.targets(cfg)[0]  # the params' target when both are set
        steps = [min(steps, key=lambda k: abs(count(plans[k - 1]) - target))] if steps else []
    prefix = "share" if cfg.mean_ratio else "ratio"
    chosen = []
    for k in steps:
        ratios = exact_ratios(dense, plans[k - 1])
        groups = {}
        for layer, ratio in ratios.items():
            groups.setdefault(group_of(layer, cfg.space), ratio)
        if any(groups[group_of(layer, cfg.space)] != ratio for layer, ratio in ratios.items()):
            continue  # a --ratios file that differs within a stage (block) is outside a stage (block) space
        params = (as_tilts(groups, plans[k - 1], cfg, size) if cfg.fitted else
                  {f"{prefix}/{group}": value for group, value in groups.items()})
        if params is None:
            continue
        if 0.0 < max(ratios.values()) <= cfg.max_ratio:
            if cfg.mean_ratio:  # shares equal to the ratios, scaled by their own mean: the ratios themselves
                params[MEAN] = sum(ratios.values()) / len(ratios)
            params.update({"temperature": cfg.temperature, "alpha": cfg.alpha})
            if cfg.search_kd:
                params.update({"kd": cfg.kd, "beta": cfg.beta, "dkd_beta": cfg.dkd_beta})
            chosen.append(params)
    return chosen
