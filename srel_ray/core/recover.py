"""Recover: synthesise images from noise that the frozen teacher classifies as their targets and whose batch
statistics match the teacher's BatchNorm running statistics.

    x* = argmin_x  CE(f(A(x)), y) + alpha_BN * R_BN(A(x)) [+ alpha_TV * TV(x) + alpha_L2 * ||x||]

with A a random augmentation per step (RandomResizedCrop, flip, roll). Work is cut into units fixed by the config:
a unit is one optimisation batch (a slice of classes x a range of image indices), so its class mix, and therefore the
statistics it matches, never depend on how many actors share the work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from srel_ray.config import RecoverConfig
from srel_ray.core.bn_matching import BNStatsMatcher
from srel_ray.core.losses import l2_prior, total_variation
from srel_ray.core.normalization import Normalization, to_uint8
from srel_ray.core.seeding import STREAM_RECOVER, generator
from srel_ray.core.views import random_roll, render_views, sample_views


@dataclass(frozen=True)
class Unit:
    """One recovery batch: images ``ipc_start..ipc_stop-1`` of each class in ``classes``."""

    index: int
    classes: tuple[int, ...]
    ipc_start: int
    ipc_stop: int

    @property
    def name(self) -> str:
        return f"unit-{self.index:06d}"

    def targets(self) -> list[tuple[int, int]]:
        """(class, image index within class) of every image, ordered so each block of the batch mixes classes."""
        return [(c, i) for i in range(self.ipc_start, self.ipc_stop) for c in self.classes]


def plan_units(num_classes: int, ipc: int, classes_per_unit: int, ipc_per_unit: int) -> list[Unit]:
    """All units of a recovery, class-slice major. Depends only on the config, never on the actor count."""
    per = min(classes_per_unit, num_classes)
    slices = [tuple(range(s, min(s + per, num_classes))) for s in range(0, num_classes, per)]
    units = []
    for classes in slices:
        for start in range(0, ipc, ipc_per_unit):
            units.append(Unit(len(units), classes, start, min(start + ipc_per_unit, ipc)))
    return units


def cosine_lr(base_lr: float, step: int, total: int) -> float:
    return 0.5 * base_lr * (1 + math.cos(math.pi * step / total))


def recover_unit(
    teacher: nn.Module,
    unit: Unit,
    cfg: RecoverConfig,
    *,
    seed: int,
    image_size: int,
    norm: Normalization,
    hflip: bool = True,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Optimise one unit's images; returns them as uint8 (N, C, H, W) in ``unit.targets()`` order, and stats."""
    device = torch.device(device)
    gen = generator(seed, STREAM_RECOVER, unit.index)  # all draws of this unit, whoever runs it
    targets = torch.tensor([c for c, _ in unit.targets()], device=device)
    n = len(targets)
    x = torch.randn(n, norm.channels, image_size, image_size, generator=gen).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=cfg.lr, betas=(0.5, 0.9), eps=1e-8)
    low, high = norm.bounds(x)

    with BNStatsMatcher(teacher) as bn:
        for step in range(cfg.iterations):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(cfg.lr, step, cfg.iterations)
            views = sample_views(n, image_size, image_size, cfg.crop_scale, gen, hflip)
            augmented = random_roll(render_views(x, views, image_size), cfg.jitter, gen)
            logits = teacher(augmented)
            ce = F.cross_entropy(logits, targets)
            r_bn = bn.loss(cfg.first_bn_multiplier)
            loss = ce + cfg.bn_weight * r_bn  # alpha_BN
            if cfg.tv_weight:
                loss = loss + cfg.tv_weight * total_variation(x)
            if cfg.l2_weight:
                loss = loss + cfg.l2_weight * l2_prior(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))  # keep pixels in the valid range
            if on_step is not None:
                on_step(step, float(loss.detach()))

    with torch.no_grad():
        final_logits = teacher(x)
        stats = {"ce": float(ce.detach()), "bn": float(r_bn.detach()), "loss": float(loss.detach()),
                 "accuracy": float((final_logits.argmax(1) == targets).float().mean())}
    return to_uint8(norm.denormalize(x.detach())).cpu(), stats


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (BN uses running statistics) and no parameter gradients: the teacher never changes."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
