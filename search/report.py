"""Pareto-front report of a pruning search: one self-contained HTML page (plotly.js embedded, opens with
no network) and CSVs, to decide which plan to ship at which budget, and why (issue 4).

    python -m search.report --study-name demo                                 # -> runs/search/demo/report/
    python -m search.report --study-name r50 --storage studies.db --baseline runs/iterative --out report/
    python -m search.report --study-name r50 --sensitivity runs/sensitivity --tsne
    python -m search.report --help                                            # every flag

Three series are kept apart, never on one accuracy axis (issue 11): (1) the screening trials: top-1 on
the held-out validation split of the training set after the trials' few epochs (``--trial-epochs`` x
``--prune-steps`` on ``--trial-subset`` images); (2) the retrained plans: test top-1 after
``python -m search.retrain``'s full protocol (``--retrain``, by default the study's retrain directory);
(3) the iterative baseline (``--baseline``, its pruning_logs.csv; test top-1) and the seed's published
table (CIFAR-100 test set, 224 px).

The page shows: screening top-1 vs the study's cost (and vs params when the cost is FLOPs or latency)
with every trial and the Pareto front, trial details on hover; test top-1 vs params of the retrained
plans, the baseline and the seed; at each params budget of the baseline (else of the seed), the best
retrained plan within ``--budget-tolerance`` below it and its test-set delta; the hypervolume of the
screening front over trials, with its reference point (and, when both exist, the test-set hypervolume of
the retrained plans and of the baseline against one reference point); the kept channels per layer of the
front's plans; Optuna's parameter importances per objective; the per-layer sensitivity
(``--sensitivity``, from ``python -m distill.sensitivity``); PCA (``--tsne``: and t-SNE) of penultimate
features of the teacher vs a front plan. CSVs in ``--out``: trials.csv (every trial, screening numbers),
pareto.csv (the screening front), hypervolume.csv (screening), retrained.csv (each retrained plan's
finished model), budgets.csv (test set; only its header while nothing is retrained), test_hypervolume.csv
(when there are retrained plans and a baseline), importances.csv.
"""
from __future__ import annotations

import dataclasses
import html
import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
import torch
from optuna.trial import TrialState

from distill.config import RunConfig, make_config, opt, parse_config
from distill.features_viz import features_figure, penultimate, tsne_available
from distill.pipeline import load_teacher, open_session
from distill.results import SEED_RESULTS, atomic_write_text, read_csv
from distill.sensitivity import CSV as SENSITIVITY_CSV
from distill.sensitivity import sensitivity_figure
from distill.trainer import prepare
from pruning.checkpoint import load_pruned
from pruning.errors import UserError, run_cli
from pruning.measure import count_flops, count_params
from pruning.model import build_resnet50, channel_plan
from search.front import is_feasible, non_dominated
from search.storage import load_study, redact

ACCURACY = "val_top1"        # the study's "accuracy" objective: top-1 (%) on the held-out validation split
TEST = "test_top1"           # top-1 (%) on the test set, the only accuracy compared across protocols
MIN_IMPORTANCE_TRIALS = 10   # fANOVA's forest fitted to fewer points ranks noise (1 trial gives equal shares)
HEAD = ["number", "state", "feasible", "pareto", ACCURACY, TEST, "params", "flops", "size_mb",
        "latency_ms", "temperature", "alpha", "kd", "beta"]
LOG = "pruning_logs.csv"     # the baseline's and search.retrain's results file
RETRAINED = ["trial", "step", "phase", "params", "size_mb", "flops", TEST, "screening_val_top1"]
BUDGETS = ["reference", "step", "budget_params", "reference_test_top1", "trial", "retrained_params",
           "retrained_test_top1", "delta_top1"]
SEED_NAME = "seed (published, CIFAR-100 test set, 224 px)"


@dataclass(frozen=True)
class ReportConfig:
    study_name: str = opt("", "the study to report (its --study-name in python -m search)")
    storage: str = opt("studies.db", "the study's storage: a journal file path or an RDB URL (as in python -m search)")
    baseline: str = opt("", "an iterative baseline's run directory (or its pruning_logs.csv) to draw beside the trials")
    sensitivity: str = opt("", "sensitivity.csv of python -m distill.sensitivity (or its directory) to draw per layer")
    features: bool = opt(True, "PCA of penultimate features, teacher vs a front plan (needs the teacher, the plan's "
                               "checkpoint and the study's data)")
    features_trial: int = opt(-1, "trial whose checkpoint the feature plot uses (-1: the front's smallest plan that "
                                  "has a checkpoint)")
    feature_images: int = opt(512, "validation images the feature plot embeds")
    tsne: bool = opt(False, "also t-SNE of the features (scikit-learn; slow for many images)")
    data_dir: str = opt("", "where the study's dataset is, when not where the search found it")
    device: str = opt("auto", "device of the feature extraction: auto | cpu | cuda | cuda:N")
    retrain: str = opt("", "python -m search.retrain's directory (or its pruning_logs.csv) whose plans are compared "
                           "with the baseline on the test set (default: <the study's --out>/<study name>/retrain, "
                           "when it exists)")
    # A plan much smaller than a budget does not stand for it (issue 11). 10 % is about one early baseline
    # step: the seed's steps shrink the params by 13 % at first, by 4 % near step 20.
    budget_tolerance: float = opt(0.1, "a retrained plan stands for a params budget B when its params are within "
                                       "[(1 - this) x B, B]")
    out: str = opt("", "report directory (default: <the study's --out>/<study name>/report)")
    debug: bool = opt(False, "show full tracebacks for user errors")

    def __post_init__(self):
        if not self.study_name:
            raise UserError("--study-name is required: the name given to python -m search")
        if not 0.0 <= self.budget_tolerance < 1.0:
            raise UserError(f"--budget-tolerance {self.budget_tolerance}: must be in [0, 1) (0.1: plans within 10 % "
                            f"below a budget)")
        if self.feature_images < 2:
            raise UserError(f"--feature-images {self.feature_images}: must be >= 2")


