"""The three operations every run is made of, shared by the baseline and the search:
get the teacher, retrain a (pruned) student with KD, and measure a model into a results row.

All of them resume: a stage that is interrupted restarts from its last finished epoch, read from a
``partial`` checkpoint (model + optimizer + epoch) that is written atomically after every epoch.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distill.config import PREVIOUS, read_json_object
from distill.data import Data, load_data, make_loader
from distill.teacher_cache import TeacherCache, load_or_build
from distill.trainer import Distiller, Runtime, evaluate, fit, make_runtime, prepare, summarize
from pruning.checkpoint import load_checkpoint, load_pruned, model_from_checkpoint, save_pruned
from pruning.errors import UserError
from pruning.faults import fault_point
from pruning.measure import model_stats
from pruning.model import build_resnet50, channel_plan
from pruning.plan import check_ratio
from pruning.prune import prune


@dataclass
class Session:
    """What a run derives once from its config: device, data and loaders. Shared by the trials of a
    search worker, so nothing here changes meaning between them; each trial passes its own config."""
    cfg: object                  # the config the session was opened with (data, device, image size)
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
                     cfg.image_size, cfg.synthetic_classes, cfg.synthetic_train,
                     synthetic_test=cfg.synthetic_test, augment=cfg.augment,
                     max_memory_gb=cfg.max_memory_gb, progress=cfg.progress)
    loader = lambda split, train: make_loader(split, cfg.batch_size, rt.device, cfg.image_size, train,
                                              cfg.seed, cfg.workers)
    test = loader(data.test, False) if data.val is not data.test else None
    return Session(cfg, rt, data, loader(data.train, True), loader(data.val, False), test)


def load_ratios(path: str, layers: list[str], default: float) -> dict[str, float]:
    """Per-layer ratios: ``default`` everywhere, overridden by a JSON file ``{layer: ratio}``."""
    ratios = {name: default for name in layers}
    if path:
        given = read_json_object(path, "--ratios", "a JSON object of layer: ratio")
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


def train_teacher(sess: Session, cfg, partial: Path | None, on_epoch=None) -> tuple[nn.Module, dict]:
    """Fine-tune a new ResNet50 with cross-entropy for ``--teacher-epochs`` (resumable from ``partial``)."""
    start = new_model(cfg, sess.data.num_classes)
    return retrain(sess, cfg, start, None, cfg.teacher_epochs, cfg.teacher_lr, "teacher", partial, epoch_seed=0,
                   on_epoch=on_epoch)


# The fields that name a dataset: a teacher trained on other data has seen none of this run's images.
DATA_IDENTITY = ("data", "synthetic_classes", "synthetic_train")


def provenance(cfg, data: Data) -> tuple[dict, torch.Tensor]:
    """What a teacher checkpoint records of its training data (issue 11): the recipe of its split, as
    meta, and the indices of the training images it saw, as a tensor (``train_index``)."""
    recipe = {k: getattr(cfg, k) for k in (*DATA_IDENTITY, "seed", "val_fraction", "train_subset",
                                            "teacher_epochs")}
    return recipe, data.train_index.to(torch.int32)


def teacher_provenance(path: str | Path) -> tuple[dict | None, torch.Tensor | None]:
    """The ``trained_on`` recipe and ``train_index`` a teacher checkpoint records (None, None if it does not)."""
    ckpt = load_checkpoint(path)
    recipe, index = ckpt.get("meta", {}).get("trained_on"), ckpt.get("train_index")
    if (recipe is not None and not isinstance(recipe, dict)) or (index is not None and not (
            isinstance(index, torch.Tensor) and index.dim() == 1 and not index.is_floating_point())):
        raise UserError(f"--teacher {path}: its record of the images it was trained on (trained_on, train_index) is "
                        f"damaged; train the teacher again")
    return recipe, index


def check_teacher_data(path: str | Path, cfg, data: Data) -> int:
    """How many of the run's held-out validation images the teacher at ``path`` trained on.

    A teacher that has memorised the validation images hands that to lightly pruned students, pulling a
    search's front toward little pruning (issue 11). Refused unless ``--force``; 0 when the run validates
    on the test set or the teacher was trained on other data (or not trained: ``teacher_epochs`` 0).
    """
    if not len(data.val_index):
        return 0
    recipe, index = teacher_provenance(path)
    fix = (f"let the study train its teacher (leave out --teacher), or train one without these images: "
           f"python baselines/iterative.py --data {cfg.data} --val-fraction {cfg.val_fraction} --seed {cfg.seed} "
           f"--steps 0 --final-epochs 0; --force uses it anyway (recorded)")
    if recipe is not None and (not recipe.get("teacher_epochs")
                               or any(recipe.get(k) != getattr(cfg, k) for k in DATA_IDENTITY)):
        return 0  # not fine-tuned here, or on other data
    if recipe is None or index is None:
        if cfg.force:
            return -1
        raise UserError(f"--teacher {path} does not record which images it was trained on, so it may have seen the "
                        f"held-out validation split; {fix}")
    overlap = int(torch.isin(data.val_index, index.long()).sum())
    if overlap and not cfg.force:
        raise UserError(f"--teacher {path} was trained on {overlap} of the {len(data.val_index)} held-out validation "
                        f"images (--val-fraction {recipe['val_fraction']} --seed {recipe['seed']}); {fix}")
    return overlap


def stage_checkpoint(partial: Path | None, stage: str) -> dict | None:
    """The mid-step checkpoint ``partial`` if it holds ``stage`` (a killed step resumes from it), else None."""
    if partial is None or not partial.exists():
        return None
    ckpt = load_checkpoint(partial)
    return ckpt if ckpt.get("meta", {}).get("stage") == stage else None


def retrain(sess: Session, cfg, student: nn.Module, teacher: nn.Module | None, epochs: int, lr: float,
            stage: str, partial: Path | None, epoch_seed: int, on_epoch=None,
            previous: nn.Module | None = None, resume_from: dict | None = None,
            meta: dict | None = None) -> tuple[nn.Module, dict]:
    """KD (or CE when ``teacher`` is None) retraining of ``student``, resumable from ``partial``.

    ``cfg`` is this run's (or this trial's) config: its ``--kd``, ``--temperature``, ``--alpha``, ``--beta``
    and ``--teachers`` (``previous``: see ``stage_teachers``); ``sess`` only supplies data and device, so
    trials sharing a session never change its meaning (issue 11).

    If ``partial`` holds this ``stage``, its weights and optimizer replace the given student's and
    training continues after its epoch (``partial`` None: no mid-stage checkpoints, for search trials,
    which restart from scratch anyway). ``resume_from``: that checkpoint, if the caller has read it already;
    ``meta``: more fields for every partial checkpoint's meta (the engine's prune seconds, which a resumed
    step reports). Returns the trained student and its training metrics.
    """
    rt = sess.rt
    # ``history``: per-epoch metrics of the stage, kept in the partial checkpoint so that a resumed stage
    # reports the same train_loss/epochs as an uninterrupted one, even when it is killed after its last epoch.
    resume, adapters, history = None, {}, []
    ckpt = resume_from if resume_from is not None else stage_checkpoint(partial, stage)
    if ckpt is not None:
        if not isinstance(ckpt["meta"].get("epoch"), int) or not isinstance(ckpt.get("optimizer"), dict):
            raise UserError(f"{partial} is not a mid-step checkpoint of this toolkit (no epoch or optimizer "
                            f"state); delete it and rerun the same command")
        student = model_from_checkpoint(ckpt, partial)
        resume = {"optimizer": ckpt["optimizer"], "epoch": ckpt["meta"]["epoch"]}
        history = ckpt["meta"].get("history", [])
        adapters = ckpt.get("adapters", {})
    student = prepare(student, rt, cfg.image_size)
    teachers, weights = (None, None) if teacher is None else stage_teachers(sess, cfg, teacher, previous)
    alpha = cfg.alpha if teacher is not None else 0.0
    distiller = Distiller(student, teachers, cfg.temperature, alpha, cfg.kd, cfg.beta, weights, cfg.dkd_alpha,
                          cfg.dkd_beta)
    if adapters:
        distiller.adapters.load_state_dict(adapters)  # hint adapters resume with the student (issue 7)
    distiller.cache = teacher_cache_for(sess, cfg, distiller)
    loader = sess.train_loader
    if distiller.cache is not None:  # draw only the recorded views, from a copy: the session's loader stays as is
        loader = copy.copy(loader)
        loader.recorded_views = distiller.cache.views
    # Not with feature KD: its per-forward hooks (distill.features.capture) are not seen by a compiled graph.
    if cfg.compile and rt.device.type == "cuda" and distiller.feature is None:
        distiller.student = torch.compile(student)  # checkpoints keep saving the uncompiled ``student``

    def checkpoint(epoch: int, metrics: dict, optimizer) -> None:
        history.append(metrics)
        if partial is not None:
            save_pruned(partial, student, {**(meta or {}), "stage": stage, "epoch": epoch, "history": history},
                        optimizer=optimizer.state_dict(), adapters=distiller.adapters.state_dict())
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        fault_point("teacher_epoch_end" if stage == "teacher" else "epoch_end")

    fit(distiller, loader, epochs, lr, cfg.weight_decay, rt, resume=resume, epoch_seed=epoch_seed,
        desc=stage, schedule=cfg.lr_schedule, on_epoch=checkpoint)
    return student, summarize(history)


def stage_teachers(sess: Session, cfg, teacher: nn.Module, previous: nn.Module | None
                   ) -> tuple[list[nn.Module], list[float] | None]:
    """The run's teacher and the ``--teachers`` of one stage, with their ``--teacher-weights`` (None = equal).

    ``previous`` is the model before this stage's pruning, for a ``--teachers previous`` entry. That entry
    and its weight are left out where there is none (the closing epochs prune nothing) and where it is as
    wide as the teacher (the first pruning step, where it is the teacher: twice its cost for nothing).
    """
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


def teacher_cache_for(sess: Session, cfg, distiller: Distiller) -> TeacherCache | None:
    """``--teacher-cache K``: the teacher's recorded soft labels, when a lone teacher's logits are all the
    loss needs (feature losses and extra teachers still run the teachers)."""
    if distiller.feature is not None or len(distiller.teachers) != 1 or distiller.alpha == 0:
        return None
    return load_teacher_cache(sess, cfg, distiller.teacher)


def load_teacher_cache(sess: Session, cfg, teacher: nn.Module) -> TeacherCache | None:
    """``teacher``'s cache on the session's training data, loaded or built (None without --teacher-cache).
    Stored beside ``--teacher``, else beside the run's own teacher checkpoint (check_points/step_000.pt).
    The session memoises the last one (``Session.teacher_cache``): a cache, not a setting."""
    if not cfg.teacher_cache:
        return None
    directory = Path(cfg.teacher).parent if cfg.teacher else Path(cfg.out) / "check_points"
    sess.teacher_cache = load_or_build(teacher, sess.train_loader, cfg.teacher_cache, sess.rt, directory,
                                       sess.teacher_cache)
    return sess.teacher_cache


def measure(sess: Session, model: nn.Module, test: bool = True) -> dict:
    """The size and accuracy columns of a results row (accuracies in percent).

    ``test_top1``/``test_top5`` are there unless ``test`` is False: with ``--val-fraction 0`` validation *is*
    the test set (the seed's protocol) and the same figures fill both, so every run reports test accuracy in
    one column. A search trial passes False: it is scored on its held-out split, and the test set is for the
    models ``search.retrain`` trains (issue 12: it was a third of a recalibration screen's time).
    """
    start = time.perf_counter()
    row = model_stats(model, sess.cfg.image_size)
    val = evaluate(model, sess.val_loader, sess.rt, "val")
    row.update({"val_top1": val["top1"], "val_top5": val["top5"], "val_loss": val["loss"]})
    if test:
        test_split = val if sess.test_loader is None else evaluate(model, sess.test_loader, sess.rt, "test")
        row.update({"test_top1": test_split["top1"], "test_top5": test_split["top5"]})
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


def make_row(sess: Session, model: nn.Module, step: int, phase: str, metrics: dict, prune_wall_s: float,
             measured: bool = True, test: bool = True) -> dict:
    """One pruning_logs.csv row; ``_model`` carries the model to the caller, which saves it first.
    ``measured`` False leaves out the size and accuracy columns (a screening trial's inner sub-steps);
    ``test`` False, the test set's (``measure``)."""
    row = {"step": step, "phase": phase, **(measure(sess, model, test) if measured else {})}
    row.update({k: metrics[k] for k in ("train_loss", "train_ce", "train_kd", "train_top1") if k in metrics})
    row["epochs"] = metrics.get("epochs", 0)
    row["train_wall_s"] = metrics.get("wall_s", 0.0)
    row["prune_wall_s"] = prune_wall_s
    row = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
    if measured:
        row.update(channel_columns(model))
    row["_model"] = model
    return row


def summary_line(row: dict) -> str:
    return (f"step {row['step']:>2} ({row['phase']}): params {row['params']:,} | size {row['size_mb']:.2f} MB | "
            f"val top-1 {row['val_top1']:.2f}% | train {row['train_wall_s']:.0f}s, "
            f"prune {row['prune_wall_s']:.1f}s")
