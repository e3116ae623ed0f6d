"""One prune-and-distill engine for the baseline, a search trial and a retrain (issue 11, point 7).

A run is a schedule computed up front: a list of ``Step``s, each pruning the model to exact widths
(``pruning.plan`` arithmetic; ``pruning.prune`` asserts the backend hit them) and retraining it with KD.
The baseline is ``steps`` uniform plans; a trial or a retrain is a searched plan reached in ``K``
sub-steps; both may end with closing epochs that prune nothing. ``run_schedule`` executes any of them,
with one resume rule kept by ``RunStore`` (or none, for screening trials, which restart from scratch).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from distill.pipeline import Session, make_row, prune_step, retrain, stage_checkpoint, summary_line
from distill.results import read_csv, write_csv
from distill.trainer import prepare, recalibrate_bn
from pruning.checkpoint import load_pruned, save_pruned
from pruning.measure import count_params
from pruning.model import build_from_plan, channel_plan
from pruning.plan import exact_ratios, substep_plans, target_plan, uniform_plans

MAX_MATCHED_STEPS = 100  # ratio 0.1: 0.9^100 of the channels, far past any plan the search can sample


@dataclass(frozen=True)
class Step:
    step: int                       # 1-based; step 0 is the teacher
    phase: str                      # "prune", or "final" for the closing epochs
    widths: dict[str, int] | None   # the plan after this step's pruning; None: prunes nothing
    epochs: int


def uniform_schedule(dense: dict[str, int], ratios: dict[str, float], steps: int, epochs_per_step: int,
                     final_epochs: int, round_to: int = 1) -> list[Step]:
    """The seed's schedule: ``steps`` x (prune ``ratios`` of the current widths + KD), closing epochs."""
    plans = uniform_plans(dense, ratios, steps, round_to)
    return with_final([Step(k, "prune", w, epochs_per_step) for k, w in enumerate(plans, 1)], final_epochs)


def plan_schedule(dense: dict[str, int], target: dict[str, int], steps: int, epochs_per_step: int,
                  final_epochs: int = 0, round_to: int = 1) -> list[Step]:
    """A searched plan reached in ``steps`` sub-steps of KD (``pruning.plan.substep_plans``), closing epochs."""
    plans = substep_plans(dense, target, steps, round_to)
    return with_final([Step(k, "prune", w, epochs_per_step) for k, w in enumerate(plans, 1)], final_epochs)


def matching_steps(dense: dict[str, int], target: dict[str, int], ratios: dict[str, float], round_to: int = 1
                   ) -> int:
    """How many baseline steps (``ratios`` per layer per step) reach the size closest to ``target``'s:
    a searched plan is retrained over as many prune steps as the baseline takes to shrink that far."""
    goal = plan_params(target)
    widths, previous, k = dense, plan_params(dense), 0
    while True:
        widths, k = target_plan(widths, ratios, round_to), k + 1
        size = plan_params(widths)
        if size <= goal or size == previous or k == MAX_MATCHED_STEPS:
            return max(1, k - 1) if previous - goal < goal - size else k
        previous = size


def plan_params(plan: dict[str, int]) -> int:
    """Parameters of the ResNet50 with these widths (built on the meta device: no memory, milliseconds)."""
    with torch.device("meta"):
        return count_params(build_from_plan(2, plan))


def with_final(schedule: list[Step], final_epochs: int) -> list[Step]:
    return schedule + ([Step(len(schedule) + 1, "final", None, final_epochs)] if final_epochs else [])


@dataclass(frozen=True)
class RunStore:
    """A run directory's files and its one resume rule: a step is done when it has a row and a checkpoint."""
    root: Path

    @property
    def log(self) -> Path:
        return self.root / "pruning_logs.csv"

    @property
    def partial(self) -> Path:
        """Mid-step state (model, optimizer, epoch), rewritten after every epoch."""
        return self.root / "check_points" / "partial.pt"

    def checkpoint(self, step: int) -> Path:
        return self.root / "check_points" / f"step_{step:03d}.pt"

    def rows(self) -> list[dict]:
        # A row without its checkpoint (a damaged one the user deleted, issue 6) is redone.
        return [r for r in read_csv(self.log) if self.checkpoint(int(r["step"])).is_file()]

    def commit(self, rows: list[dict], row: dict, model: nn.Module, meta: dict | None = None,
               **extra) -> list[dict]:
        """Save the step's checkpoint, then its row, then drop the partial state: always in this order."""
        save_pruned(self.checkpoint(row["step"]), model, {"step": row["step"], "phase": row["phase"], **(meta or {})},
                    **extra)
        rows = sorted([r for r in rows if r["step"] != row["step"]] + [row], key=lambda r: int(r["step"]))
        write_csv(self.log, rows)
        self.partial.unlink(missing_ok=True)
        return rows


