"""WebDataset tar shards (how ImageNet-21K/12K are distributed): samples of ``<key>.jpg`` (or .png, ...) plus
``<key>.cls`` (the class index as text) or ``<key>.json`` (an object with the class index under
``data.label_column``), over any fsspec URL.

``data.path`` holds the shards; those whose path (below data.path) names ``train`` are the training split, those
naming ``validation``/``val`` (else ``test``) the held-out split. The class list is ``data.classes``: a file of one
class a line, or a synset list timm ships (``imagenet1k``, ``imagenet12k``, ``imagenet21k``, ...); by default
``classes.txt`` beside the shards. The first open reads every shard's tar headers and label members (the images are
skipped), shards in parallel, so a sample without a label or with a label outside the class list is named before
any work, and keeps where each image lies and its label as an index (srel_ray.data.file_index: Parquet parts of
``PART_SHARDS`` shards each, written as they are read; its record, ``index.json``, last) in ``data.index``, else
``data.path/.srel_ray_index``: every later open, the driver's and each worker's, reads that instead of a million tar
headers, and holds only the label column (8 B a sample); where the images lie is read from the index's row groups
when images are read. A shard added, removed or changed in size, another class
count or another ``data.label_column`` reads the shards again. Images are read by byte range when needed. Squeeze
and evaluate stream the shards through Ray Data's ``read_webdataset``.
"""

from __future__ import annotations

import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor

from typing import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import torch

from srel_ray.config import DataConfig
from srel_ray.data import imagenet_classes
from srel_ray.data.base import decode_images, decode_rows, index_folder
from srel_ray.data.file_index import IndexedData, PartedIndex, open_parted_index
from srel_ray.errors import DataError

INDEX_VERSION = 2  # 1: one Parquet file a split, read whole by every open
PART_SHARDS = 64  # shards read and written as one part of the index (ImageNet-21K's: about 320,000 samples)
# Shards whose headers are read at once on a remote filesystem, where reading is mostly latency. A local one is read
# a shard at a time: parsing tar headers holds the GIL, and threads only contend (200,000 samples in 40 shards on
# the 2-core machine: 38 s with one thread, 66 s with 4).
SCAN_THREADS = 32
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")
HELD_OUT = (("validation", "val"), ("test",))  # held-out shard names, in order of preference


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


