"""Penultimate features of the teacher beside a pruned student's, projected to 2-D (issue 4).

The classifier's input (the 2048-d global-average-pooled output of layer4) is what the logits KD
shapes indirectly: if pruning + KD kept the teacher's class structure, the student's cloud separates
the classes like the teacher's. PCA is exact and cheap (always on); t-SNE (scikit-learn, optional) shows
local neighbourhoods but is slow and stochastic, so it is off by default. Linear CKA (Kornblith et al.,
ICML 2019, "Similarity of neural network representations revisited") gives the same comparison as one
number in [0, 1].
"""
from __future__ import annotations

import importlib.util

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import nn

from distill.trainer import Runtime


@torch.no_grad()
def penultimate(model: nn.Module, loader, rt: Runtime, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier inputs (N x 2048, float32, CPU) and labels of the first ``limit`` images of ``loader``."""
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    handle = model.fc.register_forward_pre_hook(lambda _m, inputs: feats.append(inputs[0].float().flatten(1).cpu()))
    model.eval()
    try:
        for batch in loader:
            with rt.autocast():
                model(batch.x)
            labels.append(batch.y.cpu())
            if sum(len(y) for y in labels) >= limit:
                break
    finally:
        handle.remove()
    return torch.cat(feats)[:limit], torch.cat(labels)[:limit]


def pca_2d(x: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """The first two principal components of ``x`` (rows = samples) and their explained-variance fractions."""
    centred = x.double() - x.double().mean(0)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    var = s ** 2
    explained = (var[:2] / var.sum().clamp_min(1e-30)).tolist()
    return (centred @ v[:2].T).float(), explained


def tsne_available() -> bool:
    return importlib.util.find_spec("sklearn") is not None


def tsne_2d(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """t-SNE embedding (scikit-learn; call only when ``tsne_available()``)."""
    from sklearn.manifold import TSNE

    # Perplexity must stay below the sample count; 30 is scikit-learn's default for larger sets.
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x.numpy())
    return torch.from_numpy(embedded).float()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two feature matrices of the same samples (1 = same geometry up to rotation/scale)."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.T @ x).norm() ** 2
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()).clamp_min(1e-30))


def features_figure(feats: dict[str, torch.Tensor], labels: torch.Tensor, tsne: bool = False) -> go.Figure:
    """One scatter per (model, projection), points coloured by class; PCA always, t-SNE when asked.

    ``feats`` maps a model's name (e.g. ``teacher``, ``trial 12``) to its features of the same images.
    """
    methods = ["PCA"] + (["t-SNE"] if tsne else [])
    names = list(feats)
    titles, panels = [], []
    for method in methods:
        for name in names:
            if method == "PCA":
                xy, explained = pca_2d(feats[name])
                titles.append(f"{name}: PCA ({explained[0]:.0%} + {explained[1]:.0%} of variance)")
            else:
                xy = tsne_2d(feats[name])
                titles.append(f"{name}: t-SNE")
            panels.append(xy)
    fig = make_subplots(rows=len(methods), cols=len(names), subplot_titles=titles)
    for i, xy in enumerate(panels):
        fig.add_trace(go.Scatter(
            x=xy[:, 0].tolist(), y=xy[:, 1].tolist(), mode="markers", name=titles[i], showlegend=False,
            marker={"color": labels.tolist(), "colorscale": "Turbo", "size": 5, "opacity": 0.8},
            text=[f"class {c}, image {j}" for j, c in enumerate(labels.tolist())],
            hovertemplate="%{text}<extra></extra>"), row=i // len(names) + 1, col=i % len(names) + 1)
    first, *rest = names
    cka = ", ".join(f"{name}: {linear_cka(feats[first], feats[name]):.3f}" for name in rest)
    fig.update_layout(title=f"Penultimate features of {len(labels)} validation images (colour = class); "
                            f"linear CKA with the {first}, {cka}",
                      template="plotly_white", height=420 * len(methods))
    return fig
