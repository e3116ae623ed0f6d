"""Layer-wise pruning sensitivity: prune each prunable layer alone by --ratio and evaluate, no retraining.

    python -m distill.sensitivity --teacher runs/iterative/check_points/step_000.pt --ratio 0.5 --out runs/sensitivity
    python -m distill.sensitivity --teacher T.pt --data synthetic --image-size 32 --layers layer1.0.conv1 layer4.2.conv2
    python -m search.report --study-name NAME --sensitivity runs/sensitivity   # its chart in a search report
    python -m distill.sensitivity --help                             # every flag (data flags: the baseline's)

Writes ``--out``/sensitivity.csv (one row per layer: its channels and kept channels, params, FLOPs,
val_top1/val_top5 and ``drop_top1``/``drop_top5``, the loss in points against the unpruned teacher) and
sensitivity.html (the drop per layer: the seed's "layer-wise pruning effects", measured directly).
Rerunning the same command resumes after the last finished layer.

It lives in ``distill`` rather than ``pruning`` because it needs data and evaluation (``pruning`` stays
free of both), and not in ``search`` so that baselines can use it too: imports only go downward.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import plotly.graph_objects as go

from distill.config import RunConfig, opt, parse_config
from distill.pipeline import load_teacher, measure, open_session, prune_step
from distill.plots import write_html
from distill.results import prepare_out_dir, read_csv, write_csv
from distill.trainer import prepare
from pruning.errors import UserError, run_cli
from pruning.model import channel_plan, check_plan_layers, prunable_layers

CSV = "sensitivity.csv"


@dataclass(frozen=True)
class SensitivityConfig(RunConfig):
    layers: tuple[str, ...] = opt((), "prunable layers to probe, e.g. layer3.2.conv1 (default: all 32)")
    # --- overridden defaults of RunConfig ---
    ratio: float = opt(0.5, "fraction of the probed layer's channels removed (the other layers stay whole)")
    out: str = opt("runs/sensitivity", "output directory (rerunning with the same one resumes)")


def run(cfg: SensitivityConfig) -> list[dict]:
    """Probe each layer (resuming from ``--out``/sensitivity.csv); returns the CSV's rows."""
    if not cfg.teacher:
        raise UserError("--teacher is required: give the checkpoint to probe (e.g. a baseline's "
                        "check_points/step_000.pt or a search's teacher.pt)")
    out = prepare_out_dir(cfg.out, cfg)
    sess = open_session(cfg, train_subset=1)  # nothing is trained: keep the training split small
    teacher = prepare(load_teacher(cfg.teacher, sess.data.num_classes), sess.rt)
    layers = list(cfg.layers) or prunable_layers(teacher)
    check_plan_layers(teacher, layers)
    base = measure(sess, teacher)
    dense = channel_plan(teacher)
    rows = [r for r in read_csv(out / CSV) if r["layer"] in layers]
    done = {r["layer"] for r in rows}
    for layer in layers:
        if layer in done:
            continue
        pruned, prune_s = prune_step(teacher, {layer: cfg.ratio}, cfg.backend, cfg.round_to, cfg.image_size)
        row = {"layer": layer, "ratio": cfg.ratio, "channels": dense[layer],
               "kept": channel_plan(pruned)[layer], **measure(sess, prepare(pruned, sess.rt)),
               "prune_wall_s": round(prune_s, 3)}
        row["drop_top1"] = round(base["val_top1"] - row["val_top1"], 4)
        row["drop_top5"] = round(base["val_top5"] - row["val_top5"], 4)
        row["base_val_top1"] = base["val_top1"]
        rows.append(row)
        write_csv(out / CSV, rows)  # after every layer: a killed run resumes here
        print(f"{layer}: {row['kept']}/{row['channels']} channels, val top-1 {row['val_top1']:.2f}% "
              f"(drop {row['drop_top1']:+.2f})")
    rows.sort(key=lambda r: layers.index(r["layer"]))
    write_csv(out / CSV, rows)
    write_html(sensitivity_figure(rows), out / "sensitivity.html")
    print(f"{len(rows)} layers -> {out / CSV}, {out / 'sensitivity.html'}")
    return rows


def sensitivity_figure(rows: list[dict]) -> go.Figure:
    """Bars of the top-1 drop per layer (one trace), in network order, with the layer's details on hover."""
    ratio = rows[0]["ratio"] if rows else 0.0
    base = rows[0]["base_val_top1"] if rows else float("nan")
    fig = go.Figure(go.Bar(
        x=[r["layer"] for r in rows], y=[r["drop_top1"] for r in rows], name="top-1 drop",
        customdata=[[r["kept"], r["channels"], r["val_top1"], r["drop_top5"], r["params"]] for r in rows],
        hovertemplate="%{x}: %{customdata[0]}/%{customdata[1]} channels kept<br>val top-1 %{customdata[2]:.2f}% "
                      "(drop %{y:.2f} points, top-5 drop %{customdata[3]:.2f})<br>%{customdata[4]:,} params"
                      "<extra></extra>"))
    fig.update_layout(title=f"Layer-wise sensitivity: top-1 drop when one layer loses {ratio:.0%} of its channels "
                            f"(no retraining; unpruned {base:.2f}%)",
                      xaxis_title="pruned layer", yaxis_title="top-1 drop (points)", template="plotly_white")
    return fig


def main(argv: list[str] | None = None) -> list[dict] | None:
    return run_cli(lambda: run(parse_config(argv, SensitivityConfig, description=__doc__)), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
