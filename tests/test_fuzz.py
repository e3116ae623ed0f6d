"""Issue 14: no input file, however damaged, escapes as a traceback.

The fuzz cases are benchmarks/fuzz_inputs.py's, seeded: that benchmark runs thousands per kind, this test a
few hundred of each cheap kind and fewer of the kinds that read the 11.6 MB small checkpoint or build a
model. Every case must end in the one-line UserError, or be an input that is still valid and read exactly.
Then, through each entry point's main(argv), a damaged file gives exit code 2, one line on stderr, and
leaves what was there before untouched.
"""
from __future__ import annotations

import json

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import search.retrain
import search.storage
from baselines import iterative
from benchmarks import fuzz_inputs
from benchmarks.fuzz_inputs import SMALL_PLAN, make_fixtures, run_kind
from conftest import TINY, tiny_argv
from distill import sensitivity
from distill.config import config_dict, make_config
from pruning import export
from pruning.checkpoint import save_pruned
from pruning.model import build_from_plan
from search.__main__ import main as search_main
from search.config import SearchConfig
from search.storage import open_storage
from test_reliability import error_line, search_argv

# Cases per kind, about 8 s of CPU in all: the checkpoint kinds write and read the 11.6 MB file each time.
CASES = {"ckpt-random": 300, "ckpt-truncated": 100, "ckpt-bitflip": 25, "ckpt-foreign": 300, "ckpt-structure": 15,
         "weights": 20, "config": 200, "ratios": 300, "journal": 300, "storage-url": 300, "images": 20}
NEVER_VALID = {"ckpt-random", "ckpt-truncated", "ckpt-foreign", "weights"}
MOSTLY_VALID = {"images"}  # unreadable images are skipped and counted, not an error (README, bad input)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("kind", CASES)
def test_every_fuzzed_input_is_a_one_line_user_error_or_read_exactly(kind, fx, monkeypatch):
    monkeypatch.chdir(fx.dir)  # storage-url cases create journal files at relative paths
    monkeypatch.setattr(search.storage, "SETTLE_S", 0)
    row = run_kind(kind, CASES[kind], seed=14, fx=fx)
    assert row["escapes"] == {} and row["warned"] == 0, row
    assert row["errors"] + row["ok"] == CASES[kind]
    if kind in MOSTLY_VALID:
        assert row["ok"] >= CASES[kind] // 2, row
    else:
        assert row["errors"] >= CASES[kind] // 2, row  # the generators do make bad inputs
    if kind in NEVER_VALID:
        assert row["ok"] == 0, row


def test_benchmark_smoke_writes_the_table_as_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = fuzz_inputs.main(["--smoke", "--kinds", "ckpt-random", "journal", "--json", "fuzz.json"])
    assert json.loads((tmp_path / "fuzz.json").read_text()) == json.loads(json.dumps(result))
    assert [(r["kind"], r["cases"], r["errors"] + r["ok"]) for r in result["rows"]] == [("ckpt-random", 3, 3),
                                                                                        ("journal", 3, 3)]
    assert result["escapes"] == 0 and 0 < result["digest"]["digest_cpu_s"] and result["digest"]["mb"] > 90


# --- through the entry points --------------------------------------------------------------------------------

def small_checkpoint(path) -> str:
    """The smallest real checkpoint (benchmarks/fuzz_inputs.py's SMALL_PLAN), for TINY's 4 classes."""
    torch.manual_seed(0)
    save_pruned(path, build_from_plan(4, SMALL_PLAN), {"phase": "teacher"})
    return str(path)


