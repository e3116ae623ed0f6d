"""Latency (batch 1) and throughput (batch 64) of the dense ResNet50 and of the models after 5, 10 and
15 pruning steps of 10%: does pruning make it faster, and by how much of its FLOPs reduction?

    python benchmarks/latency.py                                    # CPU (+ CUDA if present), 32 and 224 px
    python benchmarks/latency.py --devices cpu --sizes 32 224 --steps 0 --batches 64   # memory formats only
    python benchmarks/latency.py --devices cuda --round-to 1 8      # odd widths vs multiples of 8 (tensor cores)
    python benchmarks/latency.py --engines torch torchscript onnxruntime   # also the exported models (CPU)
    python benchmarks/latency.py --devices cpu --threads 1 --clock cpu  # steadier on a CPU shared with other jobs
    python benchmarks/latency.py --devices cpu --sizes 32 --batches 64 --breakdown  # where the time goes, per part
    python benchmarks/latency.py --smoke --json /tmp/latency.json   # seconds: checks the code path

For every device x image size x memory format x batch, each pruned model is timed against the dense
one: ``speedup`` = dense time / pruned time, ``flops_reduction`` = dense FLOPs / pruned FLOPs and
``speedup_over_flops_reduction`` = how much of the theoretical gain is real (issue 5 target on CPU at
batch 64: >= 0.7). The widths after k steps follow from the floor rule alone, so the models are built
from their plans with random weights (timing does not depend on the weights). Times are medians.

Engines: ``torch`` is eager PyTorch on every device and memory format; ``torchscript`` and
``onnxruntime`` time the files ``python -m pruning.export`` writes, loaded as a CPU server would
(``pruning.export.load_exported``), on contiguous CPU batches.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import (NUM_CLASSES, base_parser, clock, machine, plan_after, print_table, set_threads,
                               write_json)
from distill.trainer import make_runtime
from pruning.errors import UserError, run_cli
from pruning.measure import count_flops, count_params, latency_ms
from pruning.model import build_from_plan

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
ENGINES = {"torch": None, "torchscript": "torchscript", "onnxruntime": "onnx"}  # engine -> pruning.export format


def parse_args(argv: list[str] | None):
    parser = base_parser(__doc__)
    parser.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda [default: cpu, + cuda if present]")
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 224], help="image sizes in px")
    parser.add_argument("--steps", nargs="+", type=int, default=[0, 5, 10, 15], help="pruning steps (0 = dense)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64], help="batch sizes")
    parser.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS), help="memory formats")
    parser.add_argument("--round-to", nargs="+", type=int, default=[1], help="channel multiples to compare")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per model (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forward passes first")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=["torch"],
                        help="eager torch, and/or the exported models on the CPU "
                             "(onnxruntime: pip install -e '.[export]')")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time each part of the network (stem, pruned convs, conv3, downsample, ...): "
                             "eager, CPU, contiguous, without --round-to")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="on CUDA, time under the toolkit's autocast (bf16 where supported) [default: on]")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.steps, args.batches, args.repeats, args.warmup = [16], [0, 1], [2], 1, 1
    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in args.devices and not torch.cuda.is_available():
        raise UserError("--devices cuda: CUDA is not available here; use --devices cpu")
    clock(args.clock, args.devices)  # refuse --clock cpu with CUDA before timing anything
    if 0 not in args.steps:
        args.steps = [0, *args.steps]  # every speedup is relative to the dense model
    return args


def time_models(args: argparse.Namespace) -> list[dict]:
    """One row per engine x device x size x format x batch x round_to x step, with its speedup over step 0."""
    rows = []
    models = {(r, s): build_from_plan(NUM_CLASSES, plan_after(s, round_to=r)).eval()
              for r in args.round_to for s in sorted(args.steps)}
    stats = {(r, s, size): {"params": count_params(m), "flops": count_flops(m, size)}
             for (r, s), m in models.items() for size in args.sizes}
    for device in args.devices if "torch" in args.engines else ():
        rt = make_runtime(device, args.amp, progress=False)  # the toolkit's precision (and cudnn.benchmark)
        precision = str(rt.amp_dtype or torch.float32).removeprefix("torch.")
        for size in args.sizes:
            for fmt in args.formats:
                for batch in args.batches:
                    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=FORMATS[fmt])
                    for (round_to, step), model in models.items():
                        model = model.to(device=device, memory_format=FORMATS[fmt])
                        with rt.autocast():
                            ms = latency_ms(model, x, args.warmup, args.repeats, clock(args.clock, [device]))
                        rows.append({**row(stats[round_to, step, size], "torch", device, size, fmt, batch,
                                           round_to, step, ms), "precision": precision})
    for engine in (e for e in args.engines if e != "torch"):
        for (round_to, step), model in models.items():
            model = model.to("cpu", memory_format=torch.contiguous_format)
            rows += exported_rows(model, engine, args, round_to, step, stats)
    return add_speedups(rows)


def row(stats: dict, engine: str, device: str, size: int, fmt: str, batch: int, round_to: int, step: int,
        ms: float) -> dict:
    return {"engine": engine, "device": device, "image_size": size, "memory_format": fmt, "batch": batch,
            "round_to": round_to, "step": step, **stats, "ms": ms, "images_per_s": 1e3 * batch / ms}


def exported_rows(model: nn.Module, engine: str, args: argparse.Namespace, round_to: int, step: int,
                  stats: dict) -> list[dict]:
    """The same model exported by pruning.export and loaded for CPU serving (the deployment path)."""
    from pruning.export import export, load_exported

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = export(model, ENGINES[engine], Path(tmp) / f"step{step}_{size}.{engine}", size)
            forward = load_exported(path, ENGINES[engine])
            for batch in args.batches:
                x = torch.randn(batch, 3, size, size)
                ms = latency_ms(forward, x, args.warmup, args.repeats, clock(args.clock, ["cpu"]))
                rows.append({**row(stats[round_to, step, size], engine, "cpu", size, "contiguous", batch,
                                   round_to, step, ms), "precision": "float32"})
    return rows


def add_speedups(rows: list[dict]) -> list[dict]:
    """speedup and flops_reduction of each row against the dense row of the same setting."""
    key = lambda r: (r["engine"], r["device"], r["image_size"], r["memory_format"], r["batch"], r["round_to"])
    dense = {key(r): r for r in rows if r["step"] == 0}
    for r in rows:
        d = dense[key(r)]
        r["speedup"] = d["ms"] / r["ms"]
        r["flops_reduction"] = d["flops"] / r["flops"]
        r["speedup_over_flops_reduction"] = r["speedup"] / r["flops_reduction"]
    return rows


def memory_formats(rows: list[dict]) -> list[dict]:
    """channels_last vs contiguous for each setting both were timed in (pruning.model.to_memory_format)."""
    by = {(r["engine"], r["device"], r["image_size"], r["batch"], r["round_to"], r["step"], r["memory_format"]): r
          for r in rows}
    out = []
    for (engine, device, size, batch, round_to, step, fmt), r in by.items():
        other = by.get((engine, device, size, batch, round_to, step, "channels_last"))
        if fmt == "contiguous" and other is not None:
            out.append({"device": device, "image_size": size, "batch": batch, "step": step, "round_to": round_to,
                        "contiguous_ms": r["ms"], "channels_last_ms": other["ms"],
                        "channels_last_speedup": r["ms"] / other["ms"]})
    return out


# The role of each module in the time breakdown. The pruned parts shrink with every step; the stem, conv3
# (its output), downsample and the residual adds keep their width by design (seed protocol), so their time
# bounds the speedup that any FLOPs reduction can buy.
STEM_PARTS = {"conv1": "stem", "bn1": "stem", "relu": "stem", "maxpool": "stem", "avgpool": "head", "fc": "head"}
BLOCK_PARTS = {"conv1": "pruned_convs", "conv2": "pruned_convs", "bn1": "pruned_bn", "bn2": "pruned_bn",
               "conv3": "conv3", "bn3": "bn3", "relu": "relu", "downsample": "downsample"}


def part_of(name: str) -> str | None:
    """``layer2.0.conv1`` -> ``pruned_convs``; containers and modules inside ``downsample`` -> None."""
    if not name.startswith("layer"):
        return STEM_PARTS.get(name)
    return BLOCK_PARTS[name.rsplit(".", 1)[-1]] if name.count(".") == 2 else None


def time_parts(model: nn.Module, timer) -> dict[str, float]:
    """Hook every part of ``model`` (``part_of``); the returned dict accumulates seconds per part."""
    spent: dict[str, float] = {}

    def enter(module, inputs):
        module.started = timer()

    def leave(module, inputs, output):
        spent[module.part] = spent.get(module.part, 0.0) + timer() - module.started

    for name, module in model.named_modules():
        if part_of(name):
            module.part = part_of(name)
            module.register_forward_pre_hook(enter)
            module.register_forward_hook(leave)
    return spent


@torch.no_grad()
def breakdown(args: argparse.Namespace) -> list[dict]:
    """Mean ms of each part (and of the whole) per forward pass, for every step, size and batch (eager, CPU,
    contiguous, odd widths: --round-to does not apply)."""
    timer, rows = clock(args.clock, ["cpu"]), []
    for step in sorted(args.steps):
        model = build_from_plan(NUM_CLASSES, plan_after(step)).eval()
        spent = time_parts(model, timer)
        for size, batch in itertools.product(args.sizes, args.batches):
            x = torch.randn(batch, 3, size, size)
            for _ in range(args.warmup):
                model(x)
            spent.clear()
            start = timer()
            for _ in range(args.repeats):
                model(x)
            total = 1e3 * (timer() - start) / args.repeats
            parts = {part: 1e3 * t / args.repeats for part, t in spent.items()}
            rows.append({"step": step, "image_size": size, "batch": batch, "total_ms": total, **parts,
                         "rest": total - sum(parts.values())})
    return rows


def run(argv: list[str] | None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads, args.smoke)
    rows = time_models(args)
    columns = ["engine", "device", "precision", "image_size", "memory_format", "batch", "round_to", "step",
               "params", "flops", "ms", "images_per_s", "speedup", "flops_reduction", "speedup_over_flops_reduction"]
    print_table(rows, columns, "latency (ms per batch, median) and speedup over the dense model")
    formats = memory_formats(rows)
    if formats:
        print()
        print_table(formats, list(formats[0]), "channels_last vs contiguous")
    parts = breakdown(args) if args.breakdown else []
    if parts:
        print()
        print_table(parts, list(parts[0]), "ms per forward pass by part (eager, CPU, contiguous); rest = residual "
                                           "adds + hook overhead")
    result = {"machine": machine(args.devices[-1]), "smoke": args.smoke, "clock": args.clock, "rows": rows,
              "memory_formats": formats, "breakdown": parts}
    write_json(args.json, result)
    return result


def main(argv: list[str] | None = None) -> dict | None:
    return run_cli(lambda: run(argv), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
