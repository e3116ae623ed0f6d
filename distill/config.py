"""The one config that defines a run, shared by the baseline and the search.

Precedence: dataclass defaults < ``--preset NAME`` < ``--config FILE.json`` < explicit CLI flags.
Each field is also the CLI flag (``epochs_per_step`` -> ``--epochs-per-step``), the CSV column and
the TensorBoard tag where it is logged. Unknown or mistyped keys are errors, wherever they come from.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from distill.losses import KD_KINDS
from distill.trainer import LR_SCHEDULES
from pruning.errors import UserError


def opt(default, help: str, choices: tuple | None = None):
    """A config field with its help text (shown by --help) and optional allowed values."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class RunConfig:
    # --- data ---
    data: str = opt("cifar100", "cifar100 | synthetic | shapes (generated, harder: distill/shapes.py) | imagefolder:PATH "
                    "(PATH/train/<class>/*, PATH/val/<class>/*)")
    data_dir: str = opt("datasets", "where CIFAR-100 is (or is downloaded to)")
    download: bool = opt(True, "download CIFAR-100 if it is not in --data-dir")
    image_size: int = opt(224, "side of the square network input in pixels (CIFAR images are resized)")
    train_subset: int = opt(0, "use only this many training images (0 = all)")
    val_subset: int = opt(0, "use only this many validation and test images (0 = all)")
    val_fraction: float = opt(0.0, "hold out this fraction of the training set as validation; 0 = validate on the test set (the seed's protocol)")
    synthetic_classes: int = opt(10, "classes of --data synthetic or shapes (shapes: 5 colour families x up to 20 "
                                     "shapes; 100 = 5 x 20, 10 = 5 x 2)")
    synthetic_train: int = opt(2000, "training images of --data synthetic or shapes")
    synthetic_test: int = opt(0, "test images of --data synthetic or shapes (0 = a quarter of --synthetic-train): "
                                 "more of them, less sampling noise in test top-1 (issue 12)")
    workers: int = opt(2, "DataLoader worker processes for imagefolder data that streams from disk")
    augment: str = opt("auto", "training augmentation, on the device: crop-flip = 4-px padded random crop + flip "
                       "(CIFAR); resized-crop = random-resized-crop + flip (ImageNet; evaluation on the centre "
                       "87.5%); none; auto = crop-flip for images of <= 64 px (CIFAR-100, synthetic), else "
                       "resized-crop", ("auto", "crop-flip", "resized-crop", "none"))
    max_memory_gb: float = opt(8.0, "imagefolder data whose decoded uint8 images fit this many GB is decoded once "
                                    "into a tensor file in --data-dir and trained from memory (the GPU on CUDA) "
                                    "with the teacher cache; larger data streams from disk every epoch")
    # --- model ---
    weights: str = opt("imagenet", "initial ResNet50 weights: imagenet (IMAGENET1K_V2) | none | PATH to a state_dict")
    teacher: str = opt("", "fine-tuned teacher checkpoint to reuse (skips teacher training)")
    teachers: tuple[str, ...] = opt((), "extra teachers for KD retraining, averaged with the run's teacher's softened "
                                        "outputs (feature terms use the run's teacher): checkpoint paths, or "
                                        "'previous' for the model before each step's pruning (a teacher assistant)")
    teacher_weights: tuple[float, ...] = opt((), "weights of the teachers' softened outputs: the run's teacher first, "
                                                 "then each --teachers entry (empty = equal)")
    teacher_epochs: int = opt(100, "epochs of cross-entropy fine-tuning of the teacher")
    teacher_lr: float = opt(1e-4, "Adam learning rate of teacher fine-tuning")
    # --- pruning ---
    steps: int = opt(20, "pruning steps")
    ratio: float = opt(0.1, "fraction of the current channels of each prunable layer removed per step")
    ratios: str = opt("", "JSON file {layer: ratio} overriding --ratio per layer (names from pruning.model.prunable_layers)")
    backend: str = opt("nni", "pruning backend", ("nni", "torch-pruning"))
    round_to: int = opt(1, "round kept channel counts up to a multiple of this (8 helps tensor cores)")
    bn_calib_batches: int = opt(0, "after each pruning, re-estimate BatchNorm statistics on this many training "
                                   "batches, forward only (EagleEye's adaptive BN; with 0 KD epochs a cheap screen; "
                                   "its time counts in prune_wall_s)")
    # --- distillation retraining ---
    epochs_per_step: int = opt(30, "KD retraining epochs after each pruning step")
    final_epochs: int = opt(50, "KD epochs on the last pruned model (the seed's closing step)")
    kd: str = opt("logits", "distillation loss: logits = the seed's alpha*T^2*KL + (1-alpha)*CE; attention = "
                  "CE + beta/2*AT (attention transfer on layer1..4); hint = CE + beta/2*HINT (FitNets, learned 1x1 "
                  "adapters); logits+attention = the seed's loss + beta/2*AT; dkd = alpha*(dkd_alpha*TCKD + "
                  "dkd_beta*NCKD) + (1-alpha)*CE (decoupled KD, Zhao et al. 2022; alpha 0.5 is the paper's CE + DKD)",
                  tuple(KD_KINDS))
    temperature: float = opt(5.0, "KD softmax temperature T")
    alpha: float = opt(0.7, "weight of the KD term; 1 - alpha weights cross-entropy")
    beta: float = opt(1000.0, "weight of the attention/hint term, applied as beta/2 (Zagoruyko & Komodakis use 1e3 "
                      "for attention; hints' unnormalised MSE usually wants far less, e.g. 1-100)")
    dkd_alpha: float = opt(1.0, "--kd dkd: weight of TCKD, the target-vs-rest part of the KL (Zhao et al. 2022: 1)")
    dkd_beta: float = opt(8.0, "--kd dkd: weight of NCKD, the KL among the non-target classes (Zhao et al. 2022: 8 "
                               "on CIFAR-100, 0.5 on ImageNet)")
    lr: float = opt(1e-4, "Adam learning rate of KD retraining")
    lr_schedule: str = opt("constant", "learning rate within each stage (a prune step's epochs, the closing epochs, "
                                       "the teacher's): constant (the seed's) | cosine = from --lr (--teacher-lr) "
                                       "down to 0 over the stage's updates", LR_SCHEDULES)
    weight_decay: float = opt(0.0, "Adam weight decay")
    batch_size: int = opt(256, "training and evaluation batch size")
    teacher_cache: int = opt(0, "cache teacher logits for K augmented views per image (0 = off; "
                                 "every view: 162 with crop-flip, 1024 with resized-crop, 1 with none)")
    # --- runtime ---
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")
    amp: bool = opt(True, "mixed precision on CUDA (bf16 where supported, else fp16)")
    compile: bool = opt(False, "torch.compile the student on CUDA")
    seed: int = opt(0, "seed of data order, augmentation, splits and initialisation")
    out: str = opt("runs/iterative", "output directory (rerunning with the same one resumes)")
    force: bool = opt(False, "resume even if the config differs from the one recorded in --out")
    progress: bool = opt(True, "tqdm progress bars")
    debug: bool = opt(False, "show full tracebacks for user errors")


