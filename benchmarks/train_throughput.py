"""Training images/s of the toolkit against a bare PyTorch loop, and what KD and its teacher cache cost.

    python benchmarks/train_throughput.py                                  # 32 px, batch 64, dense + 10-step pruned
    python benchmarks/train_throughput.py --image-size 224 --batch-size 32 --pruned-steps 15
    python benchmarks/train_throughput.py --loader-sizes 32 224            # + GPU-resident vs DataLoader (default on CUDA)
    python benchmarks/train_throughput.py --device cuda --compile          # the same with torch.compile'd students
    python benchmarks/train_throughput.py --smoke --json /tmp/throughput.json
    python -m benchmarks.train_throughput --data imagefolder:PATH --clock cpu --threads 1 --workers 0
    python -m benchmarks.train_throughput --make-folder /tmp/folder --clock cpu --threads 1 --workers 0 \\
        --batch-size 8 --batches 2 --rounds 2 --json /tmp/imagefolder.json   # the README's figures

On the same model, batch and device, for a dense and a pruned student:
(a) ``bare``: a hand-written Adam + cross-entropy loop over ready-made batches (no augmentation cost);
(b) ``ce``: the toolkit's ``train_one_epoch`` with plain CE (its GPU-resident loader augments each batch);
(c) ``kd``: the same with the dense teacher's forward on every batch;
(d) ``kd_cached``: the same with the teacher's logits read from a ``distill.teacher_cache`` cache.
Figures (issue 5 targets): ``toolkit_vs_bare`` = b/a (>= 0.95), ``kd_vs_ce`` = c/b,
``cached_kd_vs_ce`` = d/b (>= 0.95); the top-level JSON keys are the pruned student's. Variants are
timed in interleaved rounds and the best round is kept, which damps other processes' noise.
With ``--loader-sizes`` it also compares the GPU-resident loader with a per-image torchvision
DataLoader (RandomCrop(32, padding=4) + flip + resize in worker processes) at those image sizes.

With ``--data imagefolder:PATH`` (or ``--make-folder DIR``, which first writes a small ImageFolder of
500 x 375 JPEGs there) it times that data instead (issue 13), at each ``--loader-sizes`` (default 32
224): the one-time decoding into the tensor file (``decode``), then, for the pruned student, loading
alone (``load``), CE, KD and KD with the teacher cache (``kd_cached``, in memory only: streamed data has
no cache) through the streaming path (DataLoader decoding every epoch) and the in-memory path.
``--clock cpu`` counts the decoding threads' CPU time too, but not DataLoader worker processes: use
``--workers 0`` with it.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from benchmarks.common import (NUM_CLASSES, base_parser, clock, machine, plan_after, print_table, set_threads,
                               write_json)
from distill.data import (AUGMENTS, MEAN, STD, Batch, FolderLoader, TensorLoader, TensorSplit, load_data,
                          synthetic_split)
from distill.teacher_cache import build
from distill.trainer import Distiller, Runtime, make_optimizer, make_runtime, prepare, train_one_epoch
from pruning.errors import UserError, run_cli
from pruning.measure import count_params
from pruning.model import build_from_plan, build_resnet50

LR, TEMPERATURE, ALPHA = 1e-4, 4.0, 0.7


def parse_args(argv: list[str] | None):
    parser = base_parser(__doc__)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="mixed precision on CUDA, as the toolkit trains [default: on]")
    parser.add_argument("--image-size", type=int, default=32, help="network input side in px [default: 32]")
    parser.add_argument("--batch-size", type=int, default=64, help="[default: 64]")
    parser.add_argument("--batches", type=int, default=5, help="timed batches per measurement [default: 5]")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the best is kept [default: 3]")
    parser.add_argument("--pruned-steps", type=int, default=10, help="the pruned student's steps of 10%% [default: 10]")
    parser.add_argument("--cache-views", type=int, default=2,
                        help="views per image in the timed teacher cache (lookups cost the same for any K) [default: 2]")
    parser.add_argument("--loader-sizes", nargs="*", type=int, default=None,
                        help="image sizes of the loader comparison [default: 32 224 on CUDA or with --data, "
                             "none otherwise]")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the per-image path [default: 2]")
    parser.add_argument("--compile", action="store_true", help="torch.compile the students (as retrain's --compile)")
    parser.add_argument("--data", default="", help="imagefolder:PATH: time this data's streaming and in-memory paths")
    parser.add_argument("--make-folder", default="", metavar="DIR",
                        help="write a generated ImageFolder (2 classes x 24 JPEGs of 500 x 375 px per part) to DIR "
                             "and time it as --data")
    parser.add_argument("--augment", default="auto", choices=AUGMENTS,
                        help="imagefolder augmentation, as the toolkit's --augment [default: auto]")
    args = parser.parse_args(argv)
    if args.data and not args.data.startswith("imagefolder:"):
        parser.error(f"--data {args.data!r}: give imagefolder:PATH (without it, synthetic data is timed)")
    if args.smoke:  # 8 px: every code path in seconds (ResNet50 runs at any size >= 1 px after the stem)
        args.image_size, args.batch_size, args.batches, args.rounds, args.pruned_steps = 8, 2, 1, 1, 1
        args.loader_sizes, args.workers = [8], 0
    return args


def per_image_transform(image_size: int) -> v2.Compose:
    """The classic CPU recipe the GPU-resident loader replaces (same semantics, tests/test_data_augment.py)."""
    return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                       v2.Resize(image_size, antialias=True), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(MEAN.flatten().tolist(), STD.flatten().tolist())])


class PerImageDataset(torch.utils.data.Dataset):
    """A TensorSplit augmented image by image in DataLoader workers (the path for comparison)."""

    def __init__(self, split: TensorSplit, image_size: int):
        self.split, self.transform = split, per_image_transform(image_size)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.transform(self.split.images[i]), self.split.labels[i]


class PerImageLoader:
    """Shuffled batches of a PerImageDataset from a DataLoader, as ``Batch``es on ``device``."""

    def __init__(self, dataset: PerImageDataset, batch_size: int, device: torch.device, workers: int):
        self.dataset, self.batch_size, self.device, self.workers = dataset, batch_size, device, workers

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self):
        pin = self.device.type == "cuda"
        for x, y in torch.utils.data.DataLoader(self.dataset, self.batch_size, shuffle=True,
                                                num_workers=self.workers, pin_memory=pin):
            yield Batch(x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), None, None)


def sync(rt: Runtime) -> None:
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)


def bare_loop(model, batches: list, rt: Runtime) -> int:
    """(a) the simplest correct loop: forward, CE, backward, Adam step. Returns the images trained on."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for x, y in batches:
        with rt.autocast():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return sum(len(y) for _, y in batches)


