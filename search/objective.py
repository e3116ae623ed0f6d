"""One trial: sample a plan and KD settings, prune a copy of the teacher to the plan in ``--prune-steps``
sub-steps with KD after each, and measure it. Objectives: held-out validation top-1 (maximise) and the
cost (minimise); the rest of the measurements become trial user attrs.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import optuna
import torch
from torch import nn

from distill.pipeline import (Session, load_teacher, load_teacher_cache, make_row, new_model, open_session,
                              prune_step, retrain)
from distill.trainer import prepare
from pruning.checkpoint import save_pruned
from pruning.measure import latency_ms
from pruning.errors import UserError
from pruning.model import channel_plan, prunable_layers
from pruning.plan import target_plan
from search.config import SearchConfig
from search.space import substep_ratios, suggest
from search.storage import file_lock

# A worker stops after this many failed trials in a row: the cause is then the setup, not a plan.
MAX_CONSECUTIVE_FAILS = 5


def lock_path(cfg: SearchConfig) -> Path:
    return cfg.study_dir / ".lock"


def trial_checkpoint(cfg: SearchConfig, number: int) -> Path:
    return cfg.study_dir / "trials" / f"trial_{number}.pt"


def prepare_teacher(cfg: SearchConfig) -> Path:
    """The teacher every trial starts from: ``--teacher``, or ``<out>/<study>/teacher.pt`` trained once.

    Training uses the baseline's teacher flags and resumes from its partial checkpoint; a file lock
    makes concurrent workers (or machines sharing the directory) wait for one training instead of
    each training their own.
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
            teacher, _ = retrain(sess, new_model(cfg, sess.data.num_classes), None, cfg.teacher_epochs,
                                 cfg.teacher_lr, "teacher", partial, epoch_seed=0,
                                 temperature=cfg.temperature, alpha=0.0)
            save_pruned(path, teacher, {"phase": "teacher", "epochs": cfg.teacher_epochs})
            partial.unlink(missing_ok=True)
    return path


def trial_train_subset(cfg: SearchConfig) -> int:
    """Training images of a trial: --trial-subset, within the run's --train-subset (0 = no limit)."""
    limits = [n for n in (cfg.trial_subset, cfg.train_subset) if n]
    return min(limits) if limits else 0


def prune_and_distill(sess: Session, teacher: nn.Module, ratios: dict[str, float], steps: int, epochs: int,
                      stage: str, partial: Path | None, start: nn.Module | None = None, first_step: int = 1):
    """Yield ``(step, model, metrics, prune_s)`` after each of ``steps`` prune + KD sub-steps.

    The final widths are exactly ``target_plan(teacher's widths, ratios)`` (see ``substep_ratios``).
    ``start``/``first_step`` resume after a finished sub-step (its model).
    """
    cfg = sess.cfg
    target = target_plan(channel_plan(teacher), ratios, cfg.round_to)
    model = teacher if start is None else start
    for step in range(first_step, steps + 1):
        step_ratios = substep_ratios(channel_plan(model), target, step, steps, ratios, cfg.round_to)
        pruned, prune_s = prune_step(model, step_ratios, cfg.backend, cfg.round_to, cfg.image_size)
        model, metrics = retrain(sess, pruned, teacher, epochs, cfg.lr, f"{stage}_step_{step:03d}", partial,
                                 epoch_seed=1000 * step, temperature=cfg.temperature, alpha=cfg.alpha,
                                 previous=model)
        yield step, model, metrics, prune_s


class Objective:
    """``study.optimize``'s callable for one worker: its data session and teacher are loaded once."""

    def __init__(self, cfg: SearchConfig, teacher_path: Path):
        # The resolved teacher path, so that what is stored beside the teacher (its logit cache) is found.
        self.cfg = dataclasses.replace(cfg, teacher=str(teacher_path))
        self.sess = open_session(self.cfg, train_subset=trial_train_subset(cfg))
        self.teacher = prepare(load_teacher(str(teacher_path), self.sess.data.num_classes), self.sess.rt)
        self.layers = prunable_layers(self.teacher)
        if not cfg.teachers and (cfg.kd == "logits" or cfg.search_kd):  # trials that may read the cache
            # Built once for the study, before any trial (so no trial's wall_s holds it), while the other
            # workers wait: they then load it instead of each building their own.
            with file_lock(lock_path(cfg)):
                load_teacher_cache(self.sess, self.teacher)
        self.failures = 0
        self.last_reason = ""

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        ratios, changes = suggest(trial, self.cfg, self.layers)
        # The session is reused across trials (data, loaders, caches); only its config changes.
        self.sess.cfg = dataclasses.replace(self.cfg, **changes)
        try:
            values = self.run(trial, self.sess, ratios)
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

    def run(self, trial: optuna.Trial, sess: Session, ratios: dict[str, float]) -> tuple[float, float]:
        cfg, start = sess.cfg, time.perf_counter()
        prune_s = train_s = 0.0
        epochs = 0
        # No partial checkpoints: a trial whose worker dies is retried from scratch (search.storage).
        for _, model, metrics, step_prune_s in prune_and_distill(
                sess, self.teacher, ratios, cfg.prune_steps, cfg.trial_epochs, f"trial_{trial.number}", None):
            prune_s, train_s = prune_s + step_prune_s, train_s + metrics["wall_s"]
            epochs += metrics["epochs"]
        totals = {**metrics, "wall_s": train_s, "epochs": epochs}  # over all sub-steps
        row = make_row(sess, model, cfg.prune_steps, "trial", totals, prune_wall_s=prune_s)
        model = row.pop("_model")
        if cfg.objective_cost == "latency":
            batch = torch.zeros(1, 3, cfg.image_size, cfg.image_size, device=sess.rt.device)
            with sess.rt.autocast():
                row["latency_ms"] = round(latency_ms(model, batch), 4)
        checkpoint = ""
        if cfg.keep_checkpoints != "none":
            checkpoint = str(trial_checkpoint(cfg, trial.number))
            save_pruned(checkpoint, model, {"study": cfg.study_name, "trial": trial.number, "params": trial.params})
        row.update({"checkpoint": checkpoint, "wall_s": round(time.perf_counter() - start, 4)})
        for key, value in row.items():
            if key not in ("step", "phase"):
                trial.set_user_attr(key, value)
        for name, budget in (("params", cfg.max_params), ("flops", cfg.max_flops)):
            if budget:
                trial.set_constraint(name, row[name] - budget)  # <= 0: feasible
        print(f"trial {trial.number}: params {row['params']:,} | flops {row['flops']:,} | val top-1 "
              f"{row['val_top1']:.2f}% | test top-1 {row.get('test_top1', float('nan')):.2f}% | T {cfg.temperature:.2f}"
              f" alpha {cfg.alpha:.2f} | {row['wall_s']:.0f}s", flush=True)
        return row["val_top1"], row[cfg.cost_name]
