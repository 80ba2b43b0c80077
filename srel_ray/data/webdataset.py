"""WebDataset tar shards (how ImageNet-21K/12K are distributed): samples of ``<key>.jpg`` (or .png, ...) plus
``<key>.cls`` (the class index as text) or ``<key>.json`` (an object with the class index under
``data.label_column``), over any fsspec URL.

``data.path`` holds the shards; those whose path (below data.path) names ``train`` are the training split, those
naming ``validation``/``val`` (else ``test``) the held-out split. The class list is ``data.classes``: a file of one
class a line, or a synset list timm ships (``imagenet1k``, ``imagenet12k``, ``imagenet21k``, ...); by default
``classes.txt`` beside the shards. The first open reads every shard's tar headers and label members (the images are
skipped), shards in parallel, so a sample without a label or with a label outside the class list is named before
any work, and keeps where each image lies and its label as an index (Parquet, one file per split; its record,
``index.json``, last) in ``data.index``, else ``data.path/.srel_ray_index``: every later open, the driver's and each
worker's, reads that instead of a million tar headers. A shard added, removed or changed in size, another class
count or another ``data.label_column`` reads the shards again. Images are read by byte range when needed. Squeeze
and evaluate stream the shards through Ray Data's ``read_webdataset``.
"""

from __future__ import annotations

import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from srel_ray.config import DataConfig
from srel_ray.data import imagenet_classes
from srel_ray.data.base import RealData, decode_images, decode_rows, index_folder
from srel_ray.errors import DataError
from srel_ray.storage.files import read_json, write_bytes_atomic, write_json_atomic

INDEX_VERSION = 1
# Shards whose headers are read at once on a remote filesystem, where reading is mostly latency. A local one is read
# a shard at a time: parsing tar headers holds the GIL, and threads only contend (200,000 samples in 40 shards on
# the 2-core machine: 38 s with one thread, 66 s with 4).
SCAN_THREADS = 32
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
        shards, sizes = self._split_shards()
        self.index = self._open_index(index_folder(cfg.index, self.fs, self.root), shards, sizes)

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

    def _open_index(self, folder: str, shards: dict[str, list[str]], sizes: dict[str, int]) -> dict[str, ShardIndex]:
        """Each split's index: read from ``folder`` when its record matches these shards, else made by reading the
        shards and written there, its record last."""
        record = {"version": INDEX_VERSION, "classes": len(self.class_names), "label_key": self.label_key,
                  "splits": {split: [[p[len(self.root) + 1:], sizes[p]] for p in files]
                             for split, files in shards.items()}}
        fs, root = fsspec.core.url_to_fs(folder)
        if fs.exists(f"{root}/index.json") and read_json(f"{folder}/index.json") == record:
            return {split: _read_index(fs, f"{root}/{split}.parquet", files) for split, files in shards.items()}
        index = {split: self._scan(files) for split, files in shards.items()}
        try:
            for split, ix in index.items():
                write_bytes_atomic(f"{folder}/{split}.parquet", _index_table(ix))
            write_json_atomic(f"{folder}/index.json", record)
        except OSError as e:  # a read-only folder or mount, an object store without write access
            raise DataError(f"cannot write the WebDataset index at {folder!r} ({e}): set data.index to a folder "
                            "that the driver and every worker can write and read") from None
        return index

    def _scan(self, shards: list[str]) -> ShardIndex:
        local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        with ThreadPoolExecutor(1 if local else max(1, min(SCAN_THREADS, len(shards)))) as pool:
            per_shard = list(pool.map(self._scan_shard, shards))
        if not any(len(labels) for _, _, labels in per_shard):
            raise DataError(f"shards {shards[0]!r} ... hold no samples")
        counts = [len(labels) for _, _, labels in per_shard]
        return ShardIndex(shards, np.repeat(np.arange(len(shards), dtype=np.int32), counts),
                          *(np.concatenate([part[k] for part in per_shard]) for k in range(3)))

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


def _index_table(ix: ShardIndex) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"shard": ix.shard, "offset": ix.offset, "size": ix.size,
                             "label": ix.labels.astype(np.int32)}), buf)
    return buf.getvalue()


def _read_index(fs: fsspec.AbstractFileSystem, path: str, shards: list[str]) -> ShardIndex:
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    column = {name: table.column(name).to_numpy() for name in ("shard", "offset", "size", "label")}
    return ShardIndex(shards, column["shard"].astype(np.int32), column["offset"].astype(np.int64),
                      column["size"].astype(np.int64), column["label"].astype(np.int64))
