"""Training and evaluation loops: one path for teacher fine-tuning (CE) and KD retraining.

A ``Distiller`` turns a batch into a dict of loss parts; ``fit`` runs epochs of it with Adam, mixed
precision on CUDA, a progress bar, a NaN/inf guard and an ``on_epoch`` hook (checkpointing, logging).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from distill.data import Batch
from distill.features import STAGES, capture, make_adapters
from distill.losses import KD_KINDS, attention_loss, dkd_loss, hint_loss, kd_loss
from pruning.errors import UserError
from pruning.model import to_memory_format


class NonFiniteLoss(UserError, RuntimeError):
    """The training loss became NaN or inf: the step/trial stops instead of training on garbage.

    A UserError, so the baseline reports it as one line (its fix: a lower --lr, or the data) and exits 2."""


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None   # autocast dtype on CUDA; None = full precision
    progress: bool = True

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def make_runtime(device: str = "auto", amp: bool = True, progress: bool = True) -> Runtime:
    """Resolve ``auto`` and pick bf16 autocast on GPUs that support it (fp16 + loss scaling otherwise)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    amp_dtype = None
    if dev.type == "cuda" and amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    return Runtime(dev, amp_dtype, progress)


class Distiller(nn.Module):
    """Student + frozen teacher(s) -> loss parts. No teacher (or ``kd`` logits with alpha 0) trains with CE.

    ``kd`` (issue 7) picks the loss, with ``AT``/``HINT`` from ``distill.losses`` on stages layer1..4:
    ``logits``: the seed's ``alpha*T^2*KL + (1-alpha)*CE``; ``attention``: ``CE + beta/2*AT``;
    ``hint``: ``CE + beta/2*HINT`` (learned adapters, trained with the student);
    ``logits+attention``: the seed's loss ``+ beta/2*AT``;
    ``dkd``: ``alpha*(dkd_alpha*TCKD + dkd_beta*NCKD) + (1-alpha)*CE`` (decoupled KD, ``distill.losses.dkd_loss``),
    from logits alone, so a teacher cache serves it as it serves ``logits``.
    ``teacher`` may be a list: the KL term uses the mean of their softened outputs weighted by
    ``teacher_weights`` (equal if None); feature terms use the first teacher's stage outputs.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | Sequence[nn.Module] | None, temperature: float,
                 alpha: float, kd: str = "logits", beta: float = 0.0,
                 teacher_weights: Sequence[float] | None = None, dkd_alpha: float = 1.0, dkd_beta: float = 8.0):
        super().__init__()
        teachers = [] if teacher is None else list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        if kd not in KD_KINDS:
            raise UserError(f"--kd {kd!r}: choose one of {', '.join(KD_KINDS)}")
        self.student, self.teachers = student, nn.ModuleList(teachers)
        self.temperature, self.alpha, self.beta = temperature, alpha, beta
        self.teacher_weights = teacher_weights
        self.decoupled, self.dkd_alpha, self.dkd_beta = kd == "dkd", dkd_alpha, dkd_beta
        self.cache = None  # a distill.teacher_cache.TeacherCache standing in for a lone teacher's logits (issue 5)
        self.uses_logits, feature = KD_KINDS[kd]
        self.feature = feature if teachers else None
        self.stages = STAGES if self.feature else ()
        # Always a ModuleDict (empty unless hints are on) so fit's optimizer and checkpoints see one shape.
        self.adapters = make_adapters(student, teachers[0]) if self.feature == "hint" else nn.ModuleDict()
        for t in teachers:
            t.eval().requires_grad_(False)

    @property
    def teacher(self) -> nn.Module | None:
        return self.teachers[0] if len(self.teachers) else None

    def teacher_outputs(self, batch: Batch) -> tuple[list[torch.Tensor] | None, dict[str, torch.Tensor]]:
        """Every teacher's logits (None when the loss has no KL term) and the first one's stage outputs."""
        if not self.teachers or (self.feature is None and self.alpha == 0):
            return None, {}
        if self.cache is not None and self.feature is None and len(self.teachers) == 1:
            return [self.cache.lookup(batch.index, batch.view)], {}  # FKD: the recorded view's soft labels
        # Logits only: inference_mode (issue 5), no autograd bookkeeping at all; the KL term reads them
        # through a softmax, so no inference tensor is saved for backward. Feature terms save the teacher's
        # features themselves (hint's MSE), which autograd refuses for inference tensors: no_grad there.
        frozen = torch.inference_mode() if self.feature is None else torch.no_grad()
        with frozen, capture(self.teachers[0], self.stages) as feats:
            first = self.teachers[0](batch.x)
            logits = [first, *(t(batch.x) for t in self.teachers[1:])] if self.uses_logits and self.alpha else None
        return logits, feats

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with capture(self.student, self.stages) as student_feats:
            logits = self.student(batch.x)
        teacher_logits, teacher_feats = self.teacher_outputs(batch)
        alpha = self.alpha if self.uses_logits else 0.0
        if self.decoupled:
            parts = dkd_loss(logits, teacher_logits, batch.y, self.temperature, alpha, self.dkd_alpha, self.dkd_beta,
                             self.teacher_weights)
        else:
            parts = kd_loss(logits, teacher_logits, batch.y, self.temperature, alpha, self.teacher_weights)
        if self.feature == "at":
            term = attention_loss(student_feats, teacher_feats)["loss"]
        elif self.feature == "hint":
            term = hint_loss(student_feats, teacher_feats, self.adapters)["loss"]
        else:
            return logits, parts
        # beta/2: the weighting of Zagoruyko & Komodakis' code and of FitNets' hint loss.
        return logits, {**parts, "loss": parts["loss"] + self.beta / 2 * term, self.feature: term}

    def train(self, mode: bool = True):
        super().train(mode)
        for t in self.teachers:
            t.eval()  # the teachers' BatchNorm statistics are frozen
        return self


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


# --lr-schedule, within each stage (a prune step's epochs, the closing epochs, the teacher's fine-tuning):
# constant = the seed's; cosine = decay from --lr to 0 over the stage's updates (Loshchilov & Hutter,
# ICLR 2017, SGDR, without restarts), so each stage ends on a settled model rather than a noisy point of its
# trajectory (issue 12: at constant lr one closing epoch lowered test top-1 in 7 of 8 runs).
LR_SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, update: int, updates: int) -> float:
    """The multiple of --lr for the stage's ``update``-th update (0-based) of ``updates``."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(update, updates) / max(updates, 1)))
    raise ValueError(f"unknown lr schedule {schedule!r}: choose one of {LR_SCHEDULES}")


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, start: int, updates: int
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-update lr multiples of the stage, resumed at update ``start``: the factor is a function of the update's
    index, and the base lr comes back with a resumed optimizer's state (LambdaLR keeps it there as initial_lr)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(schedule, start + i, updates))


