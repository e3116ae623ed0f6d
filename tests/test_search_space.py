"""search.space and search.config: param names, plans from params, sub-step arithmetic (no training)."""
from __future__ import annotations

import dataclasses
import importlib
import json
import random
from pathlib import Path

import optuna
import pytest

from distill.config import make_config
from distill.engine import matching_steps
from pruning.errors import UserError
from pruning.model import build_resnet50, channel_plan
from pruning.plan import exact_ratios, substep_plans, target_plan, uniform_plans
from search.config import SEARCH_PRESETS, SearchConfig
from search.retrain import RetrainConfig, retrain_schedule, screened_plan
from search.retrain import parse as retrain_parse
from search.space import (PlanSize, baseline_plans, budget_steps, check_target, fit_ratios, kd_param_names,
                          layer_ratios, plan_param_names, ratio_params, suggest)
from search.storage import open_storage

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
@pytest.mark.parametrize("mean_ratio", [False, True])
def test_suggest_records_named_params_and_maps_them_to_layers(space, search_kd, mean_ratio):
    cfg = make_config(SearchConfig, {"space": space, "search_kd": search_kd, "max_ratio": 0.5,
                                     "mean_ratio": mean_ratio})
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()
    ratios, changes = suggest(trial, cfg, LAYERS)
    assert set(ratios) == set(LAYERS) and all(0.0 <= r <= 0.5 for r in ratios.values())
    assert ratios == layer_ratios(trial.params, LAYERS, space, 0.5)
    assert 1.0 <= changes["temperature"] <= 20.0 and 0.0 <= changes["alpha"] <= 1.0
    groups = {"mean_ratio", *ratio_params(LAYERS, space, "share")} if mean_ratio else set(ratio_params(LAYERS, space))
    assert set(trial.params) == groups | set(changes)
    # the names --warm-from checks a carried pick against
    assert set(plan_param_names(cfg, LAYERS)) == groups and kd_param_names(cfg) == list(changes)
    assert ("kd" in changes and "beta" in changes) == search_kd
    if space == "stage":  # every layer of a stage shares its stage's ratio
        assert ratios["layer3.0.conv1"] == ratios["layer3.5.conv2"]
        assert mean_ratio or ratios["layer3.0.conv1"] == trial.params["ratio/layer3"]


def test_mean_ratio_sets_the_mean_and_samples_plans_of_every_size():
    """Issue 12: independent per-layer ratios average out to mid-size plans; --mean-ratio makes the mean
    one param, so the budgets near either end of the range get sampled too."""
    shares = {name: 0.1 + 0.8 * (i % 5) / 4 for i, name in enumerate(ratio_params(LAYERS, "layer", "share"))}
    ratios = layer_ratios({"mean_ratio": 0.3, **shares}, LAYERS, "layer", 0.9)
    assert sum(ratios.values()) / len(ratios) == pytest.approx(0.3)  # nothing clipped at 0.3: the mean exactly
    assert ratios["layer1.0.conv1"] < ratios["layer1.1.conv1"]  # shares order the layers
    assert set(layer_ratios({"mean_ratio": 0.6, **{n: 0.0 for n in shares}}, LAYERS, "layer", 0.9).values()) == {0.6}
    assert max(layer_ratios({"mean_ratio": 0.8, **shares}, LAYERS, "layer", 0.9).values()) == 0.9  # capped
    sizes = {}
    for mean_ratio in (False, True):
        cfg = make_config(SearchConfig, {"mean_ratio": mean_ratio, "trial_epochs": 0, "bn_calib_batches": 1})
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(0))
        kept = [sum(target_plan(DENSE, suggest(study.ask(), cfg, LAYERS)[0]).values()) for _ in range(200)]
        sizes[mean_ratio] = sorted(kept)[10], sorted(kept)[189]  # 5th and 95th percentiles of kept channels
    dense = sum(DENSE.values())
    assert sizes[False][0] > 0.4 * dense and sizes[False][1] < 0.75 * dense  # mid-size plans only
    assert sizes[True][0] < 0.35 * dense and sizes[True][1] > 0.9 * dense


SIZE = PlanSize.of(build_resnet50(2), 32)


