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

from tqdm.auto import tqdm

from distill.config import RunConfig, parse_config
from distill.engine import RunStore, run_schedule, uniform_schedule
from distill.pipeline import (Session, load_ratios, load_teacher, make_row, open_session, provenance,
                              summary_line, teacher_provenance, train_teacher)
from distill.plots import accuracy_over_params
from distill.results import prepare_out_dir
from distill.tb import TBLogger
from pruning.checkpoint import load_pruned
from pruning.errors import run_cli
from pruning.model import build_resnet50, channel_plan, prunable_layers


def run(cfg: RunConfig) -> list[dict]:
    """Run (or resume) the baseline described by ``cfg``; returns the rows of pruning_logs.csv."""
    # First: a bad --ratios file fails in seconds, with --out untouched, not after hours of teacher training.
    ratios = load_ratios(cfg.ratios, prunable_layers(build_resnet50(2)), cfg.ratio)
    store = RunStore(prepare_out_dir(cfg.out, cfg))
    sess = open_session(cfg)
    tb = TBLogger(store.root / "tb")
    try:
        teacher, rows = teacher_stage(sess, cfg, store, tb)
        schedule = uniform_schedule(channel_plan(teacher), ratios, cfg.steps, cfg.epochs_per_step,
                                    cfg.final_epochs, cfg.round_to)
        _, rows = run_schedule(sess, cfg, teacher, schedule, store, tb=tb)
    finally:
        tb.close()
    rows = store.rows()
    accuracy_over_params(rows, store.root / "accu_over_params.html", title=f"{cfg.data}: accuracy vs parameters")
    last = rows[-1]
    print(f"Number of parameters: {last['params']:,} | size: {last['size_mb']:.2f} MB | "
          f"accuracy: {last['val_top1']:.2f}% (top-5 {last['val_top5']:.2f}%) -> {store.log}")
    return rows


def teacher_stage(sess: Session, cfg: RunConfig, store: RunStore, tb: TBLogger):
    """Step 0: the teacher (loaded with --teacher, or fine-tuned here), evaluated and saved once.

    Its checkpoint records the images it was trained on (``pruning_logs``' step_000.pt is a valid
    ``python -m search --teacher``; the search checks it never saw the validation split, issue 11).
    """
    rows = store.rows()
    if rows and rows[0]["step"] == 0:
        return load_pruned(store.checkpoint(0))[0].to(sess.rt.device), rows
    if cfg.teacher:
        teacher, metrics = load_teacher(cfg.teacher, sess.data.num_classes), {"epochs": 0}
        recipe, index = teacher_provenance(cfg.teacher)
    else:
        teacher, metrics = train_teacher(sess, cfg, store.partial, on_epoch=tb.epoch_logger("teacher"))
        recipe, index = provenance(cfg, sess.data)
    teacher = teacher.to(sess.rt.device)
    row = make_row(sess, teacher, 0, "teacher", metrics, prune_wall_s=0.0)
    model = row.pop("_model")
    extra = {} if index is None else {"train_index": index}
    rows = store.commit(rows, row, model, meta={"trained_on": recipe} if recipe else None, **extra)
    tb.log_row(row)
    tqdm.write(summary_line(row))
    return teacher, rows


def main(argv: list[str] | None = None) -> list[dict] | None:
    return run_cli(lambda: run(parse_config(argv, RunConfig, description=__doc__)), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
