"""What recovery minimises besides the cross-entropy, and the crop scale of each step.

``recover_unit`` (srel_ray.core.recover) adds ``term.weight * term.value(step)`` for each term it is given, in the
order given, to CE(f_k(A(x)), y); it knows no method. Which terms a run has follows from its resolved
``RecoverConfig`` alone (``recover_terms``): the method presets (srel_ray.methods) only choose the values, so the
options stay orthogonal (class_bn_weight under method sre2l is global plus per-class matching, as under edc).

    R_BN (always): (1 - w) R_BN^global + w R_BN^class, plain R_BN^global when w = recover.class_bn_weight is 0
    flatness:      KL(f_k(A(x_ema)) || f_k(A(x))) at T = 4, x_ema an EMA of x (EDC)
    tv, l2:        the image priors SRe2L turns off

The order is part of the result: floating-point addition is not associative, so the terms come in the order the
loss has always been summed (R_BN, flatness, TV, L2) and recovered images stay bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from srel_ray.config import RecoverConfig
from srel_ray.core.bn_matching import BNStatsMatcher
from srel_ray.core.class_stats import ClassStats
from srel_ray.core.losses import l2_prior, soft_label_kl, total_variation

FLATNESS_TEMPERATURE = 4.0  # T of the flatness KL (EDC's value)

CropSchedule = Callable[[int], tuple[float, float]]  # step -> RandomResizedCrop area range of that step


@dataclass
class Step:
    """What a term sees of one optimisation step."""

    x: torch.Tensor  # the images being optimised (normalised, with gradient)
    logits: torch.Tensor  # fp32 logits of the step's teacher on A(x)
    teacher: int  # which teacher took the step (its index among the recovery's teachers)
    bn: BNStatsMatcher  # that teacher's BN statistics of A(x)
    # That teacher's logits on other images under the same view A: no gradient, BN statistics left as they are.
    look: Callable[[torch.Tensor], torch.Tensor]


class Term:
    """One addend of the recovery loss, ``weight * value(step)``. A term made for one unit holds that unit's state
    (``start`` sets it): build the terms afresh for every unit."""

    weight: float
    reports: str | None = None  # the key of the unit's stats that records the last step's value

    def start(self, x: torch.Tensor, targets: torch.Tensor) -> None:
        """Before the first step: the starting images and the class of each image."""

    def value(self, step: Step) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, x: torch.Tensor) -> None:
        """After each optimiser step, once x is clipped to the valid range (under no_grad)."""


@dataclass
class BNMatching(Term):
    """SRe2L's R_BN: the distance of A(x)'s per-layer batch statistics to the teacher's running statistics."""

    weight: float
    first_bn_multiplier: float
    reports = "bn"

    def value(self, step: Step) -> torch.Tensor:
        return step.bn.loss(self.first_bn_multiplier)


@dataclass
class SoftClassBNMatching(Term):
    """EDC's soft category-aware matching: (1 - w) R_BN^global + w R_BN^class, R_BN^class measured against the
    statistics of the batch's class mixture (srel_ray.core.class_stats). ``class_stats``: one per teacher,
    covering the unit's classes."""

    weight: float
    first_bn_multiplier: float
    class_weight: float
    class_stats: Sequence[ClassStats] | None
    reports = "bn"
    _targets: list = field(default_factory=list, init=False, repr=False)

    def start(self, x: torch.Tensor, targets: torch.Tensor) -> None:
        assert self.class_stats is not None, "class_bn_weight needs class stats"
        # Per teacher, per BN layer: (mu*, sigma^2*) of this batch's class mixture.
        self._targets = [[(mu.to(x.device), var.to(x.device)) for mu, var in s.mixture(targets)]
                         for s in self.class_stats]

    def value(self, step: Step) -> torch.Tensor:
        w = self.class_weight
        r_bn = step.bn.loss(self.first_bn_multiplier)
        return (1 - w) * r_bn + w * step.bn.loss_to(self._targets[step.teacher], self.first_bn_multiplier)


@dataclass
class Flatness(Term):
    """EDC's flatness term: KL(f(A(x_ema)) || f(A(x))) with the same view A for both, x_ema <- beta x_ema +
    (1 - beta) x after each step."""

    weight: float
    ema_decay: float
    temperature: float = FLATNESS_TEMPERATURE
    _x_ema: torch.Tensor | None = field(default=None, init=False, repr=False)

    def start(self, x: torch.Tensor, targets: torch.Tensor) -> None:
        self._x_ema = x.detach().clone()

    def value(self, step: Step) -> torch.Tensor:
        return soft_label_kl(step.logits, step.look(self._x_ema).float(), self.temperature)

    def after_step(self, x: torch.Tensor) -> None:
        self._x_ema.mul_(self.ema_decay).add_(x, alpha=1 - self.ema_decay)


@dataclass
class TotalVariation(Term):
    """The smoothness prior on x itself (srel_ray.core.losses.total_variation)."""

    weight: float

    def value(self, step: Step) -> torch.Tensor:
        return total_variation(step.x)


@dataclass
class L2Prior(Term):
    """The mean L2 norm of the images (srel_ray.core.losses.l2_prior)."""

    weight: float

    def value(self, step: Step) -> torch.Tensor:
        return l2_prior(step.x)


def recover_terms(cfg: RecoverConfig, class_stats: Sequence[ClassStats] | None = None) -> list[Term]:
    """The terms one unit's recovery adds to its CE, as ``cfg`` sets them (what each option computes).
    ``class_stats``: one per teacher, for the unit's classes; needed only when ``cfg.class_bn_weight`` > 0 and
    the unit is optimised."""
    terms: list[Term] = []
    if cfg.class_bn_weight:
        terms.append(SoftClassBNMatching(cfg.bn_weight, cfg.first_bn_multiplier, cfg.class_bn_weight, class_stats))
    else:
        terms.append(BNMatching(cfg.bn_weight, cfg.first_bn_multiplier))
    if cfg.flatness_weight:
        terms.append(Flatness(cfg.flatness_weight, cfg.flatness_ema))
    if cfg.tv_weight:
        terms.append(TotalVariation(cfg.tv_weight))
    if cfg.l2_weight:
        terms.append(L2Prior(cfg.l2_weight))
    return terms


# ---------------------------------------------------------------------------------------------- crop schedules


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


@dataclass(frozen=True)
class FixedCrops:
    """The same crop scale at every step (SRe2L)."""

    scale: tuple[float, float]

    def __call__(self, step: int) -> tuple[float, float]:
        return self.scale


@dataclass(frozen=True)
class CropCurriculum:
    """CDA's easy-to-hard crops over ``total`` steps (``crop_scale_at``)."""

    scale: tuple[float, float]
    curriculum: str  # step | linear | cosine
    start: float
    milestone: float
    total: int

    def __call__(self, step: int) -> tuple[float, float]:
        return crop_scale_at(self.scale, self.curriculum, self.start, self.milestone, step, self.total)


def crop_schedule(cfg: RecoverConfig) -> CropSchedule:
    """The crop scale of each of ``cfg.iterations`` steps, as ``cfg`` sets it."""
    if cfg.crop_curriculum == "none":
        return FixedCrops(cfg.crop_scale)
    return CropCurriculum(cfg.crop_scale, cfg.crop_curriculum, cfg.crop_min_start, cfg.crop_milestone,
                          cfg.iterations)
