"""What every reader of real labelled data shares: the ``RealData`` interface, the in-memory and left-out-rows
datasets, the class index, and image decoding.

The readers (``parquet``, ``imagefolder``, ``webdataset``, ``cifar``) build on this module and ``srel_ray.data.real``
picks one of them by ``data.name``; keeping the shared part here lets the readers import it without importing the
module that dispatches to them (no import cycle).
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from srel_ray.core.normalization import Normalization
from srel_ray.core.seeding import STREAM_NORMALIZATION, generator
from srel_ray.errors import DataError

INDEX_FOLDER = ".srel_ray_index"  # where a reader keeps its index of data.path by default (data.index overrides it)


def index_folder(index: str | None, fs, root: str) -> str:
    """The folder of a reader's index (ImageFolder's file list, WebDataset's sample offsets): ``data.index``, else
    ``INDEX_FOLDER`` beside the data at ``root`` on ``fs``, as a URL."""
    return index or fs.unstrip_protocol(f"{root}/{INDEX_FOLDER}")

NORMALIZATION_SAMPLE = 2048  # images used to estimate the per-channel mean and std


class RealData:
    """A labelled image dataset: ``class_names`` (index order), ``channels``, ``image_size``, ``norm``."""

    name: str
    class_names: list[str]
    channels: int
    image_size: int
    test_resize: int = 0  # held-out images: short side to this, then a centre crop (0: resize the whole image)

    def resize_for(self, split: str) -> int:
        """``decode_images``' ``resize`` for a split: ImageNet's test transform applies to held-out images only."""
        return self.test_resize if split == "test" else 0

    @functools.cached_property
    def norm(self) -> Normalization:
        """Per-channel mean and std of a sample of training images, estimated on first use (so a reader that only
        needs some classes' images, like a recovery actor's, never touches the others)."""
        return self._estimate_norm()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @functools.cached_property
    def train_index(self) -> "ClassIndex":
        """The training rows of each class, built on first use and kept (per-class draws read their slice)."""
        return ClassIndex(self.labels("train"), self.num_classes)

    def labels(self, split: str) -> torch.Tensor:
        """Every label of ``split`` (int64, row order). A file reader reads them on first call and keeps them:
        8 B an image, so the driver asks for ``num_images`` and ``class_sizes`` instead, and only the processes
        that draw or read rows (recovery and relabel workers, baseline tasks, trials) hold a label column."""
        raise NotImplementedError

    def num_images(self, split: str) -> int:
        """Rows of ``split``; a file reader tells without reading its labels."""
        return len(self.labels(split))

    def class_sizes(self) -> torch.Tensor:
        """Training images per class (int64, ``num_classes``); a file reader counts its label column a file or index
        part at a time, so the caller never holds it."""
        return torch.bincount(self.labels("train"), minlength=self.num_classes)[:self.num_classes]

    def images_at(self, split: str, indices: torch.Tensor, strict: bool = True) -> torch.Tensor:
        """uint8 (N, C, S, S) images of the given rows, in the given order. ``strict``: an unreadable image is an
        error that names it; otherwise unreadable images are left out."""
        raise NotImplementedError

    def batches(self, split: str, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels) batches over a split, read and decoded as they are consumed."""
        raise NotImplementedError

    def _estimate_norm(self) -> Normalization:
        # The permutation is 8 B an image while it lives (88 MB at 11 M images), freed before any image is read.
        order = torch.randperm(self.num_images("train"), generator=generator(STREAM_NORMALIZATION))
        pick = order[:NORMALIZATION_SAMPLE].clone()
        del order
        x = self.images_at("train", pick.sort().values, strict=False).float() / 255
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return Normalization(tuple(round(float(m), 4) for m in x.mean(dim=(0, 2, 3))),
                             tuple(round(float(s), 4) for s in std))


# ------------------------------------------------------------------------------------------- in memory


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


class InMemoryData(RealData):
    """A dataset small enough to hold as tensors (the embedded digits set)."""

    def __init__(self, name: str, class_names: list[str], train: Split, test: Split):
        self.name, self.class_names, self.splits = name, class_names, {"train": train, "test": test}
        self.channels, self.image_size = train.images.shape[1], train.images.shape[2]

    def labels(self, split: str) -> torch.Tensor:
        return self.splits[split].labels

    def images_at(self, split: str, indices: torch.Tensor, strict: bool = True) -> torch.Tensor:
        return self.splits[split].images[indices]

    def batches(self, split: str, batch_size: int):
        s = self.splits[split]
        yield from zip(s.images.split(batch_size), s.labels.split(batch_size))


