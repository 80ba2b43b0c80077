"""Recover: synthesise images from noise that the frozen teacher classifies as their targets and whose batch
statistics match the teacher's BatchNorm running statistics.

    x* = argmin_x  CE(f(A(x)), y) + alpha_BN * R_BN(A(x)) [+ alpha_TV * TV(x) + alpha_L2 * ||x||]

with A a random augmentation per step (RandomResizedCrop, flip, roll), drawn for the whole batch at once from a
generator keyed by (seed, unit, step) (``recovery_views``). The successors' options (docs/methods.md),
all off by default: x_0 from real images (``init``); R_BN = (1 - w) R_BN^global + w R_BN^class (EDC's soft
category-aware matching); + lambda_F * KL(f(A(x_ema)) || f(A(x))) (EDC's flatness term, x_ema an EMA of x);
teachers f_0..f_{K-1} taking turns, one per step; the crop scale's lower bound annealed from large to small (CDA). Work is cut into units fixed by the config:
a unit is one optimisation batch (a slice of classes x a range of image indices), so its class mix, and therefore the
statistics it matches, never depend on how many actors share the work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from srel_ray.config import RecoverConfig
from srel_ray.core.bn_matching import BNStatsMatcher
from srel_ray.core.class_stats import ClassStats
from srel_ray.core.losses import l2_prior, soft_label_kl, total_variation
from srel_ray.core.normalization import Normalization, from_uint8, to_uint8
from srel_ray.core.precision import autocast, grad_scaler, to_input
from srel_ray.core.seeding import STREAM_RECOVER, STREAM_RECOVER_VIEWS, generator
from srel_ray.core.views import Views, render_views, roll, roll_shift, sample_views_batched

FLATNESS_TEMPERATURE = 4.0  # T of the flatness KL (EDC's value)


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


def crop_scale_at(scale: tuple[float, float], curriculum: str, start: float, milestone: float, step: int,
                  total: int) -> tuple[float, float]:
    """CDA's curriculum: the crop scale's lower bound at ``step``, annealed from ``start`` (large crops: whole-image
    outline first) down to ``scale[0]`` over the first ``milestone`` share of ``total`` steps, then held there."""
    low, high = scale
    span = milestone * total
    if curriculum == "none" or step >= span:
        return scale
    t = step / span
    if curriculum == "step":
        bound = start
    elif curriculum == "linear":
        bound = low + (start - low) * (1 - t)
    else:
        assert curriculum == "cosine", curriculum
        bound = low + (start - low) * 0.5 * (1 + math.cos(math.pi * t))
    return (bound, high)


def recovery_views(seed: int, unit: int, step: int, n: int, image_size: int, scale: tuple[float, float],
                   hflip: bool, jitter: int) -> tuple[Views, tuple[int, int]]:
    """The augmentation A of one recovery step: ``n`` crop boxes and flip flags (srel_ray.core.views.
    sample_views_batched), then the batch's roll (dy, dx). A pure function of (seed, unit, step): drawn on the host
    from its own keyed CPU generator, the same on every device and whichever actor runs the unit, resumed or not."""
    gen = generator(seed, STREAM_RECOVER_VIEWS, unit, step)
    views = sample_views_batched(n, image_size, image_size, scale, gen, hflip)
    return views, roll_shift(jitter, gen)


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
    on_step_every: int = 1,
    extra_teachers: Sequence[nn.Module] = (),
    init: torch.Tensor | None = None,
    class_stats: Sequence[ClassStats] | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, dict]:
    """Optimise one unit's images; returns them as uint8 (N, C, H, W) in ``unit.targets()`` order, and stats.

    ``on_step(step, loss)``: called after every ``on_step_every``-th step (progress, live tracking).
    ``init``: uint8 starting images in ``unit.targets()`` order (recover.init real or rded); None: Gaussian noise.
    ``class_stats``: one per teacher, covering the unit's classes (needed when recover.class_bn_weight > 0).
    With ``cfg.iterations == 0`` the starting images are returned unchanged (RDED as a method of its own).
    ``precision`` (srel_ray.core.precision, already checked against ``device``): the teachers' forward passes run
    in it; the images, BN statistics and losses stay fp32. Nothing in a step waits for the device except
    ``on_step``, which reads the loss."""
    device = torch.device(device)
    gen = generator(seed, STREAM_RECOVER, unit.index)  # the starting noise of this unit, whoever runs it
    targets = torch.tensor([c for c, _ in unit.targets()], device=device)
    n = len(targets)
    teachers = [teacher, *extra_teachers]  # f_k takes step t when t % K == k (EDC)
    assert (init is not None) == (cfg.init != "noise"), \
        f"recover.init={cfg.init!r}: the caller passes starting images exactly when init is not 'noise'"
    if init is None:
        x = torch.randn(n, norm.channels, image_size, image_size, generator=gen).to(device).requires_grad_(True)
    else:
        assert init.shape[0] == n and init.dtype == torch.uint8, (init.shape, init.dtype)
        x = norm.normalize(from_uint8(init)).to(device).requires_grad_(True)
    if cfg.iterations == 0:
        return init.cpu(), _final_stats(teacher, x.detach(), targets)
    w_class = cfg.class_bn_weight
    if w_class:
        assert class_stats is not None and len(class_stats) == len(teachers), "class_bn_weight needs class stats"
        # Per teacher, per BN layer: (mu*, sigma^2*) of this batch's class mixture (srel_ray.core.class_stats).
        class_targets = [[(mu.to(device), var.to(device)) for mu, var in s.mixture(targets)] for s in class_stats]
    x_ema = x.detach().clone() if cfg.flatness_weight else None
    optimizer = torch.optim.Adam([x], lr=cfg.lr, betas=(0.5, 0.9), eps=1e-8)
    scaler = grad_scaler(precision, device)  # fp16 only; otherwise it passes everything through
    low, high = norm.bounds(x)
    pin = device.type == "cuda"  # page-locked boxes copy to the GPU without stalling this thread

    matchers = [BNStatsMatcher(t) for t in teachers]
    try:
        for step in range(cfg.iterations):
            k = step % len(teachers)
            model, bn = teachers[k], matchers[k]
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(cfg.lr, step, cfg.iterations)
            scale = crop_scale_at(cfg.crop_scale, cfg.crop_curriculum, cfg.crop_min_start, cfg.crop_milestone,
                                  step, cfg.iterations)
            views, shift = recovery_views(seed, unit.index, step, n, image_size, scale, hflip, cfg.jitter)
            if pin:
                views = Views(views.boxes.pin_memory(), views.flips.pin_memory())
            augmented = to_input(roll(render_views(x, views, image_size), shift), device)
            with autocast(precision, device):
                logits = model(augmented).float()
            ce = F.cross_entropy(logits, targets)
            r_bn = bn.loss(cfg.first_bn_multiplier)
            if w_class:  # soft category-aware matching
                r_bn = (1 - w_class) * r_bn + w_class * bn.loss_to(class_targets[k], cfg.first_bn_multiplier)
            loss = ce + cfg.bn_weight * r_bn  # alpha_BN
            if cfg.flatness_weight:  # lambda_F * KL(f(A(x_ema)) || f(A(x))): same view A for both
                with torch.no_grad(), bn.paused(), autocast(precision, device):
                    ema_logits = model(to_input(roll(render_views(x_ema, views, image_size), shift), device))
                loss = loss + cfg.flatness_weight * soft_label_kl(logits, ema_logits.float(), FLATNESS_TEMPERATURE)
            if cfg.tv_weight:
                loss = loss + cfg.tv_weight * total_variation(x)
            if cfg.l2_weight:
                loss = loss + cfg.l2_weight * l2_prior(x)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))  # keep pixels in the valid range
                if x_ema is not None:  # x_ema <- beta * x_ema + (1 - beta) * x
                    x_ema.mul_(cfg.flatness_ema).add_(x, alpha=1 - cfg.flatness_ema)
            if on_step is not None and (step + 1) % on_step_every == 0:  # float(): a device sync, so not every step
                on_step(step, float(loss.detach()))
    finally:
        for bn in matchers:
            bn.remove()

    stats = {**_final_stats(teacher, x.detach(), targets), "ce": float(ce.detach()), "bn": float(r_bn.detach()),
             "loss": float(loss.detach())}
    return to_uint8(norm.denormalize(x.detach())).cpu(), stats


@torch.no_grad()
def _final_stats(teacher: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> dict:
    """The first teacher's cross-entropy and accuracy on the unit's images as they are stored."""
    logits = teacher(x)
    return {"ce": float(F.cross_entropy(logits, targets)), "bn": 0.0, "loss": 0.0,
            "accuracy": float((logits.argmax(1) == targets).float().mean())}


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (BN uses running statistics) and no parameter gradients: the teacher never changes."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
