"""ImageFolder trees (``train/<class>/<image>``, as ImageNet and CIFAR image dumps ship) over any fsspec URL.

The held-out split is ``val/`` or ``test/`` in the same layout, Tiny-ImageNet's ``val/images/`` with
``val/val_annotations.txt`` (file name, class id, box), or ImageNet's official flat ``val/`` with its labels:
``LOC_val_solution.csv`` (the Kaggle release) or the ILSVRC2012 devkit's ground truth (``data.val_labels``). The
class order is the sorted train class folders, and it is stored with every teacher and set. The tree is listed
once, a part of its class folders at a time, into an index that every later open reads
(srel_ray.data.folder_index); a reader holds the labels, and reads the paths of the rows it needs from the index.
Images are read when needed.
"""

from __future__ import annotations

from typing import Iterator

import fsspec
import numpy as np
import torch

from srel_ray.config import DataConfig
from srel_ray.data.base import decode_images, decode_rows, index_folder
from srel_ray.data.file_index import IndexedData
from srel_ray.data.folder_index import FolderIndex, Listing, list_class_parts, open_index, sorted_by_path
from srel_ray.data.imagenet_val import flat_val_labels
from srel_ray.errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")


class ImageFolderData(IndexedData):
    def __init__(self, cfg: DataConfig):
        if not cfg.path:
            raise DataError("data.path is required for data.name=imagefolder: a folder with train/<class>/<image>")
        self.name, self.path, self.channels, self.image_size = "imagefolder", cfg.path, cfg.channels, cfg.image_size
        self.test_resize, self.val_labels = cfg.test_resize or 0, cfg.val_labels
        self.fs, root = fsspec.core.url_to_fs(cfg.path)
        self.root = root.rstrip("/")
        if not self.fs.isdir(f"{self.root}/train"):
            raise DataError(f"data.path {cfg.path!r} has no train/ folder (expected train/<class>/<image>)")
        self.class_names = sorted(name for name, _ in self._folders(f"{self.root}/train"))
        if not self.class_names:
            raise DataError(f"data.path {cfg.path!r}: train/ holds no class folders")
        folder = index_folder(cfg.index, self.fs, self.root)
        self.index: FolderIndex = open_index(folder, {"classes": self.class_names, "val_labels": self.val_labels},
                                             self._list_splits)

    def _folders(self, split_dir: str) -> list[tuple[str, str]]:
        """(name, path) of every folder in ``split_dir`` (one listing, no call per entry)."""
        return [(e["name"].rstrip("/").rsplit("/", 1)[-1], e["name"])
                for e in self.fs.ls(split_dir, detail=True) if e["type"] == "directory"]

    def _relative(self, path: str) -> str:
        return path[len(self.root) + 1:]

    def _images_under(self, folder: str) -> list[str]:
        return sorted(p for p in self.fs.find(folder) if _is_image(p))

    def _list_splits(self) -> dict[str, Iterator[Listing]]:
        """Each split's parts, to be listed one after another; the layout (class folders, the held-out split and its
        labels file) is checked now, before any class folder is listed."""
        index = {name: i for i, name in enumerate(self.class_names)}
        return {"train": self._class_tree(f"{self.root}/train", index), "test": self._held_out(index)}

    def _class_tree(self, split_dir: str, index: dict[str, int]) -> Iterator[Listing]:
        folders = []
        for cls, path in self._folders(split_dir):
            if cls not in index:
                raise DataError(f"{split_dir!r} has class folder {cls!r} that train/ does not have")
            folders.append((cls, path, index[cls]))

        def parts() -> Iterator[Listing]:  # each listed when the one before has been written
            listed = 0
            for paths, labels in list_class_parts(self.fs, folders, self.root, _is_image):
                listed += len(paths)
                yield paths, labels
            if not listed:
                raise DataError(f"{split_dir!r} holds no images ({', '.join(EXTENSIONS)})")

        return parts()

    def _held_out(self, index: dict[str, int]) -> Iterator[Listing]:
        """The held-out split's parts: a class tree's, or the one part of a labels file's images."""
        annotations = f"{self.root}/val/val_annotations.txt"
        if self.fs.isfile(annotations):
            return iter([self._tiny_val(annotations, index)])
        val = f"{self.root}/val"
        if self.val_labels or (self.fs.isdir(val) and any(p.lower().endswith(EXTENSIONS)
                                                           for p in self.fs.ls(val, detail=False))):
            return iter([self._flat_val(val, index)])
        for split in ("val", "test"):
            if self.fs.isdir(f"{self.root}/{split}"):
                return self._class_tree(f"{self.root}/{split}", index)
        raise DataError(f"data.path {self.path!r} has no val/ or test/ folder for the held-out split")

    def _tiny_val(self, annotations: str, index: dict[str, int]) -> Listing:
        """Tiny-ImageNet's val/images/ with its annotations file, in the annotations' order."""
        paths, labels = [], []
        with self.fs.open(annotations, "r") as f:
            for line in f:
                if line.strip():
                    file, cls = line.split("\t")[:2]
                    if cls not in index:
                        raise DataError(f"{annotations!r} names class {cls!r} that train/ does not have")
                    paths.append(f"val/images/{file}")
                    labels.append(index[cls])
        return paths, labels

    def _flat_val(self, val: str, index: dict[str, int]) -> Listing:
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
            paths.append(self._relative(files[image_id]))
            labels.append(index[wnid])
        return sorted_by_path(paths, labels)

    def paths_at(self, split: str, indices) -> list[str]:
        """The files of the given rows, from the index (only the row groups that hold them are read)."""
        return [f"{self.root}/{p}" for p in self.index.paths_at(split, torch.as_tensor(indices).numpy())]

    def url_prefix(self) -> str:
        """What a Ray worker puts before an index path to open the file: the absolute local root, or the full URL
        of the root on a remote filesystem (with the separator). The Ray Dataset of a split
        (srel_ray.distributed.datasets) prepends it in its read tasks; no process holds every path."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{self.root}/" if protocol in ("file", "local") else f"{protocol}://{self.root}/"

    def _read(self, paths: list[str]) -> list[bytes]:
        return [self.fs.cat_file(p) for p in paths]

    def images_at(self, split: str, indices: torch.Tensor, strict: bool = True) -> torch.Tensor:
        paths = self.paths_at(split, indices)
        return torch.from_numpy(decode_rows(self._read(paths), self.channels, self.image_size, paths, strict,
                                            self.resize_for(split)))

    def batches(self, split: str, batch_size: int):
        for table in self.index.batches(split, batch_size, ["path", "label"]):  # the labels beside their paths
            images, ok = decode_images(self._read([f"{self.root}/{p}" for p in table.column("path").to_pylist()]),
                                       self.channels, self.image_size, self.resize_for(split))
            labels = table.column("label").to_numpy().astype(np.int64)
            yield torch.from_numpy(images[ok]), torch.from_numpy(labels[ok])


def _is_image(path: str) -> bool:
    return path.lower().endswith(EXTENSIONS)
