"""ImageFolder data (issues 11 and 13): decoded once into a tensor file and trained from memory, or streamed
with the same pixels; evaluation never augments; unreadable files are skipped or replaced; the teacher
cache serves in-memory ImageFolder data and is switched off, in one line, for streamed data."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import TINY, tiny_argv
from distill import imagefolder
from distill.config import RunConfig, make_config
from distill.data import (FolderLoader, TensorLoader, TensorSplit, load_data, make_loader, resolve_augment,
                          stored_side)
from distill.imagefolder import FolderSplit
from distill.teacher_cache import build, load_or_build
from distill.trainer import make_runtime
from pruning.errors import UserError

CPU = torch.device("cpu")
CLASSES = ("ant", "bee", "cow")


def make_tree(root: Path, size: tuple[int, int] = (40, 40), n: int = 8) -> str:
    """3 classes x n noise images per part (PNG: lossless), each class with its own mean colour."""
    gen = np.random.default_rng(0)
    for part in ("train", "val"):
        for c, name in enumerate(CLASSES):
            (root / part / name).mkdir(parents=True)
            for i in range(n):
                pixels = gen.integers(0, 256, (size[1], size[0], 3)) // 2 + 60 * c
                Image.fromarray(pixels.astype(np.uint8)).save(root / part / name / f"{i}.png")
    return f"imagefolder:{root}"


def load(spec: str, tmp_path: Path, **kwargs):
    kwargs = {"image_size": 32, "val_fraction": 0.25, "progress": False, **kwargs}
    return load_data(spec, data_dir=str(tmp_path / "cache"), **kwargs)


def batches(loader, epoch: int = 0) -> list:
    loader.set_epoch(epoch)
    return list(loader)


def decoded_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "imagefolder").glob("*.pt"))


@pytest.mark.parametrize("size, augment", [((40, 40), "crop-flip"), ((80, 72), "resized-crop")])
def test_in_memory_and_streaming_paths_give_the_same_batches(tmp_path, size, augment):
    spec = make_tree(tmp_path / "d", size)
    memory, stream = load(spec, tmp_path), load(spec, tmp_path, max_memory_gb=0.0)
    assert isinstance(memory.train, TensorSplit) and isinstance(stream.train, FolderSplit)
    assert memory.train.augment == stream.train.augment == augment  # auto: 40 px is small, 72 px is not
    for split in ("train", "val", "test"):
        for train in (True, False):
            a = batches(make_loader(getattr(memory, split), 5, CPU, 32, train, seed=3), epoch=2)
            b = batches(make_loader(getattr(stream, split), 5, CPU, 32, train, seed=3, workers=0), epoch=2)
            assert len(a) == len(b) > 1
            for x, y in zip(a, b):
                assert torch.equal(x.x, y.x) and torch.equal(x.y, y.y) and torch.equal(x.index, y.index)
                assert (x.view is None) == (not train) and (x.view is None or torch.equal(x.view, y.view))


def test_stored_images_are_the_stated_resize(tmp_path):
    """Square 40 px files at --image-size 32: the stored image is PIL's bilinear (antialiased) resize."""
    spec = make_tree(tmp_path / "d")
    data = load(spec, tmp_path, val_fraction=0.0)
    files = imagefolder.scan(str(tmp_path / "d"), "val").files
    assert data.test.images.shape == (24, 3, 32, 32)
    for i in (0, 11, 23):
        expected = np.asarray(Image.open(files[i]).convert("RGB").resize((32, 32), Image.BILINEAR))
        assert torch.equal(data.test.images[i], torch.from_numpy(expected.copy()).permute(2, 0, 1))


def test_tensor_file_is_reused_until_a_file_is_added_or_touched(tmp_path, monkeypatch):
    spec = make_tree(tmp_path / "d")
    first = load(spec, tmp_path)
    assert len(decoded_files(tmp_path)) == 2  # one per folder: train, val
    real_decode, calls = imagefolder.decode, []

    def counting(path, side):
        calls.append(path)
        return real_decode(path, side)

    monkeypatch.setattr(imagefolder, "decode", counting)
    again = load(spec, tmp_path)
    assert calls == [] and torch.equal(again.train.images, first.train.images)

    touched = tmp_path / "d" / "train" / "bee" / "3.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    load(spec, tmp_path)
    assert len(calls) == 24 and all("/train/" in c for c in calls), "only the touched folder is decoded again"
    assert len(decoded_files(tmp_path)) == 2, "the stale file is removed"

    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "d" / "train" / "cow" / "new.png")
    calls.clear()
    added = load(spec, tmp_path, val_fraction=0.0)
    assert len(calls) == 25 and len(added.train) == 25 and len(decoded_files(tmp_path)) == 2


