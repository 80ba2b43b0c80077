"""A reader's index kept as Parquet parts beside the data (an ImageFolder tree's file list, where each WebDataset
sample lies): made once by the first open, part after part, and read by every later open in pieces.

    <index>/<split>/part-00000.parquet ...  the split's rows in index order, a part at a time; row groups of
                                            ``ROW_GROUP`` rows
    <index>/index.json                      written last: the record of what was indexed (the caller's) and each
                                            split's rows per part

The maker yields a split's rows as parts, each written before the next is made, so no process holds a split's
rows, and readers take what they need: a column of a split (the labels), some rows from the row groups that
hold them, a range of rows, or consecutive batches. An index whose record differs from the caller's is made again;
a stopped make leaves no record, so a half-written index is never read.
"""

from __future__ import annotations

import functools
import io
import json
from typing import Callable, Iterable, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from srel_ray.data.base import RealData
from srel_ray.errors import DataError
from srel_ray.storage.files import read_json, write_bytes_atomic

ROW_GROUP = 65_536  # rows per Parquet row group: a reader of a few rows reads one group (a few MB)


class PartedIndex:
    """An index at ``folder`` (a URL) whose record has been written."""

    def __init__(self, folder: str):
        self.folder = folder
        self.fs, self.root = fsspec.core.url_to_fs(folder)
        self._rows: dict[str, list[int]] | None = None

    def part_rows(self, split: str) -> list[int]:
        """The rows of each part of ``split``, from the record (read once)."""
        if self._rows is None:
            self._rows = read_json(f"{self.folder}/index.json")["rows"]
        return self._rows[split]

    def num_rows(self, split: str) -> int:
        return sum(self.part_rows(split))

    def part_file(self, split: str, part: int) -> str:
        """Part ``part`` of ``split`` (a path on ``self.fs``)."""
        return f"{self.root}/{split}/part-{part:05d}.parquet"

    def column(self, split: str, name: str, dtype: np.dtype) -> np.ndarray:
        """Column ``name`` of every row of ``split`` as ``dtype``, in index order, filled a part at a time (no
        second copy of the whole column while it is read)."""
        out = np.empty(self.num_rows(split), dtype=dtype)
        start = 0
        for part, rows in enumerate(self.part_rows(split)):
            with self.fs.open(self.part_file(split, part), "rb") as f:
                out[start:start + rows] = pq.read_table(f, columns=[name]).column(0).to_numpy()
            start += rows
        return out

    def counts(self, split: str, name: str, length: int) -> np.ndarray:
        """How many rows of ``split`` hold each value 0..``length``-1 of integer column ``name``, read a part at a
        time: the images per class, without the label column (8 B a row) on the process that asks."""
        out = np.zeros(length, dtype=np.int64)
        for part in range(len(self.part_rows(split))):
            with self.fs.open(self.part_file(split, part), "rb") as f:
                values = pq.read_table(f, columns=[name]).column(0).to_numpy()
            out += np.bincount(values, minlength=length)[:length]
        return out

    def take(self, split: str, rows: np.ndarray, columns: list[str]) -> pa.Table:
        """``columns`` of ``rows`` (in their order, repeats allowed), reading only the row groups that hold them."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        part_starts = np.cumsum([0] + self.part_rows(split))
        parts = np.searchsorted(part_starts, ordered, side="right") - 1
        pieces = []
        for part in np.unique(parts):
            local = ordered[parts == part] - part_starts[part]
            with self.fs.open(self.part_file(split, int(part)), "rb") as f:
                parquet = pq.ParquetFile(f)
                starts = np.cumsum([0] + _group_sizes(parquet))
                groups = np.searchsorted(starts, local, side="right") - 1
                for g in np.unique(groups):
                    pieces.append(parquet.read_row_group(int(g), columns=columns).take(
                        pa.array(local[groups == g] - starts[g])))
        if not pieces:
            with self.fs.open(self.part_file(split, 0), "rb") as f:
                return pq.ParquetFile(f).schema_arrow.empty_table().select(columns)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return pa.concat_tables(pieces).take(pa.array(inverse))

    def rows(self, split: str, start: int, stop: int, columns: list[str]) -> pa.Table:
        """``columns`` of rows ``start`` to ``stop`` (exclusive), reading only the parts and row groups that hold
        them: what a Ray read task of a split's rows reads (srel_ray.distributed.datasets)."""
        tables = []
        for part, lo, hi in group_spans(self.part_rows(split), start, stop):
            with self.fs.open(self.part_file(split, part), "rb") as f:
                parquet = pq.ParquetFile(f)
                tables += [parquet.read_row_group(g, columns=columns).slice(a, b - a)
                           for g, a, b in group_spans(_group_sizes(parquet), lo, hi)]
        return pa.concat_tables(tables)

    def batches(self, split: str, size: int, columns: list[str]) -> Iterator[pa.Table]:
        """Every row of ``split`` in index order, ``size`` rows at a time (the last batch may be smaller)."""
        pending: list[pa.RecordBatch] = []
        held = 0
        for part in range(len(self.part_rows(split))):
            with self.fs.open(self.part_file(split, part), "rb") as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=size, columns=columns):
                    pending.append(batch)
                    held += batch.num_rows
                    while held >= size:
                        table = pa.Table.from_batches(pending)
                        yield table.slice(0, size)
                        rest = table.slice(size)
                        pending, held = rest.to_batches(), rest.num_rows
        if held:
            yield pa.Table.from_batches(pending)


