"""Datasets (CIFAR-100, a learnable synthetic set, ImageFolder) and batch loaders.

CIFAR-100 and the synthetic set live in memory as uint8 tensors (CIFAR-100 is 150 MB) and are
augmented in whole batches on the training device: random crop with 4 px zero padding + horizontal
flip (the standard CIFAR recipe), resize to ``image_size``, ImageNet normalisation. On a GPU this
keeps a 2-core host from starving it; on a CPU it is still faster than per-image PIL transforms.
Each augmented view is identified by ``view = (dy * 9 + dx) * 2 + flip`` (162 views at padding 4),
which is what the teacher-logit cache keys on. ImageFolder data goes through a DataLoader.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision import transforms

from pruning.errors import UserError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
PAD = 4
NUM_VIEWS = (2 * PAD + 1) ** 2 * 2


class Batch(NamedTuple):
    x: torch.Tensor               # normalised float images, N x 3 x S x S, on the device
    y: torch.Tensor               # class indices, on the device
    index: torch.Tensor | None    # dataset indices (tensor data only; None for ImageFolder)
    view: torch.Tensor | None     # augmentation view ids (None when not augmented)


@dataclass
class TensorSplit:
    """Images (N x 3 x H x W uint8) and labels of one split, kept on the CPU until a loader moves them."""
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> "TensorSplit":
        return TensorSplit(self.images[idx], self.labels[idx])


@dataclass
class Data:
    train: object          # TensorSplit or torchvision ImageFolder
    val: object
    test: object
    num_classes: int
    name: str


def load_data(spec: str, data_dir: str = "datasets", download: bool = True, seed: int = 0,
              val_fraction: float = 0.0, train_subset: int = 0, val_subset: int = 0,
              image_size: int = 32, synthetic_classes: int = 10, synthetic_train: int = 2000) -> Data:
    """The train / val / test splits a run uses. With ``val_fraction`` 0, val *is* the test set."""
    if spec == "cifar100":
        (train, test), classes = _cifar100(data_dir, download), 100
    elif spec == "synthetic":
        train = synthetic_split(synthetic_classes, synthetic_train, seed=1234)
        test = synthetic_split(synthetic_classes, max(synthetic_classes, synthetic_train // 4), seed=4321)
        classes = synthetic_classes
    elif spec.startswith("imagefolder:"):
        train, test, classes = _imagefolder(spec.split(":", 1)[1], image_size)
    else:
        raise UserError(f"--data {spec!r}: use cifar100, synthetic or imagefolder:PATH")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=gen)
    n_val = int(round(val_fraction * len(train)))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if train_subset:
        train_idx = train_idx[:train_subset]
    test_idx = torch.randperm(len(test), generator=gen)[:val_subset] if val_subset else torch.arange(len(test))
    if val_subset:
        val_idx = val_idx[:val_subset]
    test = _subset(test, test_idx)
    val = _subset(train, val_idx) if n_val else test
    return Data(_subset(train, train_idx), val, test, classes, spec)


def _subset(split, idx: torch.Tensor):
    if isinstance(split, TensorSplit):
        return split.subset(idx)
    return torch.utils.data.Subset(split, idx.tolist())


def _cifar100(root: str, download: bool) -> tuple[TensorSplit, TensorSplit]:
    splits = []
    for train in (True, False):
        try:
            ds = torchvision.datasets.CIFAR100(root, train=train, download=download)
        except Exception as exc:  # RuntimeError when absent, URLError/OSError when the download fails
            how = "download is off (--download)" if not download else f"the download failed ({type(exc).__name__})"
            raise UserError(f"CIFAR-100 is not in {Path(root).resolve()} and {how}: copy cifar-100-python/ "
                            f"there (or pass --data-dir), or run with --data synthetic") from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        splits.append(TensorSplit(images, torch.tensor(ds.targets, dtype=torch.long)))
    return splits[0], splits[1]


def synthetic_split(num_classes: int, n: int, seed: int, size: int = 32) -> TensorSplit:
    """A deterministic, learnable stand-in for CIFAR: each class is a fixed low-frequency colour pattern.

    A sample is its class pattern plus Gaussian noise and a random brightness shift, so classes are
    separable but not trivially (accuracy rises over a few epochs). The patterns depend only on
    ``num_classes`` (seed 0), so train and test share them; ``seed`` drives the per-sample noise.
    """
    if num_classes < 2:
        raise UserError(f"--synthetic-classes {num_classes}: need at least 2 classes")
    patterns = torch.rand(num_classes, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    patterns = F.interpolate(patterns, size=(size, size), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=gen)]
    noise = 0.25 * torch.randn(n, 3, size, size, generator=gen)
    shift = 0.1 * torch.randn(n, 1, 1, 1, generator=gen)
    images = (patterns[labels] + noise + shift).clamp(0, 1)
    return TensorSplit((images * 255).round().to(torch.uint8), labels)


def _imagefolder(root: str, image_size: int):
    root_path = Path(root)
    for part in ("train", "val"):
        if not (root_path / part).is_dir():
            raise UserError(f"--data imagefolder:{root}: {root_path / part} is missing; "
                            f"expected {root}/train/<class>/* and {root}/val/<class>/*")
    norm = transforms.Normalize(MEAN.flatten().tolist(), STD.flatten().tolist())
    train_tf = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    val_tf = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                                 transforms.ToTensor(), norm])
    skipped: list[str] = []
    try:
        train = torchvision.datasets.ImageFolder(str(root_path / "train"), train_tf,
                                                 is_valid_file=lambda p: _readable_image(p, skipped))
        val = torchvision.datasets.ImageFolder(str(root_path / "val"), val_tf,
                                               is_valid_file=lambda p: _readable_image(p, skipped))
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"--data imagefolder:{root}: {exc}; each class needs a folder of images") from None
    if skipped:
        print(f"warning: --data imagefolder:{root}: skipped {len(skipped)} file(s) that are not readable images "
              f"(e.g. {skipped[0]})", file=sys.stderr)
    if train.classes != val.classes:
        only = sorted(set(train.classes) ^ set(val.classes))[:3]
        raise UserError(f"--data imagefolder:{root}: train and val have different classes (e.g. {only}); "
                        f"give both the same class folders")
    return train, val, len(train.classes)


def _readable_image(path: str, skipped: list[str]) -> bool:
    """An image file whose header PIL can read; anything else is appended to ``skipped``.

    A corrupt or non-image file is skipped and counted at startup (issue 6) instead of crashing a
    DataLoader worker mid-epoch. Only the header is read, so this costs a file open per image.
    """
    try:
        with Image.open(path):
            return True
    except (OSError, ValueError, Image.DecompressionBombError):
        skipped.append(path)
        return False


class TensorLoader:
    """Batches of a TensorSplit, augmented on ``device``; deterministic per (seed, epoch)."""

    def __init__(self, split: TensorSplit, batch_size: int, device: torch.device, image_size: int,
                 train: bool, seed: int = 0):
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size, self.device, self.image_size = batch_size, device, image_size
        self.train, self.seed, self.epoch = train, seed, 0
        self.mean, self.std = MEAN.to(device), STD.to(device)
        self.recorded_views: torch.Tensor | None = None  # N x K view ids of an active teacher cache

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.labels)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        views = self.draw_views(n, gen) if self.train else None
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            view = views[idx] if views is not None else None
            idx_dev = idx.to(self.device)
            raw = self.images[idx_dev]
            if view is not None:
                raw = augment(raw, view.to(self.device))
            yield Batch(self.normalize(raw), self.labels[idx_dev], idx, view)

    def draw_views(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """One view id per image: any view, or one of its recorded views while a teacher cache is active."""
        if self.recorded_views is None:
            return torch.randint(0, NUM_VIEWS, (n,), generator=gen)
        slot = torch.randint(0, self.recorded_views.shape[1], (n,), generator=gen)
        return self.recorded_views[torch.arange(n), slot].long()

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.float().div_(255)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


def augment(images: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """Apply view ``(dy * 9 + dx) * 2 + flip`` to each uint8 image: crop of the 4-px zero-padded image, then flip."""
    n, _, h, w = images.shape
    flip = view % 2
    dx = (view // 2) % (2 * PAD + 1)
    dy = (view // 2) // (2 * PAD + 1)
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    rows = dy[:, None] + torch.arange(h, device=images.device)[None, :]             # n x h
    cols = dx[:, None] + torch.arange(w, device=images.device)[None, :]             # n x w
    cols = torch.where(flip[:, None].bool(), cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]      # n x h x w x c
    return out.permute(0, 3, 1, 2).contiguous()


class FolderLoader:
    """A DataLoader over an ImageFolder (subset) yielding ``Batch``es on ``device``."""

    def __init__(self, dataset, batch_size: int, device: torch.device, train: bool, seed: int = 0,
                 workers: int = 2):
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.train, self.seed, self.epoch, self.workers = train, seed, 0, workers

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=self.train, generator=gen,
            num_workers=self.workers, pin_memory=self.device.type == "cuda",
            persistent_workers=False)
        for x, y in loader:
            yield Batch(x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), None, None)


def make_loader(split, batch_size: int, device: torch.device, image_size: int, train: bool, seed: int = 0,
                workers: int = 2):
    if isinstance(split, TensorSplit):
        return TensorLoader(split, batch_size, device, image_size, train, seed)
    return FolderLoader(split, batch_size, device, train, seed, workers)