@pytest.mark.parametrize("space", ["layer", "stage", "block"])
def test_target_params_puts_every_plan_just_below_the_budget(space):
    """Issue 12: sampled sizes left a budget's 10 % window nearly empty; --target-params fits each trial's
    tilts to the largest plan within the budget, so every screen is spent there."""
    target = 8_000_000
    cfg = make_config(SearchConfig, {"target_params": target, "space": space, "trial_epochs": 0,
                                     "bn_calib_batches": 1})
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(0))
    for _ in range(20):
        trial = study.ask()
        ratios, _ = suggest(trial, cfg, LAYERS, SIZE)
        assert set(trial.params) == set(ratio_params(LAYERS, space, "tilt"))  # the size is not a param
        assert plan_param_names(cfg, LAYERS) == ratio_params(LAYERS, space, "tilt") and not kd_param_names(cfg)
        assert 0.99 * target <= SIZE.count(target_plan(DENSE, ratios)) <= target
        assert max(ratios.values()) <= cfg.max_ratio
    uneven = {name: (3.0 if name.startswith("tilt/layer4") else -3.0) for name in ratio_params(LAYERS, space, "tilt")}
    ratios = fit_ratios(uneven, LAYERS, cfg, SIZE)
    assert cfg.max_ratio > ratios["layer4.0.conv1"] > ratios["layer1.0.conv1"] > 0  # tilted, never capped
    with pytest.raises(UserError, match="--target-params 1,000,000: the smallest plan, every layer at --max-ratio"):
        fit_ratios(uneven, LAYERS, dataclasses.replace(cfg, target_params=1_000_000), SIZE)
    with pytest.raises(UserError, match="--mean-ratio and --target-params/--target-flops: give one"):
        make_config(SearchConfig, {"target_params": target, "mean_ratio": True})


def test_target_flops_fits_every_plan_within_both_budgets():
    """--equal-flops' studies (benchmarks/search_vs_baseline.py): at the uniform plan's params and MACs, a shape
    that keeps layer1 (large maps) gives up params to stay within the MACs; one that keeps layer4 is held by its
    params. Each plan is the largest of its shape within both: one of the two budgets is met within 1 %."""
    uniform = uniform_plans(DENSE, {n: 0.3 for n in LAYERS}, 2)[-1]
    params, flops = SIZE.count(uniform), SIZE.flops(uniform)
    cfg = make_config(SearchConfig, {"target_params": params, "target_flops": flops, "space": "stage",
                                     "steps": 2, "ratio": 0.3, "trial_epochs": 0, "bn_calib_batches": 1})
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(2))
    for _ in range(10):
        plan = target_plan(DENSE, suggest(study.ask(), cfg, LAYERS, SIZE)[0])
        assert SIZE.count(plan) <= params and SIZE.flops(plan) <= flops
        assert max(SIZE.count(plan) / params, SIZE.flops(plan) / flops) >= 0.99
    shapes = {stage: {f"tilt/layer{i}": (2.0 if f"layer{i}" == stage else -2.0) for i in range(1, 5)}
              for stage in ("layer1", "layer4")}  # tilt +: pruned more; the other stages kept
    keeps_layer1 = target_plan(DENSE, fit_ratios(shapes["layer4"], LAYERS, cfg, SIZE))
    keeps_layer4 = target_plan(DENSE, fit_ratios(shapes["layer1"], LAYERS, cfg, SIZE))
    assert SIZE.flops(keeps_layer1) >= 0.99 * flops and SIZE.count(keeps_layer1) < 0.95 * params
    assert SIZE.count(keeps_layer4) >= 0.99 * params and SIZE.flops(keeps_layer4) < flops
    only_flops = dataclasses.replace(cfg, target_params=0)  # a MACs budget alone
    own = baseline_plans(only_flops, DENSE, SIZE)  # the baseline's plan nearest in MACs: step 2's, exactly
    assert len(own) == 1 and target_plan(DENSE, fit_ratios(own[0], LAYERS, only_flops, SIZE)) == uniform
    alone = target_plan(DENSE, fit_ratios(shapes["layer1"], LAYERS, only_flops, SIZE))
    assert 0.99 * flops <= SIZE.flops(alone) <= flops and SIZE.count(alone) > params
    own = baseline_plans(cfg, DENSE, SIZE)  # the uniform plan at its own params and MACs: itself
    assert len(own) == 1 and target_plan(DENSE, fit_ratios(own[0], LAYERS, cfg, SIZE)) == uniform
    with pytest.raises(UserError, match="--target-flops 1,000: the smallest plan, every layer at --max-ratio 0.9"):
        check_target(dataclasses.replace(cfg, target_flops=1_000), SIZE)
    with pytest.raises(UserError, match="--mean-ratio and --target-params/--target-flops: give one"):
        make_config(SearchConfig, {"target_flops": flops, "mean_ratio": True})


