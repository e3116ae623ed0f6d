"""distill.sensitivity (issue 4): each layer pruned alone, evaluated without retraining; resumable CLI."""
from __future__ import annotations

import pytest
import torch

import distill.sensitivity as sensitivity
from distill.results import read_csv
from pruning.checkpoint import save_pruned
from pruning.measure import count_params
from pruning.model import build_resnet50

DATA = ["--data", "synthetic", "--synthetic-classes", "4", "--synthetic-train", "32", "--image-size", "32",
        "--batch-size", "32", "--device", "cpu", "--no-progress", "--backend", "torch-pruning"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    model = build_resnet50(4, "none").eval()
    path = tmp_path_factory.mktemp("sens") / "teacher.pt"
    save_pruned(path, model, {"phase": "teacher"})
    return path, count_params(model)


def test_each_layer_is_pruned_alone_and_a_rerun_resumes(teacher, tmp_path, monkeypatch):
    path, dense_params = teacher
    argv = [*DATA, "--teacher", str(path), "--ratio", "0.5", "--layers", "layer1.0.conv1", "layer4.2.conv2",
            "--out", str(tmp_path)]
    rows = sensitivity.main(argv)
    assert [(r["layer"], r["channels"], r["kept"]) for r in rows] == [("layer1.0.conv1", 64, 32),
                                                                       ("layer4.2.conv2", 512, 256)]
    for r in rows:
        assert r["params"] < dense_params
        assert r["drop_top1"] == pytest.approx(r["base_val_top1"] - r["val_top1"], abs=1e-3)
    assert read_csv(tmp_path / "sensitivity.csv") == rows
    fig = sensitivity.sensitivity_figure(rows)
    assert len(fig.data) == 1 and list(fig.data[0].x) == ["layer1.0.conv1", "layer4.2.conv2"]
    assert (tmp_path / "sensitivity.html").read_text().count("Plotly.newPlot") == 1

    def no_pruning(*args, **kwargs):
        raise AssertionError("a finished layer was pruned again")

    monkeypatch.setattr(sensitivity, "prune_step", no_pruning)
    assert sensitivity.main(argv) == rows


def test_ratio_zero_leaves_accuracy_unchanged(teacher, tmp_path):
    """Without retraining, evaluation is deterministic: removing no channel must cost exactly nothing."""
    path, dense_params = teacher
    (row,) = sensitivity.main([*DATA, "--teacher", str(path), "--ratio", "0", "--layers", "layer3.1.conv2",
                               "--out", str(tmp_path)])
    assert row["kept"] == row["channels"] == 256 and row["params"] == dense_params
    assert row["drop_top1"] == 0 and row["drop_top5"] == 0


@pytest.mark.parametrize("extra, message", [
    ([], "--teacher is required"),
    (["--teacher", "TEACHER", "--layers", "layer3.1.conv3"], "unknown layer name(s) ['layer3.1.conv3']"),
])
def test_bad_input_is_a_one_line_error(teacher, tmp_path, capsys, extra, message):
    extra = [str(teacher[0]) if a == "TEACHER" else a for a in extra]
    with pytest.raises(SystemExit) as exc:
        sensitivity.main([*DATA, *extra, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
