"""Retrain chosen plans of a study with the baseline's protocol and report their test accuracy.

    python -m search.retrain --study-name r50 --trials front           # every trial on the Pareto front
    python -m search.retrain --study-name r50 --trials 12 40           # chosen trial numbers
    python -m search.retrain --study-name r50 --trials lowest-loss     # a --target-params (--target-flops) study's pick
    python -m search.retrain --preset demo --trials front              # the demo study
    python -m search.retrain --study-name r50 --trials 12 --final-epochs 0 --prune-steps 5   # override any flag

Like for like with ``baselines/iterative.py`` (issue 11): each plan starts from the study's teacher and
is reached in as many prune steps as the baseline (``--ratio``, or a ``--ratios`` file, per step) takes to
reach the plan's size (``--prune-steps N`` to choose), with ``--epochs-per-step`` KD epochs on the *whole*
training set after each, then ``--final-epochs`` (the baseline's model after step k < ``--steps`` had no
closing epochs: compare with it at ``--final-epochs 0``); accuracy is measured on the test set, as the
baseline does. The
study's recorded config gives every other flag (data, image size, lr, batch size, ``--train-subset``),
but the search's own screening choices do not carry over: no held-out split (``--val-fraction 0``), no
teacher-logit cache (``--teacher-cache 0``), no BatchNorm recalibration (``--bn-calib-batches 0``) and the
whole test set (``--val-subset 0``): the baseline's defaults, or its ``--preset``'s. The trial's
temperature, alpha and KD loss are kept. Flags given here override all of it.

Each plan is a run directory ``<out>/<study_name>/retrain/trial_<N>/`` in the baseline's layout
(pruning_logs.csv, check_points/step_<k>.pt); ``retrain/pruning_logs.csv`` gathers their rows with a
``trial`` column. Rerunning the same command resumes.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from distill.config import PRESETS, RunConfig, build_parser, make_config, opt
from distill.engine import RunStore, matching_steps, plan_schedule, run_schedule, uniform_schedule
from distill.pipeline import check_teacher_data, load_ratios, load_teacher, open_session
from distill.results import prepare_out_dir, write_csv
from distill.trainer import prepare
from pruning.errors import UserError, run_cli
from pruning.model import channel_plan, prunable_layers
from search.config import SEARCH_PRESETS, StudyFields
from search.front import lowest_loss
from search.space import config_changes
from search.storage import load_study

# The search's screening choices that a retrain resets to the baseline's (RunConfig's) defaults. val_subset
# too: it also cuts the test set, so a retrain inheriting a screen's --val-subset 300 was scored on 300 test
# images against the baseline's 750, and the very same widths "won" by +2 points (issue 12).
BASELINE_PROTOCOL = {"val_fraction": RunConfig.val_fraction, "teacher_cache": RunConfig.teacher_cache,
                     "bn_calib_batches": RunConfig.bn_calib_batches, "val_subset": RunConfig.val_subset}


@dataclass(frozen=True)
class RetrainConfig(RunConfig, StudyFields):
    trials: tuple[str, ...] = opt(("front",), "trial numbers, 'front' for the study's Pareto front, or "
                                              "'lowest-loss' for the trial of lowest held-out loss")
    prune_steps: int = opt(0, "prune steps to reach each plan (0 = as many as the baseline takes to reach its size)")
    out: str = opt("runs/search", "the study's output directory; plans are retrained in <out>/<study_name>/retrain/")


def parse(argv: list[str] | None) -> RetrainConfig:
    """The study's recorded config, the baseline protocol, then this command line's flags."""
    parser = build_parser(RetrainConfig, __doc__, SEARCH_PRESETS)
    args = vars(parser.parse_args(argv))
    preset, config_file = args.pop("preset", None), args.pop("config", None)
    fields = {f.name for f in dataclasses.fields(RetrainConfig)}
    presets = {name: {k: v for k, v in values.items() if k in fields} for name, values in SEARCH_PRESETS.items()}
    located = make_config(RetrainConfig, args, preset=preset, presets=presets, config_file=config_file)
    recorded = load_study(located.storage, located.study_name).user_attrs.get("config", {})
    inherited = {k: v for k, v in recorded.items() if k in fields and k not in ("force", "debug", "prune_steps")}
    # The baseline's protocol: its preset's values (--preset quick scores on 1,000 test images) or the defaults.
    protocol = {k: PRESETS.get(preset or "", {}).get(k, v) for k, v in BASELINE_PROTOCOL.items()}
    cfg = make_config(RetrainConfig, {**inherited, **protocol, **args, "storage": located.storage,
                                      "study_name": located.study_name})
    if recorded.get("val_subset", cfg.val_subset) != cfg.val_subset:
        print(f"retrain: test top-1 on {cfg.val_subset or 'all'} test images as the baseline, not on the screens' "
              f"--val-subset {recorded['val_subset']} (give --val-subset N if the baseline had one)", flush=True)
    return cfg


def select_trials(study, asked: tuple[str, ...]) -> list[FrozenTrial]:
    """The COMPLETE trials named by number, plus the Pareto front for ``front`` and the trial of lowest held-out
    loss for ``lowest-loss``: within one budget (``--target-params``, ``--target-flops``) the loss ranked
    retrained plans at least as well as top-1 (README: picking a plan by held-out loss)."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    chosen: dict[int, FrozenTrial] = {}
    for item in asked:
        if item == "front":
            chosen.update({t.number: t for t in study.best_trials})
            continue
        if item == "lowest-loss":
            best = lowest_loss(study, "--trials lowest-loss", "give trial numbers or 'front'")
            chosen[best.number] = best
            continue
        if not item.isdigit() or int(item) not in by_number:
            raise UserError(f"--trials {item}: no such trial in study {study.study_name!r} (it has trials 0.."
                            f"{len(by_number) - 1}); give trial numbers, 'front' or 'lowest-loss'")
        trial = by_number[int(item)]
        if trial.state != TrialState.COMPLETE:
            raise UserError(f"--trials {item}: trial {item} is {trial.state.name}; choose COMPLETE trials")
        chosen[trial.number] = trial
    if not chosen:
        raise UserError(f"study {study.study_name!r} has no feasible COMPLETE trial yet; run python -m search first")
    return [chosen[n] for n in sorted(chosen)]