def _group_sizes(parquet: pq.ParquetFile) -> list[int]:
    return [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]


class IndexedData(RealData):
    """A reader whose rows are a ``PartedIndex`` (``self.index``) with an integer ``label`` column: ImageFolder and
    WebDataset. Opening it reads none of the index's rows: its row counts are the record's, its images per class are
    counted a part at a time, and its label column is read on first use (``RealData.labels``)."""

    index: PartedIndex

    @functools.cached_property
    def _label_columns(self) -> dict[str, np.ndarray]:  # split -> labels, each read on first use
        return {}

    def labels(self, split: str) -> torch.Tensor:
        if split not in self._label_columns:
            self._label_columns[split] = self.index.column(split, "label", np.int64)
        return torch.from_numpy(self._label_columns[split])

    def num_images(self, split: str) -> int:
        return self.index.num_rows(split)

    @functools.cached_property
    def _class_sizes(self) -> torch.Tensor:  # the start-up checks ask more than once
        return torch.from_numpy(self.index.counts("train", "label", self.num_classes))

    def class_sizes(self) -> torch.Tensor:
        return self._class_sizes


def group_spans(group_sizes: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """The groups that hold rows ``start`` to ``stop`` (exclusive) of consecutive groups of ``group_sizes`` rows:
    (group, first row in the group, end in the group), in row order."""
    spans, first = [], 0
    for group, size in enumerate(group_sizes):
        lo, hi = max(start - first, 0), min(stop - first, size)
        if lo < hi:
            spans.append((group, lo, hi))
        first += size
    return spans


def open_parted_index(folder: str, record: dict, make_splits: Callable[[], dict[str, Iterable[pa.Table]]],
                      splits: tuple[str, ...], what: str) -> PartedIndex:
    """The index at ``folder`` when its record equals ``record``; otherwise ``make_splits()`` makes it, each split
    as its parts in index order (``splits`` names every split an index of this kind may hold), every part written
    as it is made, the record last. ``what`` names the index in the error for a folder that cannot be written."""
    index = PartedIndex(folder)
    if index.fs.exists(f"{index.root}/index.json"):
        kept = read_json(f"{folder}/index.json")
        if {k: v for k, v in kept.items() if k != "rows"} == record:
            return index
    made = make_splits()  # the caller checks what it can before an old index is removed

    def writing(action: Callable[[], None]) -> None:  # only writing: an error reading the data is the caller's
        try:
            action()
        except OSError as e:  # a read-only folder or mount, an object store without write access
            raise DataError(f"cannot write the {what} index at {folder!r} ({e}): set data.index to a folder that "
                            "the driver and every worker can write and read") from None

    def write(path: str, data: bytes) -> None:
        writing(lambda: write_bytes_atomic(path, data))

    writing(lambda: _remove(index, splits))
    rows: dict[str, list[int]] = {}
    for split, parts in made.items():
        rows[split] = []
        for part, table in enumerate(parts):
            buf = io.BytesIO()
            pq.write_table(table, buf, row_group_size=ROW_GROUP)
            write(f"{folder}/{split}/part-{part:05d}.parquet", buf.getvalue())
            rows[split].append(table.num_rows)
    write(f"{folder}/index.json", json.dumps({**record, "rows": rows}, indent=2).encode())
    return index


def _remove(index: PartedIndex, splits: tuple[str, ...]) -> None:
    """An earlier index's files, its record first. Index files of one Parquet file a split (``<split>.parquet``)
    are what earlier versions wrote."""
    for name in ("index.json", *(f"{split}.parquet" for split in splits)):
        if index.fs.exists(f"{index.root}/{name}"):
            index.fs.rm(f"{index.root}/{name}")
    for split in splits:
        if index.fs.exists(f"{index.root}/{split}"):
            index.fs.rm(f"{index.root}/{split}", recursive=True)
