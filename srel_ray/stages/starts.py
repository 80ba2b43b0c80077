"""RDED's start images (recover.init rded), selected once per class before recovery: tasks over class slices (Ray
tasks, or this process) score each class's candidates with the teachers and store its ``ipc`` selected images in
the set's start/ folder, in the set format (one PNG per image, then a marker per slice with their checksums).
A recovery unit then reads only its own start images (srel_ray.data.class_images.StartImages); no process keeps a
selection. A rerun selects only the slices without a marker that hold a class of a unit still to recover. The
console shows the selection as one bar (``STARTS_BAR``), a step a class stored, whichever executor runs it."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from torch import nn

from srel_ray.config import Config
from srel_ray.core.normalization import Normalization
from srel_ray.core.recover import Unit
from srel_ray.data.class_images import rded_start
from srel_ray.data.real import RealData
from srel_ray.stages.base import class_slices
from srel_ray.storage import files, sets

log = logging.getLogger(__name__)

STARTS_BAR = "RDED start images"  # the console bar of the selection: a step a class


def pending_slices(cfg: Config, set_dir: str, num_classes: int, units: list[Unit]) -> list[range]:
    """The class slices whose start images some of ``units`` (those still to recover) need and no marker says are
    stored; none unless recover.init is rded."""
    if cfg.recover.init != "rded":
        return []
    needed = {c for unit in units for c in unit.classes}
    folder = sets.start_dir(set_dir)
    slices = [s for s in class_slices(num_classes) if needed.intersection(s)]
    pending = [s for s in slices if not files.exists(sets.slice_marker(folder, s.start))]
    if len(pending) < len(slices):
        log.info("recover: RDED start images of %d of %d class slices already stored, skipping them",
                 len(slices) - len(pending), len(slices))
    return pending


def select_slice(data: RealData, cfg: Config, teachers: Sequence[nn.Module], norm: Normalization, set_dir: str,
                 classes: range, device: torch.device | str = "cpu",
                 on_class: Callable[[int], None] | None = None) -> int:
    """Select and store the start images of one class slice, a class at a time (one class's images in memory),
    then the slice's marker; returns the number of images stored. ``on_class(c)``: after class c is stored (the
    bar's step)."""
    folder, ipc = sets.start_dir(set_dir), cfg.recover.ipc
    checksums = {}
    for c in classes:
        images = rded_start(data, cfg.recover, cfg.seed, teachers, norm, c, device)
        checksums.update(sets.write_images(folder, [(c, i) for i in range(ipc)], images))
        if on_class is not None:
            on_class(c)
    sets.write_unit_marker(sets.slice_marker(folder, classes.start), checksums,
                           {"classes": [classes.start, classes.stop]})
    return len(checksums)
