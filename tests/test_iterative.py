"""baselines/iterative.py end to end on tiny synthetic data: outputs, resume, clear errors."""
import json

import pytest
import torch

import distill.engine
import distill.pipeline
from baselines import iterative
from conftest import tiny_argv
from distill.config import make_config
from distill.results import read_csv
from pruning.checkpoint import load_pruned
from pruning.measure import count_params
from pruning.model import build_from_plan, channel_plan
from pruning.plan import target_plan
from search.config import SearchConfig
from search.space import baseline_plans, layer_ratios


def run(cfg, **changes):
    return iterative.main(tiny_argv(cfg, **changes))


def test_run_writes_a_self_describing_directory(tiny_cfg, tmp_path):
    rows = run(tiny_cfg, steps=2, final_epochs=1)
    out = tmp_path / "run"
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert [r["phase"] for r in rows] == ["teacher", "prune", "prune", "final"]
    assert rows[0]["params"] > rows[1]["params"] > rows[2]["params"] == rows[3]["params"]
    csv_rows = read_csv(out / "pruning_logs.csv")
    for col in ("step", "params", "size_mb", "flops", "val_top1", "val_top5", "train_loss", "epochs",
                "train_wall_s", "prune_wall_s", "ch/layer1.0.conv1"):
        assert col in csv_rows[0], col
    assert csv_rows[1]["ch/layer1.0.conv1"] == 58 and csv_rows[2]["ch/layer1.0.conv1"] == 53
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["steps"] == 2 and meta["versions"]["torch"] == torch.__version__.split("+")[0] \
        or meta["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    assert "git_commit" in meta
    for step in range(4):
        model, _ = load_pruned(out / "check_points" / f"step_{step:03d}.pt")
        assert channel_plan(model)["layer1.0.conv1"] == csv_rows[step]["ch/layer1.0.conv1"]
    assert not (out / "check_points" / "partial.pt").exists()
    assert (out / "accu_over_params.html").stat().st_size > 100_000
    assert any((out / "tb").iterdir())


def test_rerun_resumes_without_redoing_or_duplicating(tiny_cfg, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    real = distill.pipeline.prune_step

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill in step 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(distill.engine, "prune_step", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg, steps=2)
    assert [r["step"] for r in read_csv(out / "pruning_logs.csv")] == [0, 1]
    step1 = (out / "check_points" / "step_001.pt").stat().st_mtime_ns
    monkeypatch.setattr(distill.engine, "prune_step", real)
    rows = run(tiny_cfg, steps=2)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert (out / "check_points" / "step_001.pt").stat().st_mtime_ns == step1  # not redone
    again = run(tiny_cfg, steps=2)  # a finished run: nothing to do, nothing duplicated
    assert [r["step"] for r in again] == [0, 1, 2]
    assert [r["step"] for r in read_csv(out / "pruning_logs.csv")] == [0, 1, 2]


def test_resumed_run_equals_uninterrupted_run(tiny_cfg, tmp_path, monkeypatch):
    whole = run(tiny_cfg, steps=1, out=str(tmp_path / "whole"))

    def kill_after_first_epoch(epoch, metrics):
        raise KeyboardInterrupt("simulated kill after an epoch of step 1")

    original = iterative.TBLogger.epoch_logger
    monkeypatch.setattr(iterative.TBLogger, "epoch_logger",
                        lambda self, stage: kill_after_first_epoch if stage == "step_001" else original(self, stage))
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg, steps=1, epochs_per_step=2, out=str(tmp_path / "split"))
    monkeypatch.undo()
    assert (tmp_path / "split" / "check_points" / "partial.pt").exists()
    resumed = run(tiny_cfg, steps=1, epochs_per_step=2, out=str(tmp_path / "split"))
    straight = run(tiny_cfg, steps=1, epochs_per_step=2, out=str(tmp_path / "straight"))
    assert whole[0]["params"] == resumed[0]["params"]
    for a, b in zip(resumed, straight):
        assert a["params"] == b["params"]
        assert a["val_top1"] == pytest.approx(b["val_top1"], abs=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_changed_config_is_refused_then_forced(tiny_cfg, capsys):
    run(tiny_cfg, steps=1)
    with pytest.raises(SystemExit) as exc:
        run(tiny_cfg, steps=1, lr=0.5)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "lr: 0.0001 -> 0.5" in err and "--force" in err and "Traceback" not in err


@pytest.mark.parametrize("changes, match", [
    ({"ratio": 1.5}, "--ratio 1.5"),
    ({"data": "cifar100", "download": False}, "CIFAR-100 is not in"),
    ({"teacher": "nope.pt"}, "does not exist"),
])
def test_bad_input_exits_2_with_one_line(tiny_cfg, capsys, changes, match, tmp_path):
    with pytest.raises(SystemExit) as exc:
        run(tiny_cfg, data_dir=str(tmp_path / "datasets"), **changes)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and match in err and len(err.splitlines()) == 1


def test_unknown_layer_in_ratios_file(tiny_cfg, tmp_path, capsys):
    ratios = tmp_path / "ratios.json"
    ratios.write_text(json.dumps({"layer1.0.conv9": 0.2}))
    with pytest.raises(SystemExit):
        run(tiny_cfg, ratios=str(ratios))
    assert "layer1.0.conv9" in capsys.readouterr().err


def test_teacher_with_wrong_class_count(tiny_cfg, tmp_path, capsys):
    run(tiny_cfg, steps=0, out=str(tmp_path / "ten"), synthetic_classes=10)
    teacher = tmp_path / "ten" / "check_points" / "step_000.pt"
    with pytest.raises(SystemExit):
        run(tiny_cfg, teacher=str(teacher))
    assert "10 classes but the data has 4" in capsys.readouterr().err


def test_enqueued_baseline_plans_have_the_widths_and_params_of_a_real_k_step_run(tiny_cfg, tmp_path):
    """Issue 11: the search's baseline plans are the baseline's own k-step models, width for width."""
    rows = run(tiny_cfg, steps=4, teacher_epochs=0, epochs_per_step=0, backend="torch-pruning")
    dense = channel_plan(load_pruned(tmp_path / "run" / "check_points" / "step_000.pt")[0])
    for space, mean_ratio in (("layer", False), ("stage", False), ("layer", True)):
        cfg = make_config(SearchConfig, {"steps": 4, "ratio": tiny_cfg.ratio, "space": space, "mean_ratio": mean_ratio})
        plans = baseline_plans(cfg, dense)
        for k, params in zip((1, 2, 4), plans, strict=True):
            model, _ = load_pruned(tmp_path / "run" / "check_points" / f"step_{k:03d}.pt")
            widths = target_plan(dense, layer_ratios(params, list(dense), space, cfg.max_ratio))
            assert widths == channel_plan(model)
            assert count_params(build_from_plan(tiny_cfg.synthetic_classes, widths)) == rows[k]["params"]

