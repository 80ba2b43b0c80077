"""CutMix in the student (Yun et al., 2019), as the SRe2L reference trains its ImageNet-1K students.

Per batch, with probability ``prob``: an area share lam ~ Beta(beta, beta), a box of side int(size * sqrt(1 - lam))
centred uniformly on the view and clipped to it (the reference's ``rand_bbox``), and a permutation of the batch;
every view gets the box's pixels of its partner view. The reference's teacher labels the mixed image itself (its
relabel decides the mix). Here relabel stores one label per view, shared by every student and both baselines, so
the mixed image's target is the mix of its two views' stored labels weighted by their visible areas: CutMix's
own label rule, with the soft labels softened at the student's temperature before they are mixed.

All draws come from one NumPy generator per (seed, epoch, rank) (``cutmix_rng``), on the host: the same mixes
on every device, and a resumed epoch mixes as it did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from srel_ray.core.losses import soft_label_kl, soft_target_kl
from srel_ray.core.seeding import STREAM_STUDENT_CUTMIX, derive_seed


@dataclass(frozen=True)
class CutMix:
    """One batch's mix: row i shows row ``partner[i]`` inside ``box`` and itself elsewhere."""

    partner: torch.Tensor  # (N,) int64
    box: tuple[int, int, int, int]  # top, left, bottom, right in view pixels (bottom and right exclusive)
    keep: float  # the share of each view that is still its own: 1 - box area / view area


def cutmix_rng(seed: int, epoch: int, rank: int) -> np.random.Generator:
    """The generator of one student epoch's mixes on one rank (NumPy's: torch has no seeded Beta draw)."""
    return np.random.default_rng(derive_seed(seed, STREAM_STUDENT_CUTMIX, epoch, rank))


def draw_cutmix(rng: np.random.Generator, n: int, size: int, prob: float, beta: float) -> CutMix | None:
    """The next batch's mix of ``n`` square views of side ``size``, or None when the batch is not mixed. Draws,
    in order: u (the batch is mixed when u < prob), then lam, the box centre's row and column, the permutation;
    nothing at all when ``prob`` is 0."""
    if prob == 0 or rng.random() >= prob:
        return None
    lam = rng.beta(beta, beta)
    cut = int(size * math.sqrt(1.0 - lam))
    row, col = int(rng.integers(size)), int(rng.integers(size))
    top, bottom = _clip(row - cut // 2, size), _clip(row + cut // 2, size)
    left, right = _clip(col - cut // 2, size), _clip(col + cut // 2, size)
    partner = torch.from_numpy(rng.permutation(n))
    return CutMix(partner, (top, left, bottom, right), 1.0 - (bottom - top) * (right - left) / (size * size))


def _clip(value: int, size: int) -> int:
    return min(max(value, 0), size)


def cutmix_images(x: torch.Tensor, mix: CutMix) -> torch.Tensor:
    """``x`` (N, C, size, size) with each row's box replaced by its partner's (a new tensor)."""
    top, left, bottom, right = mix.box
    out = x.clone()
    out[:, :, top:bottom, left:right] = x[mix.partner.to(x.device), :, top:bottom, left:right]
    return out


def mixed_soft_targets(teacher_logits: torch.Tensor, mix: CutMix, temperature: float) -> torch.Tensor:
    """keep * softmax(z_i / T) + (1 - keep) * softmax(z_partner(i) / T): the target distribution of each mixed
    view."""
    p = F.softmax(teacher_logits.float() / temperature, dim=1)
    return mix.keep * p + (1.0 - mix.keep) * p[mix.partner.to(p.device)]


def student_loss(out: torch.Tensor, target: torch.Tensor, *, hard: bool, temperature: float,
                 mix: CutMix | None = None) -> torch.Tensor:
    """The student's loss on a batch: cross-entropy to class indices (``hard``) or the KL at ``temperature`` to
    the teacher's logits; with ``mix``, each view's loss against its own and its partner's label in the shares
    of their visible areas."""
    if mix is None:
        return F.cross_entropy(out, target) if hard else soft_label_kl(out, target, temperature)
    if hard:
        partner = target[mix.partner.to(target.device)]
        return mix.keep * F.cross_entropy(out, target) + (1.0 - mix.keep) * F.cross_entropy(out, partner)
    return soft_target_kl(out, mixed_soft_targets(target, mix, temperature), temperature)
