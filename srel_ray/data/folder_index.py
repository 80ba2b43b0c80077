"""The file index of an ImageFolder tree: every image's path and class, per split, listed once and kept as Parquet,
so that later opens (the driver's, every actor's and task's) read it instead of listing millions of files again.

    <index>/train/part-00000.parquet ...  columns path (string, relative to data.path) and label (int32); the parts
    <index>/test/part-00000.parquet ...   concatenated are in path order, the rows a sequential sorted listing gives
    <index>/index.json                    written last: the train class folders and the held-out layout it was
                                          listed from, and each split's rows per part. An index whose record
                                          differs from the folder's (a class folder added, removed or renamed;
                                          another data.val_labels) is listed again; one that lacks images added
                                          inside a class folder is not: remove the index folder to list again.

The index folder is data.index, or data.path/.srel_ray_index. A class tree is listed ``PART_CLASSES`` class folders
at a time, each part sorted and written before the next is listed, so the lister holds one part's paths (about
128,000 at ImageNet-21K's average class size) however large the tree: listing every path of 11 M files and
sorting them held about 2 GB. Parts follow the class folders in the order of ``name + "/"``: no folder's key is
a prefix of another's, so every path of one part sorts before every path of the next, and the concatenation is
the sorted listing of the whole tree ('a-b/' before 'a/'). Folders of a part are listed in a thread pool: listing
is I/O (on an object store mostly latency), and the data layer stays free of Ray. Readers take what they need:
the label column; the paths of some rows, from the row groups that hold them; the rows of a range (a Ray read
task's share of a split); or every path in batches.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from srel_ray.errors import DataError
from srel_ray.storage.files import read_json, write_bytes_atomic, write_json_atomic

INDEX_VERSION = 2  # 1: one Parquet file a split
LIST_THREADS = 32  # class folders listed at once
PART_CLASSES = 256  # class folders listed, sorted and written as one part of a split
ROW_GROUP = 65_536  # rows per Parquet row group: a reader of a few rows reads one group (a few MB of paths)
SPLITS = ("train", "test")

Listing = tuple[list[str], list[int]]  # relative paths and their labels, in index order


class FolderIndex:
    """The index of one ImageFolder tree at ``folder`` (a URL): its splits' labels and paths."""

    def __init__(self, folder: str):
        self.folder = folder
        self.fs, self.root = fsspec.core.url_to_fs(folder)
        self._rows: dict[str, list[int]] | None = None

    def part_rows(self, split: str) -> list[int]:
        """The rows of each part of ``split``, from the record (read once)."""
        if self._rows is None:
            self._rows = read_json(f"{self.folder}/index.json")["rows"]
        return self._rows[split]

    def part_file(self, split: str, part: int) -> str:
        """Part ``part`` of ``split`` (a path on ``self.fs``)."""
        return f"{self.root}/{split}/part-{part:05d}.parquet"

    def labels(self, split: str) -> np.ndarray:
        columns = []
        for part in range(len(self.part_rows(split))):
            with self.fs.open(self.part_file(split, part), "rb") as f:
                columns.append(pq.read_table(f, columns=["label"]).column(0).to_numpy())
        return np.concatenate(columns).astype(np.int64)

    def paths_at(self, split: str, rows: np.ndarray) -> list[str]:
        """The relative paths of ``rows``, in their order, reading only the parts and row groups that hold them."""
        rows = np.asarray(rows, dtype=np.int64)
        part_starts = np.cumsum([0] + self.part_rows(split))
        parts = np.searchsorted(part_starts, rows, side="right") - 1
        out = np.empty(len(rows), dtype=object)
        for part in np.unique(parts):
            in_part = parts == part
            local = rows[in_part] - part_starts[part]
            found = np.empty(len(local), dtype=object)
            with self.fs.open(self.part_file(split, int(part)), "rb") as f:
                parquet = pq.ParquetFile(f)
                starts = np.cumsum([0] + _group_sizes(parquet))
                groups = np.searchsorted(starts, local, side="right") - 1
                for g in np.unique(groups):
                    mine = groups == g
                    column = parquet.read_row_group(int(g), columns=["path"]).column(0)
                    found[mine] = column.take(pa.array(local[mine] - starts[g])).to_pylist()
            out[in_part] = found
        return out.tolist()

    def rows(self, split: str, start: int, stop: int) -> pa.Table:
        """Rows ``start`` to ``stop`` (exclusive) of ``split``, columns path and label, reading only the parts and
        row groups that hold them: what a Ray read task of a split's rows reads (srel_ray.distributed.datasets)."""
        tables = []
        for part, lo, hi in group_spans(self.part_rows(split), start, stop):
            with self.fs.open(self.part_file(split, part), "rb") as f:
                parquet = pq.ParquetFile(f)
                tables += [parquet.read_row_group(g, columns=["path", "label"]).slice(a, b - a)
                           for g, a, b in group_spans(_group_sizes(parquet), lo, hi)]
        return pa.concat_tables(tables)

    def path_batches(self, split: str, size: int) -> Iterator[list[str]]:
        """Every relative path of ``split`` in row order, ``size`` at a time (the last batch may be smaller)."""
        pending: list[str] = []
        for part in range(len(self.part_rows(split))):
            with self.fs.open(self.part_file(split, part), "rb") as f:
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