def run(cfg: RetrainConfig) -> list[dict]:
    """Retrain (or resume retraining) the chosen trials; returns the rows of retrain/pruning_logs.csv."""
    study = load_study(cfg.storage, cfg.study_name)
    trials = select_trials(study, cfg.trials)
    out = prepare_out_dir(cfg.study_dir / "retrain", cfg)
    teacher_path = cfg.teacher or study.user_attrs.get("teacher", "")
    if not teacher_path:
        raise UserError(f"study {cfg.study_name!r} records no teacher; pass --teacher PATH")
    sess = open_session(cfg)
    check_teacher_data(teacher_path, cfg, sess.data)  # only matters with a --val-fraction of its own
    teacher = prepare(load_teacher(teacher_path, sess.data.num_classes), sess.rt)
    dense, layers = channel_plan(teacher), prunable_layers(teacher)
    ratios = load_ratios(cfg.ratios, layers, cfg.ratio)  # the baseline's per-step ratios
    for trial in trials:
        trial_cfg = dataclasses.replace(cfg, teacher=teacher_path, **config_changes(trial.params))
        target = screened_plan(trial, layers)
        steps = cfg.prune_steps or matching_steps(dense, target, ratios, cfg.round_to)
        schedule = retrain_schedule(dense, target, steps, ratios, cfg)
        run_schedule(sess, trial_cfg, teacher, schedule, RunStore(out / f"trial_{trial.number}"),
                     label=f"trial {trial.number}")
        rows = gather(out)
        write_csv(out / "pruning_logs.csv", rows)
    print(f"{len(trials)} plan(s) retrained with the baseline's protocol -> {out / 'pruning_logs.csv'}")
    return rows


def screened_plan(trial: FrozenTrial, layers: list[str]) -> dict[str, int]:
    """The widths the trial screened (its ``ch/<layer>`` records): the plan itself, however its params made it
    (per-layer ratios, ``--mean-ratio`` or a ``--target-params``/``--target-flops`` fit)."""
    missing = [layer for layer in layers if not isinstance(trial.user_attrs.get(f"ch/{layer}"), int)]
    if missing:
        raise UserError(f"trial {trial.number} records no width for {missing[0]} (user attr ch/{missing[0]}); "
                        f"retrain trials of a study this toolkit ran")
    return {layer: trial.user_attrs[f"ch/{layer}"] for layer in layers}


def retrain_schedule(dense: dict[str, int], target: dict[str, int], steps: int, ratios: dict[str, float],
                     cfg: RetrainConfig) -> list:
    """``steps`` prune steps to ``target`` then the closing epochs; the baseline's own k-step plan (enqueued in
    every study) goes through the baseline's very widths (its per-step ``ratios``), so that its retrain
    reproduces the baseline."""
    uniform = uniform_schedule(dense, ratios, steps, cfg.epochs_per_step, cfg.final_epochs, cfg.round_to)
    if uniform[steps - 1].widths == target:
        return uniform
    return plan_schedule(dense, target, steps, cfg.epochs_per_step, cfg.final_epochs, cfg.round_to)


def gather(out: Path) -> list[dict]:
    """The finished rows of every plan retrained in ``out`` (this command's and earlier ones'), with ``trial``."""
    runs = sorted((int(d.name[len("trial_"):]), d) for d in out.glob("trial_*") if d.name[len("trial_"):].isdigit())
    return [{"trial": number, **row} for number, d in runs for row in RunStore(d).rows()]


def main(argv: list[str] | None = None) -> list[dict] | None:
    return run_cli(lambda: run(parse(argv)), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
