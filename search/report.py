"""Pareto-front report of a pruning search: one self-contained HTML page (plotly.js embedded, opens with
no network) and CSVs, to decide which plan to ship at which budget, and why (issue 4).

    python -m search.report --study-name demo                                 # -> runs/search/demo/report/
    python -m search.report --study-name r50 --storage studies.db --baseline runs/iterative --out report/
    python -m search.report --study-name r50 --sensitivity runs/sensitivity --tsne
    python -m search.report --help                                            # every flag

The page shows: accuracy vs the study's cost (and vs params when the cost is FLOPs or latency) with every
trial, the Pareto front, the iterative baseline (``--baseline``, its pruning_logs.csv) and the seed's
published table, trial details on hover; the hypervolume of the front over trials, with its reference
point; the kept channels per layer of the front's plans; Optuna's parameter importances per objective;
the best accuracy at each params budget; the per-layer sensitivity (``--sensitivity``, from
``python -m distill.sensitivity``); PCA (``--tsne``: and t-SNE) of penultimate features of the teacher vs
a front plan. CSVs in ``--out``: trials.csv (every trial), pareto.csv (the front), hypervolume.csv,
budgets.csv, importances.csv.
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
from search.storage import load_study, redact

ACCURACY = "val_top1"        # the study's "accuracy" objective: top-1 (%) on the held-out validation split
MIN_IMPORTANCE_TRIALS = 10   # fANOVA's forest fitted to fewer points ranks noise (1 trial gives equal shares)
HEAD = ["number", "state", "feasible", "pareto", ACCURACY, "test_top1", "params", "flops", "size_mb",
        "latency_ms", "temperature", "alpha", "kd", "beta"]


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
    out: str = opt("", "report directory (default: <the study's --out>/<study name>/report)")
    debug: bool = opt(False, "show full tracebacks for user errors")

    def __post_init__(self):
        if not self.study_name:
            raise UserError("--study-name is required: the name given to python -m search")
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
        row["feasible"] = all(v <= 0 for v in t.constraints.values())  # Optuna's rule: every constraint <= 0
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


def non_dominated(acc: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Mask of the points no other point dominates (accuracy maximised, cost minimised); ties all stay."""
    at_least = (acc[None, :] >= acc[:, None]) & (cost[None, :] <= cost[:, None])   # [i, j]: j as good as i
    better = (acc[None, :] > acc[:, None]) | (cost[None, :] < cost[:, None])       # [i, j]: j better somewhere
    return ~(at_least & better).any(axis=1)


def candidates(df: pd.DataFrame) -> pd.DataFrame:
    """COMPLETE trials the front is taken from: the feasible ones (Optuna's rule), or all if none is feasible."""
    complete = df[df["state"] == "COMPLETE"]
    return complete[complete["feasible"]] if complete["feasible"].any() else complete


def pareto_front(df: pd.DataFrame, cost: str) -> pd.DataFrame:
    """The non-dominated candidates, cheapest first."""
    pool = candidates(df)
    mask = non_dominated(pool[ACCURACY].to_numpy(float), pool[cost].to_numpy(float))
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
    front = np.unique(np.stack([cost, acc], axis=1)[non_dominated(acc, cost)], axis=0)  # sorted by cost
    widths = np.diff(np.append(front[:, 0], ref_cost))
    return math.fsum(widths * (np.maximum.accumulate(front[:, 1]) - ref_acc))


def reference_point(pool: pd.DataFrame, cost: str, dense: dict) -> tuple[float, float, str]:
    """(accuracy, cost, how it was chosen): 0 % and the dense teacher's cost, else 1.1 x the largest cost."""
    if cost in dense:
        return 0.0, float(dense[cost]), f"0 % top-1 and the dense teacher's {cost_text(dense[cost], cost)}"
    worst = float(pool[cost].max()) * 1.1
    return 0.0, worst, f"0 % top-1 and 1.1 x the largest {cost} of the candidate trials, {cost_text(worst, cost)}"


def hypervolume_history(df: pd.DataFrame, cost: str, ref: tuple[float, float]) -> pd.DataFrame:
    """Hypervolume of the front after each COMPLETE trial (in trial order), as a fraction of the box
    [ref_acc, 100] % x [0, ref_cost], so studies of different sizes and costs compare."""
    pool = candidates(df)
    complete = df[df["state"] == "COMPLETE"].sort_values("number")
    box = (100.0 - ref[0]) * ref[1]
    rows = []
    for number in complete["number"]:
        seen = pool[pool["number"] <= number]
        hv = hypervolume_2d(seen[ACCURACY].to_numpy(float), seen[cost].to_numpy(float), *ref)
        rows.append({"number": int(number), "hypervolume": hv / box})
    return pd.DataFrame(rows)


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


