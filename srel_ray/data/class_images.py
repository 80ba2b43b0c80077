"""The real images recovery starts from, read per class: a recovery unit reads the classes it owns and no others.

- ``real_init_images``: image i of class c starts from the random-real baseline's image i of class c (the same
  seeded draw, srel_ray.data.real.random_real_indices), so the condensed set and the "random real" students start
  from the same pictures and the comparison isolates what recovery changes.
- ``rded_candidates``: up to ``pool`` real images of one class for RDED's selection (srel_ray.core.rded).
- ``StartImages``: what a recovery unit starts from under ``recover.init`` (real, rded, or None for noise); the
  recovery actors and the in-process tuning trials both use it, so the two paths start from the same images.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from srel_ray.config import RecoverConfig
from srel_ray.core.normalization import Normalization
from srel_ray.core.rded import rded_images
from srel_ray.core.recover import Unit
from srel_ray.core.seeding import STREAM_RDED, generator
from srel_ray.data.real import RealData, random_real_rows
from srel_ray.errors import DataError


def real_init_images(data: RealData, targets: list[tuple[int, int]], ipc: int, seed: int) -> torch.Tensor:
    """uint8 (N, C, S, S): for each (class, index) of ``targets``, the baseline's random real image (drawn for
    the targets' own classes only)."""
    chosen = {c: random_real_rows(data.train_index, c, ipc, seed) for c in sorted({c for c, _ in targets})}
    rows = torch.stack([chosen[c][i] for c, i in targets])
    return data.images_at("train", rows)


def rded_candidates(data: RealData, label: int, pool: int, seed: int) -> torch.Tensor:
    """uint8 (M, C, S, S): ``min(pool, class size)`` training images of class ``label``, drawn from
    (seed, RDED, label, 0) and read in row order."""
    members = data.train_index.members(label)
    if len(members) == 0:
        raise DataError(f"class {label} has no training images to select RDED crops from")
    pick = torch.randperm(len(members), generator=generator(seed, STREAM_RDED, label, 0))[:pool]
    return data.images_at("train", members[pick.sort().values], strict=False)  # a sample: skip unreadable ones


def rded_generator(seed: int, label: int) -> torch.Generator:
    """The crop boxes of one class's RDED selection."""
    return generator(seed, STREAM_RDED, label, 1)


class StartImages:
    """The starting images of each recovery unit under ``cfg.init``, read from the unit's own classes only.
    RDED's selection of the last unit's classes is kept: the next unit of the same slice (ipc_per_unit < ipc)
    shares it."""

    def __init__(self, data: RealData | None, cfg: RecoverConfig, seed: int, teachers: Sequence[nn.Module],
                 norm: Normalization, device: torch.device | str = "cpu"):
        assert (data is None) == (cfg.init == "noise"), "real starting images need the dataset, noise needs none"
        self.data, self.cfg, self.seed = data, cfg, seed
        self.teachers, self.norm, self.device = list(teachers), norm, device
        self._rded: dict[int, torch.Tensor] = {}  # class -> its ipc RDED images

    def __call__(self, unit: Unit) -> torch.Tensor | None:
        """uint8 (N, C, S, S) in ``unit.targets()`` order, or None (recovery starts from noise)."""
        r = self.cfg
        if r.init == "real":
            return real_init_images(self.data, unit.targets(), r.ipc, self.seed)
        if r.init == "rded":
            # Keep only this unit's classes: the next unit of the same class slice reuses them, and an actor's
            # memory stays one slice's selection however many classes it works through (redrawn if needed:
            # the selection is keyed by (seed, class), so it is the same).
            self._rded = {c: self._rded[c] for c in unit.classes if c in self._rded}
            for c in unit.classes:
                if c not in self._rded:
                    candidates = rded_candidates(self.data, c, r.rded_pool, self.seed)
                    self._rded[c], _ = rded_images(self.teachers, candidates, c, r.ipc, crops=r.rded_crops,
                                                   factor=r.rded_factor, scale=r.rded_crop_scale, norm=self.norm,
                                                   gen=rded_generator(self.seed, c), device=self.device)
            return torch.stack([self._rded[c][i] for c, i in unit.targets()])
        return None
