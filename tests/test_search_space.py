"""search.space and search.config: param names, plans from params, sub-step arithmetic (no training)."""
from __future__ import annotations

import importlib
import random
from pathlib import Path

import optuna
import pytest

from distill.config import make_config
from pruning.errors import UserError
from pruning.model import build_resnet50, channel_plan
from pruning.plan import exact_ratios, substep_plans, target_plan, uniform_plans
from search.config import SEARCH_PRESETS, SearchConfig
from search.retrain import RetrainConfig, retrain_schedule
from search.space import baseline_plans, budget_steps, layer_ratios, ratio_params, suggest

DENSE = channel_plan(build_resnet50(2))
LAYERS = list(DENSE)


@pytest.mark.parametrize("space, count, example", [("layer", 32, "ratio/layer3.2.conv1"),
                                                   ("stage", 4, "ratio/layer3"),
                                                   ("block", 16, "ratio/layer3.2")])
def test_param_names_per_space(space, count, example):
    names = ratio_params(LAYERS, space)
    assert len(names) == count and example in names


@pytest.mark.parametrize("space", ["layer", "stage", "block"])
@pytest.mark.parametrize("search_kd", [False, True])
def test_suggest_records_named_params_and_maps_them_to_layers(space, search_kd):
    cfg = make_config(SearchConfig, {"space": space, "search_kd": search_kd, "max_ratio": 0.5})
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()
    ratios, changes = suggest(trial, cfg, LAYERS)
    assert set(ratios) == set(LAYERS) and all(0.0 <= r <= 0.5 for r in ratios.values())
    assert ratios == layer_ratios(trial.params, LAYERS, space)
    assert 1.0 <= changes["temperature"] <= 20.0 and 0.0 <= changes["alpha"] <= 1.0
    assert set(trial.params) == set(ratio_params(LAYERS, space)) | set(changes)
    assert ("kd" in changes and "beta" in changes) == search_kd
    if space == "stage":  # every layer of a stage shares its stage's ratio
        assert ratios["layer3.0.conv1"] == ratios["layer3.5.conv2"] == trial.params["ratio/layer3"]


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
@pytest.mark.parametrize("round_to", [1, 8])
def test_substeps_end_exactly_at_the_target_plan(steps, round_to):
    rng = random.Random(steps * 10 + round_to)
    for _ in range(20):
        ratios = {name: rng.uniform(0.0, 0.95) for name in LAYERS}
        target = target_plan(DENSE, ratios, round_to)
        plans = substep_plans(DENSE, target, steps, round_to)
        assert len(plans) == steps and plans[-1] == target
        current = dict(DENSE)
        for plan in plans:  # each sub-step is reachable from the one before by the floor rule
            assert target_plan(current, exact_ratios(current, plan), round_to) == plan
            assert all(target[n] <= plan[n] <= current[n] for n in LAYERS)  # never below the target on the way
            current = plan


@pytest.mark.parametrize("space", ["layer", "stage", "block"])
def test_baseline_plans_have_the_widths_of_k_iterated_baseline_steps(space):
    """Issue 11: the floor rule applied k times (64 -> 57 -> 51 ...), not a one-shot 1 - 0.9^k ratio."""
    cfg = make_config(SearchConfig, {"steps": 20, "ratio": 0.1, "max_ratio": 0.9, "space": space})
    plans = baseline_plans(cfg, DENSE)
    expected = uniform_plans(DENSE, {n: 0.1 for n in LAYERS}, 20)
    assert [target_plan(DENSE, layer_ratios(p, LAYERS, space)) for p in plans] == [expected[k - 1] for k in (5, 10, 20)]
    assert plans[-1]["ratio/layer1.0.conv1" if space == "layer" else "ratio/layer1" if space == "stage"
                     else "ratio/layer1.0"] != pytest.approx(1 - 0.9 ** 20)  # what the one-shot rule gave
    assert all(p["temperature"] == 5.0 and p["alpha"] == 0.7 for p in plans)
    capped = baseline_plans(make_config(SearchConfig, {"steps": 20, "max_ratio": 0.5, "space": space}), DENSE)
    assert len(capped) == 1  # plans beyond --max-ratio are outside the space and left out


