"""Fuzz every file a user hands in (issue 14): each damaged input must give the one-line UserError.

    python benchmarks/fuzz_inputs.py --cases 1000 --seed 0 --json runs/fuzz.json   # the README's table
    python benchmarks/fuzz_inputs.py --kinds config ratios --cases 5000            # some kinds only
    python benchmarks/fuzz_inputs.py --smoke                                       # seconds: checks the code

Each case generates one input and reads it the way the toolkit does:

    ckpt-random      random bytes (0 B to 64 KB; some behind a zip or pickle header)      -> load_pruned
    ckpt-truncated   the small real checkpoint (below) cut at a random offset              -> load_pruned
    ckpt-bitflip     1-40 flipped bits, anywhere or in the zip/pickle metadata             -> load_pruned
    ckpt-foreign     a zip, pickle or torch file of something else, an empty file, a dir   -> load_pruned
    ckpt-structure   the checkpoint with wrong types, shapes or values inside (+- digest)   -> load_pruned
    weights          such files, and junk state_dicts, as --weights PATH                  -> build_resnet50
    config           --config JSON: random bytes, junk values, huge numbers, NaN, nesting  -> parse_config
    ratios           --ratios JSON, the same                                               -> load_ratios
    journal          studies.db: random bytes, a real journal cut, bit-flipped, junk lines -> load_study
    storage-url      --storage: random URLs and paths                                      -> open_storage
    images           an ImageFolder with random-byte, truncated or bit-flipped PNG/JPEG    -> load_data + loaders

The small real checkpoint is ``save_pruned`` of ``build_from_plan(2, SMALL_PLAN)``: every prunable conv at
one channel, 2 classes. What is left (stem, conv3s, the four downsample convs) is 2.9 M parameters,
11.6 MB: the smallest file this toolkit writes, so that thousands of copies stay cheap.

Outcomes: ``error`` is the one-line UserError. ``ok`` is an input that was still valid and was read
exactly (a flipped bit in zip padding, a journal cut at a line boundary; a checkpoint must then equal the
original). Anything else is an ``escape``: another exception, a message of several lines, a checkpoint
that loads with other weights, or a journal file that changed. ``warned`` counts cases that also emitted a
Python warning (a second line on stderr).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import io
import json
import pickle
import random
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from unittest import mock
from pathlib import Path

import torch

from benchmarks.common import base_parser, machine, print_table, set_threads, write_json
from distill.config import RunConfig, config_dict, parse_config
from pruning.checkpoint import atomic_save, content_digest, dense_plan, load_pruned, safe_load, save_pruned
from pruning.errors import UserError, run_cli
from pruning.model import build_from_plan, build_resnet50, channel_plan

SMALL_PLAN = {name: 1 for name in dense_plan()}
LAYERS = list(SMALL_PLAN)


@dataclasses.dataclass
class Fixtures:
    """What the cases start from, built once: the small checkpoint, a real journal, valid images."""
    dir: Path
    ckpt_bytes: bytes
    ckpt: dict              # the checkpoint's dict as saved (without its digest)
    journal: bytes
    images: dict[str, bytes]


def make_fixtures(directory: Path) -> Fixtures:
    torch.manual_seed(0)
    model = build_from_plan(2, SMALL_PLAN)
    path = directory / "small.pt"
    save_pruned(path, model, {"step": 1, "history": [{"train_loss": 1.5}]})
    return Fixtures(directory, path.read_bytes(), safe_load(path), _journal(directory / "journal.db"),
                    {ext: _image(ext) for ext in ("png", "jpg")})


def _journal(path: Path) -> bytes:
    """A real study's journal: created through open_storage, 3 trials with params, values and attrs."""
    import optuna

    from search.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=open_storage(str(path)), directions=["maximize", "minimize"])
    study.set_user_attr("config", config_dict(RunConfig()))
    for i in range(3):
        with warnings.catch_warnings():  # "Heartbeat of storage is supposed to be used with Study.optimize"
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()
        trial.suggest_float(LAYERS[0], 0.0, 0.9)
        trial.set_user_attr("checkpoint", f"trials/trial_{i}.pt")
        study.tell(trial, [50.0 + i, 1e6 - i])
    return path.read_bytes()