# Fields that may change between a run and its resumption without changing its results (``out``: a moved
# run directory resumes; ``sampler_seed``: trials not yet drawn are any sampler's).
RESUME_NEUTRAL = {"device", "amp", "compile", "progress", "debug", "force", "workers", "download", "data_dir",
                  "max_memory_gb", "n_workers", "n_trials", "storage", "keep_checkpoints", "trials", "out",
                  "sampler_seed"}

# ``--teachers previous``: the model before each step's pruning joins the teachers, a "teacher assistant"
# one step away from the student (Mirzadeh et al., AAAI 2020: TAKD narrows the teacher-student gap).
PREVIOUS = "previous"

PRESETS: dict[str, dict] = {
    # The seed's protocol, as published.
    "seed": {},
    # The same pipeline small enough for a 2-core laptop CPU in about ten minutes.
    "quick": {"image_size": 32, "train_subset": 5000, "val_subset": 1000, "teacher_epochs": 3, "steps": 5,
              "epochs_per_step": 1, "final_epochs": 1, "batch_size": 128, "out": "runs/quick"},
    # No download at all: generated shapes (10 classes, 2,000 images), random init. What the README's first
    # command runs. The random-init teacher trains at 1e-3 (issue 12: 62% test top-1 after 5 epochs, 22% at 1e-4).
    "demo": {"data": "shapes", "weights": "none", "image_size": 32, "teacher_epochs": 4, "teacher_lr": 1e-3,
             "steps": 3, "epochs_per_step": 1, "final_epochs": 1, "batch_size": 64, "out": "runs/demo"},
}


