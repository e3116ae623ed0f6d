"""Training images/s of the toolkit against a bare PyTorch loop, and what KD and its teacher cache cost.

    python benchmarks/train_throughput.py                                  # 32 px, batch 64, dense + 10-step pruned
    python benchmarks/train_throughput.py --image-size 224 --batch-size 32 --pruned-steps 15
    python benchmarks/train_throughput.py --loader-sizes 32 224            # + GPU-resident vs DataLoader (default on CUDA)
    python benchmarks/train_throughput.py --device cuda --compile          # the same with torch.compile'd students
    python benchmarks/train_throughput.py --smoke --json /tmp/throughput.json

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
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from benchmarks.common import (NUM_CLASSES, base_parser, clock, machine, plan_after, print_table, set_threads,
                               write_json)
from distill.data import MEAN, STD, FolderLoader, TensorLoader, TensorSplit, synthetic_split
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
                        help="image sizes of the loader comparison [default: 32 224 on CUDA, none on CPU]")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the per-image path [default: 2]")
    parser.add_argument("--compile", action="store_true", help="torch.compile the students (as retrain's --compile)")
    args = parser.parse_args(argv)
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


def trainer_variants(student, teacher, cache, loader: TensorLoader, rt: Runtime) -> dict:
    """name -> thunk returning the images it trained on, all on the same student, batches and device."""
    batches = [(b.x, b.y) for b in loader]
    cached = Distiller(student, teacher, TEMPERATURE, ALPHA)
    cached.cache = cache

    def with_cache() -> int:
        loader.recorded_views = cache.views
        try:
            return toolkit_epoch(cached, loader, rt)
        finally:
            loader.recorded_views = None

    return {"bare": lambda: bare_loop(student, batches, rt),
            "ce": lambda: toolkit_epoch(Distiller(student, None, TEMPERATURE, ALPHA), loader, rt),
            "kd": lambda: toolkit_epoch(Distiller(student, teacher, TEMPERATURE, ALPHA), loader, rt),
            "kd_cached": with_cache}


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
                   "dataloader": FolderLoader(PerImageDataset(split, size), args.batch_size, rt.device, train=True,
                                              workers=args.workers)}
        for name, loader in loaders.items():
            load = best_of_rounds({"load": lambda: load_only(loader)}, args.rounds, rt, timer)["load"]
            train = best_of_rounds({"train": lambda: toolkit_epoch(distiller, loader, rt)}, args.rounds, rt,
                                   timer)["train"]
            rows.append({"loader": name, "image_size": size, "workers": args.workers if name == "dataloader" else 0,
                         "load_images_per_s": load, "train_images_per_s": train})
    return rows


def load_only(loader) -> int:
    return sum(len(batch.y) for batch in loader)


def run(argv: list[str] | None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads, args.smoke)
    rt = make_runtime(args.device, args.amp, progress=False)
    timer = clock(args.clock, [rt.device])
    if args.loader_sizes is None:  # the loader comparison matters where a 2-core host could starve a GPU
        args.loader_sizes = [32, 224] if rt.device.type == "cuda" else []
    if args.clock == "cpu" and args.loader_sizes and args.workers:
        raise UserError("--clock cpu does not see DataLoader worker processes: add --workers 0 or use --clock wall")
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
    write_json(args.json, result)
    return result


def main(argv: list[str] | None = None) -> dict | None:
    return run_cli(lambda: run(argv), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
