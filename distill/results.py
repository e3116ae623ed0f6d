"""A run directory that explains itself, written atomically, and the state needed to resume it.

Layout of ``--out``::

    config.json          the full config, seed, package versions, git commit, command line
    pruning_logs.csv     one row per finished step (rewritten atomically after each step)
    check_points/        step_000.pt (teacher), step_001.pt ..., final.pt, partial.pt (mid-step state)
    tb/                  TensorBoard events (tags = CSV column names)
    accu_over_params.html
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from distill.config import config_diff, config_dict
from pruning.errors import UserError
from pruning.faults import fault_point

# The seed's published table (lightweight-resnet50 README): steps 0, 1, 2, 5, 7, 10, 13, 16, 20.
SEED_RESULTS = [
    {"step": 0, "params": 23_712_932, "val_top1": 82.50, "size_mb": 95.19},
    {"step": 1, "params": 20_639_037, "val_top1": 82.87, "size_mb": 79.08},
    {"step": 2, "params": 18_051_107, "val_top1": 82.25, "size_mb": 69.21},
    {"step": 5, "params": 12_485_140, "val_top1": 79.83, "size_mb": 47.96},
    {"step": 7, "params": 10_078_784, "val_top1": 77.45, "size_mb": 38.77},
    {"step": 10, "params": 7_663_862, "val_top1": 74.05, "size_mb": 29.55},
    {"step": 13, "params": 6_146_234, "val_top1": 69.94, "size_mb": 23.76},
    {"step": 16, "params": 5_154_387, "val_top1": 65.28, "size_mb": 19.97},
    {"step": 20, "params": 4_336_346, "val_top1": 60.30, "size_mb": 16.85},
]

PACKAGES = ("torch", "torchvision", "nni", "optuna", "pandas", "plotly", "numpy", "torch_pruning")


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, fsync, then ``os.replace`` it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        fault_point(f"{path.suffix.lstrip('.')}_replace")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """All rows, columns in first-seen order, written atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a CSV written by ``write_csv``, numbers parsed back ([] if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except (TypeError, ValueError):
            pass
    return text


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            from importlib.metadata import version
            found[name] = version(name.replace("_", "-"))
        except Exception:  # not installed: record its absence rather than fail
            found[name] = "absent"
    return found


def git_commit() -> str:
    """The toolkit's commit (with ``+dirty`` for uncommitted changes), or ``unknown`` outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


def holds_results(out: Path) -> bool:
    """Whether ``out`` holds anything to resume. A first attempt that failed on bad input leaves only
    config.json and TensorBoard's empty log, and must not block the corrected command (issue 6)."""
    return any(p.is_file() and p.name != "config.json" and not p.name.startswith(".")
               and p.relative_to(out).parts[0] != "tb" for p in out.rglob("*"))


def prepare_out_dir(out: str | Path, cfg) -> Path:
    """Create ``out`` (or reopen it to resume) and record ``cfg`` in ``config.json``.

    Resuming with a config that differs from the recorded one in a result-changing field is refused
    (the differing fields are named) unless ``--force``.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "check_points").mkdir(exist_ok=True)
        # One probe per process: workers starting together on one --out must not delete each other's.
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write_test."):
            pass
    except OSError as exc:
        raise UserError(f"--out {out}: not writable ({exc.strerror}); choose another directory") from None
    record = out / "config.json"
    if record.exists() and not cfg.force and holds_results(out):
        try:
            previous = json.loads(record.read_text())["config"]
        except (json.JSONDecodeError, KeyError):
            raise UserError(f"{record} is damaged; delete it (or pass --force) to resume") from None
        diff = config_diff(previous, cfg)
        if diff:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:6])
            raise UserError(f"{out} holds a run with a different config ({shown}); use another --out, "
                            f"or --force to resume anyway")
    meta = {"config": config_dict(cfg), "versions": versions(), "git_commit": git_commit(), "argv": sys.argv}
    atomic_write_text(record, json.dumps(meta, indent=2, default=str) + "\n")
    return out
