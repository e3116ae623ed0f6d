"""Search per-layer pruning ratios, KD temperature and alpha against an accuracy/cost Pareto front.

    python -m search --preset demo                               # no download: synthetic data, minutes on a CPU
    python -m search --preset quick --n-trials 40                # CIFAR-100 at 32 px
    python -m search --study-name r50 --n-trials 100             # the full protocol (224 px), resumable
    python -m search --study-name r50 --n-trials 100 --n-workers 4   # 4 processes, one per GPU
    python -m search --space stage --sampler nsga2 --objective-cost flops --max-flops 1000000000
    python -m search --trial-epochs 0 --bn-calib-batches 5 --mean-ratio   # EagleEye screens, plans of every size
    python -m search --trial-epochs 0 --bn-calib-batches 5 --target-params 10000000 --space stage  # at 10 M params
    python -m search --study-name r50-7m --target-params 7000000 --space stage --warm-from r50-10m  # its pick first
    optuna-dashboard studies.db                                  # browse the study (journal file)
    python -m search.retrain --study-name r50 --trials front     # retrain the front with the full budget
    python -m search.retrain --study-name r50 --trials lowest-loss   # at one budget: the plan of lowest val_loss
    python -m search --help                                      # every flag

Rerunning the same command resumes: the study (``--storage``, default the journal file studies.db)
grows to ``--n-trials`` COMPLETE trials; nothing finished is redone. Outputs go to
``<out>/<study_name>/``: config.json, teacher.pt (trained once when --teacher is not given),
trials/trial_N.pt (pruned checkpoints, see --keep-checkpoints).

Many machines, one study: give every machine the same ``--storage postgresql://user:pass@host/db``
(or a journal file on a shared filesystem), the same flags, and either a shared ``--out`` or the same
``--teacher PATH``; then run the same command on each (``--n-workers`` per machine).
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage

from distill.config import config_diff, config_dict, parse_config
from distill.results import prepare_out_dir, versions
from pruning.checkpoint import load_pruned
from pruning.errors import UserError, run_cli
from pruning.model import build_resnet50, channel_plan
from search.config import SEARCH_PRESETS, SearchConfig
from search.front import lowest_loss
from search.objective import lock_path, prepare_teacher
from search.space import (MEAN, TILT, PlanSize, baseline_plans, budget_steps, check_target, config_changes,
                          kd_param_names, plan_param_names, plan_widths)
from search.storage import file_lock, load_study, open_storage, redact
from search.worker import spawn_workers, work


def run(cfg: SearchConfig) -> optuna.Study:
    """Run (or resume) the study ``cfg`` describes until it has ``n_trials`` COMPLETE trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial prints its own summary line
    storage = open_storage(cfg.storage)  # first: a wrong --storage fails in seconds, not after the teacher
    dense = channel_plan(build_resnet50(2))  # the layers and widths a plan's params name (any class count)
    # before the teacher and the study: a --warm-from that cannot serve fails in seconds and leaves nothing behind
    warm = carried(cfg, load_study(cfg.storage, cfg.warm_from, "--warm-from"), list(dense)) if cfg.warm_from else None
    prepare_out_dir(cfg.study_dir, cfg)
    teacher = prepare_teacher(cfg)
    study = prepare_study(cfg, teacher, storage, dense, warm)
    if cfg.n_workers == 1:
        work(cfg, 0, teacher)
    else:
        spawn_workers(cfg, teacher)
    print_front(cfg, study)
    return study


