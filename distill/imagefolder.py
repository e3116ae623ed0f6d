"""ImageFolder data (``PATH/train/<class>/*``, ``PATH/val/<class>/*``): listing, decoding, the tensor file.

Every image goes through one function, ``decode``: PIL decode, RGB, shorter side resized to the stored
side S (bilinear, antialiased when shrinking), centre S x S crop, uint8. A dataset that fits the memory
budget is decoded once, on all cores, into a uint8 tensor file (``decoded``) and then trains like
CIFAR-100 (issue 13); a larger one streams: ``FolderSplit`` decodes the same way in DataLoader workers.
Both paths give the same uint8 pixels, so the device-side augmentation of ``distill.data`` sees the
same images either way. This module knows nothing of augmentation: ``distill.data`` picks S.
"""
from __future__ import annotations

import hashlib
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image
from tqdm.auto import tqdm

from pruning.checkpoint import atomic_save
from pruning.errors import UserError

# Part of the tensor file's key: a new Pillow or a change of ``decode`` gets a new file, not stale pixels.
DECODER = f"Pillow {PIL.__version__}: draft, RGB, shorter side bilinear, centre square, v1"
FILE_VERSION = 1
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
SAMPLE = 256  # files whose headers give the typical image side (before anything is decoded)


@dataclass
class Part:
    """One folder (train or val): its class names and files, labelled by class index."""
    root: Path
    classes: list[str]
    files: list[str]
    labels: list[int]


def scan(spec_root: str, part: str) -> Part:
    """The class folders and files of ``root/part`` (sorted, as torchvision's ImageFolder; dotfiles skipped)."""
    folder = Path(spec_root) / part
    if not folder.is_dir():
        raise UserError(f"--data imagefolder:{spec_root}: {folder} is missing; "
                        f"expected {spec_root}/train/<class>/* and {spec_root}/val/<class>/*")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"--data imagefolder:{spec_root}: Couldn't find any class folder in {folder}; "
                        f"each class needs a folder of images")
    files, labels = [], []
    for label, name in enumerate(classes):
        for dirpath, _, names in sorted(os.walk(folder / name, followlinks=True)):
            kept = [os.path.join(dirpath, n) for n in sorted(names) if not n.startswith(".")]
            files += kept
            labels += [label] * len(kept)
    return Part(folder, classes, files, labels)


