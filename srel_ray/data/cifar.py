"""CIFAR-10/100 in torchvision's on-disk format (``cifar-10-batches-py/`` or ``cifar-100-python/``), for users who
already have it. The format is pickled numpy arrays of whole splits, so it is loaded in memory (150 MB decoded)."""

from __future__ import annotations

import pickle

import fsspec
import numpy as np
import torch
import torch.nn.functional as F

from srel_ray.config import DataConfig
from srel_ray.data.base import InMemoryData, Split
from srel_ray.errors import DataError

LAYOUTS = {  # folder: (train files, test file, meta file, label key, names key)
    "cifar-10-batches-py": ([f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta", b"labels",
                            b"label_names"),
    "cifar-100-python": (["train"], "test", "meta", b"fine_labels", b"fine_label_names"),
}


def load_cifar(cfg: DataConfig) -> InMemoryData:
    if not cfg.path:
        raise DataError("data.path is required for data.name=cifar: the folder holding cifar-10-batches-py/ or "
                        "cifar-100-python/ (or that folder itself)")
    fs, root = fsspec.core.url_to_fs(cfg.path)
    root = root.rstrip("/")
    for folder, layout in LAYOUTS.items():
        base = root if root.endswith(folder) else f"{root}/{folder}"  # the folder itself, or its parent
        if fs.isfile(f"{base}/{layout[2]}"):
            return _load(fs, base, folder, *layout, cfg)
    raise DataError(f"data.path {cfg.path!r} holds neither cifar-10-batches-py/ nor cifar-100-python/ "
                    "(torchvision's CIFAR download layout)")


def _unpickle(fs, path: str) -> dict:
    if not fs.isfile(path):
        raise DataError(f"CIFAR file {path!r} is missing")
    with fs.open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _split(fs, base: str, files: list[str], label_key: bytes, size: int) -> Split:
    parts = [_unpickle(fs, f"{base}/{name}") for name in files]
    images = torch.from_numpy(np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32))
    if size != 32:
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False).round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(np.concatenate([np.asarray(p[label_key], dtype=np.int64) for p in parts]))
    return Split(images, labels)


def _load(fs, base, folder, train_files, test_file, meta_file, label_key, names_key, cfg) -> InMemoryData:
    if cfg.channels != 3:
        raise DataError(f"data.channels must be 3 for CIFAR, got {cfg.channels}")
    names = [n.decode() for n in _unpickle(fs, f"{base}/{meta_file}")[names_key]]
    name = "cifar10" if folder.startswith("cifar-10-") else "cifar100"
    return InMemoryData(name, names, _split(fs, base, train_files, label_key, cfg.image_size),
                        _split(fs, base, [test_file], label_key, cfg.image_size))
