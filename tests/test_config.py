"""distill.config: precedence defaults < preset < config file < CLI, and loud rejection of bad keys."""
import dataclasses
import json

import pytest

from distill.config import PRESETS, RunConfig, build_parser, config_diff, make_config, parse_config
from pruning.errors import UserError
from search.config import SearchConfig


def test_precedence(tmp_path):
    assert parse_config([]) == RunConfig()
    quick = parse_config(["--preset", "quick"])
    assert quick.image_size == PRESETS["quick"]["image_size"] and quick.lr == RunConfig.lr
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"image_size": 48, "alpha": 0.5}))
    from_file = parse_config(["--preset", "quick", "--config", str(cfg_file)])
    assert (from_file.image_size, from_file.alpha, from_file.steps) == (48, 0.5, PRESETS["quick"]["steps"])
    cli = parse_config(["--preset", "quick", "--config", str(cfg_file), "--image-size", "64", "--no-amp"])
    assert (cli.image_size, cli.alpha, cli.amp) == (64, 0.5, False)


def test_run_config_json_round_trips(tmp_path):
    """A run's config.json (fields under "config") reproduces the run's config exactly."""
    cfg = make_config(overrides={"steps": 3, "ratio": 0.2})
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": dataclasses.asdict(cfg), "versions": {}}))
    assert parse_config(["--config", str(path)]) == cfg


@pytest.mark.parametrize("overrides, match", [
    ({"epochs": 3}, "unknown config key"),
    ({"ratio": 1.0}, r"--ratio 1.0: must be in \[0, 1\)"),
    ({"backend": "tp"}, "--backend 'tp': choose one of nni, torch-pruning"),
    ({"data": "mnist"}, "--data 'mnist'"),
    ({"steps": "3"}, "expected int"),
    ({"batch_size": 0}, "--batch-size 0"),
    ({"synthetic_test": -1}, "--synthetic-test -1: must be >= 0"),
])
def test_bad_values_are_user_errors(overrides, match):
    with pytest.raises(UserError, match=match):
        make_config(overrides=overrides)


def test_unknown_preset_and_flag():
    with pytest.raises(UserError, match="unknown preset"):
        make_config(preset="fast")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--epoch-per-step", "3"])  # a typo is an argparse error, not ignored


def test_config_diff_ignores_runtime_only_fields():
    a, b = dataclasses.asdict(RunConfig()), RunConfig(device="cpu", lr=1e-3, out="moved/run")
    assert config_diff(a, b) == {"lr": (1e-4, 1e-3)}


def test_a_run_recorded_before_a_field_existed_resumes_unless_the_field_changes():
    """A field added since a run was recorded counts as its default (--mean-ratio on an older study)."""
    older = {k: v for k, v in dataclasses.asdict(SearchConfig()).items() if k != "mean_ratio"}
    assert config_diff(older, SearchConfig()) == {}
    assert config_diff(older, SearchConfig(mean_ratio=True)) == {"mean_ratio": (False, True)}
