"""The three operations every run is made of, shared by the baseline and the search:
get the teacher, retrain a (pruned) student with KD, and measure a model into a results row.

All of them resume: a stage that is interrupted restarts from its last finished epoch, read from a
``partial`` checkpoint (model + optimizer + epoch) that is written atomically after every epoch.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distill.config import PREVIOUS
from distill.data import Data, load_data, make_loader
from distill.teacher_cache import TeacherCache, load_or_build
from distill.trainer import Distiller, Runtime, evaluate, fit, make_runtime, prepare, summarize
from pruning.checkpoint import load_pruned, safe_load, model_from_checkpoint, save_pruned
from pruning.errors import UserError
from pruning.faults import fault_point
from pruning.measure import model_stats
from pruning.model import build_resnet50, channel_plan
from pruning.plan import check_ratio
from pruning.prune import prune


@dataclass
class Session:
    """What a run derives once from its config: device, data and loaders."""
    cfg: object
    rt: Runtime
    data: Data
    train_loader: object
    val_loader: object
    test_loader: object | None   # None when validation runs on the test set (val_fraction 0)
    teacher_cache: TeacherCache | None = None   # the last --teacher-cache used, reused while its key holds


def open_session(cfg, train_subset: int | None = None) -> Session:
    """Device, data and loaders of ``cfg`` (``train_subset`` overrides cfg.train_subset, for trials)."""
    torch.manual_seed(cfg.seed)
    rt = make_runtime(cfg.device, cfg.amp, cfg.progress)
    data = load_data(cfg.data, cfg.data_dir, cfg.download, cfg.seed, cfg.val_fraction,
                     cfg.train_subset if train_subset is None else train_subset, cfg.val_subset,
                     cfg.image_size, cfg.synthetic_classes, cfg.synthetic_train)
    loader = lambda split, train: make_loader(split, cfg.batch_size, rt.device, cfg.image_size, train,
                                              cfg.seed, cfg.workers)
    test = loader(data.test, False) if data.val is not data.test else None
    return Session(cfg, rt, data, loader(data.train, True), loader(data.val, False), test)


def load_ratios(path: str, layers: list[str], default: float) -> dict[str, float]:
    """Per-layer ratios: ``default`` everywhere, overridden by a JSON file ``{layer: ratio}``."""
    ratios = {name: default for name in layers}
    if path:
        try:
            given = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"--ratios {path}: cannot read it as a JSON object of layer: ratio ({exc})") from None
        unknown = sorted(set(given) - set(layers))
        if unknown:
            raise UserError(f"--ratios {path}: unknown layer name(s) {unknown[:3]}; prunable layers look "
                            f"like '{layers[0]}'")
        for name, ratio in given.items():
            check_ratio(name, ratio)
        ratios.update(given)
    return ratios


def load_teacher(path: str, num_classes: int) -> nn.Module:
    """A teacher checkpoint, checked against the data's class count."""
    teacher, _ = load_pruned(path)
    if teacher.fc.out_features != num_classes:
        raise UserError(f"--teacher {path} has {teacher.fc.out_features} classes but the data has "
                        f"{num_classes}; use a teacher trained on this dataset")
    return teacher