def toolkit_epoch(distiller: Distiller, loader, rt: Runtime) -> int:
    """(b)-(d) one ``train_one_epoch``, as ``fit`` runs it. Returns the images trained on."""
    params = [p for p in distiller.parameters() if p.requires_grad]
    scaler = torch.amp.GradScaler("cuda") if rt.amp_dtype == torch.float16 else None
    return train_one_epoch(distiller, loader, make_optimizer(params, LR, 0.0), rt, scaler)["images"]


def trainer_variants(student, teacher, cache, loader, rt: Runtime, bare: bool = True) -> dict:
    """name -> thunk returning the images it trained on, all on the same student, batches and device
    (``bare`` with it, ``kd_cached`` when there is a ``cache``)."""
    cached = Distiller(student, teacher, TEMPERATURE, ALPHA)
    cached.cache = cache

    def with_cache() -> int:
        loader.recorded_views = cache.views
        try:
            return toolkit_epoch(cached, loader, rt)
        finally:
            loader.recorded_views = None

    variants = {}
    if bare:
        batches = [(b.x, b.y) for b in loader]
        variants["bare"] = lambda: bare_loop(student, batches, rt)
    variants["ce"] = lambda: toolkit_epoch(Distiller(student, None, TEMPERATURE, ALPHA), loader, rt)
    variants["kd"] = lambda: toolkit_epoch(Distiller(student, teacher, TEMPERATURE, ALPHA), loader, rt)
    if cache is not None:
        variants["kd_cached"] = with_cache
    return variants


def images_per_s(thunk, rt: Runtime, timer) -> float:
    sync(rt)
    start = timer()
    images = thunk()
    sync(rt)
    return images / (timer() - start)


