"""Losses of the three stages that are not BN matching: soft-label KL and the optional image priors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_label_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch (Hinton's scaling keeps gradients O(1))."""
    return soft_target_kl(student_logits, F.softmax(teacher_logits.float() / temperature, dim=1), temperature)


def soft_target_kl(student_logits: torch.Tensor, p_teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p || softmax(s/T)) * T^2 for a target distribution p (``soft_label_kl``'s, or a CutMix mix of two)."""
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * t * t


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels (the smoothness prior SRe2L turns off)."""
    dh = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().mean()
    dw = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().mean()
    return dh + dw


def l2_prior(images: torch.Tensor) -> torch.Tensor:
    return images.pow(2).flatten(1).sum(1).sqrt().mean()


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many of the batch have the label among the top-k predictions, for each k (capped at the class count)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(labels.view(-1, 1))
    return [int(hits[:, : min(k, kmax)].any(1).sum()) for k in ks]
