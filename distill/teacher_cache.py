"""Teacher-output cache for KD: the teacher's logits of K recorded augmented views of every training image.

The teacher is frozen for all pruning steps and every search trial, yet a plain KD loop runs its dense
forward on every batch (1.3-1.6x the cost of a CE step on a 2-core CPU, issue 5). Following FKD
(Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition", ECCV 2022), the soft
labels are stored per augmented view: ``--teacher-cache K`` records K views per image (view ids of
``distill.data.augment``; K = NUM_VIEWS = 162 is every crop offset x flip at 32 px with padding 4,
i.e. exact), computes their logits once (fp16, in the run's precision), and training then draws one
recorded view per image per epoch, so KD costs what CE costs.

The file lives beside the teacher checkpoint, named by a content hash of the teacher's weights, the
training images and labels, the augmentation and K: a changed teacher, data or augmentation gets a
new file instead of stale soft labels. CIFAR-100 at K = 162 is 50,000 x 162 x 100 fp16 = 1.6 GB.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from distill.data import MEAN, NUM_VIEWS, PAD, STD, TensorLoader, augment
from pruning.checkpoint import atomic_save, safe_load
from pruning.errors import UserError

# Bump when the meaning of a view, the recorded-view choice or the file layout changes.
CACHE_VERSION = 1
VIEW_SEED = 0


@dataclass
class TeacherCache:
    """Soft labels ``logits[i, k]`` (fp16) of view ``views[i, k]`` of training image ``i``."""
    key: str
    views: torch.Tensor    # N x K view ids (int16, sorted per image), on the CPU
    logits: torch.Tensor   # N x K x classes, fp16, on the training device

    def __post_init__(self):
        # view id -> slot in views[i] (-1: not recorded); lookups are checked on the CPU, no device sync.
        n, k = self.views.shape
        self.slots = torch.full((n, NUM_VIEWS), -1, dtype=torch.int16)
        self.slots.scatter_(1, self.views.long(), torch.arange(k, dtype=torch.int16).expand(n, k).contiguous())

    def lookup(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """The cached teacher logits of images ``index`` (dataset indices) seen as ``view``."""
        if index is None or view is None:
            raise ValueError("teacher cache lookups need the batch's dataset indices and view ids")
        slot = self.slots[index, view]
        if (slot < 0).any():
            raise ValueError("a batch holds views the teacher cache did not record: the loader must draw "
                             "from TeacherCache.views (TensorLoader.recorded_views)")
        device = self.logits.device
        return self.logits[index.to(device), slot.long().to(device)]


def recorded_views(n: int, k: int) -> torch.Tensor:
    """K distinct view ids per image: all of them (exact) for K = NUM_VIEWS, else a fixed random choice."""
    check_views(k)
    if k == NUM_VIEWS:
        return torch.arange(NUM_VIEWS, dtype=torch.int16).expand(n, k).contiguous()
    gen = torch.Generator().manual_seed(VIEW_SEED)
    choice = torch.rand(n, NUM_VIEWS, generator=gen).argsort(dim=1)[:, :k]
    return choice.sort(dim=1).values.to(torch.int16)


def check_views(k: int) -> None:
    if not 1 <= k <= NUM_VIEWS:
        raise UserError(f"--teacher-cache {k}: record between 1 and {NUM_VIEWS} views per image "
                        f"({NUM_VIEWS} = every 4-px crop offset x flip, exact); 0 turns the cache off")


def cache_key(teacher: nn.Module, loader: TensorLoader, k: int, precision: str) -> str:
    """sha256 of everything the soft labels depend on: teacher weights, data, augmentation, K, precision."""
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION} pad={PAD} views={NUM_VIEWS} k={k} seed={VIEW_SEED} size={loader.image_size} "
             f"mean={MEAN.flatten().tolist()} std={STD.flatten().tolist()} precision={precision}".encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(_bytes(tensor))
    for tensor in (loader.images, loader.labels):
        h.update(f"{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(_bytes(tensor))
    return h.hexdigest()


def _bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy()).cast("B")


def cache_path(directory: str | Path, key: str) -> Path:
    return Path(directory) / f"teacher_cache_{key[:16]}.pt"


@torch.inference_mode()
def build(teacher: nn.Module, loader: TensorLoader, k: int, rt, key: str = "",
          batch_size: int | None = None) -> TeacherCache:
    """Run the teacher on K recorded views of every image of ``loader``'s split (in ``rt``'s precision).

    Batches are (image, view) pairs, ``batch_size`` of them (default: the loader's batch size).
    """
    n, batch_size = len(loader.labels), batch_size or loader.batch_size
    views = recorded_views(n, k)
    teacher.eval()
    logits = None
    pairs = torch.arange(n * k)
    for chunk in tqdm(pairs.split(batch_size), desc=f"teacher cache ({k} views)", leave=False,
                      disable=not rt.progress, unit="batch"):
        image, slot = (chunk // k).to(loader.device), (chunk % k).to(loader.device)
        x = loader.normalize(augment(loader.images[image], views[chunk // k, chunk % k].long().to(loader.device)))
        with rt.autocast():
            out = teacher(x)
        if logits is None:
            logits = torch.empty(n, k, out.shape[1], dtype=torch.float16, device=loader.device)
        logits[image, slot] = out.to(torch.float16)
    return TeacherCache(key, views, logits)


def load_or_build(teacher: nn.Module, loader, k: int, rt, directory: str | Path,
                  current: TeacherCache | None = None) -> TeacherCache:
    """The cache of this teacher + data + augmentation in ``directory``, built and saved if absent or stale.

    ``current`` (the cache used last, if any) is returned as is when its key still matches, which
    saves re-reading the file at every pruning step.
    """
    check_views(k)
    if not isinstance(loader, TensorLoader):
        raise UserError("--teacher-cache needs in-memory data (--data cifar100 or synthetic); "
                        "imagefolder data is augmented per image, so use --teacher-cache 0")
    precision = str(rt.amp_dtype or torch.float32)
    key = cache_key(teacher, loader, k, precision)
    if current is not None and current.key == key:
        return current
    path = cache_path(directory, key)
    if path.exists():
        stored = safe_load(path)
        if stored.get("key") == key:
            return TeacherCache(key, stored["views"], stored["logits"].to(loader.device))
    start = time.perf_counter()
    cache = build(teacher, loader, k, rt, key)
    atomic_save({"key": key, "views": cache.views, "logits": cache.logits.cpu(),
                 "meta": {"version": CACHE_VERSION, "views_per_image": k, "precision": precision,
                          "images": len(loader.labels), "image_size": loader.image_size}}, path)
    print(f"teacher cache: {k} views x {len(loader.labels):,} images built in {time.perf_counter() - start:.0f} s "
          f"(once per teacher and data) -> {path}")
    return cache