# --- the study as a table -------------------------------------------------------------------------------

def study_cost(study: optuna.Study) -> str:
    """The study's cost metric (params, flops or latency_ms); refuses studies that are not the search's."""
    names = study.metric_names or []
    if [d.name for d in study.directions] != ["MAXIMIZE", "MINIMIZE"] or len(names) != 2 or names[0] != "accuracy":
        raise UserError(f"study {study.study_name!r} is not an accuracy/cost study of python -m search (metric names "
                        f"{names}); give the --study-name of a search")
    return names[1]


def trials_frame(study: optuna.Study, cost: str) -> pd.DataFrame:
    """One row per trial: number, state, objective values, feasibility, params (ratios, T, alpha), user attrs."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"number": t.number, "state": t.state.name, **t.user_attrs, **t.params}
        if t.state == TrialState.COMPLETE:
            row[ACCURACY], row[cost] = t.values
        row["feasible"] = is_feasible(t)
        rows.append(row)
    df = pd.DataFrame(rows)
    if not rows or not (df["state"] == "COMPLETE").any():
        raise UserError(f"study {study.study_name!r} has no COMPLETE trial yet ({len(df)} trials); rerun the report "
                        f"once one has finished")
    return as_int(df, ["params", "flops", "epochs"] + [c for c in df.columns if c.startswith("ch/")])


def as_int(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Counts stay integers in the CSVs even where some rows lack them (failed trials, budgets nobody meets)."""
    present = [c for c in columns if c in df.columns]
    return df.astype({c: "Int64" for c in present})


def candidates(df: pd.DataFrame) -> pd.DataFrame:
    """COMPLETE trials the front is taken from: the feasible ones (Optuna's rule), or all if none is feasible."""
    complete = df[df["state"] == "COMPLETE"]
    return complete[complete["feasible"]] if complete["feasible"].any() else complete


def pareto_front(df: pd.DataFrame, cost: str) -> pd.DataFrame:
    """The non-dominated candidates, cheapest first."""
    pool = candidates(df)
    mask = non_dominated(np.stack([-pool[ACCURACY].to_numpy(float), pool[cost].to_numpy(float)], axis=1))
    return pool[mask].sort_values([cost, "number"])


# --- hypervolume --------------------------------------------------------------------------------------

def hypervolume_2d(acc: np.ndarray, cost: np.ndarray, ref_acc: float, ref_cost: float) -> float:
    """Area dominated by the points and bounded by the reference point (accuracy max., cost min.).

    The union of boxes [c_i, ref_cost] x [ref_acc, a_i] is a staircase: from each cost to the next one,
    its height is the best accuracy among the points at most that costly.
    """
    keep = (acc > ref_acc) & (cost < ref_cost)
    acc, cost = acc[keep], cost[keep]
    # Only the distinct non-dominated points, summed exactly: then a dominated or repeated point leaves the
    # value bit-for-bit unchanged, and the history over trials never dips by a rounding error.
    on_front = non_dominated(np.stack([-acc, cost], axis=1))
    front = np.unique(np.stack([cost, acc], axis=1)[on_front], axis=0)  # sorted by cost
    widths = np.diff(np.append(front[:, 0], ref_cost))
    return math.fsum(widths * (np.maximum.accumulate(front[:, 1]) - ref_acc))


def reference_point(largest: float, cost: str, dense: dict, of: str) -> tuple[float, float, str]:
    """(accuracy, cost, how it was chosen): 0 % and the dense teacher's cost, else 1.1 x the largest cost
    of the points (``of`` says which)."""
    if cost in dense:
        return 0.0, float(dense[cost]), f"0 % top-1 and the dense teacher's {cost_text(dense[cost], cost)}"
    worst = float(largest) * 1.1
    return 0.0, worst, f"0 % top-1 and 1.1 x the largest {cost} of {of}, {cost_text(worst, cost)}"