def _image(ext: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (12, 12), (200, 30, 90)).save(buf, "PNG" if ext == "png" else "JPEG")
    return buf.getvalue()


# --- generators of junk ------------------------------------------------------------------------------------

def random_bytes(rng: random.Random, most: int = 1 << 16) -> bytes:
    size = int(2 ** rng.uniform(0, 16)) if rng.random() < 0.9 else rng.choice([0, 1, most])
    head = rng.choice([b"", b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x05", b"{", b"SQLite format 3\x00"])
    return head + rng.randbytes(size)


def flip_bits(rng: random.Random, data: bytes, n: int, metadata: int = 0) -> bytes:
    """``n`` flipped bits; with ``metadata`` > 0 half of them land in the first or last ``metadata`` bytes."""
    out = bytearray(data)
    for _ in range(n):
        if metadata and rng.random() < 0.5:
            i = rng.randrange(min(metadata, len(out)))
            i = i if rng.random() < 0.5 else len(out) - 1 - i
        else:
            i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def junk_value(rng: random.Random, depth: int = 0):
    """A JSON-like value a careless file might hold: wrong types, huge numbers, NaN, NULs, nesting."""
    pool = [None, True, False, 0, -1, 1, 2, 7, 10 ** 18, 2 ** 63, 10 ** 30, -10 ** 30, 0.5, -0.0, 1.5, 1e308,
            float("nan"), float("inf"), float("-inf"), "", "x", "cifar100", "\x00", "a\nb", "\ud800", "9" * 50,
            "imagefolder:", "x" * 5000]
    if depth < 3 and rng.random() < 0.3:
        n = rng.randrange(4)
        if rng.random() < 0.5:
            return [junk_value(rng, depth + 1) for _ in range(n)]
        return {rng.choice(["a", "", "plan", "lr", "0"]): junk_value(rng, depth + 1) for _ in range(n)}
    return rng.choice(pool)


def junk_json(rng: random.Random, valid: dict) -> bytes:
    """Bytes for a JSON file that should hold ``valid``: random bytes, junk, deep nesting, or ``valid`` with
    1-3 of its values (or its keys) replaced by junk."""
    roll = rng.random()
    if roll < 0.15:
        return random_bytes(rng, 4096)
    if roll < 0.25:
        depth = rng.choice([10, 1000, 100_000])
        return (rng.choice(["[", '{"a":', '{"config":']) * depth).encode() + rng.choice([b"", b"1" + b"]" * depth])
    if roll < 0.35:
        return rng.choice([b"NaN", b"Infinity", b"-1e99999", b"1" * 5000, b"[]", b"null", b"\"text\"",
                           b"\xef\xbb\xbf{}", "{}".encode("utf-16"), b""])
    if roll < 0.45:
        return json.dumps(junk_value(rng)).encode()
    data = dict(valid)
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(list(data)) if data and rng.random() < 0.85 else rng.choice(["", "a", "config", "9"])
        data[key] = junk_value(rng)
    if rng.random() < 0.2:
        data = {"config": data, "versions": {}}  # a run's config.json
    text = json.dumps(data)
    if rng.random() < 0.1:  # a number literal Python's json reads as inf or refuses as too long
        text = text.replace("0.0001", rng.choice(["1e400", "-1e400", "1" * 5000]), 1)
    return text.encode("utf-8", "surrogatepass")


# --- kinds: each returns (thunk, check) for one case; check(result) says whether a load was exact -----------

Case = tuple[Callable[[], object], Callable[[object], bool]]


def _path(fx: Fixtures, name: str = "case.pt") -> Path:
    """Where a case's file goes (the directory a ckpt-foreign case may have left there removed)."""
    path = fx.dir / name
    if path.is_dir():
        path.rmdir()
    return path


def _write(fx: Fixtures, data: bytes, name: str = "case.pt") -> Path:
    path = _path(fx, name)
    path.write_bytes(data)
    return path


def _exact_checkpoint(fx: Fixtures) -> Callable[[object], bool]:
    def check(result) -> bool:
        model, meta = result
        state = model.state_dict()
        return meta == fx.ckpt["meta"] and channel_plan(model) == fx.ckpt["plan"] and state.keys() == \
            fx.ckpt["state_dict"].keys() and all(torch.equal(state[k], v) for k, v in fx.ckpt["state_dict"].items())
    return check


def ckpt_random(rng: random.Random, fx: Fixtures) -> Case:
    path = _write(fx, random_bytes(rng))
    return lambda: load_pruned(path), _exact_checkpoint(fx)


def ckpt_truncated(rng: random.Random, fx: Fixtures) -> Case:
    path = _write(fx, fx.ckpt_bytes[:rng.randrange(len(fx.ckpt_bytes))])
    return lambda: load_pruned(path), _exact_checkpoint(fx)


def ckpt_bitflip(rng: random.Random, fx: Fixtures) -> Case:
    # torch.save writes data.pkl first and the zip's central directory last: the metadata is at both ends.
    path = _write(fx, flip_bits(rng, fx.ckpt_bytes, rng.randint(1, 40), metadata=rng.choice([0, 8192, 65536])))
    return lambda: load_pruned(path), _exact_checkpoint(fx)


class _Code:
    def __reduce__(self):
        return (print, ("this ran",))


def foreign_bytes(rng: random.Random, fx: Fixtures) -> bytes | None:
    """A file that is not a checkpoint of this toolkit (None: a directory)."""
    roll = rng.randrange(7)
    if roll == 0:
        return rng.choice([b"", None])
    if roll == 1:  # a zip of something else (e.g. a renamed .docx)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for i in range(rng.randint(0, 3)):
                z.writestr(rng.choice(["data.pkl", "archive/data.pkl", "x", "archive/version"]) + str(i) * (i > 0),
                           random_bytes(rng, 512))
        return buf.getvalue()
    if roll == 2:  # a plain pickle, maybe of code
        obj = _Code() if rng.random() < 0.3 else junk_value(rng)
        return pickle.dumps(obj, protocol=rng.randint(0, 5))
    buf = io.BytesIO()  # a torch file of something else: a tensor, junk, a dict short of keys
    obj = rng.choice([torch.zeros(rng.randint(0, 5)), junk_value(rng), {"weights": torch.ones(3)},
                      {"plan": {}, "num_classes": 2}, [fx.ckpt["plan"]], (1, 2), {"state_dict": torch.zeros(2)}])
    torch.save(obj, buf)
    return buf.getvalue()


def ckpt_foreign(rng: random.Random, fx: Fixtures) -> Case:
    data = foreign_bytes(rng, fx)
    path = _write(fx, data or b"")
    if data is None:
        path.unlink()
        path.mkdir()
    return lambda: load_pruned(path), _exact_checkpoint(fx)


def mutated_checkpoint(rng: random.Random, fx: Fixtures) -> dict:
    """The checkpoint's dict with 1-3 wrong entries: types, shapes, dtypes, values, missing or extra keys."""
    ckpt = {**fx.ckpt, "plan": dict(fx.ckpt["plan"]), "state_dict": dict(fx.ckpt["state_dict"])}
    for _ in range(rng.randint(1, 3)):
        part = rng.choice(["top", "plan", "plan", "num_classes", "state", "state", "state", "meta"])
        if part == "top":
            key = rng.choice(["plan", "num_classes", "state_dict", "meta"])
            ckpt.pop(key) if rng.random() < 0.5 else ckpt.__setitem__(key, junk_value(rng))
        elif part == "plan":
            plan, layer = ckpt.get("plan"), rng.choice(LAYERS)
            if isinstance(plan, dict):
                plan[rng.choice([layer, layer, "layer9.0.conv1", "fc", 3])] = rng.choice(
                    [0, -1, 2, 64, 65, 10 ** 9, 2 ** 70, "1", 1.0, True, None, [1]])
        elif part == "num_classes":
            ckpt["num_classes"] = rng.choice([0, -2, 1, 3, 10 ** 12, "2", 2.0, True, None, [2]])
        elif part == "state":
            state, key = ckpt.get("state_dict"), rng.choice(list(fx.ckpt["state_dict"]))
            if not isinstance(state, dict):
                continue
            value = state.get(key, torch.zeros(1))
            state[rng.choice([key, key, key, "extra.weight", 7])] = rng.choice([
                None, 3, "w", [1.0], value.reshape(-1), value.reshape(-1)[:0], value.sum(), value.double(),
                value.to(torch.int64), value.to(torch.complex64), value.bool(), value.half(), torch.zeros(5, 5),
                value.to_sparse()])
            if rng.random() < 0.2:
                state.pop(key, None)
        else:
            ckpt["meta"] = junk_value(rng)
    return ckpt if rng.random() < 0.9 else rng.choice([[ckpt], (ckpt,), torch.zeros(2)])


def ckpt_structure(rng: random.Random, fx: Fixtures) -> Case:
    ckpt, path = mutated_checkpoint(rng, fx), _path(fx)
    try:
        if rng.random() < 0.5:
            atomic_save(ckpt, path)  # a valid digest: the structure checks must still catch it
            return lambda: load_pruned(path), lambda result: True
    except TypeError:  # a value no digest covers (a sparse tensor): saved without one
        pass
    torch.save(ckpt, path)
    return lambda: load_pruned(path), lambda result: True  # a mutation may leave a valid checkpoint


def weights(rng: random.Random, fx: Fixtures) -> Case:
    """--weights PATH: the checkpoint kinds' files, and state_dicts with ResNet50's names but junk values."""
    roll, path = rng.randrange(5), fx.dir / "case.pt"
    if roll < 4:
        (ckpt_random, ckpt_truncated, ckpt_bitflip, ckpt_foreign)[roll](rng, fx)  # writes ``path``
    else:
        names = resnet50_names()
        state = {name: rng.choice([torch.zeros(1), None, "w", torch.zeros(1, dtype=torch.int8)])
                 for name in rng.sample(names, rng.choice([1, len(names) - 1, len(names)]))}
        torch.save({"state_dict": state} if rng.random() < 0.5 else state, _path(fx))
    return lambda: build_resnet50(2, str(path)), lambda result: True


@functools.cache
def resnet50_names() -> list[str]:
    """The state_dict names of torchvision's ResNet50 (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        return list(build_resnet50(1000).state_dict())


def config(rng: random.Random, fx: Fixtures) -> Case:
    from search.config import SEARCH_PRESETS, SearchConfig

    cls = rng.choice([RunConfig, SearchConfig])
    valid = config_dict(RunConfig() if cls is RunConfig else SearchConfig())
    path = _write(fx, junk_json(rng, valid), "config.json")
    argv = ["--config", str(path)]
    if cls is RunConfig:
        return lambda: parse_config(argv), lambda result: True
    return lambda: parse_config(argv, SearchConfig, presets=SEARCH_PRESETS), lambda result: True


def ratios(rng: random.Random, fx: Fixtures) -> Case:
    from distill.pipeline import load_ratios
    from pruning.plan import check_ratio

    valid = {layer: round(rng.random() * 0.9, 2) for layer in rng.sample(LAYERS, 4)}
    path = _write(fx, junk_json(rng, valid), "ratios.json")

    def check(result) -> bool:  # every ratio handed on is one the pruning accepts
        for name, ratio in result.items():
            check_ratio(name, ratio)
        return set(result) == set(LAYERS)
    return lambda: load_ratios(str(path), LAYERS, 0.1), check


def journal(rng: random.Random, fx: Fixtures) -> Case:
    from search.storage import load_study

    lines = fx.journal.splitlines(keepends=True)
    roll = rng.randrange(6)
    if roll == 0:
        data = random_bytes(rng)
    elif roll == 1:  # a valid first line, then junk
        data = lines[0] + random_bytes(rng)
    elif roll == 2:
        data = fx.journal[:rng.randrange(1, len(fx.journal))]
    elif roll == 3:
        data = flip_bits(rng, fx.journal, rng.randint(1, 10))
    else:  # a junk line, or a record with wrong fields, at a random place (roll 5: lines shuffled)
        fields = rng.sample(["study_id", "trial_id", "key", "value", "state", "values", "param_name"], 3)
        record = {"op_code": rng.randint(-1, 12), "worker_id": "w", **{k: junk_value(rng) for k in fields}}
        junk = rng.choice([random_bytes(rng, 200).replace(b"\n", b""), json.dumps(junk_value(rng)).encode(),
                           json.dumps(record).encode()]) + b"\n"
        if roll == 5:
            rng.shuffle(lines)
        lines.insert(rng.randrange(len(lines) + 1), junk)
        data = b"".join(lines)
    path = _write(fx, data, "studies.db")

    def read():
        try:
            study = load_study(str(path), "s")
            return study, [t.params for t in study.get_trials()]
        finally:
            if path.read_bytes() != data:
                raise Damaged(f"{path} changed")  # replaces any UserError: reading must never write
    return read, lambda result: True


class Damaged(Exception):
    """A fuzzed file that reading it changed."""


def storage_url(rng: random.Random, fx: Fixtures) -> Case:
    from search.storage import open_storage

    # No "." and no leading "/": the paths stay inside the fuzz directory (open_storage creates journal files).
    parts = ["".join(rng.choice(["a", ":", "@", "%", "\x00", "\n", "é", " ", "?", "#", "\ud800", "9", "-"])
                     for _ in range(rng.randint(0, 12))) for _ in range(3)]
    junk, nested = parts[0], "/".join(parts)
    url = rng.choice([junk, junk, f"sqlite:///{fx.dir}/url/{nested}", f"{junk}://{nested}", f"sqlite://{junk}",
                      f"postgresql://u:p@127.0.0.1:9/{junk}", f"mysql://{junk}", "://", "", "x" * 5000,
                      f"{fx.dir}/url/{nested}", f"{fx.dir}/url/{nested}/"])
    return lambda: open_storage(url), lambda result: True


def images(rng: random.Random, fx: Fixtures) -> Case:
    """An ImageFolder (2 classes, 2 good images each in train and val) plus 1-3 bad files, read like a run."""
    from distill.data import load_data, make_loader

    root = fx.dir / "images"
    shutil.rmtree(root, ignore_errors=True)
    for part in ("train", "val"):
        for cls in ("a", "b"):
            (root / part / cls).mkdir(parents=True)
            for i in range(2):
                (root / part / cls / f"{i}.png").write_bytes(fx.images["png"])
    for i in range(rng.randint(1, 3)):
        ext = rng.choice(["png", "jpg"])
        good = fx.images[ext]
        data = rng.choice([random_bytes(rng, 4096), good[:rng.randrange(8, len(good))],
                           flip_bits(rng, good, rng.randint(1, 8)), b""])
        folder = root / rng.choice(["train", "val"]) / rng.choice(["a", "b"])
        target = folder / f"bad{i}.{rng.choice([ext, ext.upper()])}"
        target.write_bytes(data)

    def read():
        data = load_data(f"imagefolder:{root}", data_dir=str(fx.dir / "image-cache"), image_size=16)
        cpu = torch.device("cpu")
        for split, train in ((data.train, True), (data.val, False)):
            for _ in make_loader(split, 4, cpu, 16, train, workers=0):
                pass
        return data
    return read, lambda data: len(data.train) >= 4 and len(data.val) >= 4  # no good image was dropped


KINDS: dict[str, Callable[[random.Random, Fixtures], Case]] = {
    "ckpt-random": ckpt_random, "ckpt-truncated": ckpt_truncated, "ckpt-bitflip": ckpt_bitflip,
    "ckpt-foreign": ckpt_foreign, "ckpt-structure": ckpt_structure, "weights": weights, "config": config,
    "ratios": ratios, "journal": journal, "storage-url": storage_url, "images": images,
}


# --- running ------------------------------------------------------------------------------------------------

def outcome(case: Case) -> tuple[str, bool]:
    """(``error`` | ``ok`` | ``escape:<what>``, whether a Python warning was emitted)."""
    thunk, check = case
    quiet = contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO())
    with warnings.catch_warnings(record=True) as caught, quiet[0], quiet[1]:  # e.g. ImageFolder's skip notes
        warnings.simplefilter("always")
        try:
            result = thunk()
        except UserError as exc:
            kind = "error" if "\n" not in str(exc) else "escape:multi-line message"
        except Exception as exc:  # what the fuzzer looks for
            kind = f"escape:{type(exc).__name__}"
        else:
            kind = "ok" if check(result) else "escape:silently different"
    return kind, bool(caught)


def run_kind(name: str, cases: int, seed: int, fx: Fixtures) -> dict:
    """Run ``cases`` cases of one kind; each case's generator is seeded by (seed, kind, index)."""
    counts, warned, examples = collections.Counter(), 0, {}
    start = time.process_time()
    for i in range(cases):
        rng = random.Random(f"{seed}:{name}:{i}")
        kind, warning = outcome(KINDS[name](rng, fx))
        counts[kind] += 1
        warned += warning
        examples.setdefault(kind, i)
    escapes = {k.split(":", 1)[1]: n for k, n in counts.items() if k.startswith("escape:")}
    return {"kind": name, "cases": cases, "errors": counts["error"], "ok": counts["ok"], "escapes": escapes,
            "warned": warned, "first_case": examples, "cpu_s": round(time.process_time() - start, 2)}


def digest_cost(directory: Path, repeats: int = 3) -> dict:
    """CPU seconds of the sha256 digest of a dense ResNet50 checkpoint (CIFAR-100 head), and of the whole
    save (``atomic_save``: torch.save + digest) and load (``safe_load``: torch.load + its check) it is part
    of: the price of issue 14's integrity check (best of ``repeats``; the fsync's wait is not CPU time)."""
    torch.manual_seed(0)
    model = build_resnet50(100)
    obj = {"plan": channel_plan(model), "num_classes": 100, "state_dict": model.state_dict(), "meta": {}}
    path = directory / "dense.pt"

    def best(thunk) -> float:
        times = []
        for _ in range(repeats):
            start = time.process_time()
            thunk()
            times.append(time.process_time() - start)
        return round(min(times), 3)

    digest_s = best(lambda: content_digest(obj))
    save_s = best(lambda: atomic_save(obj, path))
    return {"mb": round(path.stat().st_size / 1e6, 1), "digest_cpu_s": digest_s, "save_cpu_s": save_s,
            "load_cpu_s": best(lambda: safe_load(path)), "repeats": repeats}


def parse_args(argv: list[str] | None):
    parser = base_parser(__doc__)
    parser.add_argument("--cases", type=int, default=1000, help="cases per kind [default: 1000]")
    parser.add_argument("--seed", type=int, default=0, help="seed of every case's generator [default: 0]")
    parser.add_argument("--kinds", nargs="+", choices=tuple(KINDS), default=list(KINDS), help="kinds to run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.cases = 3
    return args


def run(argv: list[str] | None) -> dict:
    import search.storage

    args = parse_args(argv)
    set_threads(args.threads or 1)
    # No other worker appends to the fuzzed journals: do not wait for one. Relative paths land in ``tmp``.
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp), mock.patch.object(search.storage, "SETTLE_S", 0):
        fx = make_fixtures(Path(tmp))
        rows = [run_kind(name, args.cases, args.seed, fx) for name in args.kinds]
        cost = digest_cost(Path(tmp), repeats=1 if args.smoke else 3)
    table = [{**r, "escapes": sum(r["escapes"].values()),
              "escape types": ", ".join(f"{k} x{n}" for k, n in sorted(r["escapes"].items())) or "-"} for r in rows]
    print_table(table, ["kind", "cases", "errors", "ok", "escapes", "escape types", "warned", "cpu_s"],
                f"fuzzed inputs: seed {args.seed}, {args.cases} cases per kind (cpu_s: process CPU time)")
    print(f"sha256 digest of a dense ResNet50 checkpoint ({cost['mb']} MB): {cost['digest_cpu_s']} s CPU; the save "
          f"with it {cost['save_cpu_s']} s, the load with its check {cost['load_cpu_s']} s (best of {cost['repeats']})")
    result = {"smoke": args.smoke, "machine": machine(), "seed": args.seed, "cases": args.cases, "rows": rows,
              "escapes": sum(sum(r["escapes"].values()) for r in rows), "digest": cost}
    write_json(args.json, result)
    return result


def main(argv: list[str] | None = None) -> dict | None:
    return run_cli(lambda: run(argv), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
