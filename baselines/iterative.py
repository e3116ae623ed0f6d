"""The seed's protocol: fine-tune a teacher, then N x (L1-prune 10% of each bottleneck conv1/conv2 ->
KD-retrain), then a longer closing KD run. Results: ``--out``/pruning_logs.csv, checkpoints, plots.

    python baselines/iterative.py                                # the seed, as published (CIFAR-100, 224 px)
    python baselines/iterative.py --preset quick                 # the same, ~10 min on a laptop CPU
    python baselines/iterative.py --preset demo                  # no download: synthetic data
    python baselines/iterative.py --epochs-per-step 0 --teacher-epochs 0 --final-epochs 0 --weights none
                                                                 # pruning alone: the seed's params trajectory
    python baselines/iterative.py --help                         # every flag

Rerunning the same command with the same ``--out`` resumes where it stopped.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tqdm.auto import tqdm

from distill.config import RunConfig, config_dict, parse_config
from distill.pipeline import (Session, load_ratios, load_teacher, make_row, new_model, open_session, prune_step,
                              retrain, summary_line)
from distill.plots import accuracy_over_params
from distill.results import prepare_out_dir, read_csv, write_csv
from distill.tb import TBLogger
from pruning.checkpoint import load_pruned, save_pruned
from pruning.errors import run_cli
from pruning.model import build_resnet50, prunable_layers

LOG = "pruning_logs.csv"


def ckpt_path(out: Path, step: int | str) -> Path:
    name = step if isinstance(step, str) else f"step_{step:03d}"
    return out / "check_points" / f"{name}.pt"


def run(cfg: RunConfig) -> list[dict]:
    """Run (or resume) the baseline described by ``cfg``; returns the rows of pruning_logs.csv."""
    # First: a bad --ratios file fails in seconds, with --out untouched, not after hours of teacher training.
    ratios = load_ratios(cfg.ratios, prunable_layers(build_resnet50(2)), cfg.ratio)
    out = prepare_out_dir(cfg.out, config_dict(cfg), cfg.force)
    sess = open_session(cfg)
    # A step is done only with its checkpoint: deleting a damaged one makes the rerun redo that step (issue 6).
    rows = [r for r in read_csv(out / LOG) if ckpt_path(out, int(r["step"])).is_file()]
    done = {int(r["step"]) for r in rows}
    tb = TBLogger(out / "tb")
    partial = ckpt_path(out, "partial")
    try:
        teacher = teacher_stage(sess, out, rows, done, tb, partial)
        stages = [(step, "prune") for step in range(1, cfg.steps + 1)]
        if cfg.final_epochs:
            stages.append((cfg.steps + 1, "final"))
        for step, phase in tqdm(stages, desc="pruning steps", disable=not cfg.progress, initial=0):
            if step in done:
                continue
            previous, _ = load_pruned(ckpt_path(out, step - 1))
            row = student_stage(sess, teacher, previous, ratios if phase == "prune" else None,
                                step, phase, partial, tb)
            save_pruned(ckpt_path(out, step), row.pop("_model"), {"step": step, "phase": phase})
            rows.append(row)
            rows.sort(key=lambda r: int(r["step"]))  # a redone step goes back to its place
            write_csv(out / LOG, rows)
            partial.unlink(missing_ok=True)
            tqdm.write(summary_line(row))
    finally:
        tb.close()
    accuracy_over_params(rows, out / "accu_over_params.html", title=f"{cfg.data}: accuracy vs parameters")
    last = rows[-1]
    print(f"Number of parameters: {last['params']:,} | size: {last['size_mb']:.2f} MB | "
          f"accuracy: {last['val_top1']:.2f}% (top-5 {last['val_top5']:.2f}%) -> {out / LOG}")
    return rows


def teacher_stage(sess: Session, out: Path, rows: list[dict], done: set, tb: TBLogger, partial: Path):
    """Step 0: the teacher (loaded with --teacher, or fine-tuned here), evaluated and saved once."""
    cfg = sess.cfg
    if 0 in done:
        return load_pruned(ckpt_path(out, 0))[0].to(sess.rt.device)
    if cfg.teacher:
        teacher, metrics = load_teacher(cfg.teacher, sess.data.num_classes), {"epochs": 0}
    else:
        start = new_model(cfg, sess.data.num_classes)
        teacher, metrics = retrain(sess, start, None, cfg.teacher_epochs, cfg.teacher_lr, "teacher", partial,
                                   epoch_seed=0, temperature=cfg.temperature, alpha=0.0,
                                   on_epoch=tb.epoch_logger("teacher"))
    teacher = teacher.to(sess.rt.device)
    row = make_row(sess, teacher, 0, "teacher", metrics, prune_wall_s=0.0)
    save_pruned(ckpt_path(out, 0), row.pop("_model"), {"step": 0, "phase": "teacher"})
    rows.insert(0, row)
    write_csv(out / LOG, rows)
    partial.unlink(missing_ok=True)
    tb.log_row(row)
    tqdm.write(summary_line(row))
    return teacher


def student_stage(sess: Session, teacher, previous, ratios: dict | None, step: int, phase: str,
                  partial: Path, tb: TBLogger) -> dict:
    """Prune ``previous`` by ``ratios`` (none for the closing stage), retrain with KD, measure."""
    cfg = sess.cfg
    student, prune_s = (previous, 0.0) if ratios is None else prune_step(
        previous, ratios, cfg.backend, cfg.round_to, cfg.image_size)
    epochs = cfg.final_epochs if phase == "final" else cfg.epochs_per_step
    student, metrics = retrain(sess, student, teacher, epochs, cfg.lr, f"step_{step:03d}", partial,
                               epoch_seed=1000 * step, temperature=cfg.temperature, alpha=cfg.alpha,
                               on_epoch=tb.epoch_logger(f"step_{step:03d}"),
                               previous=None if ratios is None else previous)
    row = make_row(sess, student, step, phase, metrics, prune_wall_s=prune_s)
    tb.log_row(row)
    return row


def main(argv: list[str] | None = None) -> list[dict] | None:
    return run_cli(lambda: run(parse_config(argv, RunConfig, description=__doc__)), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