def cli_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_type(cls, f: dataclasses.Field):
    return _type_hints(cls)[f.name]


@functools.cache
def _type_hints(cls) -> dict:
    """Once per class: get_type_hints evaluates every annotation, and parsing asks for each field (issue 14)."""
    return typing.get_type_hints(cls)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors (unknown flag, bad choice such as --preset/--sampler) are one line on
    stderr and exit code 2, like every other user error (issue 6), not the whole usage text."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser(cls=RunConfig, description: str = "", presets: dict = PRESETS) -> argparse.ArgumentParser:
    """argparse from the dataclass: one flag per field, defaults left unset so precedence can be applied."""
    parser = OneLineParser(description=description, argument_default=argparse.SUPPRESS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), help="named set of defaults (see distill/config.py)")
    parser.add_argument("--config", help="JSON file of field values (e.g. a config.json of an earlier run)")
    for f in dataclasses.fields(cls):
        typ = _field_type(cls, f)
        # argparse %-formats help strings: a literal "10%" would crash --help.
        kwargs = {"help": f"{f.metadata.get('help', '')} [default: {f.default}]".replace("%", "%%")}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if typ is bool:
            parser.add_argument(cli_name(f.name), action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(typ) is tuple:
            parser.add_argument(cli_name(f.name), nargs="*", type=typing.get_args(typ)[0], **kwargs)
        else:
            parser.add_argument(cli_name(f.name), type=typ, **kwargs)
    return parser


def make_config(cls=RunConfig, overrides: dict | None = None, preset: str | None = None,
                presets: dict = PRESETS, config_file: str | None = None):
    """Apply defaults < preset < config file < overrides; reject unknown keys and bad choices."""
    if preset is not None and preset not in presets:
        raise UserError(f"unknown preset {preset!r}: choose one of {', '.join(sorted(presets))}")
    values: dict = dict(presets.get(preset, {})) if preset else {}
    if config_file:
        values.update(_read_config_file(cls, config_file))
    values.update(overrides or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown config key(s) {unknown}: see --help for the valid names")
    cfg = cls(**{k: _coerce(cls, k, v) for k, v in values.items()})
    validate(cfg)
    return cfg


def _read_config_file(cls, path: str) -> dict:
    """The fields of a ``--config`` JSON file: an object of field values, or a run's config.json (under "config")."""
    data = read_json_object(path, "--config", "a JSON object of field: value")
    return data["config"] if isinstance(data.get("config"), dict) else data


def read_json_object(path: str, flag: str, what: str) -> dict:
    """The JSON object in the file ``flag`` names; anything else is a one-line UserError (issue 14)."""
    try:
        data = json.loads(Path(path).read_bytes())
    # ValueError: bad JSON or undecodable bytes; RecursionError: nesting deeper than the parser goes.
    except (OSError, ValueError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
        raise UserError(f"{flag} {path}: cannot read it as {what} ({reason[:160]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{flag} {path}: expected {what}, not a {type(data).__name__}")
    return data


INT64 = 2 ** 63  # ints beyond a C long are never a sensible count, and overflow torch (e.g. its seed)


def _coerce(cls, name: str, value):
    """``value`` as the field's type; anything else (wrong type, NaN, inf, a huge int) is a UserError."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    typ = _field_type(cls, f)
    if typing.get_origin(typ) is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {name}={_short(value)}: expected a list of {typing.get_args(typ)[0].__name__}")
        return tuple(_coerce_scalar(name, item, typing.get_args(typ)[0]) for item in value)
    return _coerce_scalar(name, value, typ)


def _coerce_scalar(name: str, value, typ: type):
    if typ is float and isinstance(value, int) and not isinstance(value, bool) and abs(value) < INT64:
        value = float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise UserError(f"config key {name}={_short(value)}: expected {typ.__name__}")
    if typ is float and not math.isfinite(value):
        raise UserError(f"config key {name}={value!r}: expected a finite number")
    if typ is int and not -INT64 <= value < INT64:
        raise UserError(f"config key {name}={_short(value)}: too large (it must fit in 64 bits)")
    if typ is str and not value.isprintable():  # NUL, newlines: no path or name has them, and messages stay one line
        raise UserError(f"config key {name}={_short(value)}: contains control characters")
    return value


def _short(value) -> str:
    """repr of a value, cut for one-line messages (a config file may hold megabytes of junk)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate(cfg) -> None:
    """Field-level checks that argparse cannot express; every message names the flag and the fix."""
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            raise UserError(f"{cli_name(f.name)} {getattr(cfg, f.name)!r}: choose one of {', '.join(choices)}")
    if not isinstance(cfg, RunConfig):  # a tool's own config (e.g. search.report's): only choices apply here
        return
    if not 0.0 <= cfg.ratio < 1.0:
        raise UserError(f"--ratio {cfg.ratio}: must be in [0, 1) (0.1 removes 10% of the channels per step)")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise UserError(f"--alpha {cfg.alpha}: must be in [0, 1]")
    validate_teachers(cfg)
    if cfg.temperature <= 0:
        raise UserError(f"--temperature {cfg.temperature}: must be > 0")
    for name in ("dkd_alpha", "dkd_beta"):
        if getattr(cfg, name) < 0:
            raise UserError(f"{cli_name(name)} {getattr(cfg, name)}: must be >= 0")
    if cfg.max_memory_gb < 0:
        raise UserError(f"--max-memory-gb {cfg.max_memory_gb}: must be >= 0 (0 streams imagefolder data from disk)")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise UserError(f"--val-fraction {cfg.val_fraction}: must be in [0, 1)")
    for name in ("image_size", "batch_size", "round_to"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{cli_name(name)} {getattr(cfg, name)}: must be >= 1")
    for name in ("steps", "epochs_per_step", "final_epochs", "teacher_epochs", "train_subset", "val_subset",
                 "synthetic_test", "teacher_cache", "bn_calib_batches"):
        if getattr(cfg, name) < 0:
            raise UserError(f"{cli_name(name)} {getattr(cfg, name)}: must be >= 0")
    if not (cfg.data in ("cifar100", "synthetic", "shapes") or cfg.data.startswith("imagefolder:")):
        raise UserError(f"--data {cfg.data!r}: use cifar100, synthetic, shapes or imagefolder:PATH")


def validate_teachers(cfg) -> None:
    """--teachers must exist now (not after hours of training); --teacher-weights needs one per teacher."""
    for path in cfg.teachers:
        if path != PREVIOUS and not Path(path).is_file():
            raise UserError(f"--teachers {path}: no such file; give checkpoints written by this toolkit, "
                            f"or {PREVIOUS!r} for the model before each step's pruning")
    weights = cfg.teacher_weights
    if weights and len(weights) != 1 + len(cfg.teachers):
        raise UserError(f"--teacher-weights: {len(weights)} given for {1 + len(cfg.teachers)} teacher(s); give one "
                        f"for the run's teacher, then one per --teachers entry (or none for equal weights)")
    # Stages without a previous model (the closing epochs) drop its weight: the rest must still sum > 0.
    kept = [w for w, entry in zip(weights, ("", *cfg.teachers)) if entry != PREVIOUS]
    if weights and (min(weights) < 0 or sum(kept) <= 0):
        raise UserError(f"--teacher-weights {' '.join(map(str, weights))}: must be >= 0 with a positive sum "
                        f"(also without the weights of {PREVIOUS!r})")
    if cfg.beta < 0:
        raise UserError(f"--beta {cfg.beta}: must be >= 0")


def parse_config(argv: list[str] | None, cls=RunConfig, description: str = "", presets: dict = PRESETS):
    """The config a command line asks for."""
    args = vars(build_parser(cls, description, presets).parse_args(argv))
    preset = args.pop("preset", None)
    config_file = args.pop("config", None)
    return make_config(cls, args, preset=preset, presets=presets, config_file=config_file)


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_diff(recorded: dict, cfg) -> dict[str, tuple]:
    """Fields of ``cfg`` whose values differ from the ``recorded`` run's and would change results (ignores
    RESUME_NEUTRAL). A field the record lacks (added since) counts as its default: a run of an older
    version resumes unless the field is changed."""
    recorded, current = with_defaults(recorded, type(cfg)), config_dict(cfg)
    keys = (set(recorded) | set(current)) - RESUME_NEUTRAL
    return {k: (recorded.get(k), current.get(k)) for k in sorted(keys)
            if _norm(recorded.get(k)) != _norm(current.get(k))}


def with_defaults(recorded: dict, cls) -> dict:
    """A config recorded by an older version, its missing fields (added since) at ``cls``'s defaults."""
    return {**config_dict(cls()), **recorded}


def _norm(value):
    return list(value) if isinstance(value, tuple) else value
