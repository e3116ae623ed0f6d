"""search.report (issue 4): the front, hypervolume, budgets and CSVs of a study, its HTML in headless
Chromium, and the report of a real search; screening, retrained and baseline series kept apart (issue 11).
(optuna-dashboard serving a study: tests/test_search.py.)"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from conftest import TINY, tiny_argv, untrained_teacher
from distill.config import make_config
from distill.pipeline import prune_step
from distill.results import write_csv
from pruning.checkpoint import load_pruned, save_pruned
from pruning.measure import count_params
from pruning.model import channel_plan
from pruning.plan import target_plan
from search.__main__ import main as search_main
from search.config import SearchConfig
from search.front import non_dominated
from search.report import BUDGETS, RETRAINED, SEED_NAME, hypervolume_2d, main as report_main
from search.report import with_test_top1

STAGES = ("layer1", "layer2", "layer3", "layer4")
BUDGET = 21_000_000      # max_params of the synthetic study: pricier trials are infeasible
N_COMPLETE = 16          # above search.report.MIN_IMPORTANCE_TRIALS, so importances are drawn
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("report")


@pytest.fixture(scope="module")
def teacher(work) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    untrained_teacher(work / "teacher.pt")
    return work / "teacher.pt", load_pruned(work / "teacher.pt")[0]


def stage_ratios(rng: np.random.Generator) -> dict[str, float]:
    return {f"ratio/{s}": float(rng.uniform(0.0, 0.9)) for s in STAGES}


@pytest.fixture(scope="module")
def study_db(work, teacher) -> Path:
    """A study shaped like python -m search's (params, user attrs, constraints), with known values:
    16 COMPLETE trials (two with equal values, some over the params budget), one FAIL."""
    teacher_path, model = teacher
    dense = channel_plan(model)
    rng = np.random.default_rng(0)
    db = work / "studies.db"
    study = optuna.create_study(study_name="synthetic", storage=JournalStorage(JournalFileBackend(str(db))),
                                directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "params"])
    config = make_config(SearchConfig, {**TINY, "val_fraction": 0.25, "out": str(work / "search"), "trial_epochs": 1,
                                        "prune_steps": 2, "trial_subset": 32})
    study.set_user_attr("config", dataclasses.asdict(config))
    study.set_user_attr("teacher", str(teacher_path))
    dists = {**{f"ratio/{s}": FloatDistribution(0.0, 0.9) for s in STAGES},
             "temperature": FloatDistribution(1.0, 20.0, log=True), "alpha": FloatDistribution(0.0, 1.0)}
    trials = []
    for i in range(N_COMPLETE - 1):
        params = {**stage_ratios(rng), "temperature": float(rng.uniform(1, 20)), "alpha": float(rng.uniform(0, 1))}
        if i == 0:  # barely pruned and the most accurate: on the front, were it not over the budget
            params.update({f"ratio/{s}": 0.05 for s in STAGES})
        ratios = {layer: params[f"ratio/{layer.split('.')[0]}"] for layer in dense}
        plan = target_plan(dense, ratios)
        acc = 95.0 if i == 0 else round(80 - 50 * np.mean(list(ratios.values())) + rng.normal(0, 6), 2)
        n_params = int(count_params(model) * (1 - 0.8 * np.mean(list(ratios.values()))))
        trials.append((params, ratios, plan, acc, n_params))
    cheapest = min(range(len(trials)), key=lambda i: trials[i][4])  # on the front: the only one this cheap
    # (params follow the mean ratio, not the exact plan: the report only needs them consistent per trial)
    trials.append(trials[cheapest])  # the same values twice, on the front: ties must both stay
    for number, (params, ratios, plan, acc, n_params) in enumerate(trials):
        attrs = {"params": n_params, "flops": 3 * n_params, "size_mb": n_params * 4e-6, "val_top1": acc,
                 "test_top1": acc - 1.5, **{f"ch/{k}": v for k, v in plan.items()}, "checkpoint": ""}
        if number == cheapest:  # a real pruned model, for the feature plot
            pruned, _ = prune_step(model, ratios, "torch-pruning", 1, 32)
            save_pruned(work / "trial.pt", pruned, {"trial": number})
            attrs["checkpoint"] = str(work / "trial.pt")
        study.add_trial(create_trial(state=TrialState.COMPLETE, values=[acc, n_params], params=params,
                                     distributions=dists, user_attrs=attrs,
                                     system_attrs={"constraints:params": float(n_params - BUDGET)}))
    study.add_trial(create_trial(state=TrialState.FAIL, params=trials[0][0], distributions=dists,
                                 user_attrs={"fail_reason": "NonFiniteLoss: loss is nan"}))
    return db


@pytest.fixture(scope="module")
def baseline_dir(work) -> Path:
    out = work / "baseline"
    out.mkdir()
    write_csv(out / "pruning_logs.csv", [
        {"step": s, "phase": "teacher" if s == 0 else "prune", "params": p, "size_mb": p * 4e-6, "flops": 3 * p,
         "val_top1": acc, "val_top5": 99.0}
        for s, p, acc in ((0, 23_516_228, 70.0), (1, 20_469_301, 68.0), (2, 17_900_000, 64.5), (3, 17_900_000, 66.0))])
    # val_fraction 0 and no test_top1 column: an older baseline, whose val_top1 is its test-set accuracy
    (out / "config.json").write_text(json.dumps({"config": {"val_fraction": 0.0}}))
    return out


# python -m search.retrain's finished models (trial: params, test top-1), far above the trials' screening
# accuracies (issue 11); trial 4 is the most accurate but too small to stand for any baseline budget.
RETRAINED_PLANS = {1: (20_000_000, 88.0), 2: (19_000_000, 87.0), 3: (16_500_000, 85.5), 4: (12_000_000, 91.0)}


@pytest.fixture(scope="module")
def retrain_dir(work) -> Path:
    """The study's default retrain directory, as python -m search.retrain writes it: per trial, a prune step
    and the final step (the finished model); val_top1 is a held-out split (lower), test_top1 the test set."""
    out = work / "search" / "synthetic" / "retrain"
    out.mkdir(parents=True)
    rows = []
    for trial, (params, test) in RETRAINED_PLANS.items():
        for step, phase, p, acc in ((1, "prune", 22_000_000, 50.0), (2, "final", params, test)):
            rows.append({"trial": trial, "step": step, "phase": phase, "params": p, "size_mb": p * 4e-6,
                         "flops": 3 * p, "val_top1": acc - 20, "val_top5": 99.0, "val_loss": 1.0, "test_top1": acc,
                         "test_top5": 99.0, "train_loss": 0.5})
    write_csv(out / "pruning_logs.csv", rows)
    (out / "config.json").write_text(json.dumps({"config": {"val_fraction": 0.1}}))
    return out


@pytest.fixture(scope="module")
def sensitivity_csv(work) -> Path:
    rows = [{"layer": f"layer{i}.0.conv1", "ratio": 0.5, "channels": c, "kept": c // 2, "params": 23_000_000,
             "val_top1": 60.0 - i, "val_top5": 90.0, "drop_top1": float(i), "drop_top5": 0.5, "base_val_top1": 60.0}
            for i, c in ((1, 64), (2, 128), (3, 256))]
    write_csv(work / "sensitivity.csv", rows)
    return work / "sensitivity.csv"


@pytest.fixture(scope="module")
def report(study_db, baseline_dir, retrain_dir, sensitivity_csv, work) -> dict:
    return report_main(["--study-name", "synthetic", "--storage", str(study_db), "--baseline", str(baseline_dir),
                        "--sensitivity", str(sensitivity_csv), "--device", "cpu", "--feature-images", "12",
                        "--out", str(work / "out")])


def load(study_db: Path) -> optuna.Study:
    return optuna.load_study(study_name="synthetic", storage=JournalStorage(JournalFileBackend(str(study_db))))


def test_pareto_csv_is_exactly_the_non_dominated_feasible_complete_trials(report, study_db):
    study = load(study_db)
    feasible = [t for t in study.trials if t.state == TrialState.COMPLETE and all(
        v <= 0 for v in t.constraints.values())]
    assert len(feasible) < N_COMPLETE  # the budget really excludes some trials

    def dominated(t) -> bool:
        return any(o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values
                   for o in feasible)

    expected = {t.number for t in feasible if not dominated(t)}
    pareto = pd.read_csv(report["out"] / "pareto.csv")
    assert set(pareto["number"]) == expected == {t.number for t in study.best_trials}
    assert set(report["front"]) == expected
    assert pareto["params"].is_monotonic_increasing and pareto["feasible"].all()
    twins = {t.number for t in feasible if t.values == feasible[-1].values}
    assert len(twins) == 2 and twins <= expected


def test_trials_csv_lists_every_trial(report, study_db):
    trials = pd.read_csv(report["out"] / "trials.csv")
    assert trials["number"].tolist() == list(range(N_COMPLETE + 1))
    assert (trials["state"] == "FAIL").sum() == 1
    assert trials.loc[trials["state"] == "FAIL", "fail_reason"].str.contains("NonFiniteLoss").all()
    complete = trials[trials["state"] == "COMPLETE"]
    assert (complete["feasible"] == (complete["params"] <= BUDGET)).all()
    text = pd.read_csv(report["out"] / "trials.csv", dtype=str)
    assert text.loc[text["state"] == "COMPLETE", "params"].str.isdigit().all()  # counts stay integers


def test_hypervolume_never_decreases_and_matches_optuna(report, study_db, teacher):
    history = pd.read_csv(report["out"] / "hypervolume.csv")
    assert len(history) == N_COMPLETE
    assert (np.diff(history["hypervolume"]) >= 0).all() and 0 < history["hypervolume"].iloc[-1] < 1
    ref_cost = count_params(teacher[1])  # the stated reference point: 0 % and the dense teacher's params
    fig = optuna.visualization.plot_hypervolume_history(load(study_db), reference_point=[0.0, ref_cost])
    assert history["hypervolume"].iloc[-1] * 100 * ref_cost == pytest.approx(fig.data[0].y[-1], rel=1e-9)


@pytest.mark.parametrize("points, expected", [
    ([(50, 2), (80, 5)], 3 * 50 + 5 * 80),             # a staircase of two steps
    ([(50, 2), (80, 5), (40, 6), (50, 2)], 550),       # dominated points and duplicates add nothing
    ([(90, 11), (-1, 1)], 0.0),                        # outside the reference box
])
def test_hypervolume_2d(points, expected):
    acc, cost = np.array(points, dtype=float).T
    assert hypervolume_2d(acc, cost, 0.0, 10.0) == pytest.approx(expected)


def test_non_dominated_keeps_ties_and_drops_dominated():
    loss = np.array([[-1.0, 1.0], [-2.0, 2.0], [-2.0, 2.0], [-1.0, 3.0], [-3.0, 2.0]])  # -accuracy, cost
    assert non_dominated(loss).tolist() == [True, False, False, False, True]
    assert non_dominated(loss[:3]).tolist() == [True, True, True]
    assert non_dominated(np.array([[1.0, 1.0, 2.0], [1.0, 1.0, 1.0], [0.0, 2.0, 2.0]])).tolist() == [False, True, True]


def test_budget_table_compares_retrained_plans_with_the_baseline_on_the_test_set(report, study_db):
    """Only test-set numbers after a full protocol: each retrained plan's finished model (not its earlier
    step, not its screening accuracy) within 10 % below each baseline budget, against the baseline's most
    trained model of that size."""
    screening = {t.number: t.values[0] for t in load(study_db).trials if t.number in RETRAINED_PLANS}
    assert max(screening.values()) < min(test for _, test in RETRAINED_PLANS.values())  # screening is far lower
    budgets = pd.read_csv(report["out"] / "budgets.csv")
    expected = pd.DataFrame({
        "reference": ["baseline"] * 3, "step": [0, 1, 3], "budget_params": [23_516_228, 20_469_301, 17_900_000],
        "reference_test_top1": [70.0, 68.0, 66.0],  # step 3 (final) stands for 17.9M, not step 2
        # 23.5M: only trial 1's unfinished step fits; 17.9M: trial 4 (91 %) is too small to stand for it
        "trial": [np.nan, 1, 3], "retrained_params": [np.nan, 20_000_000, 16_500_000],
        "retrained_test_top1": [np.nan, 88.0, 85.5], "delta_top1": [np.nan, 20.0, 19.5]})
    assert budgets.columns.tolist() == BUDGETS
    pd.testing.assert_frame_equal(budgets, expected, check_dtype=False)
    retrained = pd.read_csv(report["out"] / "retrained.csv")
    assert retrained.columns.tolist() == RETRAINED and report["retrained"] == [4, 3, 2, 1]  # cheapest first
    assert dict(zip(retrained["trial"], zip(retrained["params"], retrained["test_top1"]))) == RETRAINED_PLANS
    assert dict(zip(retrained["trial"], retrained["screening_val_top1"])) == screening


def test_report_labels_the_three_series_and_never_mixes_them(report):
    series = report["series"]
    assert series[0] == ["screening trials", "screening trials over budget (infeasible)",
                         "screening Pareto front (accuracy vs params)"]  # no baseline, no seed beside the trials
    assert series[1] == ["iterative baseline (test set, full protocol)", "retrained plans (test set, full protocol)",
                         SEED_NAME]
    text = (report["out"] / "report.html").read_text()
    for label in ("Screening trials: held-out validation top-1 vs params", "screening top-1 (%), held-out validation",
                  "Test top-1 after the full protocol vs params", "test top-1 (%), after the full protocol",
                  "25% of the training set", "2 prune step(s) x 1 KD epoch(s) on 32 training images",
                  "Screening hypervolume of the front over trials", "Retrained plans vs the baseline at each params "
                  "budget (test set)", "--budget-tolerance 0.1"):
        assert label in text, label


def test_test_set_hypervolume_puts_retrained_plans_and_baseline_on_one_reference_point(report, teacher):
    table = pd.read_csv(report["out"] / "test_hypervolume.csv")
    ref = count_params(teacher[1])  # 0 % and the dense teacher's params, for both series
    assert table["series"].tolist() == ["retrained plans", "baseline"]
    assert table["reference_point"].nunique() == 1 and f"{ref / 1e6:.2f}M params" in table["reference_point"][0]
    assert table["hypervolume"][0] == pytest.approx((ref - 12_000_000) * 91.0 / (100 * ref))  # trial 4 dominates
    baseline = (20_469_301 - 17_900_000) * 66.0 + (ref - 20_469_301) * 68.0  # the teacher's step adds nothing
    assert table["hypervolume"][1] == pytest.approx(baseline / (100 * ref))


@pytest.mark.parametrize("test_top1, val_fraction, expected", [
    ([80.0, 81.0], 0.1, [80.0, 81.0]),     # rows carry test_top1: used as is
    (["", ""], 0.0, [60.0, 61.0]),          # an older run that validated on the test set: its val_top1
    (["", 81.0], 0.1, [np.nan, 81.0]),      # a held-out val_top1 is never taken for a test accuracy
])
def test_test_top1_comes_from_the_test_set_only(tmp_path, test_top1, val_fraction, expected):
    rows = [{"step": i, "val_top1": 60.0 + i, "test_top1": t} for i, t in enumerate(test_top1)]
    (tmp_path / "config.json").write_text(json.dumps({"config": {"val_fraction": val_fraction}}))
    df, note = with_test_top1(rows, tmp_path / "pruning_logs.csv")
    np.testing.assert_array_equal(df["test_top1"].to_numpy(float), expected)
    assert str(tmp_path / "pruning_logs.csv") in note


def test_importances_cover_every_searched_param(report):
    imp = pd.read_csv(report["out"] / "importances.csv")
    assert set(imp["param"]) == {*(f"ratio/{s}" for s in STAGES), "temperature", "alpha"}
    assert imp["val_top1"].sum() == pytest.approx(1.0) and imp["params"].sum() == pytest.approx(1.0)


# Page order: screening vs params (trials, infeasible, front), test vs params (baseline, retrained, seed),
# hypervolume, channel heatmap, sensitivity, importances (one bar trace per objective), features (PCA of
# teacher and of the pruned plan).
EXPECTED_TRACES = [3, 3, 1, 1, 1, 2, 2]


def test_report_html_is_self_contained(report):
    text = (report["out"] / "report.html").read_text()
    assert [len(names) for names in report["series"]] == EXPECTED_TRACES
    assert text.count("Plotly.newPlot") == len(EXPECTED_TRACES)
    assert not re.search(r"<(script|link|img)[^>]*\b(src|href)=", text)  # plotly.js embedded, nothing fetched


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium_without_errors(report, tmp_path):
    traces, rendered, errors, fetched = load_in_chromium(report["out"] / "report.html", tmp_path)
    assert errors == []
    external = [url for url in fetched if not url.startswith(("data:", "blob:"))]  # inline images are fine
    assert external == [report["out"].joinpath("report.html").resolve().as_uri()]  # offline: the page itself only
    assert traces == EXPECTED_TRACES
    assert all(rendered)


def test_report_of_a_real_search(tmp_path, teacher, baseline_dir):
    """python -m search on a tiny synthetic task, then its report (too few trials for importances)."""
    search_cfg = make_config(SearchConfig, {**TINY, "val_fraction": 0.25, "synthetic_train": 48, "trial_epochs": 1,
                                            "trial_subset": 16, "backend": "torch-pruning", "space": "stage",
                                            "teacher": str(teacher[0]), "study_name": "tiny", "n_trials": 2,
                                            "storage": str(tmp_path / "studies.db"), "out": str(tmp_path / "runs")})
    search_main(tiny_argv(search_cfg))
    out = report_main(["--study-name", "tiny", "--storage", str(tmp_path / "studies.db"), "--baseline",
                       str(baseline_dir), "--device", "cpu", "--feature-images", "8"])
    assert out["out"] == tmp_path / "runs" / "tiny" / "report"  # the default: beside the study's files
    pareto = pd.read_csv(out["out"] / "pareto.csv")
    trials = pd.read_csv(out["out"] / "trials.csv")
    assert len(trials) == 2 and set(pareto["number"]) <= set(trials["number"]) and len(pareto) >= 1
    assert all(f"ch/{layer}" in pareto.columns for layer in channel_plan(teacher[1]))
    html = (out["out"] / "report.html").read_text()
    assert "needs at least 10 COMPLETE trials" in html and not (out["out"] / "importances.csv").exists()
    assert "Nothing retrained yet" in html and out["retrained"] == []
    # screening (trials, front); test (baseline, seed); hypervolume; heatmap; features (front checkpoints kept)
    assert [len(names) for names in out["series"]] == [2, 2, 1, 1, 2]


def test_a_flops_study_with_nothing_retrained(study_db, baseline_dir, tmp_path):
    """Cost = FLOPs: the screening front is drawn against FLOPs and again against params, the test series
    against params (with the seed) and FLOPs (without: it published none); without the teacher here, the
    reference point falls back to 1.1 x the largest cost, and says so. Nothing retrained: the budget table
    says so and compares no screening number with the baseline."""
    source = load(study_db)
    study = optuna.create_study(study_name="flops", storage=JournalStorage(JournalFileBackend(str(study_db))),
                                directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "flops"])
    study.set_user_attr("config", {**source.user_attrs["config"], "out": str(tmp_path / "search")})  # no retrain/
    for t in source.trials[:4]:
        study.add_trial(create_trial(state=t.state, values=[t.values[0], t.user_attrs["flops"]], params=t.params,
                                     distributions=t.distributions, user_attrs=t.user_attrs))
    out = report_main(["--study-name", "flops", "--storage", str(study_db), "--baseline", str(baseline_dir),
                       "--no-features", "--out", str(tmp_path)])
    # screening vs flops, vs params (trials, front); test vs params (baseline, seed), vs flops (baseline);
    # hypervolume; heatmap (importances: too few trials)
    assert [len(names) for names in out["series"]] == [2, 2, 2, 1, 1, 1]
    html = (tmp_path / "report.html").read_text()
    assert "1.1 x the largest flops of the candidate trials" in html
    assert "Screening trials: held-out validation top-1 vs flops" in html and "full protocol vs flops" in html
    assert "Nothing retrained yet" in html and out["retrained"] == []
    budgets = pd.read_csv(tmp_path / "budgets.csv")
    assert budgets.empty and budgets.columns.tolist() == BUDGETS
    assert not (tmp_path / "test_hypervolume.csv").exists()
    pareto = pd.read_csv(tmp_path / "pareto.csv")
    flops = pareto["flops"].to_numpy(float)
    assert non_dominated(np.stack([-pareto["val_top1"].to_numpy(float), flops], axis=1)).all()
    assert (np.diff(flops) >= 0).all()


def test_unknown_study_is_a_one_line_error(study_db, capsys):
    with pytest.raises(SystemExit) as exc:
        report_main(["--study-name", "nope", "--storage", str(study_db)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --study-name nope") and "synthetic" in err and len(err.splitlines()) == 1


def test_a_retrain_dir_without_rows_is_a_one_line_error(study_db, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        report_main(["--study-name", "synthetic", "--storage", str(study_db), "--retrain", str(tmp_path),
                     "--no-features", "--out", str(tmp_path / "report")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --retrain {tmp_path}") and "search.retrain" in err and len(err.splitlines()) == 1


def load_in_chromium(page: Path, profile: Path, timeout_s: float = 60):
    """Open ``page`` in headless Chromium over the DevTools protocol (on a pipe: no port, no extra package).

    Returns the trace count of every plotly graph in page order, whether each drew its SVG, the
    console errors and uncaught exceptions seen while loading, and the URLs the page requested.
    """
    to_chrome, chrome_in = os.pipe()
    chrome_out, from_chrome = os.pipe()

    def child_fds() -> None:  # --remote-debugging-pipe reads commands on fd 3 and writes replies on fd 4
        os.dup2(to_chrome, 3)
        os.dup2(from_chrome, 4)

    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--no-first-run", f"--user-data-dir={profile}", "about:blank"],
                            preexec_fn=child_fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(to_chrome)
    os.close(from_chrome)
    cdp = Cdp(chrome_in, chrome_out, time.monotonic() + timeout_s)
    try:
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            cdp.call(f"{domain}.enable", session=session)
        cdp.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        cdp.wait_for("Page.loadEventFired")
        expression = ("JSON.stringify(Array.from(document.querySelectorAll('.js-plotly-plot'))"
                      ".map(d => [d.data.length, d.querySelector('.main-svg') !== null]))")
        result = cdp.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        graphs = json.loads(result["result"]["value"])
        cdp.call("Browser.close")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        os.close(chrome_in)
        os.close(chrome_out)
    return [n for n, _ in graphs], [drawn for _, drawn in graphs], cdp.errors, cdp.requests


class Cdp:
    """Minimal Chrome DevTools Protocol client over --remote-debugging-pipe (NUL-terminated JSON)."""

    def __init__(self, write_fd: int, read_fd: int, deadline: float):
        self.write_fd, self.read_fd, self.deadline = write_fd, read_fd, deadline
        self.buffer, self.next_id, self.errors, self.events, self.requests = b"", 0, [], [], []

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_for(self, event: str) -> None:
        while not any(e == event for e in self.events):
            self.receive()

    def receive(self) -> dict:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                raise ConnectionError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        message = json.loads(raw)
        method, params = message.get("method"), message.get("params", {})
        if method:
            self.events.append(method)
        if method == "Runtime.exceptionThrown":
            self.errors.append(params["exceptionDetails"].get("exception", {}).get("description", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])
        return message