def hypervolume_fraction(acc: np.ndarray, cost: np.ndarray, ref: tuple[float, float]) -> float:
    """The hypervolume as a fraction of the box [ref_acc, 100] % x [0, ref_cost], so studies of different
    sizes and costs compare."""
    return hypervolume_2d(acc, cost, *ref) / ((100.0 - ref[0]) * ref[1])


def hypervolume_history(df: pd.DataFrame, cost: str, ref: tuple[float, float]) -> pd.DataFrame:
    """Screening hypervolume of the front after each COMPLETE trial (in trial order), as a fraction."""
    pool = candidates(df)
    complete = df[df["state"] == "COMPLETE"].sort_values("number")
    rows = []
    for number in complete["number"]:
        seen = pool[pool["number"] <= number]
        hv = hypervolume_fraction(seen[ACCURACY].to_numpy(float), seen[cost].to_numpy(float), ref)
        rows.append({"number": int(number), "hypervolume": hv})
    return pd.DataFrame(rows)


def full_protocol_hypervolumes(retrained: pd.DataFrame, baseline: pd.DataFrame,
                               dense: dict) -> tuple[pd.DataFrame, str]:
    """Test top-1 vs params hypervolume of the retrained plans and of the baseline against one reference
    point (the same series type on both sides: test set, full protocol), or an empty frame and why not."""
    if retrained.empty or baseline.empty:
        return pd.DataFrame(), "needs retrained plans and a baseline with test accuracies"
    largest = max(retrained["params"].max(), baseline["params"].max())
    ref_acc, ref_cost, note = reference_point(largest, "params", dense, "the retrained plans and the baseline")
    rows = [{"series": name, "models": len(part), "hypervolume": hypervolume_fraction(
                part[TEST].to_numpy(float), part["params"].to_numpy(float), (ref_acc, ref_cost)),
             "reference_point": note} for name, part in (("retrained plans", retrained), ("baseline", baseline))]
    return pd.DataFrame(rows), note


# --- other tables ---------------------------------------------------------------------------------------

def importances(study: optuna.Study, cost: str) -> pd.DataFrame | str:
    """fANOVA importance of each searched param for each objective, or why it cannot be computed."""
    n = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    if n < MIN_IMPORTANCE_TRIALS:
        return f"needs at least {MIN_IMPORTANCE_TRIALS} COMPLETE trials; the study has {n}"
    columns = {}
    for i, name in enumerate((ACCURACY, cost)):
        try:
            columns[name] = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=lambda t, i=i: t.values[i])
        except ImportError:  # Optuna's fANOVA fits scikit-learn's random forest
            return "Optuna's fANOVA needs scikit-learn (pip install scikit-learn)"
        except (RuntimeError, ValueError) as exc:  # e.g. zero variance of an objective over the trials
            return f"Optuna could not evaluate them ({exc})"
    table = pd.DataFrame(columns).fillna(0.0).astype(float)
    return table.sort_values(ACCURACY, ascending=False).rename_axis("param").reset_index()


# --- the series measured on the test set after a full protocol ----------------------------------------

def log_csv(path: str | Path) -> Path:
    """A run's pruning_logs.csv, given the file or the run directory."""
    return Path(path) if Path(path).suffix == ".csv" else Path(path) / LOG


def recorded_val_fraction(csv: Path) -> float | None:
    """``val_fraction`` of the run that wrote ``csv`` (its config.json beside it), None if not recorded."""
    config = csv.parent / "config.json"
    if not config.exists():
        return None
    return float(json.loads(config.read_text()).get("config", {}).get("val_fraction", 0))


def with_test_top1(rows: list[dict], csv: Path) -> tuple[pd.DataFrame, str]:
    """``rows`` as a frame whose ``test_top1`` is each model's test top-1 (NaN where the run did not measure
    it), and where that number comes from: rows carry test_top1, but older runs with val_fraction 0 wrote
    their test-set accuracy as val_top1 only (their validation split was the test set)."""
    df = pd.DataFrame(rows)
    test = pd.to_numeric(df.get(TEST, pd.Series(np.nan, index=df.index)), errors="coerce")  # "" = not measured
    val_fraction = recorded_val_fraction(csv)
    if test.notna().all():
        source = "its test_top1"
    elif val_fraction == 0:
        test = test.fillna(pd.to_numeric(df[ACCURACY], errors="coerce"))
        source = ("its val_top1 where test_top1 is missing (its config.json has val_fraction 0: it validated on "
                  "the test set)")
    else:
        why = "no config.json beside it" if val_fraction is None else "it validated on a held-out split"
        source = f"its test_top1; {int(test.isna().sum())} of {len(df)} rows have none ({why}) and are left out"
    df[TEST] = test
    return df, f"test top-1 from {csv}: {source}."


def read_baseline(path: str) -> tuple[pd.DataFrame, str]:
    """The baseline's models that have a test top-1, and a note saying where it comes from."""
    if not path:
        return pd.DataFrame(columns=["step", "params", TEST]), "No --baseline given."
    csv = log_csv(path)
    rows = read_csv(csv)
    if not rows:
        raise UserError(f"--baseline {path}: no rows in {csv}; give a run directory of baselines/iterative.py")
    df, note = with_test_top1(rows, csv)
    return df[df[TEST].notna()], f"Baseline: {note}"


