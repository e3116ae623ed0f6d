"""One trial: sample a plan and KD settings, prune a copy of the teacher to the plan in ``--prune-steps``
sub-steps with KD after each (the baseline's engine, ``distill.engine``), and measure it. Objectives:
held-out validation top-1 (maximise) and the cost (minimise); the rest of the measurements become trial
user attrs.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError

from distill.engine import plan_schedule, run_schedule, totals
from distill.pipeline import (check_teacher_data, load_teacher, load_teacher_cache, open_session, provenance,
                              train_teacher)
from distill.trainer import prepare
from pruning.checkpoint import save_pruned
from pruning.errors import UserError
from pruning.measure import measure_latency
from pruning.model import channel_plan, prunable_layers
from pruning.plan import target_plan
from search.config import SearchConfig
from search.space import PlanSize, suggest
from search.storage import file_lock

# A worker stops after this many failed trials in a row: the cause is then the setup, not a plan.
MAX_CONSECUTIVE_FAILS = 5


def lock_path(cfg: SearchConfig) -> Path:
    return cfg.study_dir / ".lock"


def trial_checkpoint(cfg: SearchConfig, number: int) -> Path:
    return cfg.study_dir / "trials" / f"trial_{number}.pt"


def prepare_teacher(cfg: SearchConfig) -> Path:
    """The teacher every trial starts from: ``--teacher``, or ``<out>/<study>/teacher.pt`` trained once.

    Training uses the baseline's teacher flags on the study's training split (never its validation
    split, which the checkpoint records) and resumes from its partial checkpoint; a file lock makes
    concurrent workers (or machines sharing the directory) wait for one training instead of each
    training their own.
    """
    if cfg.teacher:
        if not Path(cfg.teacher).is_file():  # now, not in every worker after the data is loaded
            raise UserError(f"--teacher {cfg.teacher}: no such file; give a teacher checkpoint of this toolkit "
                            f"or leave --teacher out to train one for the study")
        return Path(cfg.teacher)
    path = cfg.study_dir / "teacher.pt"
    with file_lock(lock_path(cfg)):
        if not path.exists():
            sess = open_session(cfg)
            partial = cfg.study_dir / "check_points" / "teacher_partial.pt"
            print(f"training the teacher once for the study ({cfg.teacher_epochs} epochs) -> {path}", flush=True)
            teacher, _ = train_teacher(sess, cfg, partial)
            recipe, index = provenance(cfg, sess.data)
            save_pruned(path, teacher, {"phase": "teacher", "trained_on": recipe}, train_index=index)
            partial.unlink(missing_ok=True)
    return path


def trial_train_subset(cfg: SearchConfig) -> int:
    """Training images of a trial: --trial-subset, within the run's --train-subset (0 = no limit)."""
    limits = [n for n in (cfg.trial_subset, cfg.train_subset) if n]
    return min(limits) if limits else 0


class Objective:
    """The trial function of one worker (``search.worker.run_trial``): its data session and teacher are
    loaded once, and each trial runs with its own config (``dataclasses.replace``), never changing them."""

    def __init__(self, cfg: SearchConfig, teacher_path: Path):
        # The resolved teacher path, so that what is stored beside the teacher (its logit cache) is found.
        self.cfg = dataclasses.replace(cfg, teacher=str(teacher_path))
        self.sess = open_session(self.cfg, train_subset=trial_train_subset(cfg))
        # -1: forced without a record; > 0: forced with that many validation images seen (a trial user attr).
        self.teacher_overlap = check_teacher_data(teacher_path, self.cfg, self.sess.data)
        self.teacher = prepare(load_teacher(str(teacher_path), self.sess.data.num_classes), self.sess.rt)
        # a fit's counts (a forward pass of the teacher) only for the studies that fit plans to a budget
        self.size = PlanSize.of(self.teacher, cfg.image_size) if cfg.fitted else None
        self.dense = channel_plan(self.teacher)
        self.layers = prunable_layers(self.teacher)
        # Trials that may read the cache (KD epochs, logits, one teacher).
        if cfg.trial_epochs and not cfg.teachers and (cfg.kd in ("logits", "dkd") or cfg.search_kd):
            # Built once for the study, before any trial (so no trial's wall_s holds it), while the other
            # workers wait: they then load it instead of each building their own.
            with file_lock(lock_path(cfg)):
                load_teacher_cache(self.sess, self.cfg, self.teacher)
        self.failures = 0
        self.last_reason = ""

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        try:  # a plan that cannot meet --target-params fails as a trial, with its reason
            ratios, changes = suggest(trial, self.cfg, self.layers, self.size)
            values = self.run(trial, dataclasses.replace(self.cfg, **changes), ratios)
        except UpdateFinishedTrialError:  # another worker failed it as stale: not this plan's fault
            raise
        except Exception as exc:  # NonFiniteLoss, OOM, a UserError in the plan...: FAIL with the reason
            self.failures += 1
            self.last_reason = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
            trial.set_user_attr("fail_reason", self.last_reason)
            print(f"trial {trial.number} failed: {self.last_reason}", flush=True)
            if self.sess.rt.device.type == "cuda":
                torch.cuda.empty_cache()
            raise
        self.failures = 0
        return values

    def run(self, trial: optuna.Trial, cfg: SearchConfig, ratios: dict[str, float]) -> tuple[float, float]:
        start = time.perf_counter()
        target = target_plan(self.dense, ratios, cfg.round_to)
        schedule = plan_schedule(self.dense, target, cfg.prune_steps, cfg.trial_epochs, 0, cfg.round_to)
        # No store: no partial checkpoints; a trial whose worker dies is retried from scratch (search.storage).
        model, rows = run_schedule(self.sess, cfg, self.teacher, schedule, None, stage_prefix=f"trial_{trial.number}_",
                                   label=f"trial {trial.number}", test=False)
        row = {**rows[-1], **totals(rows)}
        if cfg.objective_cost == "latency":
            batch = torch.zeros(1, 3, cfg.image_size, cfg.image_size, device=self.sess.rt.device)
            with self.sess.rt.autocast():
                row.update(measure_latency(model, batch))
        checkpoint = ""
        if cfg.keep_checkpoints != "none":
            checkpoint = str(trial_checkpoint(cfg, trial.number))
            save_pruned(checkpoint, model, {"study": cfg.study_name, "trial": trial.number, "params": trial.params})
        row.update({"checkpoint": checkpoint, "wall_s": round(time.perf_counter() - start, 4)})
        if self.teacher_overlap:  # --force used a teacher that saw validation images (-1: unknown how many)
            row["teacher_val_overlap"] = self.teacher_overlap
        record(trial, row, cfg)
        print(f"trial {trial.number}: params {row['params']:,} | flops {row['flops']:,} | val top-1 "
              f"{row['val_top1']:.2f}% | T {cfg.temperature:.2f}"
              f" alpha {cfg.alpha:.2f} | {row['wall_s']:.0f}s", flush=True)
        return row["val_top1"], row[cfg.cost_name]


def record(trial: optuna.Trial, row: dict, cfg: SearchConfig) -> None:
    """The row as user attrs (seen in optuna-dashboard) and the budgets as Optuna constraints."""
    for key, value in row.items():
        if key not in ("step", "phase"):
            trial.set_user_attr(key, value)
    for name, budget in (("params", cfg.max_params), ("flops", cfg.max_flops)):
        if budget:
            trial.set_constraint(name, row[name] - budget)  # <= 0: feasible
