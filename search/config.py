"""The search's config: every field of the baseline's ``RunConfig`` plus the study's own fields.

Each field is a CLI flag of ``python -m search`` (``n_trials`` -> ``--n-trials``), recorded in the
study (user attr ``config``) and in ``<out>/<study_name>/config.json``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distill.config import PRESETS, RunConfig, opt
from pruning.errors import UserError

COST_NAMES = {"params": "params", "flops": "flops", "latency": "latency_ms"}


@dataclass(frozen=True)
class StudyFields:
    """Where a study is: shared by the search and the commands that read it (``search.retrain``)."""
    study_name: str = opt("resnet50-cifar100", "Optuna study name; outputs go to <out>/<study_name>/")
    storage: str = opt("studies.db", "Optuna storage: a journal file path (opens with `optuna-dashboard PATH`, safe "
                                     "for several processes and for NFS) or an RDB URL (sqlite:///x.db, "
                                     "postgresql://user:pass@host/db) for workers on many machines")

    @property
    def study_dir(self) -> Path:
        return Path(self.out) / self.study_name


@dataclass(frozen=True)
class SearchConfig(RunConfig, StudyFields):
    # --- study ---
    n_trials: int = opt(100, "run until the study has this many COMPLETE trials (a rerun tops up, nothing is redone)")
    n_workers: int = opt(1, "worker processes on this machine sharing the study (one per GPU when several are visible)")
    # GP by measurement (benchmarks/samplers.py, README "Which sampler"): on the screening study, 24 trials,
    # 3 studies each, its screening hypervolume was 0.406 +- 0.029 against TPE's 0.342 +- 0.013, random's
    # 0.310 and NSGA-II's 0.308 (random sampling until its first population of 50 is done); Optuna's
    # AutoSampler also picks GP for multi-objective numeric studies under 250 trials. Optuna 5's GPSampler
    # reads the budget constraints and conditions on running trials (parallel workers); it costs ~1 CPU s
    # per trial at 150 trials. Past a few hundred trials, NSGA-II (AutoSampler's switch, at 250). With
    # --mean-ratio on --data shapes (30 trials, 3 studies each): GP 0.353 +- 0.021, TPE 0.339 +- 0.005, random
    # 0.325, NSGA-II 0.323; GP beat TPE in 2 of 3 repeats.
    sampler: str = opt("gp", "Optuna sampler", ("tpe", "nsga2", "gp", "random"))
    # Issue 12: two studies compared on one seed (search_vs_baseline --carry-picks against its default) drew
    # different plans, which one seed could not tell from the difference under test.
    sampler_seed: int = opt(-1, "seed of the sampler: one-worker studies of one sampler seed draw the same plans (a "
                                "queued plan draws nothing), while the sampler draws at random (GP's and TPE's "
                                "first 10 trials); a command's workers add their index, so give each command its "
                                "own; -1 = from --seed, host, pid and clock (workers never collide)")
    # --- search space ---
    space: str = opt("layer", "one pruning ratio per prunable layer, per stage (layer1..4) or per bottleneck block",
                     ("layer", "stage", "block"))
    max_ratio: float = opt(0.9, "largest ratio the search may pick for a layer (0.9 keeps 10% of its channels)")
    # Independent per-layer ratios make a plan's size an average of 32 draws: random layer-space plans keep
    # 47-64 % of the channels (5th-95th percentile), so budgets near either end go unsampled (issue 12).
    mean_ratio: bool = opt(False, "sample the plan's mean ratio as one param (mean_ratio) and each group's share of "
                                  "it (share/<group>), so plans of all sizes get sampled")
    # Issue 12: a study for one budget. Sampled sizes spread a study's screens over the whole front, so a
    # budget's 10 % window held 1-6 of 30 screens, and at 25 % of the channels only the baseline's own plan.
    target_params: int = opt(0, "screen every plan at this budget: each trial's tilts (tilt/<group>, log-odds "
                                "of its ratio) set the shape of the largest plan of at most this many params "
                                "(0 = none: without --target-flops, sizes are sampled)")
    # Issue 12: at one params budget the searched plans kept channels where maps are large, at 1.14-1.53x the
    # uniform plan's MACs per image; a MACs budget beside it compares shapes at equal inference cost.
    target_flops: int = opt(0, "as --target-params in MACs per image: each plan is the largest of its shape within "
                               "this many (with --target-params, within both; 0 = none)")
    # Issue 12: at the baseline's last budget (k = 4) none of seed 17's six draws retrained above the uniform plan,
    # while on seeds 15 and 17 the k = 2 study's pick, its shape fitted to the k = 4 budget by hand, retrained +3.27
    # and +3.90 points above the baseline. Tilts are a shape, so one budget's pick is a candidate at any other.
    warm_from: str = opt("", "queue the pick of this earlier study (same --storage: its trial of lowest held-out "
                             "loss, as search.retrain --trials lowest-loss) as a first trial, after the baseline's "
                             "plans; with --target-params/--target-flops its shape is fitted to this budget")
    # Off: screens with KD epochs score widths alone, at the KD settings a retrain keeps (search_vs_baseline).
    tune_kd: bool = opt(True, "trials with KD epochs also sample --temperature and --alpha (off: every trial keeps "
                              "the run's)")
    search_kd: bool = opt(False, "also search the KD loss (--kd choices), --beta and --dkd-beta (log scale)")
    # --- objectives and budgets ---
    objective_cost: str = opt("params", "second objective, minimised: params, flops (MACs) or latency (ms, batch 1, "
                                        "on the run's device)", tuple(COST_NAMES))
    max_params: int = opt(0, "budget: trials with more parameters are infeasible (Optuna constraint; 0 = none)")
    max_flops: int = opt(0, "budget: trials with more FLOPs (MACs) are infeasible (Optuna constraint; 0 = none)")
    # --- one trial ---
    prune_steps: int = opt(1, "apply a trial's plan in this many iterative sub-steps, with KD after each")
    trial_epochs: int = opt(3, "KD epochs after each sub-step of a trial (screening; python -m search.retrain "
                               "gives the chosen plans the full --epochs-per-step/--final-epochs)")
    trial_subset: int = opt(10000, "training images a trial trains on (0 = all); validation uses the held-out split")
    keep_checkpoints: str = opt("front", "pruned checkpoints kept in trials/: of every trial, of the trials on the "
                                         "current Pareto front, or none", ("all", "front", "none"))
    # --- overridden defaults of RunConfig ---
    out: str = opt("runs/search", "output directory; the study's files go to <out>/<study_name>/")
    val_fraction: float = opt(0.1, "fraction of the training set held out as the validation set the search "
                                   "optimises (the test set is only reported, so the search cannot overfit it)")
    # Every trial distils from the same frozen teacher on the same trial subset: 16 recorded views cost
    # 16 teacher passes once, and each trial then trains at the cost of CE (issue 5, FKD).
    teacher_cache: int = opt(16, "cache teacher logits for K augmented views per image (0 = off; "
                                 "every view: 162 with crop-flip, 1024 with resized-crop, 1 with none)")

    def __post_init__(self):
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"--val-fraction {self.val_fraction}: the search needs a held-out split of the training "
                            f"set (e.g. 0.1); it never validates on the test set")
        if not 0.0 < self.max_ratio < 1.0:
            raise UserError(f"--max-ratio {self.max_ratio}: must be in (0, 1) (0.9 keeps 10% of a layer)")
        for name in ("n_trials", "n_workers", "prune_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if self.search_kd and not self.tune_kd:
            raise UserError("--search-kd with --no-tune-kd: the KD loss is searched with its temperature and alpha; "
                            "drop one of them")
        if self.mean_ratio and self.fitted:
            raise UserError("--mean-ratio and --target-params/--target-flops: give one (a target fixes each plan's "
                            "size, --mean-ratio samples it)")
        if self.sampler_seed < -1:
            raise UserError(f"--sampler-seed {self.sampler_seed}: give a seed >= 0, or -1 for a fresh one per worker")
        for name in ("trial_epochs", "trial_subset", "max_params", "max_flops", "target_params", "target_flops"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 0 (0 = off/all)")
        if self.warm_from and self.warm_from == self.study_name:
            raise UserError(f"--warm-from {self.warm_from}: a study cannot start from its own pick; name an earlier "
                            f"study")
        if not self.study_name or "/" in self.study_name:
            raise UserError(f"--study-name {self.study_name!r}: give a non-empty name without '/'")

    @property
    def fitted(self) -> bool:
        """Every plan fitted to a budget (--target-params, --target-flops): tilts, not ratios, are sampled."""
        return bool(self.target_params or self.target_flops)

    @property
    def cost_name(self) -> str:
        """The second objective's metric name and user attr (``params``, ``flops`` or ``latency_ms``)."""
        return COST_NAMES[self.objective_cost]


SEARCH_PRESETS: dict[str, dict] = {
    "seed": {},
    # The baseline's quick preset (CIFAR-100 at 32 px, 5000 images), with trials of one epoch on 2000 images.
    "quick": {**PRESETS["quick"], "out": "runs/search", "study_name": "quick", "n_trials": 20, "trial_epochs": 1,
              "trial_subset": 2000},
    # No download: synthetic data, random init; a few minutes on a laptop CPU.
    "demo": {**PRESETS["demo"], "out": "runs/search", "study_name": "demo", "n_trials": 6, "trial_epochs": 1,
             "trial_subset": 500},
}