def best_of_rounds(variants: dict, rounds: int, rt: Runtime, timer) -> dict[str, float]:
    """images/s: one untimed warm-up pass of each variant, then ``rounds`` interleaved passes; the best."""
    for thunk in variants.values():
        thunk()
    best = {name: 0.0 for name in variants}
    for _ in range(rounds):
        for name, thunk in variants.items():
            best[name] = max(best[name], images_per_s(thunk, rt, timer))
    return best


def ratios(ips: dict[str, float]) -> dict[str, float]:
    return {"toolkit_vs_bare": ips["ce"] / ips["bare"], "kd_vs_ce": ips["kd"] / ips["ce"],
            "cached_kd_vs_ce": ips["kd_cached"] / ips["ce"]}


def loader_comparison(split: TensorSplit, args, rt: Runtime, timer) -> list[dict]:
    """CE training images/s (and loading alone) with the GPU-resident loader vs a per-image DataLoader."""
    rows = []
    for size in args.loader_sizes:
        student = prepare(build_resnet50(NUM_CLASSES, "none"), rt, size)
        distiller = Distiller(student, None, TEMPERATURE, ALPHA)
        loaders = {"gpu_resident": TensorLoader(split, args.batch_size, rt.device, size, train=True),
                   "dataloader": PerImageLoader(PerImageDataset(split, size), args.batch_size, rt.device, args.workers)}
        for name, loader in loaders.items():
            load = best_of_rounds({"load": lambda: load_only(loader)}, args.rounds, rt, timer)["load"]
            train = best_of_rounds({"train": lambda: toolkit_epoch(distiller, loader, rt)}, args.rounds, rt,
                                   timer)["train"]
            rows.append({"loader": name, "image_size": size, "workers": args.workers if name == "dataloader" else 0,
                         "load_images_per_s": load, "train_images_per_s": train})
    return rows


def load_only(loader) -> int:
    return sum(len(batch.y) for batch in loader)


