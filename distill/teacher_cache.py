"""Teacher-output cache for KD: the teacher's logits of K recorded augmented views of every training image.

The teacher is frozen for all pruning steps and every search trial, yet a plain KD loop runs its dense
forward on every batch (1.3-1.6x the cost of a CE step on a 2-core CPU, issue 5). Following FKD
(Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition", ECCV 2022), the soft
labels are stored per augmented view: ``--teacher-cache K`` records K views per image (view ids of the
data's augmentation, ``distill.data.VIEWS``: K >= its view count records every view, i.e. exact, as
162 for crop-flip, 1 for ``--augment none``), computes their logits once (fp16, in the run's
precision), and training then draws one recorded view per image per epoch, so KD costs what CE costs.
Streamed ImageFolder data (over ``--max-memory-gb``) has no cache: ``load_or_build`` says so in one line.

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

from distill.data import MEAN, STD, TensorLoader
from pruning.checkpoint import atomic_save, safe_load, tensor_bytes
from pruning.errors import UserError

# Bump when the meaning of a view, the recorded-view choice or the file layout changes.
CACHE_VERSION = 2
VIEW_SEED = 0
_NOTED: set[str] = set()   # reasons the cache was switched off, each printed once per process


@dataclass
class TeacherCache:
    """Soft labels ``logits[i, k]`` (fp16) of view ``views[i, k]`` of training image ``i``."""
    key: str
    views: torch.Tensor    # N x K view ids (int16, sorted per image), on the CPU
    logits: torch.Tensor   # N x K x classes, fp16, on the training device

    def lookup(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """The cached teacher logits of images ``index`` (dataset indices) seen as ``view``."""
        if index is None or view is None:
            raise ValueError("teacher cache lookups need the batch's dataset indices and view ids")
        # The view's slot among each image's K recorded views, found on the CPU: no device sync.
        match = self.views[index].long() == view.long()[:, None]
        if not match.any(dim=1).all():
            raise ValueError("a batch holds views the teacher cache did not record: the loader must draw "
                             "from TeacherCache.views (TensorLoader.recorded_views)")
        device = self.logits.device
        return self.logits[index.to(device), match.int().argmax(dim=1).to(device)]


def recorded_views(n: int, k: int, count: int) -> torch.Tensor:
    """K distinct ids of ``count`` views per image: all of them (exact) when K >= count, else a fixed
    random choice per image."""
    check_views(k)
    if k >= count:
        return torch.arange(count, dtype=torch.int16).expand(n, count).contiguous()
    gen = torch.Generator().manual_seed(VIEW_SEED)
    choice = torch.rand(n, count, generator=gen).argsort(dim=1)[:, :k]
    return choice.sort(dim=1).values.to(torch.int16)


def check_views(k: int) -> None:
    if k < 1:
        raise UserError(f"--teacher-cache {k}: record at least 1 view per image (162 = every 4-px crop offset "
                        f"x flip of crop-flip, exact); 0 turns the cache off")


def cache_key(teacher: nn.Module, loader: TensorLoader, k: int, precision: str) -> str:
    """sha256 of everything the soft labels depend on: teacher weights, data, augmentation, K, precision."""
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION} views={loader.views.key} k={k} seed={VIEW_SEED} size={loader.image_size} "
             f"mean={MEAN.flatten().tolist()} std={STD.flatten().tolist()} precision={precision}".encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor_bytes(tensor))
    for tensor in (loader.images, loader.labels):
        h.update(f"{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor_bytes(tensor))
    return h.hexdigest()


def cache_path(directory: str | Path, key: str) -> Path:
    return Path(directory) / f"teacher_cache_{key[:16]}.pt"


@torch.inference_mode()
def build(teacher: nn.Module, loader: TensorLoader, k: int, rt, key: str = "",
          batch_size: int | None = None) -> TeacherCache:
    """Run the teacher on K recorded views of every image of ``loader``'s split (in ``rt``'s precision).

    Batches are (image, view) pairs, ``batch_size`` of them (default: the loader's batch size).
    """
    n, batch_size = len(loader.labels), batch_size or loader.batch_size
    views = recorded_views(n, k, loader.views.count)
    k = views.shape[1]
    teacher.eval()
    logits = None
    pairs = torch.arange(n * k)
    for chunk in tqdm(pairs.split(batch_size), desc=f"teacher cache ({k} views)", leave=False,
                      disable=not rt.progress, unit="batch"):
        image, slot = (chunk // k).to(loader.device), (chunk % k).to(loader.device)
        x = loader.transform(loader.images[image], views[chunk // k, chunk % k].long())  # what training sees
        with rt.autocast():
            out = teacher(x)
        if logits is None:
            logits = torch.empty(n, k, out.shape[1], dtype=torch.float16, device=loader.device)
        logits[image, slot] = out.to(torch.float16)
    return TeacherCache(key, views, logits)


def load_or_build(teacher: nn.Module, loader, k: int, rt, directory: str | Path,
                  current: TeacherCache | None = None) -> TeacherCache | None:
    """The cache of this teacher + data + augmentation in ``directory``, built and saved if absent or stale.

    ``current`` (the cache used last, if any) is returned as is when its key still matches, which
    saves re-reading the file at every pruning step. None for data that streams from disk (ImageFolder
    over --max-memory-gb), with one printed line, never an error: the teacher then runs on every batch.
    """
    check_views(k)
    if not isinstance(loader, TensorLoader):
        note = (f"teacher cache off (--teacher-cache {k}): the training images stream from disk "
                f"({loader.dataset.why}), so the teacher runs on every batch")
        if note not in _NOTED:
            _NOTED.add(note)
            print(note, flush=True)
        return None
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
    views = cache.views.shape[1]
    atomic_save({"key": key, "views": cache.views, "logits": cache.logits.cpu(),
                 "meta": {"version": CACHE_VERSION, "views_per_image": views, "precision": precision,
                          "augment": loader.views.key, "images": len(loader.labels),
                          "image_size": loader.image_size}}, path)
    print(f"teacher cache: {views} views x {len(loader.labels):,} images built in "
          f"{time.perf_counter() - start:.0f} s (once per teacher and data) -> {path}")
    return cache
