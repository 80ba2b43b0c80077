"""Recover: synthesise images from noise that the frozen teacher classifies as their targets and whose batch
statistics match the teacher's BatchNorm running statistics.

    x* = argmin_x  CE(f_k(A(x)), y) + sum_i weight_i * term_i

with A a random augmentation per step (RandomResizedCrop, flip, roll), drawn for the whole batch at once from a
generator keyed by (seed, unit, step) (``recovery_views``), its crop scale from the step's crop schedule, and
teachers f_0..f_{K-1} taking turns, one per step. The terms and the crop schedule (srel_ray.core.recover_terms:
SRe2L's R_BN, EDC's class-aware matching and flatness, the image priors, CDA's curriculum) come from the config;
this loop sums what it is given and knows no method. Work is cut into units fixed by the config: a unit is one
optimisation batch (a slice of classes x a range of image indices), so its class mix, and therefore the statistics
it matches, never depend on how many actors share the work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from srel_ray.config import Config
from srel_ray.core.bn_matching import BNStatsMatcher
from srel_ray.core.normalization import Normalization, from_uint8, to_uint8
from srel_ray.core.precision import autocast, grad_scaler, to_input
from srel_ray.core.recover_terms import CropSchedule, Step, Term, crop_schedule
from srel_ray.core.seeding import STREAM_RECOVER, STREAM_RECOVER_VIEWS, generator
from srel_ray.core.views import Views, render_views, roll, roll_shift, sample_views_batched

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


def recovery_views(seed: int, unit: int, step: int, n: int, image_size: int, scale: tuple[float, float],
                   hflip: bool, jitter: int) -> tuple[Views, tuple[int, int]]:
    """The augmentation A of one recovery step: ``n`` crop boxes and flip flags (srel_ray.core.views.
    sample_views_batched), then the batch's roll (dy, dx). A pure function of (seed, unit, step): drawn on the host
    from its own keyed CPU generator, the same on every device and whichever actor runs the unit, resumed or not."""
    gen = generator(seed, STREAM_RECOVER_VIEWS, unit, step)
    views = sample_views_batched(n, image_size, image_size, scale, gen, hflip)
    return views, roll_shift(jitter, gen)


@dataclass(frozen=True)
class Recovery:
    """What every unit of one recovery shares: the teachers, the images' format, the optimiser and the views."""

    teachers: tuple[nn.Module, ...]  # f_k takes step t when t % K == k (EDC); f_0 also scores the result
    norm: Normalization
    image_size: int
    seed: int
    iterations: int  # 0: the starting images are returned unchanged (RDED as a method of its own)
    lr: float
    jitter: int  # the views' roll of up to this many pixels
    crop_schedule: CropSchedule  # step -> the views' crop scale
    hflip: bool = True
    device: torch.device | str = "cpu"
    # srel_ray.core.precision, already checked against ``device``: the teachers' forward passes run in it; the
    # images, BN statistics and losses stay fp32.
    precision: str = "fp32"
    weight_decay: float = 0.0  # Adam's L2 term on the images (recover.weight_decay)

    @classmethod
    def of(cls, cfg: Config, teachers: Sequence[nn.Module], norm: Normalization, *,
           device: torch.device | str = "cpu", precision: str = "fp32") -> "Recovery":
        """The recovery ``cfg`` describes, with ``teachers`` (the frozen teacher, then teacher.extra's)."""
        r = cfg.recover
        return cls(tuple(teachers), norm, cfg.data.image_size, cfg.seed, r.iterations, r.lr, r.jitter,
                   crop_schedule(r), cfg.data.hflip, device, precision, r.weight_decay)