def run_schedule(sess: Session, cfg, teacher: nn.Module, schedule: list[Step], store: RunStore | None,
                 start: nn.Module | None = None, stage_prefix: str = "", tb=None, label: str = "",
                 test: bool = True) -> tuple[nn.Module, list[dict]]:
    """Run the steps of ``schedule`` not yet done in ``store``; returns the last model and all rows.

    ``start`` is the model before step 1 (default: the teacher). With a ``store``, each step is measured,
    saved and resumable mid-step; without one (screening trials) only the last step is measured, and the
    rows of the others carry their training columns alone. ``test`` False: no test-set columns (a search
    trial, scored on its held-out split; ``distill.pipeline.measure``).
    """
    rows = store.rows() if store is not None else []
    done = {int(r["step"]) for r in rows}
    model, at = (start if start is not None else teacher), 0
    todo = [s for s in schedule if s.step not in done]
    for s in tqdm(todo, desc=label or "pruning steps", disable=not sess.rt.progress or len(todo) < 2):
        if at != s.step - 1:  # resuming: the step before this one is on disk
            model = load_pruned(store.checkpoint(s.step - 1))[0]
        measured = store is not None or s is schedule[-1]
        model, row = run_step(sess, cfg, teacher, model, s, store, stage_prefix, tb, measured, test)
        at = s.step
        if store is not None:
            rows = store.commit(rows, row, model)
        else:
            rows.append(row)
        if measured:
            tqdm.write(f"{label + ' ' if label else ''}{summary_line(row)}")
    if schedule and store is not None and at != schedule[-1].step:  # the last step was done before: its model
        model = load_pruned(store.checkpoint(schedule[-1].step))[0]
    return model, rows


def run_step(sess: Session, cfg, teacher: nn.Module, previous: nn.Module, s: Step, store: RunStore | None,
             stage_prefix: str, tb, measured: bool, test: bool) -> tuple[nn.Module, dict]:
    """Prune ``previous`` to ``s.widths`` (if any), recalibrate BatchNorm (``--bn-calib-batches``), retrain."""
    # Never train the teacher itself (closing epochs right after step 0, with --steps 0).
    student, prune_s = (copy.deepcopy(previous) if previous is teacher else previous), 0.0
    stage = f"{stage_prefix}step_{s.step:03d}"
    # A step killed mid-training resumes from its partial checkpoint, which holds the pruned student and
    # the seconds its pruning took (read once, here, and handed to ``retrain``).
    resume = None if store is None else stage_checkpoint(store.partial, stage)
    if resume is not None:
        prune_s = resume["meta"].get("prune_wall_s", 0.0)
    elif s.widths is not None:
        student, prune_s = prune_step(previous, exact_ratios(channel_plan(previous), s.widths), cfg.backend,
                                      cfg.round_to, cfg.image_size)
        if cfg.bn_calib_batches:  # counted in prune_wall_s: part of what it costs to get a scorable plan
            start = time.perf_counter()
            student = recalibrate_bn(prepare(student, sess.rt, cfg.image_size), sess.train_loader,
                                     cfg.bn_calib_batches, sess.rt, epoch_seed=1000 * s.step)
            prune_s += time.perf_counter() - start
    student, metrics = retrain(sess, cfg, student, teacher, s.epochs, cfg.lr, stage,
                               None if store is None else store.partial, epoch_seed=1000 * s.step,
                               on_epoch=None if tb is None else tb.epoch_logger(stage),
                               previous=None if s.widths is None else previous, resume_from=resume,
                               meta={"prune_wall_s": prune_s})
    row = make_row(sess, student, s.step, s.phase, metrics, prune_s, measured, test)
    if tb is not None and measured:
        tb.log_row(row)
    return row.pop("_model"), row


def totals(rows: list[dict]) -> dict:
    """Epochs and seconds of a trial's sub-steps, summed (the last row holds its measurements)."""
    return {"epochs": sum(r["epochs"] for r in rows), "train_wall_s": sum(r["train_wall_s"] for r in rows),
            "prune_wall_s": sum(r["prune_wall_s"] for r in rows)}