def budget_table(pool: pd.DataFrame, baseline: list[dict]) -> pd.DataFrame:
    """At each params budget of the seed's table: the seed's accuracy, the baseline's and the search's best.

    The search's pick is the candidate with the best validation accuracy within the budget (its test
    accuracy is shown, never used to choose).
    """
    rows = []
    for seed in SEED_RESULTS:
        budget = seed["params"]
        row = {"budget_params": budget, "seed_step": seed["step"], "seed_val_top1": seed["val_top1"]}
        steps = [r for r in baseline if r["params"] <= budget]
        if steps:
            best = max(steps, key=lambda r: r["val_top1"])
            row.update(baseline_step=best["step"], baseline_params=best["params"], baseline_val_top1=best["val_top1"])
        fits = pool[pool["params"] <= budget]
        if len(fits):
            best = fits.loc[fits[ACCURACY].idxmax()]
            row.update(trial=int(best["number"]), trial_params=int(best["params"]), trial_val_top1=best[ACCURACY],
                       trial_test_top1=best.get("test_top1", math.nan))
        rows.append(row)
    return as_int(pd.DataFrame(rows), ["budget_params", "seed_step", "baseline_step", "baseline_params", "trial",
                                       "trial_params"])


def read_baseline(path: str) -> tuple[list[dict], str]:
    """Rows of a baseline's pruning_logs.csv and a note saying which split its accuracy is measured on."""
    if not path:
        return [], ""
    csv = Path(path) / "pruning_logs.csv" if Path(path).is_dir() else Path(path)
    rows = read_csv(csv)
    if not rows:
        raise UserError(f"--baseline {path}: no rows in {csv}; give a run directory of baselines/iterative.py")
    config = csv.parent / "config.json"
    if not config.exists():
        return rows, ""
    held_out = json.loads(config.read_text()).get("config", {}).get("val_fraction", 0)
    split = "a held-out split of its training set" if held_out else "the test set (the seed's protocol)"
    return rows, f"The baseline's accuracy is measured on {split}."


