"""WebDataset tar shards (how ImageNet-21K/12K are distributed): samples of ``<key>.jpg`` (or .png, ...) plus
``<key>.cls`` (the class index as text) or ``<key>.json`` (an object with the class index under
``data.label_column``), over any fsspec URL.

``data.path`` holds the shards; those whose path (below data.path) names ``train`` are the training split, those
naming ``validation``/``val`` (else ``test``) the held-out split. The class list is ``data.classes``: a file of one
class a line, or a synset list timm ships (``imagenet1k``, ``imagenet12k``, ``imagenet21k``, ...); by default
``classes.txt`` beside the shards. At start every shard's tar headers and label members are read (the images are
skipped), so a sample without a label or with a label outside the class list is named before any work; images are
read by byte range when needed. Squeeze and evaluate stream the shards through Ray Data's ``read_webdataset``.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass

import fsspec
import numpy as np
import torch

from srel_ray.config import DataConfig
from srel_ray.data import imagenet_classes
from srel_ray.data.base import RealData, decode_images, decode_rows
from srel_ray.errors import DataError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")
HELD_OUT = (("validation", "val"), ("test",))  # held-out shard names, in order of preference


@dataclass
class ShardIndex:
    """Where each sample's image bytes lie in its shard, and its label (numpy arrays: one row per sample)."""

    shards: list[str]
    shard: np.ndarray  # int32: index into ``shards``
    offset: np.ndarray  # int64: the image's first byte in the tar
    size: np.ndarray  # int64
    labels: np.ndarray  # int64


def sample_label(sample: dict, label_key: str, where: str = "a WebDataset sample") -> int | None:
    """The class index of one sample's members (extension -> bytes): ``.cls`` text, else ``.json``'s key."""
    # Ray Data gives every sample every column of its block: a member another sample has is None here.
    if sample.get("cls") is not None:
        return _class_index(sample["cls"].decode(errors="replace").strip(), f"{where} (.cls)")
    if sample.get("json") is not None:
        value = json.loads(sample["json"]).get(label_key)
        return None if value is None else _class_index(value, f"{where} (.json {label_key!r})")
    return None


def _class_index(value, where: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or str(value).lstrip("-").isdigit()):
        raise DataError(f"{where}: label {value!r} is not a class index (an integer into the class list)")
    return int(value)


def sample_image(sample: dict) -> bytes | None:
    return next((sample[ext] for ext in IMAGE_EXTENSIONS if sample.get(ext) is not None), None)


class WebDatasetData(RealData):
    def __init__(self, cfg: DataConfig):
        if not cfg.path:
            raise DataError("data.path is required for data.name=webdataset: a folder of tar shards "
                            "(<name>-train-0000.tar ..., <name>-validation-0000.tar ...)")
        self.name, self.path, self.channels, self.image_size = "webdataset", cfg.path, cfg.channels, cfg.image_size
        self.test_resize, self.label_key = cfg.test_resize or 0, cfg.label_column
        self.fs, root = fsspec.core.url_to_fs(cfg.path)
        self.root = root.rstrip("/")
        self.class_names = self._class_list(cfg.classes)
        shards = self._split_shards()
        self.index = {split: self._index(files) for split, files in shards.items()}

    def _class_list(self, classes: str | None) -> list[str]:
        if classes in imagenet_classes.SYNSET_LISTS:
            return list(imagenet_classes.synsets(classes))
        file = classes or "classes.txt"
        if "://" not in file and not file.startswith("/"):
            file = f"{self.root}/{file}"
        if not self.fs.isfile(file):
            raise DataError(f"data.classes: no class list {file!r}; give a file of one class a line or one of "
                            f"timm's lists {sorted(imagenet_classes.SYNSET_LISTS)}")
        with self.fs.open(file, "r") as f:
            names = [line.strip() for line in f if line.strip()]
        if len(set(names)) != len(names):
            raise DataError(f"class list {file!r} names a class twice")
        return names

    def _split_shards(self) -> dict[str, list[str]]:
        tars = sorted(p for p in self.fs.find(self.root) if p.endswith(".tar"))
        relative = {p: p[len(self.root):].lower() for p in tars}
        train = [p for p in tars if "train" in relative[p]]
        for words in HELD_OUT:
            test = [p for p in tars if p not in train and any(w in relative[p] for w in words)]
            if test:
                break
        if not train or not test:
            raise DataError(f"data.path {self.path!r}: expected tar shards whose names say train and validation "
                            f"(or val, test); found {len(tars)} tar files, {len(train)} of them train")
        return {"train": train, "test": test}

    def _index(self, shards: list[str]) -> ShardIndex:
        shard, offset, size, labels = [], [], [], []
        for s, path in enumerate(shards):
            with self.fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                samples: dict[str, dict] = {}
                for member in tar:
                    if not member.isfile():
                        continue
                    folder, _, base = member.name.rpartition("/")  # WebDataset's rule: the key ends at the
                    stem, _, ext = base.partition(".")  # basename's first dot
                    key = f"{folder}/{stem}" if folder else stem
                    entry = samples.setdefault(key, {})
                    if ext.lower() in IMAGE_EXTENSIONS:
                        entry["image"] = (member.offset_data, member.size)
                    elif ext in ("cls", "json"):
                        entry[ext] = tar.extractfile(member).read()
            for key, entry in samples.items():
                if "image" not in entry:
                    raise DataError(f"{path!r}: sample {key!r} has no image ({', '.join(IMAGE_EXTENSIONS)})")
                label = sample_label(entry, self.label_key, f"{path!r}: sample {key!r}")
                if label is None:
                    raise DataError(f"{path!r}: sample {key!r} has an image but no label (.cls, or .json with "
                                    f"{self.label_key!r})")
                if not 0 <= label < len(self.class_names):
                    raise DataError(f"{path!r}: sample {key!r} has label {label}, outside the class list's "
                                    f"{len(self.class_names)} classes")
                shard.append(s)
                offset.append(entry["image"][0])
                size.append(entry["image"][1])
                labels.append(label)
        if not labels:
            raise DataError(f"shards {shards[0]!r} ... hold no samples")
        return ShardIndex(shards, np.asarray(shard, np.int32), np.asarray(offset, np.int64),
                          np.asarray(size, np.int64), np.asarray(labels, np.int64))

    def shards(self, split: str) -> list[str]:
        return self.index[split].shards

    def url(self, path: str) -> str:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return path if protocol in ("file", "local") else f"{protocol}://{path}"

    def labels(self, split: str) -> torch.Tensor:
        return torch.from_numpy(self.index[split].labels)

    def _read(self, split: str, rows: np.ndarray) -> list[bytes]:
        ix = self.index[split]
        return [self.fs.cat_file(ix.shards[ix.shard[r]], int(ix.offset[r]), int(ix.offset[r] + ix.size[r]))
                for r in rows]

    def images_at(self, split: str, indices: torch.Tensor, strict: bool = True) -> torch.Tensor:
        rows = indices.numpy()
        ix = self.index[split]
        where = [f"{ix.shards[ix.shard[r]]} at byte {int(ix.offset[r])}" for r in rows]
        return torch.from_numpy(decode_rows(self._read(split, rows), self.channels, self.image_size, where, strict,
                                            self.resize_for(split)))

    def batches(self, split: str, batch_size: int):
        labels = self.index[split].labels
        for start in range(0, len(labels), batch_size):
            rows = np.arange(start, min(start + batch_size, len(labels)))
            images, ok = decode_images(self._read(split, rows), self.channels, self.image_size, self.resize_for(split))
            yield torch.from_numpy(images[ok]), torch.from_numpy(labels[rows][ok])
