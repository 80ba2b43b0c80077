"""The file index of an ImageFolder tree: every image's path and class, per split, listed once and kept as Parquet,
so that later opens (the driver's, every actor's and task's) read it instead of listing millions of files again.

    <index>/train.parquet, test.parquet   columns path (string, relative to data.path) and label (int32), in path
                                          order: the rows a sequential sorted listing gives
    <index>/index.json                    written last: the train class folders and the held-out layout it was
                                          listed from. An index whose record differs from the folder's (a class
                                          folder added, removed or renamed; another data.val_labels) is listed
                                          again; one that lacks images added inside a class folder is not: remove
                                          the index folder to list again.

The index folder is data.index, or data.path/.srel_ray_index. Listing walks the class folders in a thread pool:
listing is I/O (on an object store mostly latency), and the data layer stays free of Ray. Readers take what they
need: the label column; the paths of some rows, from the row groups that hold them; the rows of a range (a Ray
read task's share of a split); or every path in batches.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from srel_ray.errors import DataError
from srel_ray.storage.files import read_json, write_bytes_atomic, write_json_atomic

INDEX_VERSION = 1
LIST_THREADS = 32  # class folders listed at once
ROW_GROUP = 65_536  # rows per Parquet row group: a reader of a few rows reads one group (a few MB of paths)
SPLITS = ("train", "test")

Listing = tuple[list[str], list[int]]  # relative paths and their labels, in any order


class FolderIndex:
    """The index of one ImageFolder tree at ``folder`` (a URL): its splits' labels and paths."""

    def __init__(self, folder: str):
        self.folder = folder
        self.fs, self.root = fsspec.core.url_to_fs(folder)

    def file(self, split: str) -> str:
        """The index file of ``split`` (a path on ``self.fs``)."""
        return f"{self.root}/{split}.parquet"

    def labels(self, split: str) -> np.ndarray:
        with self.fs.open(self.file(split), "rb") as f:
            return pq.read_table(f, columns=["label"]).column(0).to_numpy().astype(np.int64)

    def paths_at(self, split: str, rows: np.ndarray) -> list[str]:
        """The relative paths of ``rows``, in their order, reading only the row groups that hold them."""
        rows = np.asarray(rows, dtype=np.int64)
        with self.fs.open(self.file(split), "rb") as f:
            parquet = pq.ParquetFile(f)
            starts = np.cumsum([0] + _group_sizes(parquet))
            groups = np.searchsorted(starts, rows, side="right") - 1
            out = np.empty(len(rows), dtype=object)
            for g in np.unique(groups):
                mine = groups == g
                column = parquet.read_row_group(int(g), columns=["path"]).column(0)
                out[mine] = column.take(pa.array(rows[mine] - starts[g])).to_pylist()
        return out.tolist()

    def rows(self, split: str, start: int, stop: int) -> pa.Table:
        """Rows ``start`` to ``stop`` (exclusive) of ``split``, columns path and label, reading only the row groups
        that hold them: what a Ray read task of a split's rows reads (srel_ray.distributed.datasets)."""
        with self.fs.open(self.file(split), "rb") as f:
            parquet = pq.ParquetFile(f)
            parts = [parquet.read_row_group(g, columns=["path", "label"]).slice(lo, hi - lo)
                     for g, lo, hi in group_spans(_group_sizes(parquet), start, stop)]
        return pa.concat_tables(parts)

    def path_batches(self, split: str, size: int) -> Iterator[list[str]]:
        """Every relative path of ``split`` in row order, ``size`` at a time (the last batch may be smaller)."""
        pending: list[str] = []
        with self.fs.open(self.file(split), "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=size, columns=["path"]):
                pending += batch.column(0).to_pylist()
                while len(pending) >= size:
                    yield pending[:size]
                    pending = pending[size:]
        if pending:
            yield pending


def _group_sizes(parquet: pq.ParquetFile) -> list[int]:
    return [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]


def group_spans(group_sizes: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """The row groups that hold rows ``start`` to ``stop`` (exclusive) of a file whose groups have ``group_sizes``
    rows: (group, first row in the group, end in the group), in row order."""
    spans, first = [], 0
    for group, size in enumerate(group_sizes):
        lo, hi = max(start - first, 0), min(stop - first, size)
        if lo < hi:
            spans.append((group, lo, hi))
        first += size
    return spans


def open_index(folder: str, record: dict, list_splits: Callable[[], dict[str, Listing]]) -> FolderIndex:
    """The index at ``folder`` when its record equals ``record`` (the folder's class list and held-out layout);
    otherwise ``list_splits()`` lists the tree (each split's rows in their order) and the index is written, its
    record last."""
    record = {"version": INDEX_VERSION, **record}
    index = FolderIndex(folder)
    if index.fs.exists(f"{index.root}/index.json") and read_json(f"{folder}/index.json") == record:
        return index
    tables = {split: _table(paths, labels) for split, (paths, labels) in list_splits().items()}
    try:
        for split, data in tables.items():
            write_bytes_atomic(f"{folder}/{split}.parquet", data)
        write_json_atomic(f"{folder}/index.json", record)
    except PermissionError as e:
        raise DataError(f"cannot write the ImageFolder index at {folder!r} ({e}): set data.index to a folder "
                        "that the driver and every worker can write and read") from None
    return index


def _table(paths: list[str], labels: list[int]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"path": pa.array(paths, pa.string()), "label": pa.array(labels, pa.int32())}), buf,
                   row_group_size=ROW_GROUP)
    return buf.getvalue()


def sorted_by_path(paths: list[str], labels: list[int]) -> Listing:
    """The rows in path order (UTF-8 byte order, the code-point order of a sorted listing); sorted by Arrow, which
    holds millions of paths far more compactly than a NumPy string array."""
    order = pc.sort_indices(pa.array(paths, pa.string())).to_numpy()
    return [paths[i] for i in order], [labels[i] for i in order]


def list_class_folders(fs: fsspec.AbstractFileSystem, folders: list[tuple[str, int]], root: str,
                       is_image: Callable[[str], bool], threads: int = LIST_THREADS) -> Listing:
    """Every image under each (folder, label), listed ``threads`` folders at a time; paths relative to ``root``."""

    def one(item: tuple[str, int]) -> list[str]:
        return [p[len(root) + 1:] for p in fs.find(item[0]) if is_image(p)]

    paths, labels = [], []
    with ThreadPoolExecutor(threads) as pool:
        for (_, label), found in zip(folders, pool.map(one, folders)):
            paths += found
            labels += [label] * len(found)
    return paths, labels