def prepare_study(cfg: SearchConfig, teacher: Path, storage: BaseStorage, dense: dict[str, int],
                  warm: tuple[dict, int] | None) -> optuna.Study:
    """Create or reopen the study; refuse a different config; queue the baseline's uniform plans on the dense
    widths ``dense``, then ``warm`` (``carried``: the ``--warm-from`` study's pick and its trial number)."""
    with file_lock(lock_path(cfg)), warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        study = optuna.create_study(study_name=cfg.study_name, storage=storage, load_if_exists=True,
                                    directions=["maximize", "minimize"])
        if [d.name for d in study.directions] != ["MAXIMIZE", "MINIMIZE"]:
            raise UserError(f"study {cfg.study_name!r} in {redact(cfg.storage)} is not an accuracy/cost study; "
                            f"choose another --study-name")
        recorded = study.user_attrs.get("config")
        if recorded is not None and not cfg.force:
            diff = config_diff(recorded, cfg)
            if diff:
                shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:6])
                raise UserError(f"study {cfg.study_name!r} was run with a different config ({shown}); use another "
                                f"--study-name, or --force to continue it anyway")
        if cfg.fitted and any(name.startswith("share/") for t in study.trials for name in t.params):
            raise UserError(f"study {cfg.study_name!r} was screened with shares (share/<group>), before "
                            f"--target-params/--target-flops sampled tilts (tilt/<group>); use another --study-name")
        if recorded is None or cfg.force:
            study.set_metric_names(["accuracy", cfg.cost_name])
            study.set_user_attr("config", config_dict(cfg))
            study.set_user_attr("teacher", str(teacher))
            study.set_user_attr("versions", versions())
        size = teacher_size(teacher, cfg)
        plans = baseline_plans(cfg, dense, size)
        for params in plans:
            study.enqueue_trial(params, skip_if_exists=True)
        if warm and any(plan_widths(warm[0], cfg, dense, size) == plan_widths(p, cfg, dense, size) for p in plans):
            print(f"--warm-from {cfg.warm_from}: its pick (trial {warm[1]}) has the widths of the baseline's plan "
                  f"here, screened already: not queued again", flush=True)
        elif warm:  # after the baseline's plans: trial 0 stays the baseline's own plan
            study.enqueue_trial(warm[0], user_attrs={"warm_from": cfg.warm_from, "warm_trial": warm[1]},
                                skip_if_exists=True)
        expected = min(1, cfg.steps) if cfg.fitted else len(budget_steps(cfg.steps))
        if len(plans) < expected:
            print(f"{expected - len(plans)} of the baseline's plans are outside this space (beyond --max-ratio, "
                  f"--ratios differing within a --space {cfg.space} group, or with a --target-params/--target-flops "
                  f"fit widths that no tilts in [{TILT[0]:g}, {TILT[1]:g}] give exactly, such as a layer kept "
                  f"whole): not enqueued",
                  flush=True)
    return study


def carried(cfg: SearchConfig, source: optuna.Study, layers: list[str]) -> tuple[dict, int]:
    """``--warm-from``: the params of the earlier study's pick (``lowest_loss``) that this study samples, its
    plan's and, when this study tunes them, its KD settings; and the pick's trial number. Its plan must be of this
    study's kind: tilts fit any budget, per-group ratios are the same widths again."""
    pick = lowest_loss(source, f"--warm-from {cfg.warm_from}",
                       f"screen it first (python -m search --study-name {cfg.warm_from})")
    wanted, kd = plan_param_names(cfg, layers), config_changes(pick.params)
    plan = {name: value for name, value in pick.params.items() if name not in kd}
    if set(plan) != set(wanted):
        raise UserError(f"--warm-from {cfg.warm_from}: its pick (trial {pick.number}) has params "
                        f"{', '.join(sorted(plan))}, this study samples {', '.join(wanted[:3])}...; warm from a "
                        f"study of the same --space and sizing (--target-params/--target-flops, --mean-ratio)")
    over = [name for name, value in plan.items() if not cfg.fitted and name.startswith(("ratio/", MEAN))
            and value > cfg.max_ratio]
    if over:
        raise UserError(f"--warm-from {cfg.warm_from}: its pick (trial {pick.number}) has {over[0]} "
                        f"{plan[over[0]]:g}, beyond this study's --max-ratio {cfg.max_ratio:g}; raise --max-ratio")
    return {**plan, **{name: kd[name] for name in kd_param_names(cfg) if name in kd}}, pick.number


def teacher_size(teacher: Path, cfg: SearchConfig) -> PlanSize | None:
    """The teacher's widths, parameter and MAC counts, which --target-params and --target-flops need (None
    without them); a target no plan can meet is refused here, before any trial."""
    if not cfg.fitted:
        return None
    size = PlanSize.of(load_pruned(teacher)[0], cfg.image_size)
    check_target(cfg, size)
    return size


def print_front(cfg: SearchConfig, study: optuna.Study) -> None:
    """The Pareto front, cheapest first, and the commands that come next."""
    front = sorted(study.best_trials, key=lambda t: t.values[1])
    print(f"Pareto front of {cfg.study_name!r} ({len(front)} of {len(study.trials)} trials; accuracy on the "
          f"held-out split: trials never see the test set, the retrained models do):")
    for t in front:
        cost = t.values[1]
        shown = f"{cost:.3f}" if cfg.objective_cost == "latency" else f"{cost:,.0f}"
        print(f"  trial {t.number:>3}: {cfg.cost_name} {shown} | val top-1 {t.values[0]:.2f}% | "
              f"{t.user_attrs.get('checkpoint') or 'no checkpoint'}")
    storage = redact(cfg.storage)
    print(f"browse: optuna-dashboard {storage} | retrain: python -m search.retrain --study-name {cfg.study_name} "
          f"--storage {storage} --trials {'lowest-loss' if cfg.fitted else 'front'}")


def main(argv: list[str] | None = None) -> optuna.Study | None:
    return run_cli(lambda: run(parse_config(argv, SearchConfig, __doc__, SEARCH_PRESETS)), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
