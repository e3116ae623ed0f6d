"""Pruned checkpoints without pickled code: ``{"plan", "num_classes", "state_dict", "meta", "digest"}``.

``torch.load(path, weights_only=True)`` reads them; ``load_pruned`` rebuilds the ResNet50 with the
plan's widths and loads the weights. Writes are atomic (temp file + ``os.replace``), so a kill during
a save leaves the previous file intact.

Every dict this module writes carries ``digest``, a sha256 of everything else in it. torch's zip reader
does not check the CRCs of its entries, so a flipped bit in a tensor (or in the plan) would otherwise load
as silently different weights (issue 14). Files without a digest (written before it) still load.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from pruning.errors import UserError
from pruning.faults import fault_point
from pruning.model import assign_weights, build_from_plan, build_resnet50, channel_plan, state_dict_mismatch

DIGEST = "digest"
REQUIRED = ("plan", "num_classes", "state_dict")

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temp file in the same directory, fsync, then rename over ``path``.

    A dict gets its ``digest`` entry (see the module docstring)."""
    if isinstance(obj, dict):
        obj = {**obj, DIGEST: content_digest(obj)}
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


def content_digest(obj: dict) -> str:
    """sha256 of every entry of ``obj`` but ``digest``: keys, values, tensor dtypes, shapes and bytes."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in obj.items() if k != DIGEST})
    return h.hexdigest()


def _feed(h, value) -> None:
    """A canonical, unambiguous byte stream of a value (type tag, length, content), the same after a round trip."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_meta or value.is_quantized:
            raise TypeError(f"cannot digest a {value.layout} tensor")
        h.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        h.update(tensor_bytes(value))
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, key)
            _feed(h, value[key])
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        h.update(f"L{len(value)}".encode())
        for item in items:
            _feed(h, item)
    elif isinstance(value, (str, bytes)):
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        h.update(f"{type(value).__name__[0]}{len(data)}:".encode())
        h.update(data)
    elif value is None or isinstance(value, (bool, int, float, complex, torch.dtype, torch.device)):
        h.update(f"{type(value).__name__}:{value!r};".encode())
    else:
        raise TypeError(f"cannot digest a {type(value).__name__}")


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor (its CPU copy, contiguous), for hashing without another copy."""
    return memoryview(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy()).cast("B")


def safe_load(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` of a file this toolkit wrote: a dict, its digest checked (and removed).

    Any other file, damaged or foreign, becomes a one-line UserError naming the file and what is wrong.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory; give a checkpoint file (e.g. {path}/step_000.pt)")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: check the path (or rerun the step that writes it)")
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a checkpoint of this toolkit (it holds a {type(obj).__name__}, not a dict); "
                        f"only load files this toolkit wrote")
    if DIGEST in obj and not _digest_matches(obj):
        raise UserError(f"checkpoint {path}: its digest does not match: the file is damaged; delete it and rerun")
    obj.pop(DIGEST, None)
    return obj


def _torch_load(path: Path):
    """torch.load, with each way it fails on a file that is not one of ours mapped to its one-line UserError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 78": garbage, which the error names
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL (\S+)", str(exc))
        if refused:
            raise UserError(f"checkpoint {path} was refused by the safe loader (it holds pickled code or foreign "
                            f"objects: {refused.group(1)}); only load files this toolkit wrote") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))  # e.g. "Unsupported operand 149"
        raise _corrupt(path, f"not a PyTorch file: {detail.group(1) if detail else _first_line(exc)}") from None
    except MemoryError:
        raise  # too large for this machine is not damage
    except OSError as exc:
        if exc.errno is None:
            raise _corrupt(path, _first_line(exc)) from None
        raise UserError(f"checkpoint {path}: cannot read it ({exc.strerror}); check the file and its permissions") \
            from None
    # torch's zip reader and restricted unpickler meet malformed bytes with whatever their parsing raises:
    # RuntimeError from the zip layer, EOFError, but also IndexError (pickle stack), KeyError (memo),
    # struct.error, UnicodeDecodeError, AttributeError, TypeError (issue 14's fuzzing). A file that cannot
    # be parsed is corrupt whatever the exception; refusals and read errors are told apart above.
    except Exception as exc:
        raise _corrupt(path, _first_line(exc)) from None