def retrain(sess: Session, student: nn.Module, teacher: nn.Module | None, epochs: int, lr: float,
            stage: str, partial: Path | None, epoch_seed: int, temperature: float, alpha: float,
            on_epoch=None, previous: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """KD (or CE when ``teacher`` is None) retraining of ``student``, resumable from ``partial``.

    The loss is the session config's ``--kd``/``--beta`` (issue 7); with a teacher, its ``--teachers``
    join it, weighted by ``--teacher-weights`` (``previous``: see ``stage_teachers``).

    If ``partial`` holds this ``stage``, its weights and optimizer replace the given student's and
    training continues after its epoch (``partial`` None: no mid-stage checkpoints, for search trials,
    which restart from scratch anyway). Returns the trained student and its training metrics.
    """
    cfg, rt = sess.cfg, sess.rt
    # ``history``: per-epoch metrics of the stage, kept in the partial checkpoint so that a resumed stage
    # reports the same train_loss/epochs as an uninterrupted one, even when it is killed after its last epoch.
    resume, adapters, history = None, {}, []
    if partial is not None and partial.exists():
        ckpt = safe_load(partial)
        if ckpt.get("meta", {}).get("stage") == stage:
            student = model_from_checkpoint(ckpt, partial)
            resume = {"optimizer": ckpt["optimizer"], "epoch": ckpt["meta"]["epoch"]}
            history = ckpt["meta"].get("history", [])
            adapters = ckpt.get("adapters", {})
    student = prepare(student, rt, cfg.image_size)
    teachers, weights = (None, None) if teacher is None else stage_teachers(sess, teacher, previous)
    distiller = Distiller(student, teachers, temperature, alpha, cfg.kd, cfg.beta, weights)
    if adapters:
        distiller.adapters.load_state_dict(adapters)  # hint adapters resume with the student (issue 7)
    distiller.cache = teacher_cache_for(sess, distiller)
    sess.train_loader.recorded_views = None if distiller.cache is None else distiller.cache.views
    # Not with feature KD: its per-forward hooks (distill.features.capture) are not seen by a compiled graph.
    if cfg.compile and rt.device.type == "cuda" and distiller.feature is None:
        distiller.student = torch.compile(student)  # checkpoints keep saving the uncompiled ``student``

    def checkpoint(epoch: int, metrics: dict, optimizer) -> None:
        history.append(metrics)
        if partial is not None:
            save_pruned(partial, student, {"stage": stage, "epoch": epoch, "history": history},
                        optimizer=optimizer.state_dict(), adapters=distiller.adapters.state_dict())
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        fault_point("teacher_epoch_end" if stage == "teacher" else "epoch_end")

    fit(distiller, sess.train_loader, epochs, lr, cfg.weight_decay, rt, resume=resume, epoch_seed=epoch_seed,
        desc=stage, on_epoch=checkpoint)
    return student, summarize(history)


def stage_teachers(sess: Session, teacher: nn.Module, previous: nn.Module | None
                   ) -> tuple[list[nn.Module], list[float] | None]:
    """The run's teacher and the ``--teachers`` of one stage, with their ``--teacher-weights`` (None = equal).

    ``previous`` is the model before this stage's pruning, for a ``--teachers previous`` entry. That entry
    and its weight are left out where there is none (the closing epochs prune nothing) and where it is as
    wide as the teacher (the first pruning step, where it is the teacher: twice its cost for nothing).
    """
    cfg = sess.cfg
    teachers, weights = [teacher], list(cfg.teacher_weights[:1])
    if previous is not None and channel_plan(previous) == channel_plan(teacher):
        previous = None
    for i, entry in enumerate(cfg.teachers):
        if entry == PREVIOUS and previous is None:
            continue
        model = previous if entry == PREVIOUS else load_teacher(entry, sess.data.num_classes)
        teachers.append(prepare(model, sess.rt, cfg.image_size))
        weights += cfg.teacher_weights[i + 1:i + 2]
    return teachers, weights or None


def teacher_cache_for(sess: Session, distiller: Distiller) -> TeacherCache | None:
    """``--teacher-cache K``: the teacher's recorded soft labels, when a lone teacher's logits are all the
    loss needs (feature losses and extra teachers still run the teachers)."""
    if distiller.feature is not None or len(distiller.teachers) != 1 or distiller.alpha == 0:
        return None
    return load_teacher_cache(sess, distiller.teacher)


def load_teacher_cache(sess: Session, teacher: nn.Module) -> TeacherCache | None:
    """``teacher``'s cache on the session's training data, loaded or built (None without --teacher-cache).
    Stored beside ``--teacher``, else beside the run's own teacher checkpoint (check_points/step_000.pt)."""
    cfg = sess.cfg
    if not cfg.teacher_cache:
        return None
    directory = Path(cfg.teacher).parent if cfg.teacher else Path(cfg.out) / "check_points"
    sess.teacher_cache = load_or_build(teacher, sess.train_loader, cfg.teacher_cache, sess.rt, directory,
                                       sess.teacher_cache)
    return sess.teacher_cache


def measure(sess: Session, model: nn.Module) -> dict:
    """The size and accuracy columns of a results row (accuracies in percent)."""
    start = time.perf_counter()
    row = model_stats(model, sess.cfg.image_size)
    val = evaluate(model, sess.val_loader, sess.rt, "val")
    row.update({"val_top1": val["top1"], "val_top5": val["top5"], "val_loss": val["loss"]})
    if sess.test_loader is not None:
        test = evaluate(model, sess.test_loader, sess.rt, "test")
        row.update({"test_top1": test["top1"], "test_top5": test["top5"]})
    row["eval_wall_s"] = time.perf_counter() - start
    return row


def prune_step(model: nn.Module, ratios: dict[str, float], backend: str, round_to: int,
               image_size: int) -> tuple[nn.Module, float]:
    """Prune a CPU copy of ``model`` (the input stays untouched); returns the new model and seconds."""
    start = time.perf_counter()
    cpu = copy.deepcopy(model).cpu().float().to(memory_format=torch.contiguous_format)
    # The copy is a new student: trainable even when ``model`` is a teacher the Distiller froze in place
    # (Torch-Pruning's DepGraph also needs requires_grad to trace it).
    cpu.requires_grad_(True)
    # Spatial size does not matter to the dependency analysis; small keeps NNI's trace cheap.
    example = torch.zeros(1, 3, min(image_size, 64), min(image_size, 64))
    pruned = prune(cpu, ratios, example, backend, round_to)
    fault_point("prune_step")
    return pruned, time.perf_counter() - start


def channel_columns(model: nn.Module) -> dict[str, int]:
    """Per-layer channel counts as results columns ``ch/<layer>``."""
    return {f"ch/{name}": c for name, c in channel_plan(model).items()}


def new_model(cfg, num_classes: int) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return build_resnet50(num_classes, cfg.weights)


def make_row(sess: Session, model: nn.Module, step: int, phase: str, metrics: dict,
             prune_wall_s: float) -> dict:
    """One pruning_logs.csv row; ``_model`` carries the model to the caller, which saves it first."""
    row = {"step": step, "phase": phase, **measure(sess, model)}
    row.update({k: metrics[k] for k in ("train_loss", "train_ce", "train_kd", "train_top1") if k in metrics})
    row["epochs"] = metrics.get("epochs", 0)
    row["train_wall_s"] = metrics.get("wall_s", 0.0)
    row["prune_wall_s"] = prune_wall_s
    row = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
    row.update(channel_columns(model))
    row["_model"] = model
    return row


def summary_line(row: dict) -> str:
    return (f"step {row['step']:>2} ({row['phase']}): params {row['params']:,} | size {row['size_mb']:.2f} MB | "
            f"val top-1 {row['val_top1']:.2f}% | train {row['train_wall_s']:.0f}s, "
            f"prune {row['prune_wall_s']:.1f}s")
