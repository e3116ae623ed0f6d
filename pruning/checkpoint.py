"""Pruned checkpoints without pickled code: ``{"plan", "num_classes", "state_dict", "meta"}``.

``torch.load(path, weights_only=True)`` reads them; ``load_pruned`` rebuilds the ResNet50 with the
plan's widths and loads the weights. Writes are atomic (temp file + ``os.replace``), so a kill during
a save leaves the previous file intact.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

from pruning.errors import UserError
from pruning.faults import fault_point
from pruning.model import build_from_plan, channel_plan


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temp file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        fault_point("checkpoint_replace")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_load(path: str | Path) -> dict:
    """``torch.load(weights_only=True)``; any failure becomes a one-line UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: check the path (or rerun the step that writes it)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0][:160]
        raise UserError(f"checkpoint {path} was refused by the safe loader (it holds pickled code or "
                        f"foreign objects: {reason}); only load files this toolkit wrote") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {path} is corrupt or truncated ({reason}); delete it and rerun") from None


def save_pruned(path: str | Path, model: nn.Module, meta: dict | None = None, **extra) -> None:
    """Save the plan + weights (+ JSON-like ``meta`` and any extra tensors/dicts, e.g. optimizer state)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    obj = {"plan": channel_plan(model), "num_classes": model.fc.out_features,
           "state_dict": state, "meta": meta or {}}
    obj.update(extra)
    atomic_save(obj, path)


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the model a ``save_pruned`` dict describes."""
    if not isinstance(ckpt, dict) or not {"plan", "num_classes", "state_dict"} <= set(ckpt):
        raise UserError(f"{path} is not a checkpoint of this toolkit (it needs plan, num_classes, "
                        f"state_dict); use pruning.checkpoint.save_pruned to write one")
    model = build_from_plan(int(ckpt["num_classes"]), ckpt["plan"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not match its plan ({first}); the file is damaged") from None
    return model


def load_pruned(path: str | Path) -> tuple[nn.Module, dict]:
    """The pruned model saved at ``path`` (in eval mode) and its meta dict."""
    ckpt = safe_load(path)
    model = model_from_checkpoint(ckpt, path)
    return model.eval(), ckpt.get("meta", {})
