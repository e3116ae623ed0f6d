"""Retrain chosen plans of a study with the full budget and report their test accuracy.

    python -m search.retrain --study-name r50 --trials front           # every trial on the Pareto front
    python -m search.retrain --study-name r50 --trials 12 40           # chosen trial numbers
    python -m search.retrain --preset demo --trials front              # the demo study
    python -m search.retrain --study-name r50 --trials front --final-epochs 100   # override any flag

Each plan is applied to the study's teacher in ``--prune-steps`` sub-steps with ``--epochs-per-step`` KD
epochs on the full training set after each, then ``--final-epochs``, with the trial's temperature and
alpha (and KD loss). The config is the study's recorded one, with the flags given here on top.
Rows go to ``<out>/<study_name>/retrain/pruning_logs.csv`` (the baseline's columns plus ``trial``);
rerunning the same command resumes.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from distill.config import build_parser, config_dict, make_config
from distill.pipeline import Session, load_teacher, make_row, open_session, retrain, summary_line
from distill.results import prepare_out_dir, read_csv, write_csv
from distill.trainer import prepare
from pruning.checkpoint import load_pruned, save_pruned
from pruning.errors import UserError, run_cli
from pruning.model import prunable_layers
from search.config import SEARCH_PRESETS, SearchConfig
from search.objective import prune_and_distill
from search.space import config_changes, layer_ratios
from search.storage import load_study

LOG = "pruning_logs.csv"


def parse(argv: list[str] | None) -> tuple[SearchConfig, list[str]]:
    """The study's recorded config with this command line's flags on top, and the ``--trials`` asked for."""
    parser = build_parser(SearchConfig, __doc__, SEARCH_PRESETS)
    parser.add_argument("--trials", nargs="+", default=["front"],
                        help="trial numbers, or 'front' for the study's Pareto front [default: front]")
    args = vars(parser.parse_args(argv))
    trials = args.pop("trials")
    preset, config_file = args.pop("preset", None), args.pop("config", None)
    located = make_config(SearchConfig, args, preset=preset, presets=SEARCH_PRESETS, config_file=config_file)
    recorded = load_study(located.storage, located.study_name).user_attrs.get("config", {})
    cfg = make_config(SearchConfig, {**recorded, **args, "storage": located.storage,
                                     "study_name": located.study_name})
    return cfg, trials


def select_trials(study, asked: list[str]) -> list[FrozenTrial]:
    """The COMPLETE trials named by number, plus the Pareto front for ``front``."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    chosen: dict[int, FrozenTrial] = {}
    for item in asked:
        if item == "front":
            chosen.update({t.number: t for t in study.best_trials})
            continue
        if not item.isdigit() or int(item) not in by_number:
            raise UserError(f"--trials {item}: no such trial in study {study.study_name!r} (it has trials 0.."
                            f"{len(by_number) - 1}); give trial numbers or 'front'")
        trial = by_number[int(item)]
        if trial.state != TrialState.COMPLETE:
            raise UserError(f"--trials {item}: trial {item} is {trial.state.name}; choose COMPLETE trials")
        chosen[trial.number] = trial
    if not chosen:
        raise UserError(f"study {study.study_name!r} has no feasible COMPLETE trial yet; run python -m search first")
    return [chosen[n] for n in sorted(chosen)]


def ckpt_path(out: Path, trial: int, step: int) -> Path:
    return out / "check_points" / f"trial_{trial}_step_{step:03d}.pt"


def run(cfg: SearchConfig, asked: list[str]) -> list[dict]:
    """Retrain (or resume retraining) the chosen trials; returns the rows of pruning_logs.csv."""
    study = load_study(cfg.storage, cfg.study_name)
    trials = select_trials(study, asked)
    out = prepare_out_dir(cfg.study_dir / "retrain", config_dict(cfg), cfg.force)
    sess = open_session(cfg)
    teacher_path = cfg.teacher or study.user_attrs.get("teacher", "")
    if not teacher_path:
        raise UserError(f"study {cfg.study_name!r} records no teacher; pass --teacher PATH")
    teacher = prepare(load_teacher(teacher_path, sess.data.num_classes), sess.rt)
    layers = prunable_layers(teacher)
    rows = read_csv(out / LOG)
    for trial in trials:
        sess.cfg = dataclasses.replace(cfg, teacher=teacher_path, **config_changes(trial.params))
        retrain_trial(sess, teacher, trial.number, layer_ratios(trial.params, layers, cfg.space), rows, out)
    print(f"{len(trials)} plan(s) retrained -> {out / LOG}")
    return rows


def retrain_trial(sess: Session, teacher, number: int, ratios: dict[str, float], rows: list[dict], out: Path) -> None:
    """Sub-steps 1..K (prune + --epochs-per-step KD), then step K+1 (--final-epochs); skips finished steps."""
    cfg = sess.cfg
    done = {r["step"] for r in rows if r["trial"] == number}
    steps = cfg.prune_steps
    partial = out / "check_points" / "partial.pt"

    def record(step: int, phase: str, model, metrics: dict, prune_s: float) -> None:
        row = {"trial": number, **make_row(sess, model, step, phase, metrics, prune_wall_s=prune_s)}
        save_pruned(ckpt_path(out, number, step), row.pop("_model"), {"trial": number, "step": step, "phase": phase})
        rows.append(row)
        write_csv(out / LOG, rows)
        partial.unlink(missing_ok=True)
        print(f"trial {number} {summary_line(row)}", flush=True)

    finished = max((s for s in done if s <= steps), default=0)
    if finished < steps:
        start = load_pruned(ckpt_path(out, number, finished))[0] if finished else None
        for step, model, metrics, prune_s in prune_and_distill(sess, teacher, ratios, steps, cfg.epochs_per_step,
                                                               f"trial_{number}", partial, start, finished + 1):
            record(step, "prune", model, metrics, prune_s)
    if cfg.final_epochs and steps + 1 not in done:
        model = load_pruned(ckpt_path(out, number, steps))[0]
        model, metrics = retrain(sess, model, teacher, cfg.final_epochs, cfg.lr, f"trial_{number}_final", partial,
                                 epoch_seed=1000 * (steps + 1), temperature=cfg.temperature, alpha=cfg.alpha)
        record(steps + 1, "final", model, metrics, 0.0)


def main(argv: list[str] | None = None) -> list[dict] | None:
    return run_cli(lambda: run(*parse(argv)), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