def make_folder(root: str, smoke: bool = False) -> str:
    """A small ImageFolder of photo-like JPEGs (smooth colour fields + noise, quality 90): 2 classes x 24
    images of 500 x 375 px per part, ImageNet's typical size (smoke: 2 x 2 of 40 x 30)."""
    gen = np.random.default_rng(0)
    (w, h), n = ((40, 30), 2) if smoke else ((500, 375), 24)
    for part in ("train", "val"):
        for label in range(2):
            folder = Path(root) / part / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                field = Image.fromarray(gen.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
                pixels = np.asarray(field, dtype=np.float32) + gen.normal(0, 8, (h, w, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return f"imagefolder:{root}"


def imagefolder_run(args, rt: Runtime, timer) -> dict:
    """Issue 13: streaming vs in-memory ImageFolder training, with and without the teacher cache, per size."""
    decode, rows = [], []
    for size in args.loader_sizes:
        with tempfile.TemporaryDirectory() as cache_dir:
            start = timer()
            memory = load_data(args.data, cache_dir, image_size=size, augment=args.augment,
                               max_memory_gb=math.inf, progress=False)
            seconds = timer() - start
            file_mb = sum(f.stat().st_size for f in Path(cache_dir).rglob("*.pt")) / 1e6
        stream = load_data(args.data, image_size=size, augment=args.augment, max_memory_gb=0.0, progress=False)
        images, side = len(memory.train) + len(memory.test), memory.train.images.shape[-1]
        decode.append({"image_size": size, "stored_side": side, "augment": memory.train.augment, "images": images,
                       "seconds": seconds, "ms_per_image": 1e3 * seconds / images, "file_mb": file_mb})
        idx = torch.arange(min(len(memory.train), args.batch_size * args.batches))
        loaders = {"streaming": FolderLoader(stream.train.subset(idx), args.batch_size, rt.device, size, True,
                                             workers=args.workers),
                   "in_memory": TensorLoader(memory.train.subset(idx), args.batch_size, rt.device, size, True)}
        classes = memory.num_classes
        teacher = prepare(build_resnet50(classes, "none"), rt, size)
        student = prepare(build_from_plan(classes, plan_after(args.pruned_steps)), rt, size)
        cache = build(teacher, loaders["in_memory"], args.cache_views, rt)
        for path, loader in loaders.items():
            variants = {"load": lambda: load_only(loader),
                        **trainer_variants(student, teacher, cache if path == "in_memory" else None, loader, rt,
                                           bare=False)}
            ips = best_of_rounds(variants, args.rounds, rt, timer)
            rows += [{"image_size": size, "path": path, "variant": v, "images_per_s": x} for v, x in ips.items()]
    print_table(decode, list(decode[0]), f"one-time decoding of {args.data} into the tensor file ({args.clock} clock)")
    print()
    print_table(rows, ["image_size", "path", "variant", "images_per_s"],
                f"images/s on {rt.device}, batch {args.batch_size}, {args.pruned_steps}-step pruned student")
    return {"machine": machine(rt.device), "smoke": args.smoke, "data": args.data, "batch_size": args.batch_size,
            "batches": args.batches, "pruned_steps": args.pruned_steps, "clock": args.clock, "workers": args.workers,
            "amp_dtype": str(rt.amp_dtype), "decode": decode, "rows": rows}


def run(argv: list[str] | None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads, args.smoke)
    rt = make_runtime(args.device, args.amp, progress=False)
    timer = clock(args.clock, [rt.device])
    if args.make_folder:
        args.data = make_folder(args.make_folder, args.smoke)
    if args.loader_sizes is None:  # the loader comparison matters where a 2-core host could starve a GPU
        args.loader_sizes = [32, 224] if rt.device.type == "cuda" or args.data else []
    if args.clock == "cpu" and args.loader_sizes and args.workers:
        raise UserError("--clock cpu does not see DataLoader worker processes: add --workers 0 or use --clock wall")
    result = imagefolder_run(args, rt, timer) if args.data else synthetic_run(args, rt, timer)
    write_json(args.json, result)
    return result


def synthetic_run(args, rt: Runtime, timer) -> dict:
    """The trainer against a bare loop, KD and its cache, and (``--loader-sizes``) the loaders, on synthetic data."""
    torch.manual_seed(0)
    split = synthetic_split(NUM_CLASSES, args.batch_size * args.batches, seed=0)
    loader = TensorLoader(split, args.batch_size, rt.device, args.image_size, train=True)
    teacher = prepare(build_resnet50(NUM_CLASSES, "none"), rt, args.image_size)
    start = timer()
    cache = build(teacher, loader, args.cache_views, rt)
    sync(rt)
    cache_s = timer() - start
    students = {"dense": build_resnet50(NUM_CLASSES, "none"),
                f"pruned_{args.pruned_steps}": build_from_plan(NUM_CLASSES, plan_after(args.pruned_steps))}
    rows, summary = [], {}
    for name, student in students.items():
        student = prepare(student, rt, args.image_size)
        student = torch.compile(student) if args.compile else student
        ips = best_of_rounds(trainer_variants(student, teacher, cache, loader, rt), args.rounds, rt, timer)
        summary[name] = {"params": count_params(student), **ratios(ips)}
        rows += [{"student": name, "params": count_params(student), "variant": v, "images_per_s": x}
                 for v, x in ips.items()]
    print_table(rows, ["student", "params", "variant", "images_per_s"],
                f"training images/s on {rt.device} at {args.image_size} px, batch {args.batch_size}")
    print()
    print_table([{"student": k, **v} for k, v in summary.items()],
                ["student", "params", "toolkit_vs_bare", "kd_vs_ce", "cached_kd_vs_ce"], "ratios")
    loaders = loader_comparison(split, args, rt, timer) if args.loader_sizes else []
    if loaders:
        print()
        print_table(loaders, list(loaders[0]), "GPU-resident loader vs per-image DataLoader (CE training)")
    pruned = summary[f"pruned_{args.pruned_steps}"]
    views = len(split) * args.cache_views
    result = {"machine": machine(rt.device), "smoke": args.smoke, "image_size": args.image_size,
              "batch_size": args.batch_size, "amp_dtype": str(rt.amp_dtype), "pruned_steps": args.pruned_steps,
              "compile": args.compile, "clock": args.clock,
              **{k: pruned[k] for k in ("toolkit_vs_bare", "kd_vs_ce", "cached_kd_vs_ce")},
              "students": summary, "rows": rows, "loaders": loaders,
              "cache_build": {"views": views, "wall_s": cache_s, "views_per_s": views / cache_s}}
    return result


def main(argv: list[str] | None = None) -> dict | None:
    return run_cli(lambda: run(argv), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