def test_random_tilts_give_distinct_plans_even_at_a_quarter_of_the_params():
    """Shares (ratio = scale x share, capped at --max-ratio) collapsed there: the scale capped every stage but
    the least-shared one, and 5 of 12 random screens of a study were one plan (8 of 30 draws repeat a plan
    here, 19 have two or more stages at the cap). Tilts never cap: distinct draws, distinct plans."""
    uniform = uniform_plans(DENSE, {n: 0.3 for n in LAYERS}, 4)[-1]  # 4 baseline steps of 0.3
    cfg = make_config(SearchConfig, {"target_params": SIZE.count(uniform), "space": "stage", "trial_epochs": 0,
                                     "bn_calib_batches": 1})
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(1))
    plans = [target_plan(DENSE, suggest(study.ask(), cfg, LAYERS, SIZE)[0]) for _ in range(30)]
    assert len({tuple(p.values()) for p in plans}) == 30


def test_target_params_edge_cases():
    cfg = make_config(SearchConfig, {"target_params": 8_000_000, "trial_epochs": 0, "bn_calib_batches": 1})
    zeros = {name: 0.0 for name in ratio_params(LAYERS, "layer", "tilt")}
    uniform = fit_ratios(zeros, LAYERS, cfg, SIZE)  # no layer preferred: one ratio for all
    assert len(set(uniform.values())) == 1 and SIZE.count(target_plan(DENSE, uniform)) <= 8_000_000
    dense = dataclasses.replace(cfg, target_params=SIZE.count(DENSE))
    assert target_plan(DENSE, fit_ratios(zeros, LAYERS, dense, SIZE)) == DENSE  # the teacher itself fits
    rounded = dataclasses.replace(cfg, round_to=8, space="stage")
    tilts = {"tilt/layer1": -2.0, "tilt/layer2": 0.0, "tilt/layer3": 2.5, "tilt/layer4": 0.5}
    plan = target_plan(DENSE, fit_ratios(tilts, LAYERS, rounded, SIZE), 8)
    assert all(c % 8 == 0 for c in plan.values()) and 0.97 * 8_000_000 <= SIZE.count(plan) <= 8_000_000
    smallest = target_plan(DENSE, dict.fromkeys(LAYERS, cfg.max_ratio))
    at_smallest = dataclasses.replace(cfg, target_params=SIZE.count(smallest))  # the offset's upper end
    assert target_plan(DENSE, fit_ratios(zeros, LAYERS, at_smallest, SIZE)) == smallest
    check_target(cfg, SIZE)
    with pytest.raises(UserError, match="--target-params 100,000: the smallest plan, every layer at --max-ratio 0.9"):
        check_target(dataclasses.replace(cfg, target_params=100_000), SIZE)