@pytest.mark.parametrize("budget", [8.0, 0.0], ids=["in-memory", "streaming"])
def test_unreadable_files_are_skipped_and_an_emptied_class_is_named(tmp_path, capsys, budget):
    spec = make_tree(tmp_path / "d", n=3)
    (tmp_path / "d" / "train" / "ant" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "d" / "val" / "bee" / "notes.txt").write_text("not an image")
    data = load(spec, tmp_path, max_memory_gb=budget, val_fraction=0.0)
    assert len(data.train) == 9 and len(data.test) == 9
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warning) == 1 and "skipped 2 file(s)" in warning[0]
    for i in range(3):
        (tmp_path / "d" / "train" / "cow" / f"{i}.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"class 'cow' has no readable image in .*train/cow"):
        load(spec, tmp_path, max_memory_gb=budget)


def test_streaming_replaces_a_file_that_fails_to_decode_mid_epoch(tmp_path, capsys):
    spec = make_tree(tmp_path / "d")
    data = load(spec, tmp_path, max_memory_gb=0.0, val_fraction=0.0)
    broken = data.train.files[5]
    Path(broken).write_bytes(b"\x89PNG\r\n\x1a\n truncated after the header check")
    loader = make_loader(data.train, 7, CPU, 32, train=True, workers=0)
    seen = batches(loader)
    assert sum(len(b.y) for b in seen) == 24, "the epoch keeps its size"
    index = torch.cat([b.index for b in seen])
    assert 5 not in index.tolist() and (index == 6).sum() == 2, "the next file of the split stands in for it"
    labels = torch.cat([b.y for b in seen])
    assert torch.equal(labels, data.train.labels[index]), "with its own label"
    err = capsys.readouterr().err
    assert err.count("warning: 1 image(s) failed to decode") == 1 and broken in err
    assert loader.failed == [broken]


@pytest.mark.parametrize("source", ["synthetic", "memory", "stream", "memory-resized-crop"])
def test_held_out_images_get_the_evaluation_transform_every_time(tmp_path, source):
    """Issue 11: validation of ImageFolder data was a Subset of the training set with its random transform."""
    if source == "synthetic":
        data = load("synthetic", tmp_path, synthetic_classes=3, synthetic_train=24)
    else:
        size = (80, 80) if source.endswith("resized-crop") else (40, 40)
        data = load(make_tree(tmp_path / "d", size), tmp_path, max_memory_gb=0.0 if source == "stream" else 8.0)
    val = make_loader(data.val, 4, CPU, 32, train=False, workers=0)
    first, later = torch.cat([b.x for b in batches(val, 0)]), torch.cat([b.x for b in batches(val, 7)])
    assert torch.equal(first, later) and len(first) == len(data.val) == 6
    # The same images seen as training images are augmented: the held-out ones are not.
    as_train = make_loader(data.val, 4, CPU, 32, train=True, workers=0)
    seen = batches(as_train, 0)
    trained = torch.cat([b.x for b in seen])[torch.cat([b.index for b in seen]).argsort()]
    assert not torch.equal(trained, first)
    raw = data.val.images if isinstance(data.val, TensorSplit) else torch.stack([data.val[i][0] for i in range(6)])
    torch.testing.assert_close(first, val.transform(raw, None), rtol=0, atol=0)


def test_augment_auto_picks_by_image_side_and_sets_the_stored_side(tmp_path):
    assert resolve_augment("auto", 32) == "crop-flip" and resolve_augment("auto", 64) == "crop-flip"
    assert resolve_augment("auto", 65) == "resized-crop" and resolve_augment("none", 500) == "none"
    assert stored_side("crop-flip", 224, 32) == 32, "CIFAR-sized files stay small; the device upsamples"
    assert stored_side("resized-crop", 224, 500) == 256, "ImageNet's 224 of 256"
    assert stored_side("resized-crop", 224, 100) == 100 and stored_side("none", 32, 0) == 32
    assert load("synthetic", tmp_path, synthetic_classes=3, synthetic_train=12).train.augment == "crop-flip"
    resized = load("synthetic", tmp_path, synthetic_classes=3, synthetic_train=12, augment="resized-crop")
    assert resized.train.augment == resized.test.augment == "resized-crop"
    data = load(make_tree(tmp_path / "d", (80, 72)), tmp_path, image_size=32)
    assert data.train.augment == "resized-crop" and data.train.images.shape[-2:] == (37, 37)
    data = load(f"imagefolder:{tmp_path / 'd'}", tmp_path, image_size=32, augment="crop-flip")
    assert data.train.augment == "crop-flip" and data.train.images.shape[-2:] == (32, 32)
    with pytest.raises(UserError, match="--augment 'flip'"):
        make_config(RunConfig, {"augment": "flip"})
    with pytest.raises(UserError, match="--max-memory-gb -1"):
        make_config(RunConfig, {"max_memory_gb": -1.0})


def tiny_teacher(classes: int = 3) -> nn.Module:
    """Position-sensitive (2x2 pooling), so that two views of an image get different logits."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, classes)).eval()


@pytest.mark.parametrize("size", [(40, 40), (80, 72)], ids=["crop-flip", "resized-crop"])
def test_teacher_cache_returns_the_teachers_logits_for_the_views_training_draws(tmp_path, size):
    data = load(make_tree(tmp_path / "d", size), tmp_path)
    loader, teacher, rt = TensorLoader(data.train, 6, CPU, 32, train=True), tiny_teacher(), make_runtime("cpu")
    cache = build(teacher, loader, 3, rt)
    loader.recorded_views = cache.views
    for epoch in (0, 1):
        for batch in batches(loader, epoch):
            with torch.no_grad():
                live = teacher(batch.x).half()
            torch.testing.assert_close(cache.lookup(batch.index, batch.view), live, rtol=1e-3, atol=1e-3)
    two = loader.transform(loader.images[[0, 0]], cache.views[0, :2].long())
    with torch.no_grad():
        assert not torch.allclose(teacher(two)[0], teacher(two)[1], atol=1e-2), "views must differ for this test"


def test_streamed_data_switches_the_teacher_cache_off_in_one_line(tmp_path, capsys):
    data = load(make_tree(tmp_path / "d", n=2), tmp_path, max_memory_gb=0.0, val_fraction=0.0)
    loader = make_loader(data.train, 4, CPU, 32, train=True, workers=0)
    assert isinstance(loader, FolderLoader)
    capsys.readouterr()
    for _ in range(2):  # as at every pruning step: still one line
        assert load_or_build(tiny_teacher(), loader, 16, make_runtime("cpu"), tmp_path) is None
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("teacher cache off (--teacher-cache 16)")
    assert "--max-memory-gb 0" in out[0] and not list(tmp_path.glob("teacher_cache_*.pt"))


def test_search_on_an_imagefolder_runs_with_the_default_flags(tmp_path, capsys):
    """Issue 11: `python -m search --data imagefolder:PATH` failed with its default --teacher-cache 16."""
    from search.__main__ import main
    from search.config import SearchConfig
    from search.storage import load_study

    spec = make_tree(tmp_path / "d")
    backend = "torch-pruning" if importlib.util.find_spec("torch_pruning") else "nni"
    tiny = {**TINY, "image_size": 16, "data": spec, "backend": backend, "n_trials": 1, "trial_epochs": 1, "trial_subset": 16,
            "keep_checkpoints": "none", "study_name": "folder", "storage": "studies.db", "out": "runs"}
    cfg = make_config(SearchConfig, tiny)
    assert cfg.teacher_cache == 16 and cfg.augment == "auto", "the search's defaults"
    torch.set_num_threads(1)
    with contextlib.chdir(tmp_path):
        main(tiny_argv(cfg))
        trials = load_study("studies.db", "folder").get_trials()
        recorded = json.loads(Path("runs/folder/config.json").read_text())
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE]
    assert list((tmp_path / "runs" / "folder").rglob("teacher_cache_*.pt")), "the teacher cache served the trial"
    assert recorded.get("config", recorded)["augment"] == "auto"
    assert "teacher cache off" not in capsys.readouterr().out