def _corrupt(path: Path, reason: str) -> UserError:
    return UserError(f"checkpoint {path} is corrupt or truncated ({reason[:160]}); delete it and rerun")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _digest_matches(obj: dict) -> bool:
    try:
        return obj[DIGEST] == content_digest(obj)
    except (TypeError, RuntimeError):  # values no writer of ours produces (e.g. a sparse tensor): not our file
        return False


def save_pruned(path: str | Path, model: nn.Module, meta: dict | None = None, **extra) -> None:
    """Save the plan + weights (+ JSON-like ``meta`` and any extra tensors/dicts, e.g. optimizer state)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    obj = {"plan": channel_plan(model), "num_classes": model.fc.out_features,
           "state_dict": state, "meta": meta or {}}
    obj.update(extra)
    atomic_save(obj, path)


@functools.cache
def dense_plan() -> dict[str, int]:
    """The widths of the unpruned ResNet50: the most channels a checkpoint's plan may give a layer."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return channel_plan(build_resnet50(1))


def check_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> None:
    """Raise the one-line UserError unless ``ckpt`` is shaped as ``save_pruned`` writes it.

    Checked before any model is built: a damaged plan or class count could otherwise ask for any
    amount of memory, and a wrong type would surface as a traceback (issue 14).
    """
    def foreign(what: str) -> UserError:
        return UserError(f"{path} is not a checkpoint of this toolkit ({what}); use "
                         f"pruning.checkpoint.save_pruned to write one")

    if not isinstance(ckpt, dict) or not set(REQUIRED) <= set(ckpt):
        raise foreign("it needs plan, num_classes, state_dict")
    plan, classes, state, dense = ckpt["plan"], ckpt["num_classes"], ckpt["state_dict"], dense_plan()
    if not isinstance(plan, dict) or not all(isinstance(k, str) and k in dense and _is_int(v) and 1 <= v <= dense[k]
                                             for k, v in plan.items()):
        raise foreign("its plan must map prunable layers such as 'layer1.0.conv1' to 1..dense-width channels")
    if not _is_int(classes) or classes < 1:
        raise foreign(f"num_classes must be a positive int, not {_short(classes)}")
    if not isinstance(state, dict) or not isinstance(ckpt.get("meta", {}), dict):
        raise foreign("its state_dict and meta must be dicts")
    for layer, width in [*plan.items(), ("fc", classes)]:
        weight = state.get(f"{layer}.weight")
        if not isinstance(weight, torch.Tensor) or weight.dim() == 0 or weight.shape[0] != width:
            found = list(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise UserError(f"{path}: weights do not match its plan ({layer} has {width} outputs in the plan, "
                            f"its weight is {found}); the file is damaged")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the model a ``save_pruned`` dict describes."""
    check_checkpoint(ckpt, path)
    with torch.device("meta"):  # shapes only: the weights come from the file, no random init to throw away
        model = build_from_plan(ckpt["num_classes"], ckpt["plan"])
    mismatch = state_dict_mismatch(model, ckpt["state_dict"])
    if mismatch:
        raise UserError(f"{path}: weights do not match its plan ({mismatch}); the file is damaged")
    return assign_weights(model, ckpt["state_dict"])


def load_checkpoint(path: str | Path) -> dict:
    """The dict of a checkpoint written by ``save_pruned``, its digest and structure checked."""
    ckpt = safe_load(path)
    check_checkpoint(ckpt, path)
    return ckpt


def load_pruned(path: str | Path) -> tuple[nn.Module, dict]:
    """The pruned model saved at ``path`` (in eval mode) and its meta dict."""
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt, path).eval(), ckpt.get("meta", {})