def test_a_retrain_takes_the_widths_the_trial_screened():
    widths = {f"ch/{layer}": c // 2 for layer, c in DENSE.items()}
    trial = optuna.trial.create_trial(values=[50.0, 1e6], params={}, distributions={}, user_attrs=widths)
    assert screened_plan(trial, LAYERS) == {layer: c // 2 for layer, c in DENSE.items()}
    del widths["ch/layer2.1.conv2"]
    with pytest.raises(UserError, match="records no width for layer2.1.conv2"):
        screened_plan(optuna.trial.create_trial(values=[50.0, 1e6], user_attrs=widths), LAYERS)


@pytest.mark.parametrize("space", ["layer", "stage", "block"])
def test_the_baseline_plan_at_its_own_size_is_enqueued_and_fitted_exactly(space):
    cfg = make_config(SearchConfig, {"steps": 4, "ratio": 0.3, "space": space, "trial_epochs": 0,
                                     "bn_calib_batches": 1})
    uniform = uniform_plans(DENSE, {n: 0.3 for n in LAYERS}, 4)
    for k in (1, 2, 4):
        at_budget = dataclasses.replace(cfg, target_params=SIZE.count(uniform[k - 1]))
        plans = baseline_plans(at_budget, DENSE, SIZE)
        assert len(plans) == 1 and "mean_ratio" not in plans[0]
        assert target_plan(DENSE, fit_ratios(plans[0], LAYERS, at_budget, SIZE)) == uniform[k - 1]
    between = dataclasses.replace(cfg, target_params=(SIZE.count(uniform[0]) + 3 * SIZE.count(uniform[1])) // 4)
    assert baseline_plans(between, DENSE, SIZE) == baseline_plans(
        dataclasses.replace(cfg, target_params=SIZE.count(uniform[1])), DENSE, SIZE)  # the nearest: step 2's


def test_a_baseline_plan_the_tilts_cannot_give_exactly_is_not_enqueued():
    """--round-to 8 --ratio 0.1 keeps every 64-channel layer whole (58 rounds up to 64): a ratio of 0, a tilt of
    -inf. Enqueued anyway it would be another plan; left out, the search says so (search/__main__.py)."""
    cfg = make_config(SearchConfig, {"steps": 4, "ratio": 0.1, "round_to": 8, "space": "stage", "trial_epochs": 0,
                                     "bn_calib_batches": 1})
    kept = uniform_plans(DENSE, {n: 0.1 for n in LAYERS}, 4, 8)[0]
    assert kept["layer1.0.conv1"] == DENSE["layer1.0.conv1"]
    assert baseline_plans(dataclasses.replace(cfg, target_params=SIZE.count(kept)), DENSE, SIZE) == []
    assert len(baseline_plans(dataclasses.replace(cfg, round_to=1, target_params=SIZE.count(kept)), DENSE, SIZE)) == 1


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
@pytest.mark.parametrize("mean_ratio", [False, True])
def test_baseline_plans_have_the_widths_of_k_iterated_baseline_steps(space, mean_ratio):
    """Issue 11: the floor rule applied k times (64 -> 57 -> 51 ...), not a one-shot 1 - 0.9^k ratio."""
    cfg = make_config(SearchConfig, {"steps": 20, "ratio": 0.1, "max_ratio": 0.9, "space": space,
                                     "mean_ratio": mean_ratio})
    plans = baseline_plans(cfg, DENSE)
    expected = uniform_plans(DENSE, {n: 0.1 for n in LAYERS}, 20)
    assert [target_plan(DENSE, layer_ratios(p, LAYERS, space, 0.9)) for p in plans] == [expected[k - 1]
                                                                                       for k in (5, 10, 20)]
    last = layer_ratios(plans[-1], LAYERS, space, 0.9)["layer1.0.conv1"]
    assert last != pytest.approx(1 - 0.9 ** 20)  # what the one-shot rule gave
    assert all(p["temperature"] == 5.0 and p["alpha"] == 0.7 for p in plans)
    capped = baseline_plans(make_config(SearchConfig, {"steps": 20, "max_ratio": 0.5, "space": space}), DENSE)
    assert len(capped) == 1  # plans beyond --max-ratio are outside the space and left out


@pytest.mark.parametrize("changes, flag", [({"val_fraction": 0.0}, "--val-fraction"),
                                           ({"max_ratio": 1.0}, "--max-ratio"),
                                           ({"n_workers": 0}, "--n-workers"),
                                           ({"sampler": "cmaes"}, "--sampler"),
                                           ({"objective_cost": "energy"}, "--objective-cost"),
                                           ({"study_name": "a/b"}, "--study-name"),
                                           ({"search_kd": True, "tune_kd": False}, "--no-tune-kd")])
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
    ratios = {n: 0.2 for n in LAYERS}
    uniform = uniform_plans(DENSE, ratios, 4)
    schedule = retrain_schedule(DENSE, uniform[3], 4, ratios, cfg)
    assert [s.widths for s in schedule[:4]] == uniform and schedule[4].phase == "final"
    other = target_plan(DENSE, {n: 0.5 for n in LAYERS})
    assert retrain_schedule(DENSE, other, 4, ratios, cfg)[3].widths == other
    assert budget_steps(20) == [5, 10, 20] and budget_steps(1) == [1] and budget_steps(0) == []


def test_a_ratios_file_gives_the_baselines_plans_to_the_search_and_the_retrain(tmp_path):
    """With --ratios the baseline prunes each layer by its own ratio: the enqueued plans, the steps a
    retrain matches and the retrain's widths are that baseline's, not --ratio's."""
    ratios = {n: (0.3 if n.startswith("layer4") else 0.1) for n in LAYERS}
    path = tmp_path / "ratios.json"
    path.write_text(json.dumps({n: r for n, r in ratios.items() if r != 0.1}))
    baseline = uniform_plans(DENSE, ratios, 4)
    assert matching_steps(DENSE, baseline[2], ratios) == 3
    assert matching_steps(DENSE, baseline[2], {n: 0.1 for n in LAYERS}) > 3  # --ratio's steps: more of them
    for space in ("layer", "stage"):  # layer4's layers share one ratio: the stage space holds these plans
        cfg = make_config(SearchConfig, {"steps": 4, "ratio": 0.1, "ratios": str(path), "space": space})
        plans = baseline_plans(cfg, DENSE)
        assert [target_plan(DENSE, layer_ratios(p, LAYERS, space, 0.9)) for p in plans] == [baseline[0], baseline[1],
                                                                                           baseline[3]]
    ratios["layer4.0.conv1"] = 0.2  # differs within layer4: outside the stage space
    path.write_text(json.dumps({n: r for n, r in ratios.items() if r != 0.1}))
    assert baseline_plans(make_config(SearchConfig, {"steps": 4, "ratios": str(path), "space": "stage"}), DENSE) == []
    assert len(baseline_plans(make_config(SearchConfig, {"steps": 4, "ratios": str(path)}), DENSE)) == 3
    cfg = make_config(RetrainConfig, {"steps": 4, "epochs_per_step": 1, "final_epochs": 0})
    schedule = retrain_schedule(DENSE, uniform_plans(DENSE, ratios, 3)[2], 3, ratios, cfg)
    assert [s.widths for s in schedule] == uniform_plans(DENSE, ratios, 3)


def test_a_retrain_scores_on_the_baselines_test_set_not_on_the_screens_subset(tmp_path):
    """A screen's --val-subset also cuts the test set; a retrain that inherited it was scored on other images
    than the baseline and the same widths 'won' by 2 points (issue 12). The baseline's unless given."""
    storage = str(tmp_path / "studies.db")
    study = optuna.create_study(study_name="s", storage=open_storage(storage), directions=["maximize", "minimize"])
    study.set_user_attr("config", {"val_subset": 300, "val_fraction": 0.1, "lr": 3e-4, "trial_subset": 500})
    cfg = retrain_parse(["--study-name", "s", "--storage", storage])
    assert (cfg.val_subset, cfg.val_fraction, cfg.lr) == (0, 0.0, 3e-4)  # screening choices reset, the rest kept
    assert retrain_parse(["--study-name", "s", "--storage", storage, "--val-subset", "200"]).val_subset == 200


def test_a_retrain_with_the_quick_preset_scores_on_the_quick_baselines_test_subset(tmp_path):
    storage = str(tmp_path / "studies.db")
    study = optuna.create_study(study_name="s", storage=open_storage(storage), directions=["maximize", "minimize"])
    study.set_user_attr("config", {"val_subset": 300})
    assert retrain_parse(["--study-name", "s", "--storage", storage, "--preset", "quick"]).val_subset == 1000


def test_no_tune_kd_screens_with_kd_epochs_keep_the_runs_kd_settings():
    """--no-tune-kd: a trial with KD epochs samples widths alone (T and alpha stay the run's, as a retrain has
    them); with the default it samples both."""
    fixed = make_config(SearchConfig, {"trial_epochs": 1, "tune_kd": False})
    tuned = make_config(SearchConfig, {"trial_epochs": 1})
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    ratios, changes = suggest(trial, fixed, LAYERS)
    assert changes == {} and set(trial.params) == set(ratio_params(LAYERS, "layer")) and len(ratios) == 32
    assert set(suggest(study.ask(), tuned, LAYERS)[1]) == {"temperature", "alpha"}
