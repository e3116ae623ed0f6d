"""Distillation losses. Each returns a dict of its parts (``loss`` is the one to backpropagate).

Logit KD (Hinton et al., 2015), as the seed uses it:
``loss = alpha * T^2 * KL(p_teacher || softmax(s/T)) + (1 - alpha) * CE(s, y)``;
the T^2 keeps the KD gradient's scale independent of T. With several teachers (issue 7),
``p_teacher`` is the weighted mean of their softened outputs ``softmax(t_i/T)``.

Decoupled KD (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022; issue 12) splits that KL
into the target class's binary part (TCKD: ``KL(b_teacher || b_student)`` with ``b = [p_target,
1 - p_target]``) and the KL among the non-target classes renormalised (NCKD), and weights them
separately: ``dkd_alpha * TCKD + dkd_beta * NCKD``, both at temperature T with the T^2 factor, as in the
authors' mdistiller (``mdistiller/distillers/DKD.py``). Here it is computed in log space from the
(weighted mean of the) teachers' softened outputs, so it needs no masking constants and takes several
teachers as the KL term does.

Feature terms (issue 7) compare stage outputs (``{stage: N x C x H x W}``, see ``distill.features``):
- attention transfer (Zagoruyko & Komodakis, ICLR 2017): ``sum_stages mean((Q_s - Q_t)^2)`` with
  ``Q = l2_normalize(mean_c(A^2))`` the flattened spatial attention map, as in the authors' code;
- hints (Romero et al., FitNets, ICLR 2015): ``sum_stages mean((adapter(S) - T)^2)``.
``distill.trainer.Distiller`` weights either term by ``beta / 2``, the factor both papers use.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Features = Mapping[str, torch.Tensor]

# ``--kd`` choices: (has a term on the teachers' logits, feature term or None); see distill.trainer.Distiller.
# The logit term is the seed's KL, except for ``dkd`` (see dkd_loss).
KD_KINDS: dict[str, tuple[bool, str | None]] = {
    "logits": (True, None), "attention": (False, "at"), "hint": (False, "hint"), "logits+attention": (True, "at"),
    "dkd": (True, None)}


def soft_targets(teacher_logits: torch.Tensor | Sequence[torch.Tensor], temperature: float,
                 weights: Sequence[float] | None = None) -> torch.Tensor:
    """Softened teacher outputs; several teachers' are averaged, weighted by ``weights`` (equal if None)."""
    logits, weights = _teachers(teacher_logits, weights)
    total = float(sum(weights))
    probs = [w / total * F.softmax(t.float() / temperature, dim=1) for w, t in zip(weights, logits)]
    return torch.stack(probs).sum(0)


def log_soft_targets(teacher_logits: torch.Tensor | Sequence[torch.Tensor], temperature: float,
                     weights: Sequence[float] | None = None) -> torch.Tensor:
    """``log(soft_targets(...))`` computed in log space: finite however peaked the teachers are."""
    logits, weights = _teachers(teacher_logits, weights)
    total = float(sum(weights))
    logs = [math.log(w / total) + F.log_softmax(t.float() / temperature, dim=1)
            for w, t in zip(weights, logits) if w > 0]
    return torch.logsumexp(torch.stack(logs), dim=0)