def flipped(path) -> str:
    """``path`` (a small checkpoint, written there if absent) with a bit flipped in its tensor data: the zip
    layer does not notice, the digest does."""
    if not path.exists():
        small_checkpoint(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    return str(path)


def exits_2(main, argv, capsys, message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in error_line(capsys.readouterr().err)


DIGEST = "its digest does not match: the file is damaged; delete it and rerun"


def test_teacher_with_a_flipped_bit_is_refused(tiny_cfg, tmp_path, capsys):
    exits_2(iterative.main, tiny_argv(tiny_cfg, teacher=flipped(tmp_path / "t.pt")), capsys, DIGEST)
    assert not list(tmp_path.rglob("pruning_logs.csv")) and not list(tmp_path.rglob("step_*.pt"))


def test_weights_file_that_is_not_a_checkpoint(tiny_cfg, tmp_path, capsys):
    (tmp_path / "w.pt").write_bytes(b"\x80\x02" + bytes(range(256)))
    exits_2(iterative.main, tiny_argv(tiny_cfg, weights=str(tmp_path / "w.pt")), capsys, "is corrupt or truncated")
    assert not list(tmp_path.rglob("step_*.pt"))


def test_resume_with_a_damaged_step_checkpoint_keeps_the_results(tiny_cfg, tmp_path, capsys):
    argv = tiny_argv(tiny_cfg, teacher=small_checkpoint(tmp_path / "t.pt"), steps=0, final_epochs=0)
    iterative.main(argv)
    run = tmp_path / "run"
    csv = (run / "pruning_logs.csv").read_bytes()
    flipped(run / "check_points" / "step_000.pt")
    damaged = (run / "check_points" / "step_000.pt").read_bytes()
    exits_2(iterative.main, argv, capsys, DIGEST)
    assert (run / "pruning_logs.csv").read_bytes() == csv
    assert (run / "check_points" / "step_000.pt").read_bytes() == damaged  # nothing rewritten


@pytest.mark.parametrize("flag, text, message", [
    ("config", '{"lr": NaN}', "config key lr=nan: expected a finite number"),
    ("config", '[[[{"steps": 1e999}]]]', "expected a JSON object of field: value, not a list"),
    ("ratios", '{"layer1.0.conv1": [0.2]}', "layer1.0.conv1=[0.2]: a pruning ratio must be in [0, 1)"),
    ("ratios", "\udcff\udcfe", "cannot read it as a JSON object of layer: ratio"),
])
def test_json_files_with_junk(flag, text, message, tiny_cfg, tmp_path, capsys):
    path = tmp_path / "f.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    argv = tiny_argv(tiny_cfg, **({"ratios": str(path)} if flag == "ratios" else {}))
    exits_2(iterative.main, argv + (["--config", str(path)] if flag == "config" else []), capsys, message)
    assert not (tmp_path / "run").exists()


def test_export_of_a_truncated_checkpoint(tmp_path, capsys):
    path = tmp_path / "m.pt"
    small_checkpoint(path)
    path.write_bytes(path.read_bytes()[:123_456])
    exits_2(export.main, [str(path), "--format", "torchscript", "--out", str(tmp_path / "m.ts")], capsys,
            "is corrupt or truncated")
    assert not (tmp_path / "m.ts").exists()


def test_sensitivity_of_a_directory(tiny_cfg, tmp_path, capsys):
    exits_2(sensitivity.main, tiny_argv(tiny_cfg, teacher=str(tmp_path)), capsys, "is a directory")
    assert not list(tmp_path.rglob("sensitivity.csv"))


def test_retrain_with_a_damaged_teacher(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make_config(SearchConfig, {**TINY, "val_fraction": 0.25, "out": "runs", "study_name": "s"})
    study = optuna.create_study(study_name="s", storage=open_storage("studies.db"), directions=["maximize", "minimize"])
    study.set_user_attr("config", config_dict(cfg))
    study.set_user_attr("teacher", flipped(tmp_path / "teacher.pt"))
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[50.0, 1e6], params={"temperature": 4.0},
                                 distributions={"temperature": FloatDistribution(1.0, 20.0, log=True)}))
    exits_2(search.retrain.main, ["--study-name", "s", "--storage", "studies.db", "--trials", "0"], capsys, DIGEST)
    assert not list(tmp_path.rglob("pruning_logs.csv"))


def test_search_with_a_journal_cut_mid_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(search.storage, "SETTLE_S", 0)
    optuna.create_study(study_name="rel", storage=open_storage("studies.db")).set_user_attr("note", "x")
    journal = (tmp_path / "studies.db").read_bytes()[:-7]
    (tmp_path / "studies.db").write_bytes(journal)
    exits_2(search_main, search_argv(), capsys, "its last line is cut off")
    assert (tmp_path / "studies.db").read_bytes() == journal
    assert not list(tmp_path.rglob("*.pt"))
