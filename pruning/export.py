"""Export a pruned checkpoint for deployment (ONNX or TorchScript) and check its outputs against PyTorch.

    python -m pruning.export runs/iterative/check_points/step_020.pt --format onnx --out model.onnx
    python -m pruning.export runs/iterative/check_points/step_020.pt --format torchscript --out model.pt
    python -m pruning.export CHECKPOINT --format onnx --out m.onnx --image-size 224 --batch 4

The exported model takes N x 3 x S x S normalised images (any N) and returns logits. The TorchScript
file is frozen (BatchNorm folded into the convolutions, weights inlined). Load it for CPU serving with
``load_exported(path, "torchscript")``: it adds ``torch.jit.optimize_for_inference`` (oneDNN fusions),
which cannot be saved, so it is applied at load time. Parity: the exported model, loaded that way, and
the PyTorch model run the same random batch; the max abs difference of the logits is printed and must
be <= --tolerance x max(1, largest |logit|). The scale is there because fp32 rounding grows with the
logits: a trained checkpoint with logits up to 45 differs by 1.3e-4 between PyTorch's own two memory
formats at 224 px. ONNX needs onnxruntime (pip install -e '.[export]').
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
from typing import Callable

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
                    torch.jit.save(torch.jit.freeze(torch.jit.trace(model, example, check_trace=False)), tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def load_exported(path: str | Path, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported model at ``path`` as a CPU function from images to logits, loaded as a server would:
    an onnxruntime session, or the TorchScript module with ``optimize_for_inference`` (its speed against
    eager PyTorch: README, Performance). Only loading is silenced: calls stay thread-safe."""
    if fmt == "onnx":
        session = onnx_session(path)
        return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with _quiet():
        module = torch.jit.optimize_for_inference(torch.jit.load(str(path), map_location="cpu"))

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)
    return forward


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
           seed: int = 0) -> dict[str, float]:
    """Max abs difference between PyTorch's and the exported model's logits on one random batch, and the
    largest |logit| of PyTorch's (the scale of fp32 rounding)."""
    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model.eval().cpu().float()(x)
    return {"max_abs_diff": (load_exported(path, fmt)(x) - expected).abs().max().item(),
            "max_abs_logit": expected.abs().max().item()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint written by this toolkit (e.g. check_points/step_020.pt)")
    parser.add_argument("--format", choices=FORMATS, required=True, help="onnx | torchscript")
    parser.add_argument("--out", required=True, help="file to write")
    parser.add_argument("--image-size", type=int, default=32, help="side of the parity-check images [default: 32]")
    parser.add_argument("--batch", type=int, default=4, help="images in the parity check [default: 4]")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted max abs diff, per unit of max(1, largest |logit|) [default: 1e-4]")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    if args.image_size < 1 or args.batch < 1:
        raise UserError(f"--image-size {args.image_size} / --batch {args.batch}: both must be >= 1")
    model, _ = load_pruned(args.checkpoint)
    path = export(model, args.format, args.out, args.image_size)
    check = parity(model, path, args.format, args.image_size, args.batch)
    diff, limit = check["max_abs_diff"], args.tolerance * max(1.0, check["max_abs_logit"])
    print(f"{args.format}: {path} ({path.stat().st_size / 1e6:.1f} MB) | parity max abs diff {diff:.2e} "
          f"(limit {limit:.1e}: logits up to {check['max_abs_logit']:.3g}) "
          f"on {args.batch} images at {args.image_size} px")
    if not diff <= limit:
        raise UserError(f"the exported model differs from PyTorch by {diff:.2e} (> {limit:.1e} = --tolerance "
                        f"{args.tolerance} x max(1, largest |logit|)); "
                        f"do not deploy {path}")
    return {"format": args.format, "out": str(path), **check}


def main(argv: list[str] | None = None) -> dict | None:
    return run_cli(lambda: run(parse_args(argv)), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