def make_run_config(recorded: dict, **overrides) -> RunConfig:
    """The RunConfig part of a recorded config (a search's or a baseline's), with ``overrides``."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    # Extra teachers only shape training; dropping them keeps their files from being required here.
    values = {k: v for k, v in recorded.items() if k in names and k not in ("teachers", "teacher_weights")}
    return make_config(RunConfig, {**values, **overrides})


# --- figures --------------------------------------------------------------------------------------------

def fmt(value, spec: str, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:{spec}}{unit}"


def cost_text(value: float, cost: str) -> str:
    named = {"params": f"{value / 1e6:.2f}M params", "flops": f"{value / 1e6:,.1f} MFLOPs"}
    return named.get(cost, f"{value:.3g} {cost}")


def hover_text(row: pd.Series, layers: list[str]) -> str:
    """A trial's hover: number, accuracies, size, T, alpha (and KD kind), kept channels per block."""
    get = lambda key: row.get(key, math.nan)
    lines = [f"<b>trial {row['number']}</b>" + (" (Pareto front)" if row.get("pareto") else ""),
             f"val top-1 {fmt(get(ACCURACY), '.2f', '%')}, test top-1 {fmt(get('test_top1'), '.2f', '%')}",
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


def front_figure(df: pd.DataFrame, front: pd.DataFrame, x: str, cost: str, baseline: list[dict],
                 layers: list[str]) -> go.Figure:
    """Accuracy vs ``x``: trials, infeasible trials (if any), the front, the baseline and the seed (on params)."""
    complete = df[df["state"] == "COMPLETE"]
    rest = complete[~complete["number"].isin(front["number"])]
    fig = go.Figure()

    def trials(part: pd.DataFrame, name: str, **style) -> None:
        fig.add_trace(go.Scatter(x=part[x], y=part[ACCURACY], name=name, text=[hover_text(r, layers) for _, r in
                                 part.iterrows()], hovertemplate="%{text}<extra></extra>", **style))

    trials(rest[rest["feasible"]], "trials", mode="markers", marker={"color": "#8c8c8c", "size": 7, "opacity": 0.7})
    if not rest["feasible"].all():
        trials(rest[~rest["feasible"]], "over budget (infeasible)", mode="markers",
               marker={"color": "#8c8c8c", "symbol": "x", "size": 7})
    trials(front.sort_values(x), f"Pareto front (accuracy vs {cost})", mode="lines+markers" if x == cost else "markers",
           marker={"color": "#d62728", "size": 10}, line={"color": "#d62728"})
    if baseline and x in baseline[0]:
        fig.add_trace(go.Scatter(
            x=[r[x] for r in baseline], y=[r["val_top1"] for r in baseline], mode="lines+markers",
            name="iterative baseline", marker={"color": "#1f77b4"},
            text=[f"{r['step']} ({r['phase']})" for r in baseline],
            hovertemplate="baseline step %{text}<br>%{x:,.6g} " + x + "<br>%{y:.2f}% top-1<extra></extra>"))
    if x == "params":  # the seed published params and accuracy only
        fig.add_trace(go.Scatter(
            x=[r["params"] for r in SEED_RESULTS], y=[r["val_top1"] for r in SEED_RESULTS], mode="lines+markers",
            name="seed (published, CIFAR-100 224 px)", line={"dash": "dash", "color": "gray"},
            text=[r["step"] for r in SEED_RESULTS],
            hovertemplate="seed step %{text}<br>%{x:,} params<br>%{y:.2f}% top-1<extra></extra>"))
    fig.update_layout(title=f"Top-1 accuracy vs {x}", xaxis_title=x, yaxis_title="top-1 (%)",
                      xaxis={"autorange": "reversed"}, template="plotly_white", hovermode="closest", height=560)
    return fig


def hypervolume_figure(history: pd.DataFrame, ref_note: str) -> go.Figure:
    fig = go.Figure(go.Scatter(x=history["number"], y=history["hypervolume"], mode="lines+markers",
                               line_shape="hv", name="hypervolume",
                               hovertemplate="after trial %{x}: %{y:.4f}<extra></extra>"))
    fig.update_layout(title=f"Hypervolume of the front over trials (reference point: {ref_note})",
                      xaxis={"title": "trial number", "tickformat": "d"},
                      yaxis_title="hypervolume (fraction of the reference box)",
                      template="plotly_white")
    return fig


def channels_figure(front: pd.DataFrame, cost: str, layers: list[str], dense: dict[str, int]) -> go.Figure:
    """Kept fraction of each layer's channels (colour) and the counts (hover) for every front plan."""
    labels = [f"trial {int(r['number'])}: {cost_text(r[cost], cost)}, {r[ACCURACY]:.1f}%" for _, r in front.iterrows()]
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
    text = (f"{len(df)} trials ({states}); objectives: maximise accuracy ({ACCURACY}, the held-out validation "
            f"split), minimise {cost}; {len(front)} plans on the Pareto front")
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


def build(cfg: ReportConfig) -> dict:
    """Write the report; returns its paths, the trace count of each figure (page order) and the front."""
    with warnings.catch_warnings():  # the storage's heartbeat helpers are "experimental" in Optuna; reading is not
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = load_study(cfg.storage, cfg.study_name)
    cost = study_cost(study)
    config = study.user_attrs.get("config", {})
    out = Path(cfg.out) if cfg.out else Path(config.get("out", "runs/search")) / cfg.study_name / "report"
    out.mkdir(parents=True, exist_ok=True)
    df = trials_frame(study, cost)
    df["pareto"] = df["number"].isin(pareto_front(df, cost)["number"])
    front = df[df["pareto"]].sort_values([cost, "number"])
    pool = candidates(df)
    with torch.device("meta"):  # only the widths are needed (and they do not depend on the class count)
        dense_plan = channel_plan(build_resnet50(2, "none"))
    layers = list(dense_plan)
    baseline, baseline_note = read_baseline(cfg.baseline)
    dense = dense_costs(study, config)
    ref_acc, ref_cost, ref_note = reference_point(pool, cost, dense)
    history = hypervolume_history(df, cost, (ref_acc, ref_cost))
    budgets = budget_table(pool, baseline)
    imp = importances(study, cost)

    page = Page(f"Search report: {cfg.study_name}")
    page.text(f"Storage {redact(cfg.storage)}. {summary(df, front, pool, cost)} {baseline_note}")
    page.heading("Accuracy vs cost")
    page.text("Hover a point for its trial number, accuracies, size, T, alpha and kept channels.")
    for x in [cost] + (["params"] if cost != "params" else []):
        page.figure(front_figure(df, front, x, cost, baseline, layers))
    page.heading("Best accuracy at each params budget")
    page.text("Budgets are the parameter counts of the seed's published steps; the search's pick is the best "
              "validation accuracy within the budget.")
    page.table(budgets)
    page.heading("Hypervolume")
    page.figure(hypervolume_figure(history, ref_note))
    page.heading("Layer-wise plans of the front")
    if all(f"ch/{name}" in front.columns for name in layers):
        page.figure(channels_figure(front, cost, layers, dense_plan))
    else:
        page.text("The front's trials record no ch/<layer> user attrs, so their plans cannot be drawn.")
    if cfg.sensitivity:
        page.heading("Layer-wise sensitivity")
        page.figure(sensitivity_figure(read_sensitivity(cfg.sensitivity)))
    page.heading("Parameter importances")
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
    write_csv_frame(budgets, out / "budgets.csv")
    atomic_write_text(out / "report.html", page.html())
    print(f"{len(front)} front plans of {len(df)} trials; hypervolume {history['hypervolume'].iloc[-1]:.4f} -> "
          f"{out / 'report.html'}, {out / 'pareto.csv'}")
    return {"out": out, "traces": [len(f.data) for f in page.figures], "front": front["number"].tolist()}


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