def recover_unit(recovery: Recovery, unit: Unit, terms: Sequence[Term], *, init: torch.Tensor | None = None,
                 on_step: Callable[[int, float], None] | None = None, on_step_every: int = 1
                 ) -> tuple[torch.Tensor, dict]:
    """Optimise one unit's images; returns them as uint8 (N, C, H, W) in ``unit.targets()`` order, and stats.

    The loss of a step is CE(f_k(A(x)), y) plus ``term.weight * term.value(step)`` for each of ``terms``
    (srel_ray.core.recover_terms; made for this unit), in their order. ``init``: uint8 starting images in
    ``unit.targets()`` order (recover.init real or rded); None: Gaussian noise. ``on_step(step, loss)``: called
    after every ``on_step_every``-th step (progress, live tracking). Nothing in a step waits for the device except
    ``on_step``, which reads the loss."""
    r = recovery
    device, precision, image_size, norm = torch.device(r.device), r.precision, r.image_size, r.norm
    gen = generator(r.seed, STREAM_RECOVER, unit.index)  # the starting noise of this unit, whoever runs it
    targets = torch.tensor([c for c, _ in unit.targets()], device=device)
    n = len(targets)
    teachers = r.teachers
    if init is None:
        x = torch.randn(n, norm.channels, image_size, image_size, generator=gen).to(device).requires_grad_(True)
    else:
        assert init.shape[0] == n and init.dtype == torch.uint8, (init.shape, init.dtype)
        x = norm.normalize(from_uint8(init)).to(device).requires_grad_(True)
    if r.iterations == 0:
        assert init is not None, "no optimisation needs starting images"
        return init.cpu(), _final_stats(teachers[0], x.detach(), targets, terms)
    for term in terms:
        term.start(x, targets)
    optimizer = torch.optim.Adam([x], lr=r.lr, betas=(0.5, 0.9), eps=1e-8, weight_decay=r.weight_decay)
    scaler = grad_scaler(precision, device)  # fp16 only; otherwise it passes everything through
    low, high = norm.bounds(x)
    pin = device.type == "cuda"  # page-locked boxes copy to the GPU without stalling this thread

    matchers = [BNStatsMatcher(t) for t in teachers]
    try:
        for step in range(r.iterations):
            k = step % len(teachers)
            model, bn = teachers[k], matchers[k]
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(r.lr, step, r.iterations)
            views, shift = recovery_views(r.seed, unit.index, step, n, image_size, r.crop_schedule(step), r.hflip,
                                          r.jitter)
            if pin:
                views = Views(views.boxes.pin_memory(), views.flips.pin_memory())
            augmented = to_input(roll(render_views(x, views, image_size), shift), device)
            with autocast(precision, device):
                logits = model(augmented).float()
            ce = F.cross_entropy(logits, targets)

            def look(images: torch.Tensor) -> torch.Tensor:  # used within this step only
                with torch.no_grad(), bn.paused(), autocast(precision, device):
                    return model(to_input(roll(render_views(images, views, image_size), shift), device))

            current = Step(x, logits, k, bn, look)
            loss, reported = ce, {}
            for term in terms:
                value = term.value(current)
                loss = loss + term.weight * value
                if term.reports:
                    reported[term.reports] = value
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))  # keep pixels in the valid range
                for term in terms:
                    term.after_step(x)
            if on_step is not None and (step + 1) % on_step_every == 0:  # float(): a device sync, so not every step
                on_step(step, float(loss.detach()))
    finally:
        for bn in matchers:
            bn.remove()

    stats = {**_final_stats(teachers[0], x.detach(), targets, terms), "ce": float(ce.detach()),
             **{key: float(value.detach()) for key, value in reported.items()}, "loss": float(loss.detach())}
    return to_uint8(norm.denormalize(x.detach())).cpu(), stats


@torch.no_grad()
def _final_stats(teacher: nn.Module, x: torch.Tensor, targets: torch.Tensor, terms: Sequence[Term]) -> dict:
    """The first teacher's cross-entropy and accuracy on the unit's images as they are stored; the loss and the
    terms' reported values are 0 until a step sets them."""
    logits = teacher(x)
    return {"ce": float(F.cross_entropy(logits, targets)), **{t.reports: 0.0 for t in terms if t.reports},
            "loss": 0.0, "accuracy": float((logits.argmax(1) == targets).float().mean())}


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (BN uses running statistics) and no parameter gradients: the teacher never changes."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
