"""Export a pruned checkpoint for deployment (ONNX or TorchScript) and check its outputs against PyTorch.

    python -m pruning.export runs/iterative/check_points/step_020.pt --format onnx --out model.onnx
    python -m pruning.export runs/iterative/check_points/step_020.pt --format torchscript --out model.pt
    python -m pruning.export CHECKPOINT --format onnx --out m.onnx --image-size 224 --batch 4

The exported model takes N x 3 x S x S normalised images (any N) and returns logits. Parity: the
exported model and the PyTorch model run the same random batch; the max abs difference of the logits
is printed and must be <= --tolerance. ONNX parity needs onnxruntime (pip install -e '.[export]').
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from pruning.checkpoint import load_pruned
from pruning.errors import UserError, run_cli

FORMATS = ("onnx", "torchscript")


def export(model: nn.Module, fmt: str, out: str | Path, image_size: int) -> Path:
    """Write ``model`` (eval mode, CPU, fp32) as ``fmt`` to ``out`` atomically (temp file + rename)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu().float()
    example = torch.zeros(2, 3, image_size, image_size)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with _quiet():
            if fmt == "onnx":
                # The TorchScript-based exporter: the dynamo one needs onnxscript, not a dependency here.
                torch.onnx.export(model, (example,), tmp, dynamo=False, input_names=["images"],
                                  output_names=["logits"], opset_version=17,
                                  dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
            else:
                with torch.no_grad():  # check_trace off: parity() below is the check, on other inputs
                    torch.jit.save(torch.jit.trace(model, example, check_trace=False), tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def run_exported(path: str | Path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    """Logits of the exported model at ``path`` on ``x`` (onnxruntime or torch.jit on the CPU)."""
    if fmt == "onnx":
        session = onnx_session(path)
        return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with torch.no_grad(), _quiet():
        return torch.jit.load(str(path), map_location="cpu")(x)


@contextlib.contextmanager
def _quiet():
    """The exporters print diagnostics and torch.jit warns that it is deprecated; neither helps the user."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def onnx_session(path: str | Path):
    """An onnxruntime CPU session of ``path``; a UserError naming the extra when onnxruntime is missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX parity and latency need onnxruntime: pip install -e '.[export]'") from None
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def parity(model: nn.Module, path: str | Path, fmt: str, image_size: int, batch: int = 4,
           seed: int = 0) -> float:
    """Max abs difference between PyTorch's and the exported model's logits on one random batch."""
    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model.eval().cpu().float()(x)
    return (run_exported(path, fmt, x) - expected).abs().max().item()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint written by this toolkit (e.g. check_points/step_020.pt)")
    parser.add_argument("--format", choices=FORMATS, required=True, help="onnx | torchscript")
    parser.add_argument("--out", required=True, help="file to write")
    parser.add_argument("--image-size", type=int, default=32, help="side of the parity-check images [default: 32]")
    parser.add_argument("--batch", type=int, default=4, help="images in the parity check [default: 4]")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted max abs diff [default: 1e-4]")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    if args.image_size < 1 or args.batch < 1:
        raise UserError(f"--image-size {args.image_size} / --batch {args.batch}: both must be >= 1")
    model, _ = load_pruned(args.checkpoint)
    path = export(model, args.format, args.out, args.image_size)
    diff = parity(model, path, args.format, args.image_size, args.batch)
    print(f"{args.format}: {path} ({path.stat().st_size / 1e6:.1f} MB) | parity max abs diff {diff:.2e} "
          f"on {args.batch} images at {args.image_size} px")
    if not diff <= args.tolerance:
        raise UserError(f"the exported model differs from PyTorch by {diff:.2e} (> --tolerance {args.tolerance}); "
                        f"do not deploy {path}")
    return {"format": args.format, "out": str(path), "max_abs_diff": diff}


def main(argv: list[str] | None = None) -> dict | None:
    return run_cli(lambda: run(parse_args(argv)), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
