"""Interactive plots (plotly) written as self-contained HTML that opens without a network."""
from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from distill.results import SEED_RESULTS, atomic_write_text


def accuracy_over_params(rows: list[dict], path: str | Path, title: str = "Accuracy vs parameters") -> go.Figure:
    """This run's validation accuracy per step against parameters, beside the seed's published curve."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[r["params"] for r in SEED_RESULTS], y=[r["val_top1"] for r in SEED_RESULTS], mode="lines+markers",
        name="seed (published, CIFAR-100 224 px)", line={"dash": "dash", "color": "gray"},
        hovertemplate="step %{text}<br>%{x:,} params<br>%{y:.2f}%<extra>seed</extra>",
        text=[r["step"] for r in SEED_RESULTS]))
    fig.add_trace(go.Scatter(
        x=[r["params"] for r in rows], y=[r["val_top1"] for r in rows], mode="lines+markers", name="this run",
        text=[f"{r['step']} ({r['phase']})" for r in rows],
        customdata=[[r["size_mb"], r.get("flops", 0) / 1e6] for r in rows],
        hovertemplate="step %{text}<br>%{x:,} params<br>%{y:.2f}% top-1<br>%{customdata[0]:.2f} MB, "
                      "%{customdata[1]:.1f} MFLOPs<extra>this run</extra>"))
    fig.update_layout(title=title, xaxis_title="parameters", yaxis_title="validation top-1 (%)",
                      xaxis={"autorange": "reversed"}, template="plotly_white", hovermode="closest")
    write_html(fig, path)
    return fig


def write_html(fig: go.Figure, path: str | Path) -> None:
    """Atomically write ``fig`` with plotly.js embedded (works offline)."""
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
