"""The real images recovery starts from, read per class: a recovery unit reads the classes it owns and no others.

- ``real_init_images``: image i of class c starts from the random-real baseline's image i of class c (the same
  seeded draw, srel_ray.data.real.random_real_indices), so the condensed set and the "random real" students start
  from the same pictures and the comparison isolates what recovery changes.
- ``rded_candidates``: up to ``pool`` real images of one class for RDED's selection (srel_ray.core.rded).
- ``rded_start``: one class's RDED selection (its ``ipc`` start images), made once per class before recovery by
  tasks over class slices (srel_ray.stages.starts) and stored with the set.
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
from srel_ray.storage import sets


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


def rded_start(data: RealData, cfg: RecoverConfig, seed: int, teachers: Sequence[nn.Module], norm: Normalization,
               label: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (ipc, C, S, S): RDED's selection for class ``label`` from its candidates, keyed by (seed, class), so
    it is the same whoever selects it and however the classes are sliced."""
    candidates = rded_candidates(data, label, cfg.rded_pool, seed)
    images, _ = rded_images(list(teachers), candidates, label, cfg.ipc, crops=cfg.rded_crops,
                            factor=cfg.rded_factor, scale=cfg.rded_crop_scale, norm=norm,
                            gen=rded_generator(seed, label), device=device)
    return images


class StartImages:
    """The starting images of each recovery unit under ``cfg.init``, read for the unit's own images only: the
    random-real baseline's images of its classes (``real``: from ``data``), or RDED's selection stored in the set's
    start/ folder (``rded``: selected once per class before recovery, srel_ray.stages.starts)."""

    def __init__(self, cfg: RecoverConfig, seed: int, set_dir: str, channels: int, data: RealData | None = None):
        assert (data is None) == (cfg.init != "real"), "real starting images need the dataset, the others none"
        self.cfg, self.seed, self.set_dir, self.channels, self.data = cfg, seed, set_dir, channels, data

    def __call__(self, unit: Unit) -> torch.Tensor | None:
        """uint8 (N, C, S, S) in ``unit.targets()`` order, or None (recovery starts from noise)."""
        if self.cfg.init == "real":
            return real_init_images(self.data, unit.targets(), self.cfg.ipc, self.seed)
        if self.cfg.init == "rded":
            return sets.read_images_at(sets.start_dir(self.set_dir), unit.targets(), self.channels)
        return None