def open_index(folder: str, record: dict, list_splits: Callable[[], dict[str, Iterable[Listing]]]) -> FolderIndex:
    """The index at ``folder`` when its record equals ``record`` (the folder's class list and held-out layout);
    otherwise ``list_splits()`` lists the tree, each split as its parts in index order, and every part is written
    as it is listed, the record last."""
    record = {"version": INDEX_VERSION, **record}
    index = FolderIndex(folder)
    if index.fs.exists(f"{index.root}/index.json"):
        kept = read_json(f"{folder}/index.json")
        if {k: v for k, v in kept.items() if k != "rows"} == record:
            return index
    splits = list_splits()  # the layout is checked before an old listing is removed
    try:
        _remove_listing(index)
        rows = {}
        for split, parts in splits.items():
            rows[split] = []
            for part, (paths, labels) in enumerate(parts):
                write_bytes_atomic(f"{folder}/{split}/part-{part:05d}.parquet", _table(paths, labels))
                rows[split].append(len(paths))
        write_json_atomic(f"{folder}/index.json", {**record, "rows": rows})
    except PermissionError as e:
        raise DataError(f"cannot write the ImageFolder index at {folder!r} ({e}): set data.index to a folder "
                        "that the driver and every worker can write and read") from None
    return index


def _remove_listing(index: FolderIndex) -> None:
    """An earlier listing's files, its record first: a listing stopped half-way leaves no record to be read."""
    for name in ("index.json", *(f"{split}.parquet" for split in SPLITS)):  # index version 1 kept a file a split
        if index.fs.exists(f"{index.root}/{name}"):
            index.fs.rm(f"{index.root}/{name}")
    for split in SPLITS:
        if index.fs.exists(f"{index.root}/{split}"):
            index.fs.rm(f"{index.root}/{split}", recursive=True)


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


def list_class_parts(fs: fsspec.AbstractFileSystem, folders: list[tuple[str, str, int]], root: str,
                     is_image: Callable[[str], bool], threads: int = LIST_THREADS) -> Iterator[Listing]:
    """Every image under each (name, folder, label), in path order, as parts of ``PART_CLASSES`` folders: each part
    listed (``threads`` folders at a time) and sorted when the previous one has been taken; paths relative to
    ``root``."""

    def one(item: tuple[str, str, int]) -> list[str]:
        return [p[len(root) + 1:] for p in fs.find(item[1]) if is_image(p)]

    ordered = sorted(folders, key=lambda item: (item[0] + "/").encode())
    with ThreadPoolExecutor(threads) as pool:
        for first in range(0, len(ordered), PART_CLASSES):
            part = ordered[first:first + PART_CLASSES]
            paths, labels = [], []
            for (_, _, label), found in zip(part, pool.map(one, part)):
                paths += found
                labels += [label] * len(found)
            yield sorted_by_path(paths, labels)
