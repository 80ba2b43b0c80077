"""ImageFolder trees (``train/<class>/<image>``, as ImageNet and CIFAR image dumps ship) over any fsspec URL.

The held-out split is ``val/`` or ``test/`` in the same layout, Tiny-ImageNet's ``val/images/`` with
``val/val_annotations.txt`` (file name, class id, box), or ImageNet's official flat ``val/`` with its labels:
``LOC_val_solution.csv`` (the Kaggle release) or the ILSVRC2012 devkit's ground truth (``data.val_labels``). The class order is the sorted train class folders, and it
is stored with every teacher and set. Only file names are listed up front; images are read when needed.
"""

from __future__ import annotations

import fsspec
import numpy as np
import torch

from srel_ray.config import DataConfig
from srel_ray.data.imagenet_val import flat_val_labels
from srel_ray.data.base import RealData, decode_images, decode_rows
from srel_ray.errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")


class ImageFolderData(RealData):
    def __init__(self, cfg: DataConfig):
        if not cfg.path:
            raise DataError("data.path is required for data.name=imagefolder: a folder with train/<class>/<image>")
        self.name, self.path, self.channels, self.image_size = "imagefolder", cfg.path, cfg.channels, cfg.image_size
        self.test_resize, self.val_labels = cfg.test_resize or 0, cfg.val_labels
        self.fs, root = fsspec.core.url_to_fs(cfg.path)
        self.root = root.rstrip("/")
        if not self.fs.isdir(f"{self.root}/train"):
            raise DataError(f"data.path {cfg.path!r} has no train/ folder (expected train/<class>/<image>)")
        self.class_names = sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(f"{self.root}/train", detail=False)
                                  if self.fs.isdir(p))
        if not self.class_names:
            raise DataError(f"data.path {cfg.path!r}: train/ holds no class folders")
        index = {name: i for i, name in enumerate(self.class_names)}
        self.files = {"train": self._class_tree(f"{self.root}/train", index), "test": self._held_out(index)}

    def _images_under(self, folder: str) -> list[str]:
        return sorted(p for p in self.fs.find(folder) if p.lower().endswith(EXTENSIONS))

    def _class_tree(self, split_dir: str, index: dict[str, int]) -> tuple[list[str], np.ndarray]:
        paths, labels = [], []
        for name in self.fs.ls(split_dir, detail=False):
            cls = name.rsplit("/", 1)[-1]
            if not self.fs.isdir(name):
                continue
            if cls not in index:
                raise DataError(f"{split_dir!r} has class folder {cls!r} that train/ does not have")
            found = self._images_under(name)
            paths += found
            labels += [index[cls]] * len(found)
        if not paths:
            raise DataError(f"{split_dir!r} holds no images ({', '.join(EXTENSIONS)})")
        order = np.argsort(paths, kind="stable")
        return [paths[i] for i in order], np.asarray(labels, dtype=np.int64)[order]

    def _held_out(self, index: dict[str, int]) -> tuple[list[str], np.ndarray]:
        annotations = f"{self.root}/val/val_annotations.txt"
        if self.fs.isfile(annotations):  # Tiny-ImageNet
            paths, labels = [], []
            with self.fs.open(annotations, "r") as f:
                for line in f:
                    if line.strip():
                        file, cls = line.split("\t")[:2]
                        if cls not in index:
                            raise DataError(f"{annotations!r} names class {cls!r} that train/ does not have")
                        paths.append(f"{self.root}/val/images/{file}")
                        labels.append(index[cls])
            return paths, np.asarray(labels, dtype=np.int64)
        val = f"{self.root}/val"
        if self.val_labels or (self.fs.isdir(val) and any(p.lower().endswith(EXTENSIONS)
                                                           for p in self.fs.ls(val, detail=False))):
            return self._flat_val(val, index)
        for split in ("val", "test"):
            if self.fs.isdir(f"{self.root}/{split}"):
                return self._class_tree(f"{self.root}/{split}", index)
        raise DataError(f"data.path {self.path!r} has no val/ or test/ folder for the held-out split")

    def _flat_val(self, val: str, index: dict[str, int]) -> tuple[list[str], np.ndarray]:
        """ImageNet's flat val/ read in place: each image's class from the labels file, by file name."""
        labels_file = self.val_labels or "LOC_val_solution.csv"
        if "://" not in labels_file and not labels_file.startswith("/"):
            labels_file = f"{self.root}/{labels_file}"
        if not self.fs.isfile(labels_file):
            raise DataError(f"{val!r} holds images but no class folders, and its labels file {labels_file!r} does "
                            "not exist: set data.val_labels to LOC_val_solution.csv (Kaggle) or the ILSVRC2012 "
                            "devkit's data/ILSVRC2012_validation_ground_truth.txt")
        files = {p.rsplit("/", 1)[-1].rsplit(".", 1)[0]: p for p in self._images_under(val)}
        paths, labels = [], []
        for image_id, wnid in flat_val_labels(self.fs, labels_file):
            if wnid not in index:
                raise DataError(f"{labels_file!r}: image {image_id!r} has class {wnid!r} that train/ does not have")
            if image_id not in files:
                raise DataError(f"{labels_file!r} names image {image_id!r}, which is not in {val!r}")
            paths.append(files[image_id])
            labels.append(index[wnid])
        order = np.argsort(paths, kind="stable")
        return [paths[i] for i in order], np.asarray(labels, dtype=np.int64)[order]

    def url(self, path: str) -> str:
        """A path Ray workers can open: absolute local path, or the full URL on a remote filesystem."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return path if protocol in ("file", "local") else f"{protocol}://{path}"

    def labels(self, split: str) -> torch.Tensor:
        return torch.from_numpy(self.files[split][1])

    def _read(self, paths: list[str]) -> list[bytes]:
        return [self.fs.cat_file(p) for p in paths]

    def images_at(self, split: str, indices: torch.Tensor, strict: bool = True) -> torch.Tensor:
        paths = [self.files[split][0][int(i)] for i in indices]
        return torch.from_numpy(decode_rows(self._read(paths), self.channels, self.image_size, paths, strict,
                                            self.resize_for(split)))

    def batches(self, split: str, batch_size: int):
        paths, labels = self.files[split]
        for start in range(0, len(paths), batch_size):
            images, ok = decode_images(self._read(paths[start:start + batch_size]), self.channels, self.image_size,
                                       self.resize_for(split))
            yield torch.from_numpy(images[ok]), torch.from_numpy(labels[start:start + batch_size][ok])
