"""Latency (batch 1) and throughput (batch 64) of the dense ResNet50 and of the models after 5, 10 and
15 pruning steps of 10%: does pruning make it faster, and by how much of its FLOPs reduction?

    python benchmarks/latency.py                                    # CPU (+ CUDA if present), 32 and 224 px
    python benchmarks/latency.py --devices cpu --sizes 32 224 --steps 0 --batches 64   # memory formats only
    python benchmarks/latency.py --devices cuda --round-to 1 8      # odd widths vs multiples of 8 (tensor cores)
    python benchmarks/latency.py --onnx                             # also time the ONNX export (onnxruntime, CPU)
    python benchmarks/latency.py --devices cpu --threads 1 --clock cpu  # steadier on a CPU shared with other jobs
    python benchmarks/latency.py --smoke --json /tmp/latency.json   # seconds: checks the code path

For every device x image size x memory format x batch, each pruned model is timed against the dense
one: ``speedup`` = dense time / pruned time, ``flops_reduction`` = dense FLOPs / pruned FLOPs and
``speedup_over_flops_reduction`` = how much of the theoretical gain is real (issue 5 target on CPU at
batch 64: >= 0.7). The widths after k steps follow from the floor rule alone, so the models are built
from their plans with random weights (timing does not depend on the weights). Times are medians.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import (NUM_CLASSES, base_parser, clock, machine, plan_after, print_table, set_threads,
                               write_json)
from distill.trainer import make_runtime
from pruning.errors import UserError, run_cli
from pruning.measure import count_flops, count_params, latency_ms
from pruning.model import build_from_plan

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


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
    parser.add_argument("--onnx", action="store_true", help="also time each model exported to ONNX (onnxruntime, CPU)")
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


def time_models(args) -> list[dict]:
    """One row per device x size x format x batch x round_to x step, with its speedup over step 0."""
    rows = []
    models = {(r, s): build_from_plan(NUM_CLASSES, plan_after(s, round_to=r)).eval()
              for r in args.round_to for s in sorted(args.steps)}
    stats = {(r, s, size): {"params": count_params(m), "flops": count_flops(m, size)}
             for (r, s), m in models.items() for size in args.sizes}
    for device in args.devices:
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
    for round_to, step in models if args.onnx else ():
        model = models[round_to, step].to("cpu", memory_format=torch.contiguous_format)
        rows += onnx_rows(model, args, round_to, step, stats)
    return add_speedups(rows)


def row(stats: dict, engine: str, device: str, size: int, fmt: str, batch: int, round_to: int, step: int,
        ms: float) -> dict:
    return {"engine": engine, "device": device, "image_size": size, "memory_format": fmt, "batch": batch,
            "round_to": round_to, "step": step, **stats, "ms": ms, "images_per_s": 1e3 * batch / ms}


def onnx_rows(model, args, round_to: int, step: int, stats: dict) -> list[dict]:
    """The same model through onnxruntime on the CPU (deployment path of pruning.export)."""
    from pruning.export import export, onnx_session

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = export(model, "onnx", Path(tmp) / f"step{step}_{size}.onnx", size)
            session = onnx_session(path)
            for batch in args.batches:
                x = torch.randn(batch, 3, size, size).numpy()
                times = []
                timer = clock(args.clock, ["cpu"])
                for i in range(args.warmup + args.repeats):
                    start = timer()
                    session.run(None, {"images": x})
                    if i >= args.warmup:
                        times.append((timer() - start) * 1e3)
                ms = sorted(times)[len(times) // 2]
                rows.append({**row(stats[round_to, step, size], "onnxruntime", "cpu", size, "contiguous", batch,
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
    result = {"machine": machine(args.devices[-1]), "smoke": args.smoke, "clock": args.clock, "rows": rows,
              "memory_formats": formats}
    write_json(args.json, result)
    return result


def main(argv: list[str] | None = None) -> dict | None:
    return run_cli(lambda: run(argv), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