@pytest.mark.parametrize("changes, flag", [({"val_fraction": 0.0}, "--val-fraction"),
                                           ({"max_ratio": 1.0}, "--max-ratio"),
                                           ({"n_workers": 0}, "--n-workers"),
                                           ({"sampler": "cmaes"}, "--sampler"),
                                           ({"objective_cost": "energy"}, "--objective-cost"),
                                           ({"study_name": "a/b"}, "--study-name")])
def test_bad_search_flags_are_user_errors(changes, flag):
    with pytest.raises(UserError, match=flag):
        make_config(SearchConfig, changes)


def test_search_defaults_and_presets():
    cfg = make_config(SearchConfig)
    assert (cfg.out, cfg.val_fraction, cfg.storage, cfg.sampler) == ("runs/search", 0.1, "studies.db", "gp")
    demo = make_config(SearchConfig, preset="demo", presets=SEARCH_PRESETS)
    assert demo.data == "shapes" and demo.study_dir.as_posix() == "runs/search/demo"


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "random"])
def test_samplers_run_two_objectives_with_a_budget_constraint(sampler):
    """Every --sampler accepts the space, both directions and set_constraint (budgets), without training."""
    from search.worker import make_sampler

    cfg = make_config(SearchConfig, {"space": "stage", "sampler": sampler})
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(cfg, seed=0))
    sizes = {}

    def objective(trial):
        ratios, changes = suggest(trial, cfg, LAYERS)
        kept = sum(target_plan(DENSE, ratios).values())
        sizes[trial.number] = kept
        trial.set_constraint("params", kept - 3000)  # a budget of 3000 kept channels
        return changes["alpha"], kept

    study.optimize(objective, n_trials=12)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    feasible = {n for n, kept in sizes.items() if kept <= 3000}
    assert {t.number for t in study.best_trials} <= feasible


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("studies/*.json")),
                         ids=lambda p: p.name)
def test_example_studies_are_valid_configs(path):
    cfg = make_config(SearchConfig, config_file=str(path), presets=SEARCH_PRESETS)
    assert cfg.study_name == path.stem and cfg.val_fraction > 0  # one file per study, named after it


@pytest.mark.parametrize("module, flags", [("search.__main__", ("--n-workers", "--max-ratio", "--study-name")),
                                           ("search.retrain", ("--trials", "--prune-steps", "--study-name"))])
def test_help_lists_the_commands_flags(module, flags, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and all(flag in out for flag in flags) and "python -m search" in out


def test_screens_without_kd_epochs_sample_no_kd_settings():
    """With --trial-epochs 0 (BN-recalibration screens) T and alpha are never scored: not sampled, so the
    retrain uses the run's own (the baseline's) instead of unscored draws."""
    cfg = make_config(SearchConfig, {"trial_epochs": 0, "bn_calib_batches": 2, "search_kd": True})
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()
    ratios, changes = suggest(trial, cfg, LAYERS)
    assert changes == {} and set(trial.params) == set(ratio_params(LAYERS, "layer")) and len(ratios) == 32


def test_a_retrained_baseline_plan_goes_through_the_baselines_widths():
    cfg = make_config(RetrainConfig, {"steps": 4, "ratio": 0.2, "epochs_per_step": 1, "final_epochs": 2})
    uniform = uniform_plans(DENSE, {n: 0.2 for n in LAYERS}, 4)
    schedule = retrain_schedule(DENSE, uniform[3], 4, cfg)
    assert [s.widths for s in schedule[:4]] == uniform and schedule[4].phase == "final"
    other = target_plan(DENSE, {n: 0.5 for n in LAYERS})
    assert retrain_schedule(DENSE, other, 4, cfg)[3].widths == other
    assert budget_steps(20) == [5, 10, 20] and budget_steps(1) == [1] and budget_steps(0) == []