class WebDatasetData(IndexedData):
    def __init__(self, cfg: DataConfig):
        if not cfg.path:
            raise DataError("data.path is required for data.name=webdataset: a folder of tar shards "
                            "(<name>-train-0000.tar ..., <name>-validation-0000.tar ...)")
        self.name, self.path, self.channels, self.image_size = "webdataset", cfg.path, cfg.channels, cfg.image_size
        self.test_resize, self.label_key = cfg.test_resize or 0, cfg.label_column
        self.fs, root = fsspec.core.url_to_fs(cfg.path)
        self.root = root.rstrip("/")
        self.class_names = self._class_list(cfg.classes)
        self.shard_paths, sizes = self._split_shards()
        self.index = self._open_index(index_folder(cfg.index, self.fs, self.root), self.shard_paths, sizes)

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

    def _split_shards(self) -> tuple[dict[str, list[str]], dict[str, int]]:
        """The shards of each split, and every shard's size in bytes."""
        sizes = {p: int(info["size"]) for p, info in self.fs.find(self.root, detail=True).items() if p.endswith(".tar")}
        tars = sorted(sizes)
        relative = {p: p[len(self.root):].lower() for p in tars}
        train = [p for p in tars if "train" in relative[p]]
        for words in HELD_OUT:
            test = [p for p in tars if p not in train and any(w in relative[p] for w in words)]
            if test:
                break
        if not train or not test:
            raise DataError(f"data.path {self.path!r}: expected tar shards whose names say train and validation "
                            f"(or val, test); found {len(tars)} tar files, {len(train)} of them train")
        return {"train": train, "test": test}, sizes

    def _open_index(self, folder: str, shards: dict[str, list[str]], sizes: dict[str, int]) -> PartedIndex:
        """The index at ``folder`` when its record matches these shards, else made by reading the shards, a part at
        a time, and written there, its record last."""
        record = {"version": INDEX_VERSION, "classes": len(self.class_names), "label_key": self.label_key,
                  "splits": {split: [[p[len(self.root) + 1:], sizes[p]] for p in files]
                             for split, files in shards.items()}}
        return open_parted_index(folder, record, lambda: {split: self._scan(files) for split, files in shards.items()},
                                 tuple(shards), "WebDataset")

    def _scan(self, shards: list[str]) -> Iterator[pa.Table]:
        """The index of ``shards`` as parts of ``PART_SHARDS`` shards: shard (its number in ``shards``), offset and
        size of the image, label; each part read when the one before has been written."""
        local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        samples = 0
        with ThreadPoolExecutor(1 if local else max(1, min(SCAN_THREADS, len(shards)))) as pool:
            for first in range(0, len(shards), PART_SHARDS):
                per_shard = list(pool.map(self._scan_shard, shards[first:first + PART_SHARDS]))
                counts = [len(labels) for _, _, labels in per_shard]
                samples += sum(counts)
                offset, size, labels = (np.concatenate([part[k] for part in per_shard]) for k in range(3))
                yield pa.table({"shard": np.repeat(np.arange(first, first + len(per_shard), dtype=np.int32), counts),
                                "offset": offset, "size": size, "label": labels.astype(np.int32)})
        if not samples:
            raise DataError(f"shards {shards[0]!r} ... hold no samples")

    def _scan_shard(self, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One shard's samples, in tar order: their images' offsets and sizes, and their labels."""
        samples: dict[str, dict] = {}
        with self.fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
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
        offset, size, labels = (np.empty(len(samples), np.int64) for _ in range(3))
        for row, (key, entry) in enumerate(samples.items()):
            if "image" not in entry:
                raise DataError(f"{path!r}: sample {key!r} has no image ({', '.join(IMAGE_EXTENSIONS)})")
            label = sample_label(entry, self.label_key, f"{path!r}: sample {key!r}")
            if label is None:
                raise DataError(f"{path!r}: sample {key!r} has an image but no label (.cls, or .json with "
                                f"{self.label_key!r})")
            if not 0 <= label < len(self.class_names):
                raise DataError(f"{path!r}: sample {key!r} has label {label}, outside the class list's "
                                f"{len(self.class_names)} classes")
            offset[row], size[row], labels[row] = entry["image"][0], entry["image"][1], label
        return offset, size, labels

    def shards(self, split: str) -> list[str]:
        return self.shard_paths[split]

    def url(self, path: str) -> str:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return path if protocol in ("file", "local") else f"{protocol}://{path}"

    def _locations(self, split: str, table: pa.Table) -> list[tuple[str, int, int]]:
        """(shard path, first byte, end) of each image of index rows ``table`` (columns shard, offset, size)."""
        paths = self.shard_paths[split]
        return [(paths[shard], offset, offset + size) for shard, offset, size in
                zip(*(table.column(c).to_numpy().tolist() for c in ("shard", "offset", "size")))]

    def _read(self, where: list[tuple[str, int, int]]) -> list[bytes]:
        return [self.fs.cat_file(path, start, end) for path, start, end in where]

    def images_at(self, split: str, indices: torch.Tensor, strict: bool = True) -> torch.Tensor:
        where = self._locations(split, self.index.take(split, torch.as_tensor(indices).numpy(),
                                                       ["shard", "offset", "size"]))
        return torch.from_numpy(decode_rows(self._read(where), self.channels, self.image_size,
                                            [f"{path} at byte {start}" for path, start, _ in where], strict,
                                            self.resize_for(split)))

    def batches(self, split: str, batch_size: int):
        for table in self.index.batches(split, batch_size, ["shard", "offset", "size", "label"]):
            images, ok = decode_images(self._read(self._locations(split, table)), self.channels, self.image_size,
                                       self.resize_for(split))
            labels = table.column("label").to_numpy().astype(np.int64)
            yield torch.from_numpy(images[ok]), torch.from_numpy(labels[ok])
