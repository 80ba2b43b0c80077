"""Parquet shards with an encoded-image column and an integer label column (optionally ``class_name``), including
Hugging Face's Parquet exports (``data/train-*.parquet``, images as ``{bytes, path}`` structs, ClassLabel names in
the schema metadata)."""

from __future__ import annotations

import json

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
    fsspec URL works. Only the label (and class-name) columns are read up front. Column names: ``data.image_column``
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
        self._labels = {split: self._read_labels(split) for split in self.files}
        self.class_names = self._class_names()

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

    def _read_labels(self, split: str) -> tuple[np.ndarray, list[pa.Table | None]]:
        """A split's labels, and per shard its distinct (label, class name) pairs, or None without names: a name
        per row would hold 11 M Python strings at ImageNet-21K (about 730 MB) to say 21,841 things."""
        parts, names = [], []
        for file in self.files[split]:
            with self.fs.open(file, "rb") as f:
                pf = pq.ParquetFile(f)
                schema = pf.schema_arrow
                self._check_schema(file, pf)
                has_names = self.NAME in schema.names
                table = pf.read(columns=[self.LABEL] + ([self.NAME] if has_names else []))
            if self.metadata_names is None:
                self.metadata_names = _class_label_names(schema, self.LABEL)
            parts.append(table.column(self.LABEL).to_numpy().astype(np.int64))
            # One thread keeps the pairs in order of first appearance, so a conflict names the earlier name first.
            names.append(table.group_by([self.LABEL, self.NAME], use_threads=False).aggregate([])
                         if has_names else None)
        return np.concatenate(parts), names

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
        labels, name_parts = self._labels["train"]
        known = self.metadata_names
        num_classes = len(known) if known else int(labels.max()) + 1
        for split, (split_labels, _) in self._labels.items():
            bad = np.nonzero((split_labels < 0) | (split_labels >= num_classes))[0]
            if len(bad):
                raise DataError(f"{self._file_of(split, int(bad[0]))!r}: {self.LABEL!r} {int(split_labels[bad[0]])} "
                                f"is outside the {num_classes} classes (0..{num_classes - 1})")
        if known:
            return known
        if len(np.unique(labels)) != num_classes:
            raise DataError(f"data.path {self.path!r}: labels must cover 0..{num_classes - 1} without gaps")
        if any(n is None for n in name_parts):
            return [str(i) for i in range(num_classes)]
        pairs = pa.concat_tables(name_parts, promote_options="permissive")  # shards may differ in int or string width
        order = {}
        for label, name in zip(pairs.column(self.LABEL).to_pylist(), pairs.column(self.NAME).to_pylist()):
            if order.setdefault(int(label), name) != name:
                raise DataError(f"data.path {self.path!r}: label {label} has two class names "
                                f"{order[int(label)]!r} and {name!r}")
        return [order[i] for i in range(num_classes)]

    def _file_of(self, split: str, row: int) -> str:
        offset = 0
        for file in self.files[split]:
            with self.fs.open(file, "rb") as f:
                rows = pq.ParquetFile(f).metadata.num_rows
            if row < offset + rows:
                return f"{file} row {row - offset}"
            offset += rows
        raise AssertionError(f"row {row} beyond the split")

    def labels(self, split: str) -> torch.Tensor:
        return torch.from_numpy(self._labels[split][0])

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
