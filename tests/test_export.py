"""python -m pruning.export: ONNX / TorchScript files whose outputs match PyTorch, one-line errors."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from benchmarks.common import plan_after
from pruning import export
from pruning.checkpoint import load_pruned, save_pruned
from pruning.errors import UserError
from pruning.model import build_from_plan


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 2-step pruned ResNet50 (odd widths) with random BatchNorm statistics."""
    torch.manual_seed(0)
    model = build_from_plan(10, plan_after(2)).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("export") / "step_002.pt"
    save_pruned(path, model, {"step": 2})
    return path


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_export_matches_pytorch_within_1e_4(checkpoint, tmp_path, fmt, capsys):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"model.{fmt}"
    result = export.main([str(checkpoint), "--format", fmt, "--out", str(out)])
    assert out.is_file() and result["max_abs_diff"] <= 1e-4
    assert "parity max abs diff" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*.tmp")), "the temp file must be renamed into place"
    model, _ = load_pruned(checkpoint)
    x = torch.randn(3, 3, 32, 32)  # another batch size than the export's example: the batch axis is dynamic
    with torch.no_grad():
        expected = model(x)
    assert (export.load_exported(out, fmt)(x) - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("make_bad", ["missing", "foreign"])
def test_bad_checkpoint_is_a_one_line_error(tmp_path, capsys, make_bad):
    path = tmp_path / "bad.pt"
    if make_bad == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and str(path) in err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("diff, logit, accepted", [(5e-5, 0.3, True), (5e-4, 0.3, False),  # small logits: 1e-4
                                                   (2e-3, 45.0, True), (5e-3, 45.0, False)])  # 1e-4 x 45
def test_parity_limit_scales_with_the_largest_logit(checkpoint, tmp_path, monkeypatch, capsys, diff, logit,
                                                    accepted):
    def fake_export(model, fmt, out, image_size):  # the real export is tested above; only the check matters
        Path(out).write_bytes(b"")
        return Path(out)

    monkeypatch.setattr(export, "export", fake_export)
    monkeypatch.setattr(export, "parity", lambda *args, **kwargs: {"max_abs_diff": diff, "max_abs_logit": logit})
    argv = [str(checkpoint), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]
    if accepted:
        assert export.main(argv)["max_abs_diff"] == diff
    else:
        with pytest.raises(SystemExit):
            export.main(argv)
        assert f"differs from PyTorch by {diff:.2e}" in capsys.readouterr().err


def test_missing_onnxruntime_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match=r"\[export\]"):
        export.onnx_session(tmp_path / "m.onnx")
