"""Which ``--sampler`` finds the best front for the same number of trials? (issue 12, item 3)

    python benchmarks/samplers.py --smoke --json /tmp/samplers.json            # seconds (CI): checks the code
    python benchmarks/samplers.py --threads 1 --clock cpu --n-trials 24 --repeats 3 --json samplers.json
    python benchmarks/samplers.py --threads 1 --clock cpu --lr-schedule constant --data synthetic \\
        --synthetic-classes 40 --synthetic-train 1600 --screen-subset 160 --teacher-lr 1e-3 --lr 3e-4 --steps 4 \\
        --ratio 0.2 --teacher-epochs 5 --n-trials 24 --bn-calib-batches 5 --trial-subset 800 --repeats 3 \\
        --no-mean-ratio --teacher runs/bench/svb_syn40/seed0/teacher/check_points/step_000.pt
                                  # the README's first table: an earlier search_vs_baseline.py run's data and teacher
    python benchmarks/samplers.py --threads 2 --clock cpu --lr-schedule constant --n-trials 30 --repeats 3 \\
        --synthetic-test 0 --work runs/bench/samplers_shapes \\
        --teacher runs/bench/svb_final/seed0/teacher/check_points/step_000.pt
                                  # the README's second: --mean-ratio on --data shapes (the defaults)

The screening study of benchmarks/search_vs_baseline.py --no-fit-budgets (EagleEye screening: one prune to the
plan, --bn-calib-batches of BatchNorm recalibration, no KD epoch; the baseline's plans at S//4, S//2 and S steps
queued first; --space layer by default), run
with each of ``--samplers`` for ``--n-trials`` trials, ``--repeats`` times each (a new study each time; the
data, split and teacher stay, the sampler's seed changes: ``python -m search`` seeds it from host, pid and
clock). Figure of merit: the hypervolume of the screening front (held-out top-1 vs params; reference 0 % and
the teacher's params, as ``python -m search.report`` computes it), after all trials and after half of them.
Flags this script does not know are run flags given to every command, as in search_vs_baseline.py.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import optuna

from benchmarks.common import machine, print_table, set_threads, write_json
from benchmarks.search_vs_baseline import (SAMPLERS, SMOKE, Seed, finish_args, mean_spread, screening_parser,
                                          work_dir)
from pruning.errors import UserError, run_cli
from search.report import dense_costs, hypervolume_history, trials_frame
from search.storage import load_study

def parse_args(argv: list[str] | None):
    parser = screening_parser(__doc__)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS,
                        help=f"samplers to compare [default: {' '.join(SAMPLERS)}]")
    parser.add_argument("--repeats", type=int, default=3, help="studies per sampler [default: 3]")
    parser.add_argument("--teacher", default="", help="a teacher checkpoint trained without the held-out split of "
                                                      "--seed 0 (e.g. search_vs_baseline's); default: train one")
    args = finish_args(parser, argv, {**SMOKE, "repeats": 1, "n_trials": 3}, "samplers")
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: must be >= 1")
    return args


def study_figures(storage: str, name: str, seconds: float) -> dict:
    """One study's screening hypervolume after all its COMPLETE trials and after half of them."""
    study = load_study(storage, name)
    df = trials_frame(study, "params")
    teacher = dense_costs(study, study.user_attrs["config"])["params"]
    history = hypervolume_history(df, "params", (0.0, float(teacher)))["hypervolume"].tolist()
    return {"study": name, "trials": len(history), "hypervolume": round(history[-1], 6),
            "hypervolume_half": round(history[(len(history) - 1) // 2], 6),
            "seconds_per_trial": round(seconds / max(1, len(history)), 3)}


def run(argv: list[str] | None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads, args.smoke)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"work directory: {args.work}")
    s = Seed(args, 0)
    studies = []
    with work_dir(args):
        if args.teacher:
            s.teacher = Path(args.teacher)
        else:
            s.train_teacher()
        for repeat in range(args.repeats):  # round-robin: a load change on the machine hits every sampler alike
            for sampler in args.samplers:
                name = f"{sampler}-{repeat}"
                s.search(name, name, sampler, n_trials=args.n_trials, trial_epochs=0,
                         bn_calib_batches=args.bn_calib_batches)
                figures = study_figures(s.storage, name, s.run.seconds[name])
                studies.append({"sampler": sampler, "repeat": repeat, **figures})
    table = []
    for sampler in args.samplers:
        mine = [r for r in studies if r["sampler"] == sampler]
        hv = mean_spread([r["hypervolume"] for r in mine])
        table.append({"sampler": sampler, "hypervolume": hv["mean"], "hypervolume_std": hv["std"],
                      "hypervolume_min": hv["min"], "hypervolume_max": hv["max"],
                      "hypervolume_half": mean_spread([r["hypervolume_half"] for r in mine])["mean"],
                      "seconds_per_trial": round(statistics.fmean(r["seconds_per_trial"] for r in mine), 3),
                      "studies": len(mine)})
    best = max(table, key=lambda r: r["hypervolume"])["sampler"]
    print_table(table, ["sampler", "hypervolume", "hypervolume_std", "hypervolume_min", "hypervolume_max",
                        "hypervolume_half", "seconds_per_trial", "studies"],
                f"screening hypervolume after {args.n_trials} trials (mean of {args.repeats} studies; _half: after "
                f"{(args.n_trials + 1) // 2}); {args.clock} seconds per trial")
    result = {"machine": machine("cpu"), "smoke": args.smoke, "clock": args.clock, "work": str(args.work),
              "flags": args.flags, "teacher": str(s.teacher), "n_trials": args.n_trials, "repeats": args.repeats,
              "bn_calib_batches": args.bn_calib_batches, "steps": args.steps, "ratio": args.ratio,
              "trial_subset": args.trial_subset, "screen_subset": args.screen_subset, "mean_ratio": args.mean_ratio,
              "space": args.space,
              "best": best, "samplers": table, "studies": studies, "commands": s.run.commands}
    write_json(args.json, result)
    return result


def main(argv: list[str] | None = None) -> dict | None:
    return run_cli(lambda: run(argv), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