def train_one_epoch(distiller: Distiller, loader, optimizer: torch.optim.Optimizer, rt: Runtime,
                    scaler: torch.amp.GradScaler | None = None, desc: str = "train",
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> dict[str, float]:
    """One pass over ``loader`` (``scheduler`` steps after every update); returns mean loss parts,
    train_top1 (%), images and wall_s."""
    distiller.train()
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), device=rt.device)
    seen, start = 0, time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, disable=not rt.progress, unit="batch")
    for batch in bar:
        with rt.autocast():
            logits, parts = distiller(batch)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(parts["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            parts["loss"].backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = batch.y.numel()
        for key, value in parts.items():
            sums[key] = sums.get(key, 0) + value.detach().float() * n
        correct += (logits.detach().argmax(1) == batch.y).sum()
        seen += n
    # One host sync per epoch (not per batch): the NaN guard and the means come from the same tensors.
    means = {f"train_{k}": (v / max(seen, 1)).item() for k, v in sums.items()}
    if not all(math.isfinite(v) for v in means.values()):
        raise NonFiniteLoss(f"{desc}: the training loss became {means.get('train_loss')} "
                            f"(lower --lr or check the data)")
    means["train_top1"] = 100.0 * correct.item() / max(seen, 1)
    means["images"] = seen
    means["wall_s"] = time.perf_counter() - start
    return means


@torch.no_grad()
def evaluate(model: nn.Module, loader, rt: Runtime, desc: str = "eval") -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean CE loss of ``model`` on ``loader``."""
    model.eval()
    top1 = top5 = torch.zeros((), device=rt.device)
    loss = torch.zeros((), device=rt.device)
    seen = 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not rt.progress, unit="batch"):
        with rt.autocast():
            logits = model(batch.x)
        logits = logits.float()
        loss = loss + nn.functional.cross_entropy(logits, batch.y, reduction="sum")
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices == batch.y[:, None]
        top1 = top1 + hits[:, 0].sum()
        top5 = top5 + hits.any(dim=1).sum()
        seen += batch.y.numel()
    seen = max(seen, 1)
    return {"top1": 100.0 * top1.item() / seen, "top5": 100.0 * top5.item() / seen, "loss": loss.item() / seen}


def fit(distiller: Distiller, loader, epochs: int, lr: float, weight_decay: float, rt: Runtime, *,
        resume: dict | None = None, epoch_seed: int = 0, desc: str = "", schedule: str = "constant",
        on_epoch: Callable[[int, dict, torch.optim.Optimizer], None] | None = None) -> None:
    """Train ``epochs`` epochs (starting after ``resume["epoch"]`` with its optimizer state, if given) at
    ``lr`` times ``schedule``'s factor (``LR_SCHEDULES``) of each update within these epochs.

    ``on_epoch(epoch, metrics, optimizer)`` runs after each finished epoch (1-based) and is where a
    caller keeps the metrics: it alone sees the epochs of earlier, interrupted runs (see ``summarize``).
    """
    params = [p for p in distiller.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, lr, weight_decay)
    start = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        start = int(resume["epoch"])
    scaler = torch.amp.GradScaler("cuda") if rt.amp_dtype == torch.float16 else None
    # None at a constant lr: nothing to step (and no warning when fp16 loss scaling skips an update).
    scheduler = None if schedule == "constant" else make_scheduler(optimizer, schedule, start * len(loader),
                                                                   epochs * len(loader))
    for epoch in range(start + 1, epochs + 1):
        loader.set_epoch(epoch_seed + epoch)
        metrics = train_one_epoch(distiller, loader, optimizer, rt, scaler, f"{desc} epoch {epoch}/{epochs}",
                                  scheduler)
        if on_epoch is not None:
            on_epoch(epoch, metrics, optimizer)


def summarize(history: list[dict]) -> dict[str, float]:
    """Last epoch's losses/accuracy, total images and seconds over the epochs in ``history``."""
    if not history:
        return {"epochs": 0, "wall_s": 0.0}
    out = dict(history[-1])
    out["epochs"] = len(history)
    out["wall_s"] = sum(h["wall_s"] for h in history)
    out["images"] = sum(h["images"] for h in history)
    return out


def prepare(model: nn.Module, rt: Runtime, image_size: int | None = None) -> nn.Module:
    """Move a model to the run's device in the memory format that is fastest there (at ``image_size``)."""
    return to_memory_format(model, rt.device, image_size)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, batches: int, rt: Runtime, epoch_seed: int = 0) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``batches`` training batches (forward only).

    Pruning leaves the BN statistics of the full network; EagleEye (Li et al., ECCV 2020) shows that a
    pruned candidate's accuracy after this "adaptive BN" ranks candidates far better than its accuracy
    as pruned. The statistics are reset and averaged over the batches (momentum None: a true mean).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    loader.set_epoch(epoch_seed)
    for i, batch in enumerate(loader):
        if i == batches:
            break
        with rt.autocast():
            model(batch.x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()