def _teachers(teacher_logits, weights) -> tuple[list[torch.Tensor], list[float]]:
    logits = [teacher_logits] if isinstance(teacher_logits, torch.Tensor) else list(teacher_logits)
    weights = [1.0] * len(logits) if weights is None else list(weights)
    if len(weights) != len(logits) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"{len(logits)} teacher(s) need as many non-negative weights with a positive sum, "
                         f"got {weights}")
    return logits, weights


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | Sequence[torch.Tensor] | None,
            targets: torch.Tensor, temperature: float, alpha: float,
            teacher_weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Logit distillation; with no teacher (or alpha 0) it is plain cross-entropy.

    ``teacher_logits`` is one tensor or one per teacher (their softened outputs are averaged,
    weighted by ``teacher_weights``).
    """
    ce = F.cross_entropy(student_logits.float(), targets)
    if teacher_logits is None or alpha == 0:
        return {"loss": ce, "ce": ce, "kd": torch.zeros_like(ce)}
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    p_teacher = soft_targets(teacher_logits, t, teacher_weights)
    kd = F.kl_div(log_p_student, p_teacher, reduction="batchmean") * (t * t)
    return {"loss": alpha * kd + (1 - alpha) * ce, "ce": ce, "kd": kd}


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | Sequence[torch.Tensor],
             targets: torch.Tensor, temperature: float, alpha: float, dkd_alpha: float, dkd_beta: float,
             teacher_weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Decoupled KD: ``loss = alpha * kd + (1 - alpha) * CE`` with ``kd = dkd_alpha*TCKD + dkd_beta*NCKD``.

    The paper trains on ``CE + DKD``; ``alpha`` splits them as it splits the seed's loss, so ``--alpha 0.5``
    is the paper's loss halved, which Adam (invariant to the loss scale, up to its epsilon) follows step
    for step. No
    warm-up: mdistiller ramps DKD in over 20 of 240 epochs to spare a randomly initialised student,
    while here the student is a pruned copy of a trained model, retrained for a few epochs per step.
    With no teacher (or alpha 0) it is plain cross-entropy, as kd_loss.
    """
    if teacher_logits is None or alpha == 0:
        return kd_loss(student_logits, None, targets, temperature, alpha)
    t = temperature
    ce = F.cross_entropy(student_logits.float(), targets)
    log_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_t = log_soft_targets(teacher_logits, t, teacher_weights)
    (s_gt, s_rest), (t_gt, t_rest) = _split_target(log_s, targets), _split_target(log_t, targets)
    # log of the non-target mass, log(1 - p_target), from the non-target log-probs (no cancellation).
    s_other, t_other = torch.logsumexp(s_rest, dim=1, keepdim=True), torch.logsumexp(t_rest, dim=1, keepdim=True)
    binary = lambda gt, other: torch.cat([gt, other], dim=1)
    tckd = F.kl_div(binary(s_gt, s_other), binary(t_gt, t_other), reduction="batchmean", log_target=True) * t * t
    nckd = F.kl_div(s_rest - s_other, t_rest - t_other, reduction="batchmean", log_target=True) * t * t
    kd = dkd_alpha * tckd + dkd_beta * nckd
    return {"loss": alpha * kd + (1 - alpha) * ce, "ce": ce, "kd": kd, "tckd": tckd, "nckd": nckd}


def _split_target(log_p: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """N x 1 log-probs of the target class and N x (C-1) of the others (in class order)."""
    others = torch.ones_like(log_p, dtype=torch.bool).scatter_(1, targets[:, None], False)
    return log_p.gather(1, targets[:, None]), log_p[others].view(len(log_p), -1)


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """N x (H*W) spatial attention: channel mean of squared activations, L2-normalised per image."""
    return F.normalize(features.float().pow(2).mean(1).flatten(1), dim=1)


def attention_loss(student_feats: Features, teacher_feats: Features) -> dict[str, torch.Tensor]:
    """Attention transfer over the teacher's stages: ``loss`` is the sum of the per-stage parts.

    Attention maps have no channel axis, so the widths may differ; the spatial sizes must match.
    """
    parts = {}
    for name, t in teacher_feats.items():
        s = _checked(name, _stage(student_feats, name), t, dims=(0, 2, 3))
        parts[name] = (attention_map(s) - attention_map(t)).pow(2).mean()
    return {"loss": _total(parts), **parts}


def hint_loss(student_feats: Features, teacher_feats: Features,
              adapters: Mapping[str, nn.Module] | None = None) -> dict[str, torch.Tensor]:
    """FitNets hints over the teacher's stages: MSE of ``adapters[stage](student)`` to the teacher.

    ``adapters`` (the learned regressors, ``distill.features.make_adapters``) map student widths to
    teacher widths; without them the shapes must already match.
    """
    parts = {}
    for name, t in teacher_feats.items():
        s = _stage(student_feats, name)
        s = _checked(name, s if adapters is None else adapters[name](s), t, dims=(0, 1, 2, 3))
        parts[name] = F.mse_loss(s.float(), t.float())
    return {"loss": _total(parts), **parts}


def _stage(feats: Features, name: str) -> torch.Tensor:
    if name not in feats:
        raise ValueError(f"the student has no captured output for stage {name!r} (got {sorted(feats)})")
    return feats[name]


def _checked(name: str, s: torch.Tensor, t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``s``, after checking that it matches the teacher's ``t`` on the axes in ``dims``."""
    if s.dim() != t.dim() or any(s.shape[d] != t.shape[d] for d in dims):
        raise ValueError(f"stage {name}: student output {tuple(s.shape)} does not match the teacher's "
                         f"{tuple(t.shape)} on dims {dims}")
    return s


def _total(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    if not parts:
        raise ValueError("no teacher stage outputs to distil from")
    return torch.stack(list(parts.values())).sum()