class WithoutRows(RealData):
    """``data`` with some training rows left out: ``srel-ray tune`` starts recovery (recover.init real or rded)
    from training images that are not validation images, so no trial's set begins from a picture it is scored
    on. Train-split row indices count the kept rows only; the test split and the normalisation are ``data``'s."""

    def __init__(self, data: RealData, left_out: torch.Tensor | None):
        self.data, self._left_out = data, left_out
        self.name, self.class_names = data.name, data.class_names
        self.channels, self.image_size = data.channels, data.image_size

    def left_out(self) -> torch.Tensor:
        """The training rows left out (a subclass may draw them on first use)."""
        return self._left_out

    @functools.cached_property
    def kept(self) -> torch.Tensor:
        keep = torch.ones(self.data.num_images("train"), dtype=torch.bool)
        keep[self.left_out()] = False
        return torch.nonzero(keep).flatten()

    @property
    def norm(self) -> Normalization:
        return self.data.norm

    def labels(self, split: str) -> torch.Tensor:
        return self.data.labels(split)[self.kept] if split == "train" else self.data.labels(split)

    def num_images(self, split: str) -> int:
        return len(self.kept) if split == "train" else self.data.num_images(split)

    def images_at(self, split: str, indices: torch.Tensor, strict: bool = True) -> torch.Tensor:
        rows = self.kept[indices] if split == "train" else indices
        return self.data.images_at(split, rows, strict)

    def batches(self, split: str, batch_size: int):
        if split != "train":
            yield from self.data.batches(split, batch_size)
            return
        labels = self.data.labels("train")
        for rows in self.kept.split(batch_size):
            yield self.data.images_at("train", rows), labels[rows]


# ------------------------------------------------------------------------------------------- decoding


def decode_images(encoded: list[bytes | None], channels: int, size: int,
                  resize: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Encoded images (PNG, JPEG, ...) -> uint8 (N, C, size, size), and a mask of the ones that decoded (an
    unreadable or missing image leaves zeros and False, so callers count and drop it). ``resize`` 0: the whole
    image resized to size x size with Pillow's bilinear filter; otherwise ImageNet's test transform, as torchvision's
    weights define it: the short side resized to ``resize`` (bilinear, antialiased), then the centre size x size."""
    mode = "L" if channels == 1 else "RGB"
    out = np.zeros((len(encoded), channels, size, size), dtype=np.uint8)
    ok = np.ones(len(encoded), dtype=bool)
    for i, data in enumerate(encoded):
        try:
            img = Image.open(io.BytesIO(data)).convert(mode)
        except (UnidentifiedImageError, OSError):
            ok[i] = False
            continue
        if resize:
            img = _resize_centre_crop(img, resize, size)
        elif img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
        out[i] = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return out, ok


def encoded_images(values: list) -> list[bytes | None]:
    """An image column's values as encoded bytes: plain bytes, or a Hugging Face ``{bytes, path}`` struct's bytes."""
    return [v["bytes"] if isinstance(v, dict) else v for v in values]


def _resize_centre_crop(img: Image.Image, resize: int, size: int) -> Image.Image:
    import torchvision.transforms.functional as TF  # the ops of torchvision's ImageClassification transform

    return TF.center_crop(TF.resize(img, resize, interpolation=TF.InterpolationMode.BILINEAR, antialias=True), size)


def decode_rows(encoded: list[bytes | None], channels: int, size: int, where: list[str], strict: bool,
                resize: int = 0) -> np.ndarray:
    """Decode images a caller asked for by row: ``strict`` names the first unreadable one, else drops them."""
    images, ok = decode_images(encoded, channels, size, resize)
    if strict and not ok.all():
        raise DataError(f"unreadable image: {where[int(np.argmin(ok))]}")
    return images[ok]


# ------------------------------------------------------------------------------------------- class index


class ClassIndex:
    """The training rows of every class, built once from the label column in O(images log images): a stable sort
    by label, so each class's rows stay in row order. Per-class draws read their class's slice instead of scanning
    every label once per class (classes x images: 2.4e11 comparisons at 21,841 classes and 11 M images)."""

    def __init__(self, labels: torch.Tensor, num_classes: int):
        labels = labels.long()
        self.order = torch.argsort(labels, stable=True)
        self.offsets = torch.zeros(num_classes + 1, dtype=torch.long)
        self.offsets[1:] = torch.bincount(labels, minlength=num_classes)[:num_classes].cumsum(0)

    @property
    def num_classes(self) -> int:
        return len(self.offsets) - 1

    def members(self, c: int) -> torch.Tensor:
        """Rows of class ``c`` in ascending order (what ``torch.nonzero(labels == c)`` gives)."""
        return self.order[self.offsets[c]:self.offsets[c + 1]]

    def sizes(self) -> torch.Tensor:
        return self.offsets.diff()
