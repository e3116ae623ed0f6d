"""distill.features_viz (issue 4): penultimate features, PCA, linear CKA and the teacher-vs-student figure."""
from __future__ import annotations

import pytest
import torch

from distill.data import Batch
from distill.features_viz import features_figure, linear_cka, pca_2d, penultimate, tsne_available
from distill.trainer import make_runtime
from pruning.model import build_resnet50


def test_penultimate_is_the_classifier_input_and_respects_the_limit():
    torch.manual_seed(0)
    model = build_resnet50(3, "none").eval()
    x = torch.randn(5, 3, 32, 32)
    loader = [Batch(x[:3], torch.tensor([0, 1, 2]), None, None), Batch(x[3:], torch.tensor([1, 2]), None, None)]
    feats, labels = penultimate(model, loader, make_runtime("cpu", progress=False), limit=4)
    with torch.no_grad():
        body = torch.nn.Sequential(*list(model.children())[:-1])  # everything before fc
        expected = body(x).flatten(1)[:4]
    assert feats.shape == (4, 2048) and labels.tolist() == [0, 1, 2, 1]
    torch.testing.assert_close(feats, expected)
    assert not model.fc._forward_pre_hooks  # the hook is removed


def test_pca_finds_the_two_directions_of_rank_two_data():
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(50, 2, generator=gen))[0].T  # two orthonormal directions
    coeffs = torch.randn(200, 2, generator=gen) * torch.tensor([10.0, 1.0])
    data = coeffs @ basis + 3.0
    xy, explained = pca_2d(data)
    assert sum(explained) == pytest.approx(1.0) and explained[0] > 0.95
    assert xy.var(0).sum().item() == pytest.approx(data.var(0).sum().item(), rel=1e-5)  # two PCs keep it all
    assert xy[:, 0].var() > xy[:, 1].var()


def test_linear_cka_is_invariant_to_rotation_and_scale():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 20, generator=gen)
    rotation = torch.linalg.qr(torch.randn(20, 20, generator=gen))[0]
    assert linear_cka(x, 3.0 * x @ rotation) == pytest.approx(1.0)
    assert linear_cka(x, torch.randn(100, 20, generator=gen)) < 0.5


@pytest.mark.parametrize("tsne", [False, pytest.param(True, marks=pytest.mark.skipif(
    not tsne_available(), reason="t-SNE needs scikit-learn"))])
def test_figure_has_one_panel_per_model_and_projection(tsne):
    gen = torch.Generator().manual_seed(0)
    feats = {"teacher": torch.randn(12, 16, generator=gen), "trial 3": torch.randn(12, 16, generator=gen)}
    fig = features_figure(feats, torch.arange(12) % 3, tsne=tsne)
    assert len(fig.data) == 4 if tsne else 2
    assert all(len(trace.x) == 12 for trace in fig.data)
    assert "linear CKA with the teacher, trial 3: " in fig.layout.title.text
