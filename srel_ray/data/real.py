"""Real labelled datasets as uint8 image tensors with an explicit class order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from srel_ray.config import DataConfig
from srel_ray.core.normalization import Normalization
from srel_ray.core.seeding import STREAM_RANDOM_REAL, generator
from srel_ray.errors import DataError


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class RealDataset:
    name: str
    class_names: list[str]
    train: Split
    test: Split
    norm: Normalization

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]


def load_dataset(cfg: DataConfig) -> RealDataset:
    loaders = {"digits": _load_digits}
    return loaders[cfg.name](cfg)


def _load_digits(cfg: DataConfig) -> RealDataset:
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
    train = Split(images[train_idx], labels[train_idx])
    test = Split(images[test_idx], labels[test_idx])
    return RealDataset("digits", [str(d) for d in range(10)], train, test, _normalization_of(train.images))


def _normalization_of(images: torch.Tensor) -> Normalization:
    x = images.float() / 255
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return Normalization(tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std))


def random_real_indices(labels: torch.Tensor, num_classes: int, ipc: int, seed: int) -> torch.Tensor:
    """IPC training-set indices per class, class-major, drawn from a seeded generator (the random-real baseline)."""
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        if len(members) < ipc:
            raise DataError(f"class {c} has only {len(members)} training images, fewer than recover.ipc={ipc}")
        pick = torch.randperm(len(members), generator=generator(seed, STREAM_RANDOM_REAL, c))[:ipc]
        chosen.append(members[pick.sort().values])
    return torch.cat(chosen)