def read_retrained(cfg: ReportConfig, study_dir: Path, trials: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The finished model (largest step) of each retrained plan that has a test top-1, with its trial's
    screening accuracy beside it, and a note saying where the numbers come from."""
    csv = log_csv(cfg.retrain or study_dir / "retrain")
    rows = read_csv(csv)
    if not rows and not cfg.retrain:
        return pd.DataFrame(columns=RETRAINED), f"No plan has been retrained yet (no {csv})."
    if not rows or "trial" not in rows[0]:
        source = f"--retrain {cfg.retrain}" if cfg.retrain else str(csv)
        raise UserError(f"{source}: no rows with a trial column in {csv}; give the directory python -m "
                        f"search.retrain wrote (<out>/<study name>/retrain)")
    df, note = with_test_top1(rows, csv)
    finished = df.loc[df.groupby("trial")["step"].idxmax()].sort_values("params")
    screening = trials.set_index("number")[ACCURACY]
    finished["screening_val_top1"] = finished["trial"].map(screening)
    finished = finished.loc[finished[TEST].notna(), [c for c in RETRAINED if c in finished.columns]]
    return as_int(finished, ["trial", "step", "params", "flops"]), f"Retrained plans: {note}"


def budget_references(baseline: pd.DataFrame) -> pd.DataFrame:
    """The budgets and the models they stand for: the baseline's (at each size, its most trained model:
    the final phase over the last prune step), else the seed's published table."""
    if len(baseline):
        rows = baseline.sort_values("step").groupby("params").tail(1)
        name, accuracy = "baseline", rows[TEST]
    else:
        rows = pd.DataFrame(SEED_RESULTS)
        name, accuracy = SEED_NAME, rows[ACCURACY]  # the seed validated on the CIFAR-100 test set
    return pd.DataFrame({"reference": name, "step": rows["step"], "budget_params": rows["params"],
                         "reference_test_top1": accuracy}).sort_values("budget_params", ascending=False)


