"""Datasets (CIFAR-100, a learnable synthetic set, ImageFolder), their augmentation, and batch loaders.

Every source ends as uint8 images of a stored size: CIFAR-100 (150 MB) and the generated sets in
memory, ImageFolder data decoded once into memory when it fits ``--max-memory-gb``, else streamed from
disk (``distill.imagefolder``). Augmentation runs on whole batches on the training device, as a finite
family of *views* with integer ids, which is what the teacher-logit cache keys on. ``--augment``:

- ``crop-flip``: the CIFAR recipe, a crop of the 4-px zero-padded image + horizontal flip;
  view ``(dy * 9 + dx) * 2 + flip`` (162 views). Evaluation: the whole image.
- ``resized-crop``: the ImageNet recipe, random-resized-crop (8-100 % of the area, aspect 3/4-4/3,
  torchvision's defaults) + flip, drawn from a fixed table of RRC_BOXES boxes: view ``box * 2 + flip``.
  Evaluation: the centre 87.5 % (ImageNet's 224 of 256).
- ``none``: a single view, the evaluation transform.
- ``auto``: crop-flip for images whose typical side is <= 64 px (CIFAR-100 and the generated sets, as
  before ``--augment`` existed), resized-crop for larger ones.

Then every view is resized to ``image_size`` (bilinear) and normalised with ImageNet's statistics.
Held-out validation and test images always get the evaluation transform (issue 11), so an image
evaluated twice gives the same tensor. On a GPU this keeps a 2-core host from starving it; on a CPU it
is still faster than per-image PIL transforms.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
import torchvision

from distill import imagefolder
from distill.imagefolder import FolderSplit
from pruning.errors import UserError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
PAD = 4
NUM_VIEWS = (2 * PAD + 1) ** 2 * 2   # crop-flip's views
AUGMENTS = ("auto", "crop-flip", "resized-crop", "none")
SMALL_SIDE = 64                        # auto: images up to this side get crop-flip, as CIFAR
EVAL_CROP = 0.875                      # resized-crop's evaluation crop (and its stored side: image_size / 0.875)
RRC_BOXES = 512                        # resized-crop's boxes: 1,024 views with the flip
RRC_SCALE, RRC_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


class Batch(NamedTuple):
    x: torch.Tensor               # normalised float images, N x 3 x S x S, on the device
    y: torch.Tensor               # class indices, on the device
    index: torch.Tensor | None    # dataset indices, on the CPU
    view: torch.Tensor | None     # augmentation view ids (None when not augmented)


@dataclass
class TensorSplit:
    """Images (N x 3 x H x W uint8) and labels of one split, kept on the CPU until a loader moves them.
    ``augment`` is the resolved ``--augment`` (never ``auto``) its training loader applies."""
    images: torch.Tensor
    labels: torch.Tensor
    augment: str = "crop-flip"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def subset(self, idx: torch.Tensor) -> "TensorSplit":
        return TensorSplit(self.images[idx], self.labels[idx], self.augment)


@dataclass
class Data:
    train: object          # TensorSplit, or FolderSplit for streamed ImageFolder data
    val: object
    test: object
    num_classes: int
    name: str
    train_index: torch.Tensor   # indices of ``train`` in the source training set (see split_indices)
    val_index: torch.Tensor     # indices of ``val`` there; empty when val is the test set


def load_data(spec: str, data_dir: str = "datasets", download: bool = True, seed: int = 0,
              val_fraction: float = 0.0, train_subset: int = 0, val_subset: int = 0,
              image_size: int = 32, synthetic_classes: int = 10, synthetic_train: int = 2000, *,
              synthetic_test: int = 0, augment: str = "auto", max_memory_gb: float = 8.0,
              progress: bool = False) -> Data:
    """The train / val / test splits a run uses. With ``val_fraction`` 0, val *is* the test set.

    ``augment`` is ``--augment`` (see the module docstring). ImageFolder data that fits ``max_memory_gb``
    is decoded once into a tensor file under ``data_dir/imagefolder`` and held in memory like
    CIFAR-100; larger data streams from disk (see ``_imagefolder``).
    """
    n_test = synthetic_test or max(synthetic_classes, synthetic_train // 4)  # generated sets only
    if spec == "cifar100":
        (train, test), classes = _cifar100(data_dir, download), 100
    elif spec == "synthetic":
        train = synthetic_split(synthetic_classes, synthetic_train, seed=1234)
        test = synthetic_split(synthetic_classes, n_test, seed=4321)
        classes = synthetic_classes
    elif spec == "shapes":
        from distill.shapes import shapes_splits  # here, not above: distill.shapes builds on TensorSplit
        (train, test), classes = shapes_splits(synthetic_classes, synthetic_train, n_test), synthetic_classes
    elif spec.startswith("imagefolder:"):
        train, test, classes = _imagefolder(spec.split(":", 1)[1], image_size, augment, max_memory_gb,
                                            Path(data_dir) / "imagefolder", progress)
    else:
        raise UserError(f"--data {spec!r}: use cifar100, synthetic, shapes or imagefolder:PATH")
    if not spec.startswith("imagefolder:"):  # ImageFolder resolved auto on its files' own side, before resizing
        mode = resolve_augment(augment, train.images.shape[-1])
        train, test = (dataclasses.replace(split, augment=mode) for split in (train, test))
    train_idx, val_idx = split_indices(len(train), seed, val_fraction, train_subset, val_subset)
    gen = torch.Generator().manual_seed(seed)
    torch.randperm(len(train), generator=gen)  # the draw split_indices made: keeps the test subset as before
    test_idx = torch.randperm(len(test), generator=gen)[:val_subset] if val_subset else torch.arange(len(test))
    test = test.subset(test_idx)
    val = train.subset(val_idx) if len(val_idx) else test
    return Data(train.subset(train_idx), val, test, classes, spec, train_idx, val_idx)


def resolve_augment(augment: str, side: int) -> str:
    """``--augment`` for images of ``side`` px: ``auto`` becomes crop-flip up to SMALL_SIDE, else resized-crop."""
    if augment not in AUGMENTS:
        raise UserError(f"--augment {augment!r}: choose one of {', '.join(AUGMENTS)}")
    if augment != "auto":
        return augment
    return "crop-flip" if side <= SMALL_SIDE else "resized-crop"


def stored_side(augment: str, image_size: int, side: int) -> int:
    """The side ImageFolder images are decoded to: what ``augment`` needs for ``image_size`` (resized-crop
    crops boxes of an image_size / 0.875 square, as ImageNet's 224 of 256), but never more than the images'
    own typical ``side`` (0: unknown): upscaling is left to the device, after augmentation, as for CIFAR."""
    need = math.ceil(image_size / EVAL_CROP) if augment == "resized-crop" else image_size
    return min(need, side) if side else need


def split_indices(n: int, seed: int, val_fraction: float, train_subset: int = 0,
                  val_subset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the source training set a run trains on and holds out for validation.

    A pure function of its arguments, so the images a teacher was trained on can be recomputed from what
    its checkpoint records (issue 11: a search refuses a teacher that has seen its validation split).
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * n))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if train_subset:
        train_idx = train_idx[:train_subset]
    if val_subset:
        val_idx = val_idx[:val_subset]
    return train_idx, val_idx


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


def _imagefolder(root: str, image_size: int, augment: str, max_memory_gb: float, cache_dir: Path,
                 progress: bool) -> tuple[object, object, int]:
    """ImageFolder's train and val (= test) splits, in memory when their decoded size fits ``max_memory_gb``.

    In memory: decoded once into a tensor file in ``cache_dir`` (``distill.imagefolder.decoded``), then
    TensorSplits, which get the GPU-resident loader and the teacher cache. Otherwise FolderSplits, decoded
    by DataLoader workers every epoch, with one line saying why. Unreadable files are skipped and counted.
    """
    train, val = (imagefolder.scan(root, part) for part in ("train", "val"))
    if train.classes != val.classes:
        only = sorted(set(train.classes) ^ set(val.classes))[:3]
        raise UserError(f"--data imagefolder:{root}: train and val have different classes (e.g. {only}); "
                        f"give both the same class folders")
    side = imagefolder.typical_side(train.files)
    mode = resolve_augment(augment, side)
    stored = stored_side(mode, image_size, side)
    gb = (len(train.files) + len(val.files)) * 3 * stored ** 2 / 1e9
    about = (f"imagefolder:{root}: {len(train.files):,} train + {len(val.files):,} val files, typical side {side} "
             f"px, --augment {augment}{' = ' + mode if augment == 'auto' else ''}, stored at {stored} px")
    if gb <= max_memory_gb:
        decoded = [imagefolder.decoded(part, stored, cache_dir, progress) for part in (train, val)]
        splits = [TensorSplit(d["images"], d["labels"], mode) for d in decoded]
        skipped = [f for d in decoded for f in d["skipped"]]
        print(f"{about}: in memory ({gb:.2f} GB)", flush=True)
    else:
        why = f"{gb:.3g} GB decoded > --max-memory-gb {max_memory_gb:g}"
        splits, skipped = [], []
        for part in (train, val):
            ok = imagefolder.readable(part.files, progress, f"checking {part.root.name}")
            labels = torch.tensor(part.labels, dtype=torch.long)[torch.tensor(ok, dtype=torch.bool)]
            splits.append(FolderSplit([f for f, keep in zip(part.files, ok) if keep], labels, stored, mode, why))
            skipped += [f for f, keep in zip(part.files, ok) if not keep]
        print(f"{about}: streamed from disk every epoch ({why}; raise it to decode once into memory)", flush=True)
    imagefolder.warn_skipped(root, skipped)
    for part, split in zip((train, val), splits):
        imagefolder.check_classes(part, split.labels, root)
    return splits[0], splits[1], len(train.classes)


def to_unit(raw: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images as floats in [0, 1], resized to size x size (bilinear) when they are not already."""
    x = raw.float().div_(255)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


class CropFlip:
    """CIFAR's pad-4 random crop + flip (``augment``); evaluation sees the whole image."""
    name, count, key = "crop-flip", NUM_VIEWS, f"crop-flip pad={PAD}"

    def train(self, raw: torch.Tensor, view: torch.Tensor, size: int) -> torch.Tensor:
        return to_unit(augment(raw, view), size)

    def evaluation(self, raw: torch.Tensor, size: int) -> torch.Tensor:
        return to_unit(raw, size)


class ResizedCrop:
    """Random-resized-crop + flip over a fixed table of boxes (``rrc_boxes``); evaluation: the centre crop."""
    name, count = "resized-crop", 2 * RRC_BOXES
    key = f"resized-crop boxes={RRC_BOXES} scale={RRC_SCALE} ratio={RRC_RATIO} eval={EVAL_CROP}"

    def __init__(self):
        self.boxes = {torch.device("cpu"): rrc_boxes(RRC_BOXES)}   # per device: one copy, not one per batch

    def train(self, raw: torch.Tensor, view: torch.Tensor, size: int) -> torch.Tensor:
        if raw.device not in self.boxes:
            self.boxes[raw.device] = self.boxes[torch.device("cpu")].to(raw.device)
        return resized_crop(raw, self.boxes[raw.device][view // 2], view % 2, size)

    def evaluation(self, raw: torch.Tensor, size: int) -> torch.Tensor:
        h, w = raw.shape[-2:]
        ch, cw = max(1, round(h * EVAL_CROP)), max(1, round(w * EVAL_CROP))
        top, left = (h - ch) // 2, (w - cw) // 2
        return to_unit(raw[..., top:top + ch, left:left + cw], size)


class NoAugment:
    """One view: the evaluation transform (the whole image)."""
    name, count, key = "none", 1, "none"

    def train(self, raw: torch.Tensor, view: torch.Tensor, size: int) -> torch.Tensor:
        return self.evaluation(raw, size)

    def evaluation(self, raw: torch.Tensor, size: int) -> torch.Tensor:
        return to_unit(raw, size)


def rrc_boxes(n: int, seed: int = 0) -> torch.Tensor:
    """n boxes (top, left, height, width as fractions of the image) drawn as torchvision's
    RandomResizedCrop.get_params draws them on a square: area U(RRC_SCALE), log-aspect U(log RRC_RATIO),
    a uniform position; a box that does not fit is drawn again. Fixed by ``seed``: a view id means the
    same box in every run, which the teacher cache relies on."""
    gen = torch.Generator().manual_seed(seed)
    boxes = torch.empty(0, 4)
    while len(boxes) < n:
        area = torch.empty(4 * n).uniform_(*RRC_SCALE, generator=gen)
        aspect = torch.empty(4 * n).uniform_(*(math.log(r) for r in RRC_RATIO), generator=gen).exp()
        w, h = (area * aspect).sqrt(), (area / aspect).sqrt()
        top, left = torch.rand(4 * n, generator=gen) * (1 - h), torch.rand(4 * n, generator=gen) * (1 - w)
        boxes = torch.cat([boxes, torch.stack([top, left, h, w], 1)[(w <= 1) & (h <= 1)]])
    return boxes[:n]


def resized_crop(raw: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Each uint8 image's ``box`` (top, left, height, width; fractions) resized to size x size (bilinear, no
    antialiasing: the stored side is at most 8/7 of ``size``) and mirrored where ``flip``: one
    ``grid_sample`` for the whole batch, on its device."""
    n = raw.shape[0]
    top, left, h, w = box.float().unbind(1)
    sign = 1 - 2 * flip.float()
    theta = torch.zeros(n, 2, 3, device=raw.device)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, 2 * left + w - 1     # output x in [-1, 1] -> the box's columns
    theta[:, 1, 1], theta[:, 1, 2] = h, 2 * top + h - 1
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(raw.float().div_(255), grid, mode="bilinear", padding_mode="border", align_corners=False)


VIEWS = {family.name: family for family in (CropFlip(), ResizedCrop(), NoAugment())}


class _Loader:
    """What both loaders share: the epoch's order and views (deterministic per seed and epoch), and the
    device-side transform (training views, or the evaluation transform when not training)."""

    def __init__(self, labels: torch.Tensor, augment: str, batch_size: int, device: torch.device,
                 image_size: int, train: bool, seed: int):
        self.views = VIEWS[augment]
        self.batch_size, self.device, self.image_size = batch_size, device, image_size
        self.train, self.seed, self.epoch = train, seed, 0
        self.mean, self.std = MEAN.to(device), STD.to(device)
        self.recorded_views: torch.Tensor | None = None  # N x K view ids of an active teacher cache
        self.n = len(labels)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_plan(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This epoch's order of dataset indices and a view per index (None when not training)."""
        if not self.train:
            return torch.arange(self.n), None
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=gen), self.draw_views(self.n, gen)

    def draw_views(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """One view id per image: any view, or one of its recorded views while a teacher cache is active."""
        if self.recorded_views is None:
            return torch.randint(0, self.views.count, (n,), generator=gen)
        slot = torch.randint(0, self.recorded_views.shape[1], (n,), generator=gen)
        return self.recorded_views[torch.arange(n), slot].long()

    def transform(self, raw: torch.Tensor, view: torch.Tensor | None) -> torch.Tensor:
        """uint8 images on the device -> normalised network input: view ``view``, or evaluation's when None."""
        if view is None:
            x = self.views.evaluation(raw, self.image_size)
        else:
            x = self.views.train(raw, view.to(raw.device), self.image_size)
        return (x - self.mean) / self.std


class TensorLoader(_Loader):
    """Batches of a TensorSplit held on ``device`` (the GPU-resident path), augmented there."""

    def __init__(self, split: TensorSplit, batch_size: int, device: torch.device, image_size: int,
                 train: bool, seed: int = 0):
        super().__init__(split.labels, split.augment, batch_size, device, image_size, train, seed)
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)

    def __iter__(self) -> Iterator[Batch]:
        order, views = self.epoch_plan()
        for idx in order.split(self.batch_size):
            view = views[idx] if views is not None else None
            idx_dev = idx.to(self.device)
            yield Batch(self.transform(self.images[idx_dev], view), self.labels[idx_dev], idx, view)


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


class FolderLoader(_Loader):
    """Batches of a streamed FolderSplit: DataLoader workers decode (``distill.imagefolder.decode``), the
    device augments, exactly as TensorLoader does on the same images. Files that fail to decode mid-epoch
    are replaced (see FolderSplit) and reported in one line per pass."""

    def __init__(self, split: FolderSplit, batch_size: int, device: torch.device, image_size: int, train: bool,
                 seed: int = 0, workers: int = 2):
        super().__init__(split.labels, split.augment, batch_size, device, image_size, train, seed)
        self.dataset, self.labels, self.workers = split, split.labels, workers
        self.failed: list[str] = []   # every replaced file, over all passes

    def __iter__(self) -> Iterator[Batch]:
        order, views = self.epoch_plan()
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=[idx.tolist() for idx in order.split(self.batch_size)],
            num_workers=self.workers, pin_memory=self.device.type == "cuda")
        failed = []
        for raw, y, index, bad in loader:
            failed += [path for path in bad if path]
            view = views[index] if views is not None else None
            yield Batch(self.transform(raw.to(self.device, non_blocking=True), view),
                        y.to(self.device, non_blocking=True), index, view)
        if failed:
            self.failed += failed
            print(f"warning: {len(failed)} image(s) failed to decode in this pass and were replaced by the next "
                  f"readable image of the split (e.g. {failed[0]}); fix or remove them", file=sys.stderr)


def make_loader(split, batch_size: int, device: torch.device, image_size: int, train: bool, seed: int = 0,
                workers: int = 2):
    if isinstance(split, TensorSplit):
        return TensorLoader(split, batch_size, device, image_size, train, seed)
    return FolderLoader(split, batch_size, device, image_size, train, seed, workers)
