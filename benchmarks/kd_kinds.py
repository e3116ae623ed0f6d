"""Training images/s of each ``--kd`` kind relative to plain logits KD (issues 7, 12): what the richer losses cost.

    python benchmarks/kd_kinds.py                                   # 32 px, batch 64, dense + 10-step pruned
    python benchmarks/kd_kinds.py --clock cpu --threads 1       # steadier on a CPU shared with other jobs
    python benchmarks/kd_kinds.py --clock cpu --threads 1 --kinds dkd   # one kind (and logits, the reference)
    python benchmarks/kd_kinds.py --device cuda --image-size 224 --batch-size 64
    python benchmarks/kd_kinds.py --smoke --json /tmp/kd_kinds.json # seconds: checks the code, not speed

On the same student, batches and device, the toolkit's ``train_one_epoch`` with a ``Distiller`` of each
kind (dense ResNet50 teacher): ``ce`` (no teacher, for reference), ``logits`` (the seed's loss),
``logits_2_teachers`` (plus a second teacher of the student's widths, as "the previous step's model"),
``attention``, ``hint`` (with its adapters in the optimizer), ``logits+attention`` and ``dkd`` (decoupled KD,
issue 12: the same teacher forward, a costlier loss on the logits). ``vs_logits`` is a kind's images/s over
logits KD's. Variants are timed in interleaved rounds and the best round is kept.
"""
from __future__ import annotations

import copy
import sys

import torch

from benchmarks.common import (NUM_CLASSES, base_parser, clock, machine, plan_after, print_table, set_threads,
                               write_json)
from benchmarks.train_throughput import best_of_rounds, toolkit_epoch
from distill.data import TensorLoader, synthetic_split
from distill.losses import KD_KINDS
from distill.trainer import Distiller, make_runtime, prepare
from pruning.errors import run_cli
from pruning.measure import count_params
from pruning.model import build_from_plan, build_resnet50

TEMPERATURE, ALPHA, BETA = 4.0, 0.7, 1000.0
KINDS = ("ce", "logits_2_teachers", *KD_KINDS)  # the timed variants (see variants)


def parse_args(argv: list[str] | None):
    parser = base_parser(__doc__)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--image-size", type=int, default=32, help="network input side in px [default: 32]")
    parser.add_argument("--batch-size", type=int, default=64, help="[default: 64]")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per measurement [default: 3]")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the best is kept [default: 3]")
    parser.add_argument("--pruned-steps", type=int, default=10, help="the pruned student's steps of 10%% [default: 10]")
    parser.add_argument("--kinds", nargs="*", default=[], choices=KINDS,
                        help="time only these (logits, the reference, always runs) [default: all]")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_size, args.batches, args.rounds, args.pruned_steps = 4, 1, 1, 1
    return args


def variants(student, teacher, loader, rt) -> dict:
    """kind -> thunk training one epoch (returns its images); each builds its Distiller (fresh adapters)."""
    second = copy.deepcopy(student)

    def kind(teachers, kd: str):
        return lambda: toolkit_epoch(Distiller(student, teachers, TEMPERATURE, ALPHA, kd, BETA), loader, rt)

    return {"ce": kind(None, "logits"), "logits": kind(teacher, "logits"),
            "logits_2_teachers": kind([teacher, second], "logits"),
            **{kd: kind(teacher, kd) for kd in KD_KINDS if kd != "logits"}}


def chosen(all_variants: dict, kinds: list[str]) -> dict:
    """The variants ``--kinds`` names, with logits (what ``vs_logits`` divides by); all when none are named."""
    return {k: v for k, v in all_variants.items() if not kinds or k in kinds or k == "logits"}


def run(argv: list[str] | None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    rt = make_runtime(args.device, amp=True, progress=False)
    timer = clock(args.clock, [rt.device])
    torch.manual_seed(0)
    split = synthetic_split(NUM_CLASSES, args.batch_size * args.batches, seed=0)
    loader = TensorLoader(split, args.batch_size, rt.device, args.image_size, train=True)
    teacher = prepare(build_resnet50(NUM_CLASSES, "none"), rt, args.image_size)
    students = {"dense": build_resnet50(NUM_CLASSES, "none"),
                f"pruned_{args.pruned_steps}": build_from_plan(NUM_CLASSES, plan_after(args.pruned_steps))}
    rows, vs_logits = [], {}
    for name, student in students.items():
        student = prepare(student, rt, args.image_size)
        ips = best_of_rounds(chosen(variants(student, teacher, loader, rt), args.kinds), args.rounds, rt, timer)
        vs_logits[name] = {kd: x / ips["logits"] for kd, x in ips.items()}
        rows += [{"student": name, "params": count_params(student), "kd": kd, "images_per_s": x,
                  "vs_logits": x / ips["logits"]} for kd, x in ips.items()]
    print_table(rows, ["student", "params", "kd", "images_per_s", "vs_logits"],
                f"training images/s ({args.clock} clock) by --kd on {rt.device} at {args.image_size} px, "
                f"batch {args.batch_size}")
    result = {"machine": machine(rt.device), "smoke": args.smoke, "clock": args.clock, "image_size": args.image_size,
              "batch_size": args.batch_size, "amp_dtype": str(rt.amp_dtype), "pruned_steps": args.pruned_steps,
              "vs_logits": vs_logits, "rows": rows}
    write_json(args.json, result)
    return result


def main(argv: list[str] | None = None) -> dict | None:
    return run_cli(lambda: run(argv), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
