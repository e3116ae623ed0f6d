"""Two arms of issue 12's benchmark, seed by seed: which way of searching gives the better model, told from noise.

    python benchmarks/search_vs_baseline.py --threads 2 --clock cpu --first-seed 19 --seeds 2 --json default.json
    python benchmarks/search_vs_baseline.py --threads 2 --clock cpu --first-seed 19 --seeds 2 --carry-picks \\
        --json carry.json
    python benchmarks/arms.py default.json carry.json --json arms.json

The two JSON files are ``benchmarks/search_vs_baseline.py`` results run in one ``--work`` (so each seed's teacher and
baseline are the same run) that differ in how they search (``--carry-picks``, ``--equal-flops``, ``--pick-by``,
``--n-trials``...). Both arms' picks at a budget were retrained with one protocol against one baseline, so the
difference of their test top-1 (B minus A) is paired like the benchmark's own ``delta_top1``: per budget its mean,
std, standard error and t over the seeds both files hold, B's wins, ties and losses, the seeds where both arms
retrained the same plan (same params, MACs per image and test top-1: a retrain is deterministic), and each arm's
compute. Files whose baselines or retraining protocol differ are refused: their difference would not be like for like.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.common import print_table, write_json
from benchmarks.search_vs_baseline import mean_spread, paired_stats
from pruning.errors import UserError, run_cli

# What the retraining and the baseline depend on: arms that differ here are not paired.
PROTOCOL = ("flags", "steps", "ratio", "epochs_per_step", "final_epochs", "tolerance", "smoke")
# How an arm searches: what the comparison is about (printed, and written to the JSON).
SEARCH = ("pick_by", "n_trials", "sampler", "bn_calib_batches", "screen_subset", "screen_share", "fit_budgets",
          "equal_flops", "carry_picks", "space", "mean_ratio")
SAME_PLAN = ("search_params", "search_flops", "search_test_top1")


def load(path: str) -> dict:
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} ({exc}); give two JSON files written by "
                        f"benchmarks/search_vs_baseline.py --json") from None
    if not isinstance(result, dict) or "per_seed" not in result:
        raise UserError(f"{path} is not a search_vs_baseline result (no per_seed); give its --json output")
    return result


def check_protocol(a: dict, b: dict) -> None:
    differ = [key for key in PROTOCOL if a.get(key) != b.get(key)]
    if differ:
        raise UserError(f"the arms were retrained under different protocols ({', '.join(differ)} differ); run both "
                        f"with the same run flags, --steps, --ratio, --epochs-per-step and --final-epochs")


def paired_rows(a: dict, b: dict) -> list[dict]:
    """Per seed both files hold and budget: both arms' picks against their shared baseline, and B minus A."""
    seeds_b = {s["seed"]: s for s in b["per_seed"]}
    rows = []
    for seed_a in a["per_seed"]:
        seed_b = seeds_b.get(seed_a["seed"])
        if seed_b is None:
            continue
        for ra, rb in zip(seed_a["budgets"], seed_b["budgets"], strict=True):
            baseline = [(r["step"], r["budget_params"], r["baseline_test_top1"]) for r in (ra, rb)]
            if baseline[0] != baseline[1]:
                raise UserError(f"seed {seed_a['seed']}: the arms' baselines differ (step, params, test top-1: "
                                f"{baseline[0]} vs {baseline[1]}); run both arms with the same --work")
            rows.append({"seed": seed_a["seed"], "step": ra["step"], "baseline_test_top1": ra["baseline_test_top1"],
                         "a_test_top1": ra["search_test_top1"], "b_test_top1": rb["search_test_top1"],
                         "b_minus_a": round(rb["search_test_top1"] - ra["search_test_top1"], 4),
                         "same_plan": all(ra[k] == rb[k] for k in SAME_PLAN),
                         "a_flops_ratio": ra["flops_ratio"], "b_flops_ratio": rb["flops_ratio"],
                         "a_compute_ratio": ra["compute_ratio"], "b_compute_ratio": rb["compute_ratio"],
                         "a_macs_ratio": ra["macs_ratio"], "b_macs_ratio": rb["macs_ratio"]})
    if not rows:
        raise UserError("the two files hold no seed in common; run both arms with the same --first-seed and --seeds")
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per budget: B minus A over the seeds (``paired_stats``), B's wins/ties/losses, and each arm's means."""
    budgets = []
    for step in dict.fromkeys(r["step"] for r in rows):
        at = [r for r in rows if r["step"] == step]
        diff = paired_stats([r["b_minus_a"] for r in at])
        row = {"step": step, "seeds": len(at), "b_minus_a": diff["mean"], "b_minus_a_std": diff["std"],
               "b_minus_a_sem": diff["sem"], "b_minus_a_t": diff["t"],
               "b_wins": sum(r["b_minus_a"] > 0 for r in at), "ties": sum(r["b_minus_a"] == 0 for r in at),
               "b_losses": sum(r["b_minus_a"] < 0 for r in at), "same_plan": sum(r["same_plan"] for r in at)}
        for key in ("a_test_top1", "b_test_top1", "a_flops_ratio", "b_flops_ratio", "a_compute_ratio",
                    "b_compute_ratio", "a_macs_ratio", "b_macs_ratio"):
            row[key] = mean_spread([r[key] for r in at])["mean"]
        budgets.append(row)
    return budgets


def run(argv: list[str] | None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="arm A: a search_vs_baseline.py --json file")
    parser.add_argument("b", help="arm B: another, run in the same --work")
    parser.add_argument("--json", default="", help="also write the comparison to this JSON file")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    a, b = load(args.a), load(args.b)
    check_protocol(a, b)
    rows = paired_rows(a, b)
    budgets = summarize(rows)
    arms = {name: {"path": path, **{k: arm.get(k) for k in SEARCH}}
            for name, path, arm in (("a", args.a, a), ("b", args.b, b))}
    differ = {k: [a.get(k), b.get(k)] for k in SEARCH if a.get(k) != b.get(k)}
    print(f"A: {args.a}\nB: {args.b}\nthe arms differ in: " +
          (", ".join(f"{k} {va} -> {vb}" for k, (va, vb) in differ.items()) or "nothing of how they search"))
    print_table(rows, ["seed", "step", "baseline_test_top1", "a_test_top1", "b_test_top1", "b_minus_a", "same_plan",
                       "a_flops_ratio", "b_flops_ratio"], "per seed and budget (test top-1; flops_ratio: the pick's "
                                                          "MACs per image over the baseline model's)")
    print_table(budgets, ["step", "seeds", "b_minus_a", "b_minus_a_std", "b_minus_a_sem", "b_minus_a_t", "b_wins",
                          "ties", "b_losses", "same_plan", "a_compute_ratio", "b_compute_ratio", "a_macs_ratio",
                          "b_macs_ratio"], "B minus A per budget, paired over the seeds")
    result = {"arms": arms, "differ": differ, "protocol": {k: a.get(k) for k in PROTOCOL}, "budgets": budgets,
              "per_seed": rows}
    write_json(args.json, result)
    return result


def main(argv: list[str] | None = None) -> dict | None:
    return run_cli(lambda: run(argv), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