def budget_table(references: pd.DataFrame, retrained: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """At each budget, the reference model and the retrained plan with the best test top-1 among those
    with params in [(1 - tolerance) x budget, budget]; no row at all while nothing is retrained."""
    if retrained.empty:
        return pd.DataFrame(columns=BUDGETS)
    rows = []
    for _, ref in references.iterrows():
        row = ref.to_dict()
        budget = ref["budget_params"]
        fits = retrained[(retrained["params"] <= budget) & (retrained["params"] >= (1 - tolerance) * budget)]
        if len(fits):
            best = fits.loc[fits[TEST].idxmax()]
            row.update(trial=best["trial"], retrained_params=best["params"], retrained_test_top1=best[TEST],
                       delta_top1=round(best[TEST] - ref["reference_test_top1"], 4))
        rows.append(row)
    return as_int(pd.DataFrame(rows, columns=BUDGETS), ["step", "budget_params", "trial", "retrained_params"])


def make_run_config(recorded: dict, **overrides) -> RunConfig:
    """The RunConfig part of a recorded config (a search's or a baseline's), with ``overrides``."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    # Extra teachers only shape training; dropping them keeps their files from being required here.
    values = {k: v for k, v in recorded.items() if k in names and k not in ("teachers", "teacher_weights")}
    return make_config(RunConfig, {**values, **overrides})


# --- figures --------------------------------------------------------------------------------------------

def fmt(value, spec: str, unit: str = "") -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return f"{value:{spec}}{unit}"


def cost_text(value: float, cost: str) -> str:
    named = {"params": f"{value / 1e6:.2f}M params", "flops": f"{value / 1e6:,.1f} MFLOPs"}
    return named.get(cost, f"{value:.3g} {cost}")


def hover_text(row: pd.Series, layers: list[str]) -> str:
    """A trial's hover: number, accuracies, size, T, alpha (and KD kind), kept channels per block."""
    get = lambda key: row.get(key, math.nan)
    lines = [f"<b>trial {row['number']}</b>" + (" (Pareto front)" if row.get("pareto") else ""),
             f"screening: held-out val top-1 {fmt(get(ACCURACY), '.2f', '%')}"
             # studies before 2026-12-01 evaluated their trials on the test set too; trials no longer do
             + (f" (test top-1 {fmt(get(TEST), '.2f', '%')} after the screening epochs)"
                if pd.notna(get(TEST)) else ""),
             f"{fmt(get('params'), ',.0f')} params, {fmt(get('flops') / 1e6, ',.1f')} MFLOPs, "
             f"{fmt(get('size_mb'), '.1f')} MB"
             + (f", {fmt(get('latency_ms'), '.2f')} ms" if "latency_ms" in row else ""),
             f"T {fmt(get('temperature'), '.2f')}, alpha {fmt(get('alpha'), '.2f')}"
             + (f", kd {row['kd']} (beta {fmt(get('beta'), '.3g')})" if isinstance(row.get("kd"), str) else "")]
    if all(f"ch/{name}" in row for name in layers):
        lines.append("kept channels, conv1/conv2 per block:")
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            blocks = sorted({name.rsplit(".", 1)[0] for name in layers if name.startswith(stage + ".")})
            pairs = [f"{fmt(get(f'ch/{b}.conv1'), '.0f')}/{fmt(get(f'ch/{b}.conv2'), '.0f')}" for b in blocks]
            lines.append(f"{stage}: " + "  ".join(pairs))
    return "<br>".join(lines)


def screening_protocol(config: dict) -> str:
    """How the trials were screened, from the study's recorded config."""
    get = lambda key: config.get(key, "(not recorded)")
    subset, fraction = config.get("trial_subset"), config.get("val_fraction")
    images = ("all training images" if subset == 0 else f"{subset:,} training images" if isinstance(subset, int)
              else "(not recorded) training images")
    split = f"{fraction:.0%}" if isinstance(fraction, (int, float)) else "(not recorded)"
    return (f"held-out validation split ({split} of the training set, --val-fraction), after {get('prune_steps')} "
            f"prune step(s) x {get('trial_epochs')} KD epoch(s) on {images} (--prune-steps, --trial-epochs, "
            f"--trial-subset)")


def screening_figure(df: pd.DataFrame, front: pd.DataFrame, x: str, cost: str, layers: list[str],
                     protocol: str) -> go.Figure:
    """Screening top-1 vs ``x``: trials, infeasible trials (if any), the front. The baseline and the seed
    are not drawn here: theirs are test-set accuracies after a full protocol (issue 11)."""
    complete = df[df["state"] == "COMPLETE"]
    rest = complete[~complete["number"].isin(front["number"])]
    fig = go.Figure()

    def trials(part: pd.DataFrame, name: str, **style) -> None:
        fig.add_trace(go.Scatter(x=part[x], y=part[ACCURACY], name=name, text=[hover_text(r, layers) for _, r in
                                 part.iterrows()], hovertemplate="%{text}<extra></extra>", **style))

    trials(rest[rest["feasible"]], "screening trials", mode="markers",
           marker={"color": "#8c8c8c", "size": 7, "opacity": 0.7})
    if not rest["feasible"].all():
        trials(rest[~rest["feasible"]], "screening trials over budget (infeasible)", mode="markers",
               marker={"color": "#8c8c8c", "symbol": "x", "size": 7})
    trials(front.sort_values(x), f"screening Pareto front (accuracy vs {cost})",
           mode="lines+markers" if x == cost else "markers", marker={"color": "#d62728", "size": 10},
           line={"color": "#d62728"})
    fig.update_layout(title=f"Screening trials: held-out validation top-1 vs {x}<br><sub>{protocol}</sub>",
                      xaxis_title=x, yaxis_title="screening top-1 (%), held-out validation split",
                      xaxis={"autorange": "reversed"}, template="plotly_white", hovermode="closest", height=560)
    return fig


def full_protocol_figure(retrained: pd.DataFrame, baseline: pd.DataFrame, x: str) -> go.Figure | None:
    """Test top-1 vs ``x`` after the full protocol: the retrained plans, the baseline and the seed (on
    params: it published params and accuracy only); None when there is nothing to draw."""
    fig = go.Figure()
    if x in baseline.columns and len(baseline):
        fig.add_trace(go.Scatter(
            x=baseline[x], y=baseline[TEST], mode="lines+markers", name="iterative baseline (test set, full protocol)",
            marker={"color": "#1f77b4"}, text=[f"{r['step']} ({r.get('phase', '')})" for _, r in baseline.iterrows()],
            hovertemplate="baseline step %{text}<br>%{x:,.6g} " + x + "<br>test top-1 %{y:.2f}%<extra></extra>"))
    if x in retrained.columns and len(retrained):
        fig.add_trace(go.Scatter(
            x=retrained[x], y=retrained[TEST], mode="markers", name="retrained plans (test set, full protocol)",
            marker={"color": "#d62728", "symbol": "diamond", "size": 10},
            text=[retrained_hover(r) for _, r in retrained.iterrows()], hovertemplate="%{text}<extra></extra>"))
    if x == "params":
        fig.add_trace(go.Scatter(
            x=[r["params"] for r in SEED_RESULTS], y=[r[ACCURACY] for r in SEED_RESULTS], mode="lines+markers",
            name=SEED_NAME, line={"dash": "dash", "color": "gray"}, text=[r["step"] for r in SEED_RESULTS],
            hovertemplate="seed step %{text}<br>%{x:,} params<br>test top-1 %{y:.2f}%<extra></extra>"))
    if not fig.data:
        return None
    fig.update_layout(title=f"Test top-1 after the full protocol vs {x}: retrained plans, baseline, seed",
                      xaxis_title=x, yaxis_title="test top-1 (%), after the full protocol",
                      xaxis={"autorange": "reversed"}, template="plotly_white", hovermode="closest", height=560)
    return fig


def retrained_hover(row: pd.Series) -> str:
    """A retrained plan's hover: its test top-1 beside the screening accuracy that chose it."""
    return (f"<b>trial {row['trial']}, retrained</b> (step {row['step']})<br>"
            f"test top-1 {fmt(row[TEST], '.2f', '%')} after the full protocol<br>"
            f"{fmt(row['params'], ',.0f')} params, {fmt(row.get('flops', math.nan) / 1e6, ',.1f')} MFLOPs<br>"
            f"screening: held-out val top-1 {fmt(row.get('screening_val_top1', math.nan), '.2f', '%')}")


def hypervolume_figure(history: pd.DataFrame, ref_note: str) -> go.Figure:
    fig = go.Figure(go.Scatter(x=history["number"], y=history["hypervolume"], mode="lines+markers",
                               line_shape="hv", name="screening hypervolume",
                               hovertemplate="after trial %{x}: %{y:.4f}<extra></extra>"))
    fig.update_layout(title=f"Screening hypervolume of the front over trials (held-out validation top-1 vs cost)"
                            f"<br><sub>reference point: {ref_note}</sub>",
                      xaxis={"title": "trial number", "tickformat": "d"},
                      yaxis_title="hypervolume (fraction of the reference box)",
                      template="plotly_white")
    return fig


def channels_figure(front: pd.DataFrame, cost: str, layers: list[str], dense: dict[str, int]) -> go.Figure:
    """Kept fraction of each layer's channels (colour) and the counts (hover) for every front plan."""
    labels = [f"trial {int(r['number'])}: {cost_text(r[cost], cost)}, screening {r[ACCURACY]:.1f}%"
              for _, r in front.iterrows()]
    kept = front[[f"ch/{name}" for name in layers]].to_numpy(float)
    fig = go.Figure(go.Heatmap(
        z=kept / np.array([dense[name] for name in layers]), x=layers, y=labels, zmin=0, zmax=1,
        colorscale="Viridis", colorbar={"title": "kept"},
        customdata=[[f"{int(c)}/{dense[name]}" for c, name in zip(row, layers)] for row in kept],
        hovertemplate="%{y}<br>%{x}: %{customdata} channels (%{z:.0%})<extra></extra>"))
    fig.update_layout(title="Kept channels per layer of the front's plans (where the search cuts and where it keeps)",
                      xaxis={"tickangle": -60}, template="plotly_white", height=max(320, 140 + 28 * len(labels)))
    return fig


def importance_figure(table: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for name in table.columns[1:]:
        fig.add_trace(go.Bar(y=table["param"], x=table[name], orientation="h", name=f"for {name}",
                             hovertemplate="%{y}: %{x:.3f}<extra>" + name + "</extra>"))
    fig.update_layout(title="Parameter importances (Optuna fANOVA), one bar per objective", barmode="group",
                      xaxis_title="importance (sums to 1 per objective)", yaxis={"autorange": "reversed"},
                      template="plotly_white", height=max(360, 120 + 26 * len(table)))
    return fig


# --- the feature plot -----------------------------------------------------------------------------------

def feature_plot(cfg: ReportConfig, study: optuna.Study, df: pd.DataFrame,
                 front: pd.DataFrame) -> tuple[go.Figure | None, str]:
    """Teacher vs a front plan on the study's validation split, or None and the reason it was skipped."""
    if not cfg.features:
        return None, "off (--no-features)"
    teacher_path = study.user_attrs.get("teacher", "")
    if not teacher_path or not Path(teacher_path).is_file():
        return None, f"skipped: the study's teacher checkpoint {teacher_path!r} is not here"
    chosen = df[df["number"] == cfg.features_trial] if cfg.features_trial >= 0 else front
    with_ckpt = [r for _, r in chosen.iterrows() if r.get("checkpoint") and Path(str(r["checkpoint"])).is_file()]
    if not with_ckpt:
        which = f"trial {cfg.features_trial}" if cfg.features_trial >= 0 else "no front plan"
        return None, f"skipped: {which} has a checkpoint file here (see --keep-checkpoints of python -m search)"
    trial = with_ckpt[0]
    try:
        run_cfg = make_run_config(study.user_attrs.get("config", {}), device=cfg.device, progress=False,
                                  **({"data_dir": cfg.data_dir} if cfg.data_dir else {}))
        sess = open_session(run_cfg, train_subset=1)  # features only need the validation split
        teacher = prepare(load_teacher(teacher_path, sess.data.num_classes), sess.rt)
        student = prepare(load_pruned(str(trial["checkpoint"]))[0], sess.rt)
    except UserError as exc:
        return None, f"skipped: {exc}"
    feats, labels = penultimate(teacher, sess.val_loader, sess.rt, cfg.feature_images)
    feats_student, _ = penultimate(student, sess.val_loader, sess.rt, cfg.feature_images)
    tsne = cfg.tsne and tsne_available()
    note = "t-SNE skipped: scikit-learn is not installed. " if cfg.tsne and not tsne else ""
    fig = features_figure({"teacher": feats, f"trial {int(trial['number'])}": feats_student}, labels, tsne=tsne)
    return fig, note + f"Trial {int(trial['number'])} ({trial['checkpoint']}) on {len(labels)} validation images."


# --- the page -------------------------------------------------------------------------------------------

class Page:
    """HTML sections in order; plotly.js is embedded once, with the first figure."""

    def __init__(self, title: str):
        self.title, self.parts, self.figures = title, [], []

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def table(self, df: pd.DataFrame) -> None:
        cell = lambda v: ("—" if pd.isna(v) else f"{v:,}" if isinstance(v, (int, np.integer))
                          else f"{v:.2f}" if isinstance(v, float) else v)
        shown = df.astype(object).apply(lambda column: column.map(cell))
        self.parts.append(shown.to_html(index=False, border=0))

    def figure(self, fig: go.Figure) -> None:
        self.parts.append(fig.to_html(full_html=False, include_plotlyjs=not self.figures))
        self.figures.append(fig)

    def html(self) -> str:
        style = ("body{font-family:sans-serif;margin:1.5em auto;max-width:1200px;color:#222}"
                 "table{border-collapse:collapse;font-size:90%}td,th{padding:2px 8px;border-bottom:1px solid #ddd;"
                 "text-align:right}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>{''.join(self.parts)}"
                f"</body></html>")


def summary(df: pd.DataFrame, front: pd.DataFrame, pool: pd.DataFrame, cost: str) -> str:
    """One paragraph: trials per state, the objectives, the front's size and what it was taken from."""
    states = ", ".join(f"{n} {state}" for state, n in df["state"].value_counts().items())
    text = (f"{len(df)} trials ({states}); objectives: maximise screening accuracy ({ACCURACY}, the held-out "
            f"validation split), minimise {cost}; {len(front)} plans on the screening Pareto front")
    if df["feasible"].all():
        return text + "."
    if pool["feasible"].all():
        return text + f" of the {len(pool)} trials within the budgets."
    return text + " (no trial is within the budgets, so this front ignores them)."


def write_csv_frame(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False))


def ordered(df: pd.DataFrame) -> pd.DataFrame:
    head = [c for c in HEAD if c in df.columns]
    return df[head + [c for c in df.columns if c not in head]]


def series_text(protocol: str, cfg: ReportConfig) -> str:
    """The three series the page keeps apart (issue 11)."""
    return ("Three series, never on one accuracy axis: (1) screening trials: top-1 on the " + protocol + "; the "
            "value the search maximises, a cheap screen, not comparable with test accuracy; (2) retrained plans: "
            "test top-1 after python -m search.retrain's full protocol; (3) the iterative baseline: test top-1 "
            f"after its full protocol{'' if cfg.baseline else ' (none given: --baseline)'}, and the {SEED_NAME}.")


def screening_section(page: Page, df: pd.DataFrame, front: pd.DataFrame, cost: str, layers: list[str],
                      protocol: str) -> None:
    page.heading(f"Screening trials: held-out validation top-1 vs {cost}")
    page.text("Hover a point for its trial number, accuracies, size, T, alpha and kept channels.")
    for x in [cost] + (["params"] if cost != "params" else []):
        page.figure(screening_figure(df, front, x, cost, layers, protocol))


def full_protocol_section(page: Page, retrained: pd.DataFrame, baseline: pd.DataFrame, cost: str,
                          notes: list[str]) -> None:
    page.heading("Test top-1 after the full protocol: retrained plans, baseline, seed")
    page.text(" ".join(notes))
    for x in ["params"] + (["flops"] if cost == "flops" else []):
        fig = full_protocol_figure(retrained, baseline, x)
        if fig is not None:
            page.figure(fig)


def budget_section(page: Page, budgets: pd.DataFrame, reference: str, cfg: ReportConfig) -> None:
    page.heading("Retrained plans vs the baseline at each params budget (test set)")
    if budgets.empty:
        page.text("Nothing retrained yet: no retrained plan has a test top-1 to compare with the baseline on the "
                  "test set, and screening accuracies are not comparable with it. Run python -m search.retrain "
                  f"--study-name {cfg.study_name} --trials front, then this report again; budgets.csv holds only "
                  "its header until then.")
        return
    tol = cfg.budget_tolerance
    page.text(f"Test set only, full protocol on both sides. Budgets: the params of each {reference} model (at each "
              f"size its most trained one). At each budget, the retrained plan with the best test top-1 among those "
              f"with {(1 - tol) * 100:.0f} % to 100 % of the budget's params (--budget-tolerance {tol}: a much "
              f"smaller plan does not stand for a budget); delta_top1 = retrained - reference, in points. The pick "
              f"is made on the test set, so where several plans share a window it is optimistic.")
    page.table(budgets)


def hypervolume_section(page: Page, history: pd.DataFrame, ref_note: str, tested: pd.DataFrame,
                        tested_note: str) -> None:
    page.heading("Hypervolume")
    page.figure(hypervolume_figure(history, ref_note))
    if tested.empty:
        page.text(f"Test-set hypervolume (retrained plans vs baseline): {tested_note}.")
        return
    page.text(f"Test-set hypervolume (test top-1 vs params, after the full protocol), as a fraction of the box "
              f"[0, 100] % x [0, reference params]; one reference point for both series: {tested_note}.")
    page.table(tested.drop(columns="reference_point"))


def build(cfg: ReportConfig) -> dict:
    """Write the report; returns its directory, the trace names of each figure (page order), the front and
    the retrained trials."""
    with warnings.catch_warnings():  # the storage's heartbeat helpers are "experimental" in Optuna; reading is not
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = load_study(cfg.storage, cfg.study_name)
    cost = study_cost(study)
    config = study.user_attrs.get("config", {})
    study_dir = Path(config.get("out", "runs/search")) / cfg.study_name
    out = Path(cfg.out) if cfg.out else study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    df = trials_frame(study, cost)
    df["pareto"] = df["number"].isin(pareto_front(df, cost)["number"])
    front = df[df["pareto"]].sort_values([cost, "number"])
    pool = candidates(df)
    with torch.device("meta"):  # only the widths are needed (and they do not depend on the class count)
        dense_plan = channel_plan(build_resnet50(2, "none"))
    layers = list(dense_plan)
    baseline, baseline_note = read_baseline(cfg.baseline)
    retrained, retrained_note = read_retrained(cfg, study_dir, df)
    dense = dense_costs(study, config)
    ref_acc, ref_cost, ref_note = reference_point(pool[cost].max(), cost, dense, "the candidate trials")
    history = hypervolume_history(df, cost, (ref_acc, ref_cost))
    references = budget_references(baseline)
    budgets = budget_table(references, retrained, cfg.budget_tolerance)
    tested, tested_note = full_protocol_hypervolumes(retrained, baseline, dense)
    imp = importances(study, cost)
    protocol = screening_protocol(config)

    page = Page(f"Search report: {cfg.study_name}")
    page.text(f"Storage {redact(cfg.storage)}. {summary(df, front, pool, cost)}")
    page.text(series_text(protocol, cfg))
    screening_section(page, df, front, cost, layers, protocol)
    full_protocol_section(page, retrained, baseline, cost, [retrained_note, baseline_note])
    budget_section(page, budgets, references["reference"].iloc[0], cfg)
    hypervolume_section(page, history, ref_note, tested, tested_note)
    page.heading("Layer-wise plans of the screening front")
    if all(f"ch/{name}" in front.columns for name in layers):
        page.figure(channels_figure(front, cost, layers, dense_plan))
    else:
        page.text("The front's trials record no ch/<layer> user attrs, so their plans cannot be drawn.")
    if cfg.sensitivity:
        page.heading("Layer-wise sensitivity")
        page.figure(sensitivity_figure(read_sensitivity(cfg.sensitivity)))
    page.heading("Parameter importances (screening objectives)")
    if isinstance(imp, str):
        page.text(f"Parameter importances: {imp}.")
    else:
        page.figure(importance_figure(imp))
        write_csv_frame(imp, out / "importances.csv")
    page.heading("Penultimate features: teacher vs a pruned plan")
    fig, note = feature_plot(cfg, study, df, front)
    page.text(note)
    if fig is not None:
        page.figure(fig)

    write_csv_frame(ordered(df), out / "trials.csv")
    write_csv_frame(ordered(front), out / "pareto.csv")
    write_csv_frame(history, out / "hypervolume.csv")
    write_csv_frame(retrained, out / "retrained.csv")
    write_csv_frame(budgets, out / "budgets.csv")
    if not tested.empty:
        write_csv_frame(tested, out / "test_hypervolume.csv")
    atomic_write_text(out / "report.html", page.html())
    print(f"{len(front)} screening front plans of {len(df)} trials; screening hypervolume "
          f"{history['hypervolume'].iloc[-1]:.4f}; {len(retrained)} retrained plan(s) -> {out / 'report.html'}, "
          f"{out / 'budgets.csv'}")
    return {"out": out, "series": [[trace.name for trace in f.data] for f in page.figures],
            "front": front["number"].tolist(),
            "retrained": retrained["trial"].tolist()}


def dense_costs(study: optuna.Study, config: dict) -> dict:
    """params and flops of the study's (dense) teacher, or {} when its checkpoint is not here."""
    path = study.user_attrs.get("teacher", "")
    if not path or not Path(path).is_file():
        return {}
    teacher, _ = load_pruned(path)
    return {"params": count_params(teacher), "flops": count_flops(teacher, int(config.get("image_size", 224)))}


def read_sensitivity(path: str) -> list[dict]:
    csv = Path(path) / SENSITIVITY_CSV if Path(path).is_dir() else Path(path)
    rows = read_csv(csv)
    if not rows:
        raise UserError(f"--sensitivity {path}: no rows in {csv}; run python -m distill.sensitivity first")
    return rows


def main(argv: list[str] | None = None) -> dict | None:
    return run_cli(lambda: build(parse_config(argv, ReportConfig, __doc__, presets={})), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
