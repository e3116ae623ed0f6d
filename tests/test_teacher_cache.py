"""--teacher-cache: the cached logits are the teacher's for the recorded view, the loader draws only
recorded views, the cache is rebuilt when teacher or data change, and retrain wires it in."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from distill import teacher_cache
from distill.data import NUM_VIEWS, TensorLoader, synthetic_split
from distill.pipeline import open_session, retrain
from distill.teacher_cache import build, load_or_build, recorded_views
from distill.trainer import Distiller, make_optimizer, make_runtime, train_one_epoch
from pruning.errors import UserError
from pruning.model import build_resnet50

CPU = torch.device("cpu")


def tiny_net(seed: int = 0, classes: int = 4) -> nn.Module:
    """Small and position-sensitive (2x2 pooling), so crops and flips change its outputs."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, classes)).eval()


@pytest.fixture
def rt():
    return make_runtime("cpu", progress=False)


@pytest.fixture
def loader():
    return TensorLoader(synthetic_split(4, 12, seed=0), batch_size=6, device=CPU, image_size=32, train=True)


def teacher_on(loader: TensorLoader, teacher: nn.Module, index: int, view: int) -> torch.Tensor:
    x = loader.transform(loader.images[index:index + 1], torch.tensor([view]))
    with torch.no_grad():
        return teacher(x)[0]


def test_lookup_returns_the_teachers_logits_of_the_recorded_view(loader, rt):
    teacher = tiny_net()
    cache = build(teacher, loader, 3, rt)
    assert cache.logits.dtype == torch.float16 and cache.logits.shape == (12, 3, 4)
    for i in (0, 7, 11):
        for slot in range(3):
            view = int(cache.views[i, slot])
            got = cache.lookup(torch.tensor([i]), torch.tensor([view]))[0]
            expected = teacher_on(loader, teacher, i, view).half()
            torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)  # fp16 rounding, nothing more
    other = teacher_on(loader, teacher, 0, int(cache.views[0, 1])).half()
    assert not torch.allclose(cache.lookup(torch.tensor([0]), cache.views[0, :1].long())[0], other, atol=1e-3), \
        "two views of one image must give different logits, or this test proves nothing"


def test_recorded_views_are_distinct_and_all_of_them_from_k_162():
    every = torch.arange(NUM_VIEWS, dtype=torch.int16).expand(5, -1)
    assert torch.equal(recorded_views(5, NUM_VIEWS, NUM_VIEWS), every)
    assert torch.equal(recorded_views(5, NUM_VIEWS + 1, NUM_VIEWS), every), "K above the view count: every view"
    assert torch.equal(recorded_views(3, 16, 1), torch.zeros(3, 1, dtype=torch.int16)), "--augment none: 1 view"
    views = recorded_views(50, 4, NUM_VIEWS)
    assert views.shape == (50, 4)
    assert all(len(set(row.tolist())) == 4 for row in views)
    assert views.min() >= 0 and views.max() < NUM_VIEWS
    assert len({tuple(row.tolist()) for row in views}) > 40, "each image gets its own random views"
    with pytest.raises(UserError, match="--teacher-cache 0"):
        recorded_views(5, 0, NUM_VIEWS)


def test_loader_draws_only_recorded_views_and_lookup_refuses_others(loader, rt):
    cache = build(tiny_net(), loader, 2, rt)
    loader.recorded_views = cache.views
    for epoch in range(3):
        loader.set_epoch(epoch)
        for batch in loader:
            recorded = cache.views[batch.index].long()
            assert (recorded == batch.view[:, None]).any(dim=1).all()
            assert cache.lookup(batch.index, batch.view).shape == (len(batch.y), 4)
    unrecorded = next(v for v in range(NUM_VIEWS) if v not in cache.views[0].tolist())
    with pytest.raises(ValueError, match="did not record"):
        cache.lookup(torch.tensor([0]), torch.tensor([unrecorded]))


def test_cache_is_reused_and_rebuilt_when_teacher_or_data_change(loader, rt, tmp_path, monkeypatch):
    teacher = tiny_net()
    first = load_or_build(teacher, loader, 2, rt, tmp_path)
    assert len(list(tmp_path.glob("teacher_cache_*.pt"))) == 1
    assert load_or_build(teacher, loader, 2, rt, tmp_path, current=first) is first

    def no_build(*args, **kwargs):
        raise AssertionError("an up-to-date cache file must be loaded, not rebuilt")

    monkeypatch.setattr(teacher_cache, "build", no_build)
    again = load_or_build(teacher, loader, 2, rt, tmp_path)
    assert again.key == first.key and torch.equal(again.logits, first.logits)
    monkeypatch.undo()

    with torch.no_grad():
        teacher[0].weight[0, 0, 0, 0] += 1.0  # the teacher changes
    changed = load_or_build(teacher, loader, 2, rt, tmp_path, current=first)
    assert changed.key != first.key and not torch.equal(changed.logits, first.logits)
    loader.labels = loader.labels.roll(1)  # the data change
    relabelled = load_or_build(teacher, loader, 2, rt, tmp_path, current=changed)
    assert relabelled.key not in (first.key, changed.key)
    assert len(list(tmp_path.glob("teacher_cache_*.pt"))) == 3


def test_kd_with_the_full_cache_trains_like_kd_with_the_live_teacher(loader, rt):
    """K = 162 draws exactly the views the uncached loader draws, so the losses differ only by fp16."""
    teacher = tiny_net(seed=1)
    cache = build(teacher, loader, NUM_VIEWS, rt, batch_size=NUM_VIEWS)
    losses = []
    for cached in (False, True):
        student = tiny_net(seed=2).train()
        distiller = Distiller(student, teacher, 4.0, 0.7)
        distiller.cache = cache if cached else None
        loader.recorded_views = cache.views if cached else None
        loader.set_epoch(3)
        metrics = train_one_epoch(distiller, loader, make_optimizer(student.parameters(), 1e-3, 0.0), rt)
        losses.append((metrics["train_loss"], metrics["train_kd"]))
    (loss_live, kd_live), (loss_cached, kd_cached) = losses
    assert kd_live > 0
    assert loss_cached == pytest.approx(loss_live, rel=1e-3) and kd_cached == pytest.approx(kd_live, rel=1e-3)


def test_retrain_builds_the_cache_beside_the_teacher_and_uses_it(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, teacher_cache=2, synthetic_train=16, batch_size=16)
    sess = open_session(cfg)
    teacher, student = build_resnet50(4, "none"), build_resnet50(4, "none")
    partial = Path(cfg.out) / "partial.pt"
    _, metrics = retrain(sess, cfg, student, teacher, 1, 1e-4, "step_001", partial, 0)
    files = list((Path(cfg.out) / "check_points").glob("teacher_cache_*.pt"))
    assert len(files) == 1 and sess.teacher_cache is not None
    # KD ran on cache lookups, which refuse unrecorded views (2 of 162 here): the epoch drew recorded views,
    # from a copy of the loader, so that the session's loader, shared with CE stages, draws from all of them.
    assert metrics["train_kd"] > 0 and sess.train_loader.recorded_views is None
    cache = sess.teacher_cache
    retrain(sess, cfg, student, teacher, 0, 1e-4, "step_002", Path(cfg.out) / "p3.pt", 0)
    assert sess.teacher_cache is cache, "the same teacher reuses the cache already in memory"