def decode(path: str, side: int) -> torch.Tensor:
    """``path`` as a 3 x side x side uint8 tensor: shorter side resized to ``side``, centre square."""
    with Image.open(path) as img:
        img.draft("RGB", (side, side))  # JPEG: decode at the smallest DCT scale still >= side (2-8x faster)
        img = img.convert("RGB")
    w, h = img.size
    scale = side / min(w, h)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    img = img.resize(size, Image.BILINEAR)  # Pillow widens the filter when shrinking: antialiased
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def typical_side(files: list[str]) -> int:
    """Median shorter side of up to SAMPLE evenly spaced files (headers only); 0 when none is readable."""
    step = max(1, len(files) // SAMPLE)
    sides = [s for s in map(_header_side, files[::step][:SAMPLE]) if s]
    return int(statistics.median(sides)) if sides else 0


def _header_side(path: str) -> int:
    try:
        with Image.open(path) as img:
            return min(img.size)
    except UNREADABLE:
        return 0


def readable(files: list[str], progress: bool, desc: str) -> list[bool]:
    """Whether PIL can read each file's header (the streaming path's check: a file open per image)."""
    return _pool_map(lambda f: _header_side(f) > 0, files, progress, desc)


def _pool_map(fn, items: list, progress: bool, desc: str) -> list:
    """``fn`` over ``items`` on all cores (Pillow releases the GIL while decoding and resizing)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with ThreadPoolExecutor(max(1, cores or 1)) as pool:
        return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, leave=False, disable=not progress,
                         unit="img"))


def check_classes(part: Part, kept_labels: torch.Tensor, spec_root: str) -> None:
    """A class whose every image was skipped as unreadable is an error naming it (issue 13)."""
    counts = torch.bincount(kept_labels, minlength=len(part.classes))
    empty = [part.classes[c] for c in torch.nonzero(counts == 0).flatten().tolist()]
    if empty:
        raise UserError(f"--data imagefolder:{spec_root}: class {empty[0]!r} has no readable image in "
                        f"{part.root / empty[0]}" + (f" (nor {len(empty) - 1} other class(es))" if len(empty) > 1
                                                    else "") + "; add images or remove the folder")


def file_key(part: Part, side: int) -> str:
    """sha256 of what the decoded pixels depend on: file list, sizes, mtimes, classes, side, decoder."""
    h = hashlib.sha256(f"v{FILE_VERSION} {DECODER} side={side} classes={part.classes}".encode())
    for path, label in zip(part.files, part.labels):
        st = os.stat(path)
        h.update(f"\n{os.path.relpath(path, part.root)}\t{label}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()


def decoded(part: Part, side: int, cache_dir: str | Path, progress: bool) -> dict:
    """``{"images", "labels", "skipped"}`` of ``part`` at ``side``: read from its tensor file in ``cache_dir``
    when the key matches, else decoded on all cores and written there atomically (older files of the same
    folder are removed). ``images`` is N x 3 x side x side uint8 over the readable files."""
    key = file_key(part, side)
    folder_id = hashlib.sha256(str(part.root.resolve()).encode()).hexdigest()[:8]
    stem = f"{part.root.parent.name}-{folder_id}-{part.root.name}"
    path = Path(cache_dir) / f"{stem}-{key[:16]}.pt"
    stored = _load(path, key)
    if stored is not None:
        return stored
    start = time.perf_counter()
    pixels = torch.empty(len(part.files), 3, side, side, dtype=torch.uint8)

    def one(i: int) -> bool:
        try:
            pixels[i] = decode(part.files[i], side)
            return True
        except UNREADABLE:
            return False

    keep = _pool_map(one, range(len(part.files)), progress, f"decoding {part.root.name} at {side} px")
    keep_t = torch.tensor(keep, dtype=torch.bool)
    result = {"key": key, "images": pixels[keep_t] if not all(keep) else pixels,
              "labels": torch.tensor(part.labels, dtype=torch.long)[keep_t],
              "skipped": [f for f, ok in zip(part.files, keep) if not ok]}
    seconds = time.perf_counter() - start
    try:
        atomic_save(result, path)
        for old in path.parent.glob(f"{stem}-*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
        where = f"-> {path}"
    except OSError as exc:
        where = f"(not saved: {exc.strerror or exc}; it is decoded again next time)"
    print(f"imagefolder: decoded {len(part.files):,} {part.root.name} images at {side} px in {seconds:.1f} s "
          f"{where}", flush=True)
    return result


def _load(path: Path, key: str) -> dict | None:
    """The tensor file if it is there, readable and of this key; memory-mapped, so loading costs no copy."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated or foreign: the file is only a cache, so it is rebuilt
        print(f"imagefolder: {path} is unreadable ({type(exc).__name__}); decoding again", flush=True)
        return None
    return stored if stored.get("key") == key else None


def warn_skipped(spec_root: str, skipped: list[str]) -> None:
    if skipped:
        print(f"warning: --data imagefolder:{spec_root}: skipped {len(skipped)} file(s) that are not readable "
              f"images (e.g. {skipped[0]})", file=sys.stderr)


class FolderSplit(torch.utils.data.Dataset):
    """Streaming ImageFolder split: item ``i`` is ``(uint8 image, label, index, failed_path)``.

    A file that fails to decode mid-epoch (truncated, deleted, changed since the header check) never
    stops training: it is replaced by the next readable file of the split (its own label and index), and
    its path is returned in ``failed_path`` ("" otherwise) so the loader counts and reports it.
    """

    def __init__(self, files: list[str], labels: torch.Tensor, side: int, augment: str, why: str = ""):
        self.files, self.labels, self.side, self.augment, self.why = files, labels, side, augment, why

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> "FolderSplit":
        return FolderSplit([self.files[i] for i in idx.tolist()], self.labels[idx], self.side, self.augment,
                           self.why)

    def __getitem__(self, i: int):
        for offset in range(len(self.files)):
            j = (i + offset) % len(self.files)
            try:
                image = decode(self.files[j], self.side)
            except UNREADABLE:
                continue
            return image, self.labels[j], j, self.files[i] if offset else ""
        raise UserError(f"no file of this imagefolder split can be decoded any more (e.g. {self.files[i]})")
