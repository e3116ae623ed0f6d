"""Distillation losses. Each returns a dict of its parts (``loss`` is the one to backpropagate).

Logit KD (Hinton et al., 2015), as the seed uses it:
``loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``;
the T^2 keeps the KD gradient's scale independent of T.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
            temperature: float, alpha: float) -> dict[str, torch.Tensor]:
    """Logit distillation; with no teacher (or alpha 0) it is plain cross-entropy."""
    ce = F.cross_entropy(student_logits.float(), targets)
    if teacher_logits is None or alpha == 0:
        return {"loss": ce, "ce": ce, "kd": torch.zeros_like(ce)}
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    p_teacher = F.softmax(teacher_logits.float() / t, dim=1)
    kd = F.kl_div(log_p_student, p_teacher, reduction="batchmean") * (t * t)
    return {"loss": alpha * kd + (1 - alpha) * ce, "ce": ce, "kd": kd}
