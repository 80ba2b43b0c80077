"""Real labelled datasets with an explicit class order, read without loading a whole split into memory.

Every source offers the same small interface (``srel_ray.data.base.RealData``): the class order, a split's rows and
images per class (what the driver asks), the label column of a split (read on first use by the processes that draw
rows), the images at given row indices (the random-real baseline), and a stream of decoded batches; ``load_dataset``
picks the reader by ``data.name``. The Ray edge (``srel_ray.distributed.datasets``) builds Ray Datasets from the same
sources, decoding in the data pipeline.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from srel_ray.config import DataConfig
from srel_ray.core.seeding import STREAM_RANDOM_REAL, STREAM_VALIDATION, generator

# The interface, the in-memory and left-out-rows datasets, the class index and the decoders live in
# srel_ray.data.base, which the readers import without importing this module back; callers keep finding them here.
from srel_ray.data.base import (ClassIndex, InMemoryData, RealData, Split, WithoutRows, decode_images,  # noqa: F401
                                decode_rows, encoded_images)
from srel_ray.errors import DataError


def _load_digits(cfg: DataConfig) -> InMemoryData:
    """scikit-learn's handwritten digits (1,797 8x8 grey images, real data shipped with the package)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    pixels = F.interpolate(pixels, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=cfg.test_fraction,
                                           random_state=cfg.split_seed, stratify=labels.numpy())
    return InMemoryData("digits", [str(d) for d in range(10)], Split(images[train_idx], labels[train_idx]),
                        Split(images[test_idx], labels[test_idx]))


# ------------------------------------------------------------------------------------------- entry points


def load_dataset(cfg: DataConfig) -> RealData:
    if cfg.name == "digits":
        return _load_digits(cfg)
    if cfg.name == "parquet":
        from srel_ray.data.parquet import ParquetData

        return ParquetData(cfg)
    if cfg.name == "webdataset":
        from srel_ray.data.webdataset import WebDatasetData

        return WebDatasetData(cfg)
    if cfg.name == "cifar":
        from srel_ray.data.cifar import load_cifar

        return load_cifar(cfg)
    from srel_ray.data.imagefolder import ImageFolderData

    return ImageFolderData(cfg)


def random_real_rows(index: ClassIndex, c: int, ipc: int, seed: int) -> torch.Tensor:
    """Class ``c``'s IPC rows of the random-real baseline: the slice of ``random_real_indices`` for that class,
    drawn alone (a recovery unit needs only its own classes')."""
    return _draw(index.members(c), _random_real_count(ipc)(c, int(index.sizes()[c])), seed, STREAM_RANDOM_REAL, c)


def random_real_indices(labels: torch.Tensor, num_classes: int, ipc: int, seed: int) -> torch.Tensor:
    """IPC training-set indices per class, class-major, drawn from a seeded generator (the random-real baseline)."""
    return _draw_per_class(labels, num_classes, _random_real_count(ipc), seed, STREAM_RANDOM_REAL)


def check_images_per_class(sizes: torch.Tensor, ipc: int) -> None:
    """Every class has (of ``sizes``, its training images) the ``ipc`` the random-real draw and real-image starts
    need."""
    smallest = int(sizes.argmin())
    _random_real_count(ipc)(smallest, int(sizes[smallest]))


def _random_real_count(ipc: int):
    def count(c: int, size: int) -> int:
        if size < ipc:
            raise DataError(f"class {c} has only {size} training images, fewer than recover.ipc={ipc}")
        return ipc

    return count


def validation_indices(labels: torch.Tensor, num_classes: int, fraction: float, split_seed: int) -> torch.Tensor:
    """Training-set rows held out for validation (``srel-ray tune`` scores trials on them, never on test):
    ``fraction`` of each class, at least one, drawn from (split_seed, class) so the split never moves."""
    return _draw_per_class(labels, num_classes, _validation_count(fraction), split_seed, STREAM_VALIDATION)


def validation_sizes(sizes: torch.Tensor, fraction: float) -> torch.Tensor:
    """Validation images per class of ``validation_indices``, from the training images per class alone."""
    count = _validation_count(fraction)
    return torch.tensor([count(c, int(size)) for c, size in enumerate(sizes)], dtype=torch.int64)


def _validation_count(fraction: float):
    def count(c: int, size: int) -> int:
        if size < 2:
            raise DataError(f"class {c} has {size} training images: a validation split needs at least 2")
        return min(size - 1, max(1, round(fraction * size)))

    return count


class WithoutValidation(WithoutRows):
    """``data`` without the validation split of ``data.val_fraction`` and ``data.split_seed`` (``srel-ray tune``'s
    trials start recovery outside it). Its class sizes and image count come from ``data``'s class sizes, so the
    search's driver checks a corner's recovery inputs without the label column; the rows are drawn from the labels
    on first use, where a trial reads images."""

    def __init__(self, data: RealData, fraction: float, split_seed: int):
        super().__init__(data, None)
        self.fraction, self.split_seed = fraction, split_seed

    @functools.cached_property
    def _validation(self) -> torch.Tensor:
        return validation_indices(self.data.labels("train"), self.num_classes, self.fraction, self.split_seed)

    def left_out(self) -> torch.Tensor:
        return self._validation

    @functools.cached_property
    def _sizes(self) -> tuple[torch.Tensor, torch.Tensor]:  # (kept, validation) images per class
        sizes = self.data.class_sizes()
        held = validation_sizes(sizes, self.fraction)
        return sizes - held, held

    def class_sizes(self) -> torch.Tensor:
        return self._sizes[0]

    def validation_images(self) -> int:
        return int(self._sizes[1].sum())

    def num_images(self, split: str) -> int:
        return int(self._sizes[0].sum()) if split == "train" else self.data.num_images(split)


def _draw_per_class(labels: torch.Tensor, num_classes: int, count, seed: int, stream: int) -> torch.Tensor:
    """``count(class, class size)`` rows of each class, sorted within the class, from (seed, stream, class)."""
    index = ClassIndex(labels, num_classes)
    return torch.cat([_draw(index.members(c), count(c, len(index.members(c))), seed, stream, c)
                      for c in range(num_classes)])


def _draw(members: torch.Tensor, count: int, seed: int, stream: int, c: int) -> torch.Tensor:
    pick = torch.randperm(len(members), generator=generator(seed, stream, c))[:count]
    return members[pick.sort().values]
