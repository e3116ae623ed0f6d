"""What the three benchmarks share: the machine description, pruned plans, the table and the JSON file."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch

from distill.results import atomic_write_text
from pruning.errors import UserError
from pruning.model import build_resnet50, channel_plan
from pruning.plan import target_plan

NUM_CLASSES = 100  # CIFAR-100's classifier: the model every benchmark times
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def base_parser(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI): checks the code, not speed")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time: steadier for CPU runs on a machine shared "
                             "with other jobs (best with --threads 1) [default: wall]")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser


def machine(device: torch.device | str = "cpu") -> dict:
    """Where a figure was measured: it means nothing without the device, the load and the date."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "loadavg_1m": round(os.getloadavg()[0], 2), "date": datetime.datetime.now().isoformat(timespec="seconds")}


def cpu_name() -> str:
    """The processor's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dense_plan() -> dict[str, int]:
    return channel_plan(build_resnet50(NUM_CLASSES, "none"))


def plan_after(steps: int, ratio: float = 0.1, round_to: int = 1) -> dict[str, int]:
    """Channel widths after ``steps`` uniform pruning steps: the same for either backend and any weights
    (the widths follow from the floor rule alone), so timing needs no actual pruning."""
    plan = dense_plan()
    for _ in range(steps):
        plan = target_plan(plan, {name: ratio for name in plan}, round_to)
    return plan


def print_table(rows: list[dict], columns: list[str], title: str = "") -> None:
    """Rows as an aligned plain-text table (floats to 3 significant decimals)."""
    cells = [[_fmt(row.get(col, "")) for col in columns] for row in rows]
    widths = [max(len(col), *(len(c[i]) for c in cells)) if cells else len(col) for i, col in enumerate(columns)]
    if title:
        print(title)
    print("  ".join(col.rjust(w) for col, w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def write_json(path: str, result: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
        print(f"-> {path}")


def set_threads(threads: int, smoke: bool = False) -> None:
    """``--threads``; a smoke run's tiny tensors are dispatch-bound, so it takes one thread unless told
    otherwise (on a 2-core machine shared with other jobs, two spinning threads made it 3-10x slower)."""
    if threads or smoke:
        torch.set_num_threads(threads or 1)


def clock(name: str, devices) -> callable:
    """The timer ``--clock`` names; CPU time cannot time GPU work."""
    if name == "cpu" and any(torch.device(d).type == "cuda" for d in devices):
        raise UserError("--clock cpu times CPU work only; use --clock wall on CUDA")
    return CLOCKS[name]
