"""Parquet shards with an encoded-image column and an integer label column (optionally ``class_name``), including
Hugging Face's Parquet exports (``data/train-*.parquet``, images as ``{bytes, path}`` structs, ClassLabel names in
the schema metadata)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from srel_ray.config import DataConfig
from srel_ray.data.base import RealData, decode_images, decode_rows, encoded_images
from srel_ray.errors import DataError

# Held-out split names, in order of preference; a Hugging Face export's ``test`` split often has no labels
# (ImageNet-1K's is all -1), so its ``validation`` split comes first.
HELD_OUT = {"": ("test",), "data/": ("validation", "test")}


class ParquetData(RealData):
    """Parquet shards with an encoded-image column and an integer label column (optionally ``class_name``).

    ``data.path`` holds ``train.parquet`` and ``test.parquet``, folders ``train/`` and ``test/`` of shards, or a
    Hugging Face export's ``data/train-*.parquet`` and ``data/validation-*.parquet`` (else ``data/test-*``); any
    fsspec URL works. The label (and class-name) columns are read up front, a file at a time, to check and
    count them; the label column is kept only once asked for (``labels``). Column names: ``data.image_column``
    and ``data.label_column``; class names from a ``class_name`` column or the export's ClassLabel metadata.
    """

    NAME = "class_name"

    def __init__(self, cfg: DataConfig):
        if not cfg.path:
            raise DataError("data.path is required for data.name=parquet: a folder with train.parquet and "
                            "test.parquet (for CIFAR-10: ../shared/data/cifar10)")
        self.name, self.path, self.channels, self.image_size = "parquet", cfg.path, cfg.channels, cfg.image_size
        self.IMAGE, self.LABEL, self.test_resize = cfg.image_column, cfg.label_column, cfg.test_resize or 0
        self.fs, root = fsspec.core.url_to_fs(cfg.path)
        self.files = self._splits(root.rstrip("/"))
        self.metadata_names: list[str] | None = None
        self._scans = {split: self._scan_labels(split) for split in self.files}
        self.class_names = self._class_names()
        self._labels: dict[str, np.ndarray] = {}  # read on first use (RealData.labels)

    def _splits(self, root: str) -> dict[str, list[str]]:
        for prefix, held_out in HELD_OUT.items():
            train = self._shards(root, prefix, "train")
            if train:
                test = next((found for split in held_out if (found := self._shards(root, prefix, split))), None)
                if not test:
                    raise DataError(f"data.path {self.path!r}: train shards but no held-out split "
                                    f"({' or '.join(f'{prefix}{s}' for s in held_out)})")
                return {"train": train, "test": test}
        raise DataError(f"data.path {self.path!r}: no train.parquet, train/*.parquet or data/train-*.parquet there "
                        "(expected a folder like ../shared/data/cifar10 with train.parquet and test.parquet, or a "
                        "Hugging Face export)")

    def _shards(self, root: str, prefix: str, split: str) -> list[str]:
        if not prefix:
            single = f"{root}/{split}.parquet"
            return [single] if self.fs.isfile(single) else sorted(self.fs.glob(f"{root}/{split}/*.parquet"))
        return sorted(self.fs.glob(f"{root}/{prefix}{split}-*.parquet"))

    def _scan_labels(self, split: str) -> _SplitLabels:
        """A split's label column read a shard at a time, keeping only what the checks need: rows, smallest and
        largest label per shard, images per label, and the distinct (label, class name) pairs per shard (a name
        per row would hold 11 M Python strings at ImageNet-21K, about 730 MB, to say 21,841 things)."""
        scan = _SplitLabels()
        for file in self.files[split]:
            with self.fs.open(file, "rb") as f:
                pf = pq.ParquetFile(f)
                schema = pf.schema_arrow
                self._check_schema(file, pf)
                has_names = self.NAME in schema.names
                table = pf.read(columns=[self.LABEL] + ([self.NAME] if has_names else []))
            if self.metadata_names is None:
                self.metadata_names = _class_label_names(schema, self.LABEL)
            scan.add(table.column(self.LABEL).to_numpy().astype(np.int64))
            # One thread keeps the pairs in order of first appearance, so a conflict names the earlier name first.
            scan.names.append(table.group_by([self.LABEL, self.NAME], use_threads=False).aggregate([])
                              if has_names else None)
        return scan

    def _shard_labels(self, file: str) -> np.ndarray:
        with self.fs.open(file, "rb") as f:
            return pq.read_table(f, columns=[self.LABEL]).column(0).to_numpy().astype(np.int64)

    def _check_schema(self, file: str, pf: pq.ParquetFile) -> None:
        """The image column holds bytes, or {bytes, path} structs whose bytes are all present."""
        schema = pf.schema_arrow
        for column in (self.IMAGE, self.LABEL):
            if column not in schema.names:
                what = "data.image_column" if column == self.IMAGE else "data.label_column"
                raise DataError(f"{file!r} has no column {column!r} ({what}; columns: {schema.names})")
        kind = schema.field(self.IMAGE).type
        if pa.types.is_struct(kind):
            if kind.get_field_index("bytes") < 0:
                raise DataError(f"{file!r}: column {self.IMAGE!r} is a struct without 'bytes' ({kind}); images "
                                "must be stored in the file (a Hugging Face export with embedded images)")
            leaf = f"{self.IMAGE}.bytes"
            columns = [i for i in range(pf.metadata.num_columns) if pf.metadata.schema.column(i).path == leaf]
            for g in range(pf.metadata.num_row_groups):
                stats = pf.metadata.row_group(g).column(columns[0]).statistics
                if stats is not None and stats.has_null_count and stats.null_count:
                    raise DataError(f"{file!r}: {stats.null_count} rows of row group {g} have no {leaf!r} (only a "
                                    "path); images must be stored in the file")
        elif not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
            raise DataError(f"{file!r}: column {self.IMAGE!r} is {kind}, not encoded image bytes or a {{bytes, path}} "
                            "struct")

    def _class_names(self) -> list[str]:
        train = self._scans["train"]
        if not train.rows_total:
            raise DataError(f"data.path {self.path!r}: the train split has no rows")
        known = self.metadata_names
        num_classes = len(known) if known else max(train.high) + 1
        for split, scan in self._scans.items():
            for file, low, high in zip(self.files[split], scan.low, scan.high):
                if low < 0 or high >= num_classes:
                    labels = self._shard_labels(file)
                    row = int(np.argmax((labels < 0) | (labels >= num_classes)))
                    raise DataError(f"{f'{file} row {row}'!r}: {self.LABEL!r} {int(labels[row])} is outside the "
                                    f"{num_classes} classes (0..{num_classes - 1})")
        if known:
            return known
        if (train.counts[:num_classes] == 0).any():
            raise DataError(f"data.path {self.path!r}: labels must cover 0..{num_classes - 1} without gaps")
        if any(n is None for n in train.names):
            return [str(i) for i in range(num_classes)]
        pairs = pa.concat_tables(train.names, promote_options="permissive")  # shards may differ in int or string width
        order = {}
        for label, name in zip(pairs.column(self.LABEL).to_pylist(), pairs.column(self.NAME).to_pylist()):
            if order.setdefault(int(label), name) != name:
                raise DataError(f"data.path {self.path!r}: label {label} has two class names "
                                f"{order[int(label)]!r} and {name!r}")
        return [order[i] for i in range(num_classes)]

    def labels(self, split: str) -> torch.Tensor:
        if split not in self._labels:
            self._labels[split] = np.concatenate([self._shard_labels(file) for file in self.files[split]])
        return torch.from_numpy(self._labels[split])

    def num_images(self, split: str) -> int:
        return self._scans[split].rows_total

    def class_sizes(self) -> torch.Tensor:
        counts = np.zeros(self.num_classes, dtype=np.int64)
        seen = self._scans["train"].counts[:self.num_classes]
        counts[:len(seen)] = seen
        return torch.from_numpy(counts)

    def images_at(self, split: str, indices: torch.Tensor, strict: bool = True) -> torch.Tensor:
        """Reads only the row groups that hold the requested rows."""
        wanted = indices.numpy()
        encoded: list[bytes | None] = [None] * len(wanted)
        where = [""] * len(wanted)
        offset = 0
        for file in self.files[split]:
            with self.fs.open(file, "rb") as f:
                pf = pq.ParquetFile(f)
                for g in range(pf.num_row_groups):
                    rows = pf.metadata.row_group(g).num_rows
                    hit = np.nonzero((wanted >= offset) & (wanted < offset + rows))[0]
                    if len(hit):
                        column = encoded_images(pf.read_row_group(g, columns=[self.IMAGE]).column(self.IMAGE)
                                                .to_pylist())
                        for h in hit:
                            encoded[h] = column[int(wanted[h] - offset)]
                            where[h] = f"{file} row {int(wanted[h])}"
                    offset += rows
        return torch.from_numpy(decode_rows(encoded, self.channels, self.image_size, where, strict,
                                            self.resize_for(split)))

    def batches(self, split: str, batch_size: int):
        for file in self.files[split]:
            with self.fs.open(file, "rb") as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=[self.IMAGE, self.LABEL]):
                    images, ok = decode_images(encoded_images(batch.column(self.IMAGE).to_pylist()), self.channels,
                                               self.image_size, self.resize_for(split))
                    labels = batch.column(self.LABEL).to_numpy().astype(np.int64)
                    yield torch.from_numpy(images[ok]), torch.from_numpy(labels[ok])


def _class_label_names(schema: pa.Schema, column: str) -> list[str] | None:
    """The ClassLabel names a Hugging Face export records for ``column`` in the schema metadata, if any."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    feature = json.loads(raw).get("info", {}).get("features", {}).get(column, {})
    names = feature.get("names") if feature.get("_type") == "ClassLabel" else None
    return list(names) if names else None


@dataclass
class _SplitLabels:
    """What opening a split keeps of its label column (``ParquetData._scan_labels``): rows, smallest and largest
    label per shard (an empty shard's are 0 and -1), images per label value (negative ones left to the range
    check), and per shard its distinct (label, class name) pairs, or None without names."""

    rows: list[int] = field(default_factory=list)
    low: list[int] = field(default_factory=list)
    high: list[int] = field(default_factory=list)
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    names: list[pa.Table | None] = field(default_factory=list)

    @property
    def rows_total(self) -> int:
        return sum(self.rows)

    def add(self, labels: np.ndarray) -> None:
        self.rows.append(len(labels))
        self.low.append(int(labels.min()) if len(labels) else 0)
        self.high.append(int(labels.max()) if len(labels) else -1)
        shard = np.bincount(labels[labels >= 0])
        if len(shard) > len(self.counts):
            self.counts = np.pad(self.counts, (0, len(shard) - len(self.counts)))
        self.counts[:len(shard)] += shard
